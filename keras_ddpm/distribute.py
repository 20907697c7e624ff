"""Training on several GPUs or machines: `tf.distribute` on TensorFlow, `keras.distribution` on JAX.

`make_strategy("mirrored")` replicates the model on every local GPU;
`make_strategy("multiworker")` on every GPU (or the CPU) of several machines.
Build and compile the model inside `strategy.scope()` and call `fit` as
usual: each step splits the global batch across the devices and updates the
weights with the gradient of the mean loss over the whole batch, every device
drawing its own noise and timesteps.

    strategy = make_strategy("mirrored")
    with strategy.scope():
        model = DiffusionModel(NaiveUnet((64, 64, 3), n_feat=128))
        model.compile(optimizer=keras.optimizers.Adam(2e-4))
    model.fit(load_dataset("cats64", batch_size=64 * num_replicas(strategy)))

On TensorFlow the strategies are `tf.distribute.MirroredStrategy` and
`MultiWorkerMirroredStrategy`; a multi-worker run starts the same program on
every machine, each with `TF_CONFIG` naming all of them and its own index,
e.g. on the first of two:

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}'

On JAX both are Keras' `keras.distribution.DataParallel`, set as the global
distribution (one program over all devices; XLA splits the batch):
`"mirrored"` over the local devices, `"multiworker"` over the devices of
every process after `keras.distribution.initialize()`, which reads
`KERAS_DISTRIBUTION_JOB_ADDRESSES` (the address of process 0, e.g.
`host1:12345`), `KERAS_DISTRIBUTION_NUM_PROCESSES` and
`KERAS_DISTRIBUTION_PROCESS_ID` (0, 1, ...) on every machine. Keras then
gives each process its share of every `tf.data` batch.

Worker (process) 0 is the chief: it writes the model and the logs (see `is_chief`).
"""

import json
import os

import keras

STRATEGIES = ("default", "mirrored", "multiworker")
# The environment variables keras.distribution.initialize() reads on JAX.
JAX_CLUSTER_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def make_strategy(name="default"):
    """The distribution strategy called `name`, for the active Keras backend.

    Create it at the start of the program, before any other TensorFlow or JAX
    operation (a multi-worker strategy cannot be created later).

    Args:
        name: str. `"default"` (no distribution: one device), `"mirrored"`
            (all local GPUs, or the CPU) or `"multiworker"` (several machines:
            `TF_CONFIG` on TensorFlow, `KERAS_DISTRIBUTION_*` on JAX).

    Returns:
        On TensorFlow a `tf.distribute.Strategy`; on JAX a
        `keras.distribution.DataParallel`, also set as Keras' global
        distribution (None for `"default"`); None on other backends.

    Example:
    >>> strategy = make_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = DiffusionModel(NaiveUnet((32, 32, 3), n_feat=16), T=100)
    ...     model.compile(optimizer="adam")
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}.")
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_distribution(name)
    if name != "default" and backend != "tensorflow":
        raise ValueError(
            f"The {name!r} strategy needs the TensorFlow or JAX backend "
            f"(KERAS_BACKEND=tensorflow or jax); the {backend} backend runs on one device here."
        )
    if backend != "tensorflow":
        return None
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "The 'multiworker' strategy reads the cluster from the TF_CONFIG environment "
            'variable, which is not set: set it on every machine, e.g. TF_CONFIG=\'{"cluster": '
            '{"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
            "\"index\": 0}}' (index 1 on the second machine)."
        )
    _task()  # Checks TF_CONFIG before TensorFlow waits for the other workers.
    return tf.distribute.MultiWorkerMirroredStrategy()


def _jax_distribution(name):
    """JAX: Keras' `DataParallel` over every device (of every process), set globally."""
    if name == "default":
        return None
    if name == "multiworker":
        missing = [var for var in JAX_CLUSTER_VARIABLES if not os.environ.get(var)]
        if missing:
            raise ValueError(
                "The 'multiworker' strategy on JAX reads the cluster from the "
                f"environment, and {', '.join(missing)} is not set: set on every machine "
                "KERAS_DISTRIBUTION_JOB_ADDRESSES=host1:12345 (process 0's address), "
                "KERAS_DISTRIBUTION_NUM_PROCESSES=2 and KERAS_DISTRIBUTION_PROCESS_ID=0 "
                "(1 on the second machine)."
            )
        keras.distribution.initialize()
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    keras.distribution.set_distribution(distribution)
    return distribution


def num_replicas(strategy):
    """How many devices share each batch under `strategy` (from `make_strategy`).

    Args:
        strategy: a `tf.distribute.Strategy`, a `keras.distribution.Distribution`
            or None (one device).

    Returns:
        int. The global batch size should be a multiple of it.

    Example:
    >>> num_replicas(make_strategy("default"))
    1
    """
    if strategy is None:
        return 1
    if hasattr(strategy, "device_mesh"):  # keras.distribution.DataParallel
        return int(strategy.device_mesh.devices.size)
    return int(strategy.num_replicas_in_sync)


def check_global_batch(batch_size, strategy, option="batch_size"):
    """Raise a `ValueError` unless `batch_size` splits evenly over `strategy`'s devices.

    Each device takes `batch_size / num_replicas(strategy)` images of every batch
    (Keras' `DataParallel` on JAX cannot split a batch unevenly).

    Example:
    >>> check_global_batch(32, make_strategy("default"))
    """
    devices = num_replicas(strategy)
    if batch_size % devices:
        raise ValueError(
            f"{option} {batch_size} does not split evenly over {devices} devices: "
            f"use a multiple of {devices}"
        )


def _task():
    """`(type, index)` of this process in `TF_CONFIG`, or a clear ValueError."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = config.get("task", {})
        workers = config["cluster"]["worker"] if config else []
        task_type, index = task.get("type", "worker"), int(task.get("index", 0))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(
            "TF_CONFIG must be JSON like {\"cluster\": {\"worker\": [\"host1:port\", ...]}, "
            f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}}; got {os.environ['TF_CONFIG']!r} "
            f"({type(error).__name__}: {error})."
        ) from None
    if config and task_type == "worker" and not 0 <= index < len(workers):
        raise ValueError(
            f"TF_CONFIG's task index {index} is not one of the {len(workers)} workers "
            "in its cluster: number the machines 0, 1, ..."
        )
    return task_type, index


def is_chief():
    """Whether this process writes the shared outputs (model, logs, samples).

    True without `TF_CONFIG` (one process) and on the chief of a multi-worker
    cluster: the `"chief"` task, or worker 0 when there is none. On JAX: process 0
    (call it after `make_strategy`, which starts the processes' cluster).

    Example:
    >>> if is_chief():
    ...     save_model(model, "runs/model.keras")
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    if not os.environ.get("TF_CONFIG"):
        return True
    task_type, index = _task()
    if task_type == "chief":
        return True
    cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    return task_type == "worker" and index == 0 and "chief" not in cluster


def worker_id():
    """This process's name in a multi-worker cluster, e.g. `"worker-1"` (`""` alone).

    Example:
    >>> backup_dir = os.path.join("checkpoints", worker_id())
    """
    if keras.backend.backend() == "jax":
        import jax

        return f"worker-{jax.process_index()}" if jax.process_count() > 1 else ""
    if not os.environ.get("TF_CONFIG"):
        return ""
    task_type, index = _task()
    return f"{task_type}-{index}"


def step_seed(fixed_seed, step=None, seed_generator=None):
    """TensorFlow: the stateless seed of a training step's draws, different on every replica.

    In training (`step` given, the optimizer's step count) `fixed_seed`
    folded with `step`, so the draws of step k are the same whether or not
    the run was resumed from a checkpoint; otherwise (`step` None) the seed
    generator's next seed. Then folded with the replica id (`replica_seed`).

    Args:
        fixed_seed: pair of ints. The model's fixed training seed.
        step: int tensor or None. The optimizer's step count.
        seed_generator: `keras.random.SeedGenerator`. Used when `step` is None.

    Returns:
        An int32 tensor `(2,)`.

    Example:
    >>> a, b = step_seed([5, 1], step=3), step_seed([5, 1], step=3)
    >>> bool((a == b).numpy().all())
    True
    """
    import tensorflow as tf

    if step is None:
        seed = seed_generator.next()
    else:
        seed = tf.random.experimental.stateless_fold_in(
            tf.constant(fixed_seed, "int32"), tf.cast(step, "int64")
        )
    return replica_seed(seed)


def replica_seed(seed):
    """TensorFlow: a stateless seed folded with this replica's id, so each replica draws its own.

    Every replica of a `tf.distribute` strategy runs the same step with the
    same seed; folding in `replica_id_in_sync_group` gives each its own draws
    (noise, timesteps, dropped labels) while the run stays reproducible.
    Outside a replica context (cross-replica code) the seed is returned as is.

    Args:
        seed: int32 tensor `(2,)`. A stateless seed.

    Returns:
        An int32 tensor `(2,)`.

    Example:
    >>> import tensorflow as tf
    >>> seed = tf.constant([3, 1])
    >>> bool(tf.reduce_all(replica_seed(seed) == seed))  # One replica: id 0 folded in.
    False
    """
    import tensorflow as tf

    replica_context = tf.distribute.get_replica_context()
    if replica_context is not None:  # None in a cross-replica context.
        seed = tf.random.experimental.stateless_fold_in(
            seed, replica_context.replica_id_in_sync_group
        )
    return seed


def reducible_logs(logs):
    """The logs of a `train_step` in a form Keras can reduce across workers.

    Under a multi-worker `MultiWorkerMirroredStrategy`, Keras 3 reduces every
    value a step returns with `strategy.reduce("MEAN", value, axis=0)`, which
    fails on scalars ("Invalid reduction dimension 0 for input with 0
    dimensions", tensorflow/tensorflow#72388). Giving each value the shape
    `(1,)` there makes that reduction return the scalar; elsewhere the logs are
    returned unchanged.

    Example:
    >>> return reducible_logs({"loss": self.loss_tracker.result()})  # In train_step.
    """
    if keras.backend.backend() != "tensorflow":
        return logs
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    # The condition under which Keras' reduce_per_replica uses axis=0.
    if not (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    ):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}
