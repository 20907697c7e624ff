"""Training on several GPUs or machines with `tf.distribute` (TensorFlow backend).

`make_strategy("mirrored")` replicates the model on every local GPU;
`make_strategy("multiworker")` on every GPU (or the CPU) of several machines,
described by the `TF_CONFIG` environment variable. Build and compile the
model inside `strategy.scope()` and call `fit` as usual: each step splits the
global batch across the replicas, and `DiffusionModel.train_step` averages
their gradients and draws different noise and timesteps on every replica.

    strategy = make_strategy("mirrored")
    with strategy.scope():
        model = DiffusionModel(NaiveUnet((64, 64, 3), n_feat=128))
        model.compile(optimizer=keras.optimizers.Adam(2e-4))
    model.fit(load_dataset("cats64", batch_size=64 * strategy.num_replicas_in_sync))

A multi-worker run starts the same program on every machine, each with
`TF_CONFIG` naming all of them and its own index, e.g. on the first of two:

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}'

Worker 0 is the chief: it writes the model and the logs (see `is_chief`).
"""

import json
import os

import keras

STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name="default"):
    """The `tf.distribute.Strategy` called `name`.

    Create it at the start of the program, before any other TensorFlow
    operation (a multi-worker strategy cannot be created later).

    Args:
        name: str. `"default"` (no distribution: one device), `"mirrored"`
            (`tf.distribute.MirroredStrategy`: all local GPUs, or the CPU) or
            `"multiworker"` (`tf.distribute.MultiWorkerMirroredStrategy`:
            the machines in `TF_CONFIG`).

    Returns:
        A `tf.distribute.Strategy`.

    Example:
    >>> strategy = make_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = DiffusionModel(NaiveUnet((32, 32, 3), n_feat=16), T=100)
    ...     model.compile(optimizer="adam")
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}.")
    if name != "default" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"The {name!r} strategy is tf.distribute and needs the TensorFlow backend "
            f"(KERAS_BACKEND=tensorflow); the {keras.backend.backend()} backend runs on "
            "one device here (see keras.distribution for JAX)."
        )
    if keras.backend.backend() != "tensorflow":
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
    cluster: the `"chief"` task, or worker 0 when there is none.

    Example:
    >>> if is_chief():
    ...     save_model(model, "runs/model.keras")
    """
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
    if not os.environ.get("TF_CONFIG"):
        return ""
    task_type, index = _task()
    return f"{task_type}-{index}"


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
