"""`keras-ddpm train`: train a DDPM on a dataset, then save it with a grid of samples.

`train` builds a `Unet` (or the lecture's `NaiveUnet`) inside a `DiffusionModel`,
fits it with the recipe of `keras_ddpm.cli.recipe` and
writes `model.keras`, `samples.png`, `history.json` and a sample grid per epoch
(`grids/`) to `--out` (the model and the history atomically). With
`--checkpoint-dir` it backs up every epoch and resumes after a crash;
`--strategy` trains on several GPUs or machines (tf.distribute on TensorFlow,
`keras.distribution` on JAX). A lock file
keeps a second run off the same `--out` and `--checkpoint-dir`.
"""

import argparse
import contextlib
import json
import os
import pathlib

from keras_ddpm.cli import common, recipe, sampling_options
from keras_ddpm.cli.sampling_options import classes_in_turn

LOCK_NAME = ".keras-ddpm.lock"
# Reverse steps of OUT/samples.png unless --sample-steps says otherwise: DDIM at --eta 1
# drew the default model as well as DDPM's 1000 steps (BENCHMARKS.md), 50 s sooner.
SAMPLE_STEPS = 50
# Draws per timestep and class of the calibration after training (as good as 256 on
# shapes, a quarter of the time: 33 s on 2 CPU cores), and the training images they
# are drawn from, whose Gaussian mixture the samples start from: one epoch of the
# default (8192 images started shapes' samples closer to the data than 2048, BENCHMARKS.md).
CALIBRATION_SAMPLES = 64
CALIBRATION_IMAGES = 8192


def add_parser(subparsers):
    """Registers the `train` subcommand and its options.

    Example:
    >>> import argparse
    >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.split()[-1]
    'train'
    """
    train = subparsers.add_parser(
        "train",
        help="train a DDPM on a dataset and save it",
        description=(
            "Train a Unet (or the lecture's NaiveUnet, --network naive) in a DiffusionModel "
            "with Adam, warm-up, cosine decay, clipping, Min-SNR weighting and a weight "
            "average, then write "
            "OUT/model.keras, OUT/samples.png (a grid of samples) and OUT/history.json "
            "(loss per epoch)."
        ),
        formatter_class=common.HelpFormatter,
    )
    for add_group in (
        _add_data_arguments,
        _add_diffusion_arguments,
        _add_network_arguments,
        _add_optimization_arguments,
        _add_checkpoints_and_devices_arguments,
        _add_output_arguments,
    ):
        add_group(train)
    train.set_defaults(handler=run)
    return train


def _add_data_arguments(train):
    """The "data" options of `train`."""
    data = train.add_argument_group("data")
    data.add_argument(
        "--dataset",
        metavar="NAME",
        default="shapes",
        help="dataset to train on (keras_ddpm.data.DATASETS lists them)",
    )
    data.add_argument(
        "--image-size",
        metavar="PIXELS",
        type=common.positive_int,
        default=None,
        help="image height and width, a multiple of 32 (default: the dataset's, 32 for shapes)",
    )
    data.add_argument(
        "--classes",
        metavar="A,B,...",
        type=common.name_list,
        default=None,
        help="keep only these classes, by name or id (e.g. ship for cifar10; default: all)",
    )
    data.add_argument(
        "--data-dir",
        metavar="DIR",
        default="data",
        help="where TensorFlow Datasets keeps cifar10 and cats64 (see data/README.md)",
    )
    data.add_argument(
        "--num-examples",
        metavar="N",
        type=common.positive_int,
        default=None,
        help="number of training images (default: the whole split, 8192 for shapes)",
    )


def _add_diffusion_arguments(train):
    """The "diffusion" options of `train`."""
    diffusion = train.add_argument_group("diffusion")
    diffusion.add_argument(
        "--T",
        metavar="STEPS",
        type=common.positive_int,
        default=1000,
        help="number of diffusion steps",
    )
    diffusion.add_argument(
        "--beta1",
        metavar="BETA",
        type=common.positive_float,
        default=1e-4,
        help="beta_1, the noise variance of the first step (linear schedule)",
    )
    diffusion.add_argument(
        "--beta2",
        metavar="BETA",
        type=common.positive_float,
        default=0.02,
        help="beta_T, the noise variance of the last step (linear schedule)",
    )
    diffusion.add_argument(
        "--schedule",
        choices=("linear", "cosine"),
        default=recipe.DEFAULTS["schedule"],
        help="noise schedule; cosine ignores --beta1 and --beta2",
    )
    diffusion.add_argument(
        "--prediction",
        choices=("epsilon", "v", "x0"),
        default=recipe.DEFAULTS["prediction"],
        help="what the network predicts: the noise (the lecture's), v or the clean image",
    )
    conditioning = diffusion.add_mutually_exclusive_group()
    conditioning.add_argument(
        "--conditional",
        action="store_const",
        const=True,
        default=None,
        help="train a class-conditional model on the dataset's labels, for classifier-free "
        "guidance when sampling (--labels, --guidance-scale) (default: conditional when the "
        "dataset has two classes or more, as shapes and cifar10 have)",
    )
    conditioning.add_argument(
        "--unconditional",
        dest="conditional",
        action="store_const",
        const=False,
        help="train without the labels, even on a dataset that has classes",
    )
    diffusion.add_argument(
        "--cond-drop-prob",
        metavar="P",
        type=common.probability,
        default=0.1,
        help="of a conditional model: probability of hiding an image's label in training",
    )


def _add_network_arguments(train):
    """The "network" options of `train`."""
    network = train.add_argument_group("network")
    recipe.add_network_arguments(network)
    network.add_argument(
        "--init",
        metavar="MODEL.keras",
        default=None,
        help="fine-tune this saved model instead of building a new one (its network and "
        "schedule are kept; --n-feat, --T, --beta1, --beta2, --schedule and "
        "--time-embedding are then ignored)",
    )
    network.add_argument(
        "--n-feat",
        metavar="N",
        type=common.positive_int,
        default=16,
        help="naive: U-Net width, a multiple of 8 (16 learns shapes on a CPU in minutes; 64-128 "
        "for CIFAR-10; the lecture uses 512 at 64x64)",
    )
    network.add_argument(
        "--time-embedding",
        choices=("learned", "sinusoidal"),
        default="learned",
        help="naive: how the U-Net embeds the timestep",
    )


def _add_optimization_arguments(train):
    """The "optimization" options of `train`."""
    optimization = train.add_argument_group("optimization")
    optimization.add_argument(
        "--epochs",
        metavar="N",
        type=common.positive_int,
        default=8,
        help="passes over the training images (8 on shapes take about 7-8 minutes on 2 CPU "
        "cores; the lecture trains cats-64 for hundreds)",
    )
    optimization.add_argument(
        "--batch-size",
        metavar="N",
        type=common.positive_int,
        default=16,
        help="images per training step (16: on a CPU as fast per image as 32, and twice the "
        "steps; on a GPU larger batches are faster)",
    )
    optimization.add_argument(
        "--lr",
        metavar="RATE",
        type=common.positive_float,
        default=recipe.DEFAULTS["lr"],
        help="Adam's peak learning rate",
    )
    recipe.add_recipe_arguments(optimization)
    optimization.add_argument(
        "--seed",
        type=common.seed_type,
        default=0,
        help="seed of the weights, data order, training noise and samples",
    )
    optimization.add_argument(
        "--precision",
        choices=common.PRECISIONS,
        default="auto",
        help="Keras dtype policy of a new network: mixed_bfloat16 computes in bfloat16 "
        "with float32 weights, output and loss (faster on GPUs and, under TensorFlow, on "
        "CPUs with AVX-512 BF16 or AMX, much slower on other CPUs, see BENCHMARKS.md), "
        "mixed_float16 adds loss scaling (GPUs only); auto picks mixed_bfloat16 on a GPU of "
        "compute capability >= 8.0 or, under TensorFlow, a CPU with avx512_bf16 or amx_bf16, "
        "float32 elsewhere, and keeps the --init model's own; sampling uses the same",
    )
    optimization.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=common.JIT_COMPILE_HELP,
    )


def _add_checkpoints_and_devices_arguments(train):
    """The "checkpoints and devices" options of `train`."""
    reliability = train.add_argument_group("checkpoints and devices")
    reliability.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        default=None,
        help="back up the weights, optimizer state and epoch count to DIR after every "
        "epoch; run the same command again after a crash, a kill or Ctrl-C and it resumes "
        "from the last completed epoch, with the same losses as an uninterrupted run "
        "(delete DIR to start over) (default: no checkpoints)",
    )
    reliability.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multiworker"),
        default="default",
        help="how to train on several devices: default (one device), mirrored (every "
        "local GPU), multiworker (several machines; run the same command on each); "
        "tf.distribute on TensorFlow (the cluster from TF_CONFIG), keras.distribution's "
        "DataParallel on JAX (the cluster from KERAS_DISTRIBUTION_JOB_ADDRESSES, "
        "_NUM_PROCESSES and _PROCESS_ID)",
    )


def _add_output_arguments(train):
    """The "output" options of `train`."""
    output = train.add_argument_group("output")
    output.add_argument(
        "--n-samples",
        metavar="N",
        type=common.positive_int,
        default=16,
        help="number of images in OUT/samples.png",
    )
    output.add_argument(
        "--sample-steps",
        metavar="STEPS",
        type=common.positive_int,
        default=None,
        help="reverse steps for OUT/samples.png, in 1..T: fewer than T samples with DDIM "
        f"at --eta, T with the lecture's DDPM sampler (default: {SAMPLE_STEPS}, capped at T; "
        "on the default model as good as DDPM's 1000 at eta 1, and 50 s sooner on 2 CPU cores)",
    )
    output.add_argument(
        "--eta",
        type=common.unit_interval,
        default=1.0,
        help="DDIM's eta, in [0, 1], of OUT/samples.png and the grids during training when "
        "they take fewer than T steps: 1 adds DDPM's noise to each step (cleaner shapes from "
        "a briefly trained model, BENCHMARKS.md), 0 is deterministic",
    )
    output.add_argument(
        "--attention-guidance",
        metavar="S",
        type=common.non_negative_float,
        default=None,
        help="of OUT/samples.png and the grids: " + sampling_options.ATTENTION_GUIDANCE_HELP,
    )
    output.add_argument(
        "--denoise-at",
        metavar="T",
        type=common.non_negative_int,
        default=None,
        help="of OUT/samples.png and the grids: " + sampling_options.DENOISE_AT_HELP,
    )
    output.add_argument(
        "--clip-x0",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=common.CLIP_X0_HELP,
    )
    output.add_argument(
        "--calibration-samples",
        metavar="N",
        type=common.non_negative_int,
        default=CALIBRATION_SAMPLES,
        help="after training, calibrate the model (keras_ddpm.calibration: take the mean "
        "error out of its noise estimate at each timestep, Pang et al. 2023, with N draws "
        "per timestep and class from training images; and start sampling at 0.76 T from "
        "a mixture of 16 Gaussians per class fitted to those images, keras_ddpm.gaussian_start) "
        "and save it with the model; it balances the samples' colours on shapes (BENCHMARKS.md); "
        "0 is off",
    )
    output.add_argument(
        "--grid-every",
        metavar="EPOCHS",
        type=common.positive_int,
        default=1,
        help="write OUT/grids/samples_epoch_NNNN.png every this many epochs (and after the "
        "last), always from the same seed",
    )
    output.add_argument(
        "--grid-steps",
        metavar="STEPS",
        type=common.positive_int,
        default=50,
        help="DDIM steps (at --eta) of the grids during training (capped at T)",
    )
    output.add_argument(
        "--log-dir",
        metavar="DIR",
        default=None,
        help="also write TensorBoard logs (loss and sample grids) there (default: none)",
    )
    output.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's start-up log",
    )
    output.add_argument(
        "--out",
        metavar="DIR",
        default="runs/latest",
        help="directory for model.keras, samples.png and history.json",
    )


def run(args):
    """Train a DDPM as `keras-ddpm train` does, write its files and print their paths.

    With `--checkpoint-dir` a rerun of the same command resumes after the last
    completed epoch. Under `--strategy multiworker` only the chief writes files.

    Args:
        args: `argparse.Namespace` from `build_parser()` for the `train` command.

    Returns:
        dict of `"model"`, `"samples"`, `"history"` to the `pathlib.Path` written
        (empty on the other workers of a cluster).

    Example:
    >>> from keras_ddpm.cli import build_parser
    >>> args = build_parser().parse_args(["train", "--epochs", "1", "--out", "/tmp/run"])
    >>> paths = run(args)  # doctest: +SKIP
    """
    # Every setting and output folder is checked before the slow work starts.
    if args.sample_steps is not None and args.sample_steps > args.T:
        raise common.CommandError(f"--sample-steps must be in 1..T = 1..{args.T}, got {args.sample_steps}")
    sampling_options.denoise_option(args.T, args.denoise_at)  # Checks it.
    if args.attention_guidance and args.network == "naive":
        raise common.CommandError(
            "--attention-guidance needs a network with self-attention (--network unet); "
            "the lecture's NaiveUnet has none: leave the option out"
        )
    out_dir = pathlib.Path(args.out)
    checkpoint_dir = pathlib.Path(args.checkpoint_dir) if args.checkpoint_dir else None
    common.check_writable(out_dir, "--out", folder=True)
    if checkpoint_dir is not None:
        common.check_writable(checkpoint_dir, "--checkpoint-dir", folder=True)
    return _train(args, out_dir, checkpoint_dir)


def _train(args, out_dir, checkpoint_dir):
    """The body of `run`, once the output folders are proven writable."""
    keras = common.import_keras(args.verbose)
    from keras_ddpm import data, distribute

    image_shape = data.dataset_image_shape(args.dataset, image_size=args.image_size)
    class_names = data.dataset_class_names(args.dataset)
    num_classes = _num_classes(args, class_names, keras.backend.backend())
    # Before any other TensorFlow operation (a multi-worker strategy must come first).
    strategy = distribute.make_strategy(args.strategy)
    distribute.check_global_batch(args.batch_size, strategy, option="--batch-size")
    chief = distribute.is_chief()
    keras.utils.set_random_seed(args.seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = _build_model(args, image_shape, num_classes)
    backup = _backup(args, chief)
    dataset = data.load_dataset(
        args.dataset,
        batch_size=args.batch_size,
        image_size=args.image_size,
        with_labels=model.num_classes is not None,
        classes=args.classes,
        data_dir=args.data_dir,
        seed=args.seed,
        num_examples=args.num_examples,
        # Epoch k's batches depend on (seed, k) alone: a resumed run sees the same.
        first_epoch=backup.completed_epochs if backup is not None else 0,
    )
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        jit_compile = common.resolve_jit_compile(args.jit_compile, model)
        # An endless stream of epochs (a resumable run) says how many steps make one.
        steps_per_epoch = getattr(dataset, "steps_per_epoch", None) or int(dataset.cardinality())
        optimizer = recipe.make_optimizer(args, steps_per_epoch if steps_per_epoch > 0 else None)
        model.compile(optimizer=optimizer, jit_compile=jit_compile)
    print(_summary(args, model, image_shape, strategy), flush=True)
    warning = recipe.coarse_level_warning(args, image_shape)
    if warning is not None:
        print(warning, flush=True)
    with contextlib.ExitStack() as locks:
        # Every setting is valid: now the chief makes the folders and holds them until the
        # end (the other workers of a cluster write only their own checkpoint sub-folder).
        for folder, option in ((out_dir, "--out"), (checkpoint_dir, "--checkpoint-dir")):
            if folder is not None and chief:
                folder.mkdir(parents=True, exist_ok=True)
                locks.enter_context(_exclusive_lock(folder, option))
        # Sample grids and TensorBoard logs come from the chief alone.
        callbacks = _train_callbacks(args, model, out_dir) if chief else []
        history = _fit_resumably(model, dataset, args, backup, callbacks)
        if not chief:
            print(f"Worker {distribute.worker_id()} done; the chief writes the outputs.")
            return {}
        if args.calibration_samples:
            _calibrate(model, dataset, args)
        return _write_outputs(args, model, history, out_dir)


def _calibrate(model, dataset, args):
    """Calibrates the trained model (`DiffusionModel.calibrate`) on training images."""
    import time

    import numpy as np

    images, labels, count = [], [], 0
    # One epoch at most (a resumable run's dataset is an endless stream of them).
    batches = getattr(dataset, "steps_per_epoch", None)
    for batch in dataset if batches is None else dataset.take(batches):
        batch_images, batch_labels = batch if isinstance(batch, tuple) else (batch, None)
        images.append(np.asarray(batch_images))
        if batch_labels is not None:
            labels.append(np.asarray(batch_labels).reshape(-1))
        count += len(images[-1])
        if count >= CALIBRATION_IMAGES:
            break
    conditions = 1 if model.num_classes is None else model.num_classes + 1
    print(f"Calibrating on {count} training images ({args.calibration_samples} draws x "
          f"{conditions} condition(s) per timestep) ...", flush=True)
    start = time.perf_counter()
    model.calibrate(np.concatenate(images), np.concatenate(labels) if labels else None,
                    samples_per_step=args.calibration_samples, seed=args.seed)
    mixture = model.calibration.start
    print(f"Calibrated in {time.perf_counter() - start:.0f} s; sampling starts at t = {mixture.t} "
          f"from {len(mixture.means)} Gaussians fitted to the training images.", flush=True)


def _write_outputs(args, model, history, out_dir):
    """Saves the model and history (atomically) and a grid of samples; returns the paths."""
    from keras_ddpm import plotting, saving

    paths = {
        "model": out_dir / "model.keras",
        "samples": out_dir / "samples.png",
        "history": out_dir / "history.json",
    }
    _save_or_rescue(model, paths["model"])
    losses = {name: [float(value) for value in values] for name, values in history.items()}
    with saving.atomic_path(paths["history"]) as temp:
        temp.write_text(json.dumps(losses, indent=2) + "\n")
    print(f"Sampling {args.n_samples} images ...", flush=True)
    steps = args.sample_steps or min(SAMPLE_STEPS, model.T)
    labels = classes_in_turn(model, args.n_samples)
    images = model.sample(
        args.n_samples, steps=steps, eta=args.eta, seed=args.seed, clip_x0=args.clip_x0,
        labels=labels, denoise_at=sampling_options.denoise_option(model.T, args.denoise_at),
        **sampling_options.guidance_options(model, labels, None, args.attention_guidance),
    )
    plotting.save_image_grid(images, paths["samples"])
    for name, path in paths.items():
        print(f"Wrote {name}: {path}")
    return paths


def _save_or_rescue(model, path):
    """Saves the trained model to `path`; if that fails, to a rescue file, then says so."""
    import tempfile

    from keras_ddpm import saving

    try:
        saving.save_model(model, path)
    except OSError as error:
        rescue = pathlib.Path(tempfile.gettempdir()) / f"keras-ddpm-rescued-{os.getpid()}.keras"
        saving.save_model(model, rescue)
        raise common.CommandError(
            f"could not write {str(path)!r} ({common.one_line(error)}); the trained model "
            f"was saved to {str(rescue)!r} instead"
        ) from error


def _num_classes(args, class_names, backend="tensorflow"):
    """The classes of the model to train: all the dataset's with --conditional, None
    with --unconditional; by default all of them when there are two or more, except
    under TensorFlow's multi-worker strategy, whose `fit` cannot take labelled
    batches (Keras 3.15 averages the first batch across workers to build the model,
    and that reduction fails on an (images, labels) pair).

    Example:
    >>> import argparse
    >>> options = argparse.Namespace(conditional=None, strategy="default")
    >>> _num_classes(options, ("disc", "square", "triangle")), _num_classes(options, ("cat",))
    (3, None)
    """
    multiworker = args.strategy == "multiworker" and backend == "tensorflow"
    if args.conditional and multiworker:
        raise common.CommandError(
            "--conditional cannot train under --strategy multiworker on TensorFlow (Keras' "
            "multi-worker fit fails on labelled batches); pass --unconditional"
        )
    conditional = args.conditional
    if conditional is None:
        conditional = len(class_names) > 1 and not multiworker
    return len(class_names) if conditional else None


def _build_model(args, image_shape, num_classes):
    """The `DiffusionModel` to train: loaded from --init, or built from the options."""
    if args.init is not None:
        model = common.load_diffusion_model(args.init)
        saved_precision = model.dtype_policy.name
        if args.precision not in (None, "auto") and args.precision != saved_precision:
            raise common.CommandError(
                f"--precision {args.precision} differs from the --init model's "
                f"{saved_precision}; leave --precision out to fine-tune in {saved_precision}"
            )
        if tuple(model.image_shape) != tuple(image_shape):
            raise common.CommandError(
                f"--init model {args.init!r} makes {model.image_shape} images but "
                f"{args.dataset} gives {image_shape}; pass --image-size to match"
            )
        from keras_ddpm import guidance

        if args.attention_guidance and not guidance.has_attention(model.network):
            raise common.CommandError(
                f"--attention-guidance needs a network with self-attention; the --init model "
                f"{args.init!r} has none: leave the option out"
            )
        return model
    return recipe.new_model(args, image_shape, num_classes)


def _summary(args, model, image_shape, strategy):
    """The one line that says what is being trained, on what, and how."""
    from keras_ddpm import distribute

    height, width, channels = image_shape
    what = f"Fine-tuning {args.init}" if args.init else recipe.describe(args)
    classes = f" (classes {', '.join(map(str, args.classes))})" if args.classes else ""
    extras = f", {model.prediction} prediction" if model.prediction != "epsilon" else ""
    if model.num_classes is not None:
        extras += f", conditional on {model.num_classes} classes"
    policy = model.dtype_policy.name
    if args.precision == "auto" and not args.init:
        from keras_ddpm.precision import bfloat16_support

        policy += f" by --precision auto ({bfloat16_support()[1]})"
    replicas = distribute.num_replicas(strategy)
    devices = f" on {replicas} replicas ({args.strategy} strategy)" if replicas > 1 else ""
    return (
        f"{what}, {model.network.count_params():,} parameters, on {args.dataset}{classes} "
        f"{height}x{width}x{channels} for {args.epochs} epoch(s) "
        f"(T={model.T}, {model.schedule} schedule, lr={args.lr:g}{extras}, "
        f"{policy}, XLA {'on' if model.jit_compile else 'off'}){devices}."
    )


@contextlib.contextmanager
def _exclusive_lock(folder, option):
    """Holds an advisory lock on `folder` for the block; a second run is refused.

    The operating system releases the lock when the process ends, however it ends,
    so a killed run never leaves a stale lock behind.
    """
    try:
        import fcntl
    except ImportError:  # Not POSIX: no lock, as before.
        yield
        return
    path = pathlib.Path(folder) / LOCK_NAME
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise common.CommandError(
                f"another '{common.PROG} train' (process {owner}) is writing to {option} "
                f"{str(folder)!r}; wait for it to finish or choose another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_callbacks(args, model, out_dir):
    """Keras callbacks of `keras-ddpm train`: sample grids (averaged weights), TensorBoard."""
    import keras

    from keras_ddpm.callbacks import SampleGrid

    callbacks = []
    if args.log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=args.log_dir))
    labels = classes_in_turn(model, args.n_samples)
    callbacks.append(
        SampleGrid(
            every=args.grid_every,
            n=args.n_samples,
            steps=min(args.grid_steps, model.T),
            seed=args.seed,
            directory=out_dir / "grids",
            log_dir=args.log_dir,
            labels=labels,
            eta=args.eta,
            denoise_at=sampling_options.denoise_option(model.T, args.denoise_at),
            **sampling_options.guidance_options(model, labels, None, args.attention_guidance),
        )
    )
    return callbacks


def _backup(args, chief):
    """The `BackupAndRestore` of --checkpoint-dir (None without it); says when it resumes."""
    from keras_ddpm import distribute
    from keras_ddpm.callbacks import BackupAndRestore

    if args.checkpoint_dir is None:
        return None
    # Every worker of a cluster keeps its own copy (the chief's in DIR itself).
    backup_dir = pathlib.Path(args.checkpoint_dir)
    if not chief:
        backup_dir = backup_dir / distribute.worker_id()
    backup = BackupAndRestore(backup_dir, delete_checkpoint=False)
    if backup.completed_epochs:
        print(
            f"Resuming from the checkpoint in {backup_dir}: {backup.completed_epochs} of "
            f"{args.epochs} epoch(s) done.",
            flush=True,
        )
    return backup


def _fit_resumably(model, dataset, args, backup, callbacks):
    """`model.fit` that stops on a NaN loss and, with a `backup`, resumes.

    `callbacks` come after the divergence check and the backup, so the backup
    is written before the sample grids run.
    Returns the loss history of every epoch, those of an interrupted earlier
    run included.
    """
    from keras_ddpm.callbacks import StopOnDivergence, TrainingDivergedError

    # Stop at a NaN loss before anything is saved; then back up each completed epoch.
    first = [StopOnDivergence()] + ([backup] if backup is not None else [])
    try:
        # The dataset is already shuffled each epoch; fit warns if asked to shuffle it.
        history = model.fit(
            dataset, epochs=args.epochs, steps_per_epoch=dataset.steps_per_epoch, verbose=2,
            callbacks=first + callbacks,
        )
    except TrainingDivergedError as error:
        resume = (
            f"the checkpoint in {args.checkpoint_dir} (after the last completed epoch) is "
            "intact: run again with a lower --lr to resume from it"
            if backup is not None
            else "run again with a lower --lr (and --checkpoint-dir DIR to keep completed epochs)"
        )
        raise common.CommandError(
            f"training diverged: the loss is {error.loss} at epoch {error.epoch}, step "
            f"{error.step} (lr={args.lr:g}); {str(pathlib.Path(args.out) / 'model.keras')!r} "
            f"was not overwritten; {resume}"
        ) from error
    return backup.history if backup is not None else history.history
