"""The `keras-ddpm` command line: train a DDPM on a dataset, then sample from it.

Three subcommands:

    keras-ddpm train --dataset shapes --epochs 6 --out runs/shapes
    keras-ddpm sample runs/shapes/model.keras --n 16 --steps 50 --out samples.png
    keras-ddpm evaluate runs/shapes/model.keras --dataset shapes --n 512

`train` builds a `NaiveUnet` inside a `DiffusionModel`, fits it with Adam and
writes `model.keras`, `samples.png`, `history.json` and a sample grid per
epoch (`grids/`) to `--out` (the model and the history atomically). With
`--checkpoint-dir` it backs up every epoch and resumes after a crash;
`--strategy` trains on several GPUs or machines (tf.distribute). `sample`
loads such a `model.keras` and writes a PNG grid of new images (and, on
request, a strip of intermediate steps and the raw float images as `.npz`).
`evaluate` compares samples with a dataset's test images (sliced Wasserstein
distance, and FID/KID given Inception weights).

Every option is listed, with its default, by `keras-ddpm train --help` and
`keras-ddpm sample --help`. A bad argument, a missing or damaged file, or an
invalid setting ends the command with one line on stderr
(`keras-ddpm: error: ...`) and exit status 2.

This module imports TensorFlow and Keras only inside the commands.
"""

import argparse
import contextlib
import json
import math
import os
import pathlib
import sys

PROG = "keras-ddpm"

# The exit status of every error: the one argparse uses for bad arguments.
ERROR_STATUS = 2

# Errors that mean "bad input", reported in one line instead of a traceback.
USER_ERRORS = (ValueError, OSError)  # OSError covers FileNotFoundError.

CLIP_X0_HELP = (
    "clip the predicted clean image to [-1, 1] inside every reverse step, as Ho et al.'s "
    "released code does; --no-clip-x0 runs the lecture's formula exactly (a briefly "
    "trained model can then drift out of range)"
)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

JIT_COMPILE_HELP = (
    "compile with XLA (training and the sampling loop); --no-jit-compile turns it off "
    "(default: Keras' auto, on with a GPU and off on CPU-only machines, where XLA was "
    "measured slower; the JAX backend always compiles its sampler with XLA)"
)

# `keras-ddpm train`'s network and recipe (issue 12; chosen on shapes, see README).
UNET_DEFAULTS = {"widths": (16, 32, 64), "blocks_per_level": 1}
RECIPE_DEFAULTS = {
    "schedule": "cosine",
    "prediction": "v",
    "lr": 2e-3,
    "ema": 0.999,
    "warmup_steps": 100,
    "lr_decay": "cosine",
    "clipnorm": 1.0,
    "loss_weighting": "min_snr",
}

# Longest error message printed (Keras' loading errors can quote whole configs).
MAX_MESSAGE_LENGTH = 500


class CommandError(Exception):
    """A problem with the user's input, reported as one line on stderr.

    Example:
    >>> raise CommandError("model.keras not found")
    """


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to each option's help, unless the help gives its own."""

    def _get_help_string(self, action):
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _OneLineErrorParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line: `keras-ddpm: error: ...`."""

    def error(self, message):
        hint = f"see '{self.prog} --help'"
        self.exit(ERROR_STATUS, f"{PROG}: error: {message} ({hint})\n")


# ------------------------------------------------------------ argument types
def _number_type(convert, minimum, strict, description):
    """An argparse type: a finite number from `convert`, above `minimum`.

    With `strict` the number must be > `minimum`, else >= `minimum`.
    """

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        too_small = value <= minimum if strict else value < minimum
        if too_small or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


_positive_int = _number_type(int, 0, True, "a positive integer")
_non_negative_int = _number_type(int, 0, False, "an integer >= 0")
_positive_float = _number_type(float, 0.0, True, "a positive number")
_non_negative_float = _number_type(float, 0.0, False, "a number >= 0")


def _name_list(text):
    """argparse type: comma-separated class names or ids, e.g. "ship" or "0,8"."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated class names, got {text!r}")
    return [int(name) if name.isdigit() else name for name in names]


def _int_list(text):
    """`"32,64,128"` -> `(32, 64, 128)`; `""` or `"none"` -> `()`."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}")


def _optional_number(parse):
    """`parse`, or None for `"none"` / `"off"`."""

    def parse_or_none(text):
        return None if text.strip().lower() in ("none", "off") else parse(text)

    parse_or_none.__name__ = parse.__name__
    return parse_or_none


def _label_list(text):
    """argparse type: comma-separated class ids >= 0, e.g. "0,1,2" or "2"."""
    try:
        labels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated class ids like 0,1,2, got {text!r}"
        ) from None
    if not labels or any(label < 0 for label in labels):
        raise argparse.ArgumentTypeError(f"expected class ids >= 0 like 0,1,2, got {text!r}")
    return labels


_probability = _number_type(float, 0.0, False, "a number in [0, 1)")


def _ema_decay(text):
    """argparse type: an EMA decay in [0, 1)."""
    value = _probability(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a decay in [0, 1) or none, got {text!r}")
    return value


def _timestep_list(text):
    """argparse type: comma-separated timesteps >= 0, e.g. "1000,200,50,0"."""
    try:
        timesteps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integer timesteps like 1000,200,50,0, got {text!r}"
        ) from None
    if not timesteps or any(t < 0 for t in timesteps):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integer timesteps >= 0 like 1000,200,50,0, got {text!r}"
        )
    return timesteps


# -------------------------------------------------------------------- parser
def build_parser():
    """The `keras-ddpm` argument parser, with `train`, `sample` and `evaluate`.

    Returns:
        An `argparse.ArgumentParser`; `parse_args` gives a namespace whose
        `command` is `"train"`, `"sample"` or `"evaluate"`.

    Example:
    >>> args = build_parser().parse_args(["sample", "model.keras", "--steps", "50"])
    >>> args.command, args.steps, args.n
    ('sample', 50, 16)
    """
    parser = _OneLineErrorParser(
        prog=PROG,
        description="Train denoising diffusion probabilistic models (DDPM) and sample from them.",
        epilog=f"Run '{PROG} COMMAND --help' (train, sample, evaluate) for the options.",
        formatter_class=_HelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
        formatter_class=_HelpFormatter,
    )
    train.set_defaults(handler=train_command)

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
        type=_positive_int,
        default=None,
        help="image height and width, a multiple of 32 (default: the dataset's, 32 for shapes)",
    )
    data.add_argument(
        "--classes",
        metavar="A,B,...",
        type=_name_list,
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
        type=_positive_int,
        default=None,
        help="number of training images (default: the whole split, 8192 for shapes)",
    )

    diffusion = train.add_argument_group("diffusion")
    diffusion.add_argument(
        "--T",
        metavar="STEPS",
        type=_positive_int,
        default=1000,
        help="number of diffusion steps",
    )
    diffusion.add_argument(
        "--beta1",
        metavar="BETA",
        type=_positive_float,
        default=1e-4,
        help="beta_1, the noise variance of the first step (linear schedule)",
    )
    diffusion.add_argument(
        "--beta2",
        metavar="BETA",
        type=_positive_float,
        default=0.02,
        help="beta_T, the noise variance of the last step (linear schedule)",
    )
    diffusion.add_argument(
        "--schedule",
        choices=("linear", "cosine"),
        default=RECIPE_DEFAULTS["schedule"],
        help="noise schedule; cosine ignores --beta1 and --beta2",
    )
    diffusion.add_argument(
        "--prediction",
        choices=("epsilon", "v", "x0"),
        default=RECIPE_DEFAULTS["prediction"],
        help="what the network predicts: the noise (the lecture's), v or the clean image",
    )
    diffusion.add_argument(
        "--conditional",
        action="store_true",
        help="train a class-conditional model on the dataset's labels, for classifier-free "
        "guidance when sampling (--labels, --guidance-scale) (default: unconditional)",
    )
    diffusion.add_argument(
        "--cond-drop-prob",
        metavar="P",
        type=_probability,
        default=0.1,
        help="with --conditional: probability of training without the label",
    )

    network = train.add_argument_group("network")
    network.add_argument(
        "--network",
        choices=("unet", "naive"),
        default="unet",
        help="unet: keras_ddpm.Unet, residual blocks with attention (--widths, "
        "--blocks-per-level, --attention-levels, --dropout); naive: the lecture's NaiveUnet "
        "(--n-feat, --time-embedding)",
    )
    network.add_argument(
        "--widths",
        metavar="W1,W2,...",
        type=_int_list,
        default=UNET_DEFAULTS["widths"],
        help="unet: channels of each level, multiples of 8; image sizes must be multiples "
        "of 2**(levels - 1)",
    )
    network.add_argument(
        "--blocks-per-level",
        metavar="N",
        type=_positive_int,
        default=UNET_DEFAULTS["blocks_per_level"],
        help="unet: residual blocks per level on each side",
    )
    network.add_argument(
        "--attention-levels",
        metavar="L1,...",
        type=_int_list,
        default=None,
        help="unet: levels (0 = full resolution) with self-attention, or none (default: the "
        "coarsest)",
    )
    network.add_argument(
        "--dropout",
        metavar="RATE",
        type=_probability,
        default=0.0,
        help="unet: dropout rate in the residual blocks",
    )
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
        type=_positive_int,
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

    optimization = train.add_argument_group("optimization")
    optimization.add_argument(
        "--epochs",
        metavar="N",
        type=_positive_int,
        default=6,
        help="passes over the training images (6 on shapes takes about 5 minutes on 2 CPU "
        "cores; the lecture trains cats-64 for hundreds)",
    )
    optimization.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=32,
        help="images per training step",
    )
    optimization.add_argument(
        "--lr",
        metavar="RATE",
        type=_positive_float,
        default=RECIPE_DEFAULTS["lr"],
        help="Adam's peak learning rate",
    )
    optimization.add_argument(
        "--ema",
        metavar="DECAY",
        type=_optional_number(_ema_decay),
        default=RECIPE_DEFAULTS["ema"],
        help="keep an exponential moving average of the weights with this decay, warmed up "
        "as min(DECAY, (1 + n) / (10 + n)) at step n; the grids and the saved model use the "
        "averaged weights; none to train without",
    )
    optimization.add_argument(
        "--warmup-steps",
        metavar="N",
        type=_non_negative_int,
        default=RECIPE_DEFAULTS["warmup_steps"],
        help="steps of linear learning-rate warm-up from 0 to --lr (at most a fifth of the run)",
    )
    optimization.add_argument(
        "--lr-decay",
        choices=("cosine", "none"),
        default=RECIPE_DEFAULTS["lr_decay"],
        help="after the warm-up: cosine decay to a tenth of --lr at the last step, or none",
    )
    optimization.add_argument(
        "--clipnorm",
        metavar="NORM",
        type=_optional_number(_positive_float),
        default=RECIPE_DEFAULTS["clipnorm"],
        help="clip the gradients' global norm to this; none to train without clipping",
    )
    optimization.add_argument(
        "--loss-weighting",
        choices=("min_snr", "none"),
        default=RECIPE_DEFAULTS["loss_weighting"],
        help="min_snr: weight each timestep's error by Min-SNR-gamma (Hang et al. 2023); none: "
        "the lecture's plain mean squared error",
    )
    optimization.add_argument(
        "--min-snr-gamma",
        metavar="GAMMA",
        type=_positive_float,
        default=5.0,
        help="the SNR cap of --loss-weighting min_snr",
    )
    optimization.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="seed of the weights, data order, training noise and samples",
    )
    optimization.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="Keras dtype policy of a new network: mixed_bfloat16 computes in bfloat16 "
        "with float32 weights, output and loss (faster on GPUs and on CPUs with AVX-512 "
        "BF16 or AMX, see BENCHMARKS.md), mixed_float16 adds loss scaling (GPUs only); "
        "sampling uses the same (default: float32, or the --init model's own)",
    )
    optimization.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=JIT_COMPILE_HELP,
    )

    reliability = train.add_argument_group("checkpoints and devices")
    reliability.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        default=None,
        help="back up the weights, optimizer state and epoch count to DIR after every "
        "epoch; run the same command again after a crash or a kill and it resumes from "
        "the last completed epoch (delete DIR to start over) (default: no checkpoints)",
    )
    reliability.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multiworker"),
        default="default",
        help="tf.distribute strategy: default (one device), mirrored (every local GPU), "
        "multiworker (several machines, from the TF_CONFIG environment variable; run "
        "the same command on each)",
    )

    output = train.add_argument_group("output")
    output.add_argument(
        "--n-samples",
        metavar="N",
        type=_positive_int,
        default=16,
        help="number of images in OUT/samples.png",
    )
    output.add_argument(
        "--sample-steps",
        metavar="STEPS",
        type=_positive_int,
        default=None,
        help="reverse steps for OUT/samples.png; fewer than T samples with DDIM "
        "(default: all T steps, the DDPM sampler)",
    )
    output.add_argument(
        "--clip-x0",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=CLIP_X0_HELP,
    )
    output.add_argument(
        "--grid-every",
        metavar="EPOCHS",
        type=_positive_int,
        default=1,
        help="write OUT/grids/samples_epoch_NNNN.png every this many epochs (and after the "
        "last), always from the same seed",
    )
    output.add_argument(
        "--grid-steps",
        metavar="STEPS",
        type=_positive_int,
        default=50,
        help="DDIM steps of the grids during training (capped at T)",
    )
    output.add_argument(
        "--log-dir",
        metavar="DIR",
        default=None,
        help="also write TensorBoard logs (loss and sample grids) there (default: none)",
    )
    output.add_argument(
        "--out",
        metavar="DIR",
        default="runs/latest",
        help="directory for model.keras, samples.png and history.json",
    )

    sample = subparsers.add_parser(
        "sample",
        help="generate images with a saved model",
        description=(
            "Load a DiffusionModel saved by 'keras-ddpm train' (MODEL.keras) and write a "
            "PNG grid of new images. With fewer --steps than the model's T it samples with "
            "strided DDIM, which is much faster."
        ),
        formatter_class=_HelpFormatter,
    )
    sample.add_argument(
        "model",
        metavar="MODEL.keras",
        help="model file written by 'keras-ddpm train'",
    )
    sample.add_argument(
        "--n",
        metavar="N",
        type=_positive_int,
        default=16,
        help="number of images",
    )
    sample.add_argument(
        "--steps",
        metavar="STEPS",
        type=_positive_int,
        default=None,
        help="reverse steps, in 1..T; fewer than T samples with DDIM "
        "(default: all T steps, the DDPM sampler)",
    )
    sample.add_argument(
        "--eta",
        type=_non_negative_float,
        default=0.0,
        help="DDIM stochasticity, used when --steps < T: 0 is deterministic, "
        "1 adds DDPM-like noise",
    )
    sample.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="seed of the noise; the same seed gives the same images",
    )
    sample.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=None,
        help="generate in chunks of this many images to bound memory; the images "
        "depend on it (default: all --n at once)",
    )
    sample.add_argument(
        "--out",
        metavar="PNG",
        default="samples.png",
        help="path of the PNG grid to write",
    )
    sample.add_argument(
        "--clip-x0",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=CLIP_X0_HELP,
    )
    sample.add_argument(
        "--frames",
        metavar="T1,T2,...",
        type=_timestep_list,
        default=None,
        help="comma-separated timesteps, e.g. 1000,200,50,0: also plot the first image "
        "at those steps, as a strip in <stem of --out>_frames.png beside --out "
        "(default: no strip)",
    )
    sample.add_argument(
        "--npz",
        metavar="PATH",
        default=None,
        help="also save the raw float32 images (model space, about [-1, 1]) to this .npz "
        "file, as 'images' (and 'frames', 'frame_timesteps' with --frames) "
        "(default: not saved)",
    )
    sample.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=JIT_COMPILE_HELP,
    )
    _add_conditioning_arguments(sample)
    sample.set_defaults(handler=sample_command)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="measure sample quality against a dataset",
        description=(
            "Sample --n images from MODEL.keras and compare them with --n test images of "
            "--dataset: the sliced Wasserstein distance (SWD, no weights needed) and, with "
            "--inception-weights, FID and KID. A conditional model samples the labels of "
            "the test images. Lower is better for all three."
        ),
        formatter_class=_HelpFormatter,
    )
    evaluate.add_argument("model", metavar="MODEL.keras", help="model file written by 'keras-ddpm train'")
    evaluate.add_argument("--dataset", metavar="NAME", default="shapes", help="reference dataset")
    evaluate.add_argument(
        "--data-dir", metavar="DIR", default="data", help="where TensorFlow Datasets keeps its data"
    )
    evaluate.add_argument(
        "--classes",
        metavar="A,B,...",
        type=_name_list,
        default=None,
        help="compare with only these classes (default: all)",
    )
    evaluate.add_argument(
        "--n", metavar="N", type=_positive_int, default=512, help="number of images in each set"
    )
    evaluate.add_argument(
        "--steps",
        metavar="STEPS",
        type=_positive_int,
        default=None,
        help="reverse steps (default: all T steps, the DDPM sampler)",
    )
    evaluate.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the samples")
    evaluate.add_argument(
        "--batch-size", metavar="N", type=_positive_int, default=256, help="images per sampling chunk"
    )
    evaluate.add_argument(
        "--inception-weights",
        metavar="FILE",
        default=None,
        help="local Keras InceptionV3 'notop' weights file for FID and KID (nothing is "
        "downloaded; see keras_ddpm.metrics) (default: SWD only)",
    )
    evaluate.add_argument(
        "--unconditional",
        action="store_true",
        help="sample a conditional model without labels (default: with the test images' labels)",
    )
    evaluate.add_argument(
        "--guidance-scale",
        metavar="W",
        type=float,
        default=None,
        help="classifier-free guidance scale of a conditional model (default: 2.0)",
    )
    evaluate.add_argument(
        "--clip-x0",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=CLIP_X0_HELP,
    )
    evaluate.add_argument(
        "--out", metavar="JSON", default=None, help="also write the figures to this JSON file"
    )
    evaluate.set_defaults(handler=evaluate_command)
    return parser


def _add_conditioning_arguments(parser):
    """--labels and --guidance-scale, for sampling a class-conditional model."""
    parser.add_argument(
        "--labels",
        metavar="ID,ID,...",
        type=_label_list,
        default=None,
        help="class ids of a conditional model's images: one id for all, or one per "
        "image, repeated to fill --n (default: unconditional)",
    )
    parser.add_argument(
        "--guidance-scale",
        metavar="W",
        type=float,
        default=None,
        help="classifier-free guidance: 0 ignores the labels, 1 is plain conditional, "
        "larger pushes harder towards the class (default: 2.0 with --labels)",
    )


# ------------------------------------------------------------------ commands
def _import_keras():
    """Imports Keras (and TensorFlow) quietly; returns the `keras` module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def train_command(args):
    """Train a DDPM as `keras-ddpm train` does, write its files and print their paths.

    With `--checkpoint-dir` a rerun of the same command resumes after the last
    completed epoch. Under `--strategy multiworker` only the chief writes files.

    Args:
        args: `argparse.Namespace` from `build_parser()` for the `train` command.

    Returns:
        dict of `"model"`, `"samples"`, `"history"` to the `pathlib.Path` written
        (empty on the other workers of a cluster).

    Example:
    >>> args = build_parser().parse_args(["train", "--epochs", "1", "--out", "/tmp/run"])
    >>> paths = train_command(args)
    """
    keras = _import_keras()
    from keras_ddpm import data, distribute, plotting, saving
    from keras_ddpm.diffusion import DiffusionModel

    out_dir = pathlib.Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CommandError(f"--out {str(out_dir)!r} exists and is not a directory")
    checkpoint_dir = pathlib.Path(args.checkpoint_dir) if args.checkpoint_dir else None
    if checkpoint_dir is not None and checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise CommandError(f"--checkpoint-dir {str(checkpoint_dir)!r} exists and is not a directory")
    # Check every setting before the (slow) data generation and training.
    if args.sample_steps is not None and args.sample_steps > args.T:
        raise CommandError(f"--sample-steps must be in 1..T = 1..{args.T}, got {args.sample_steps}")
    image_shape = data.dataset_image_shape(args.dataset, image_size=args.image_size)
    num_classes = len(data.dataset_class_names(args.dataset)) if args.conditional else None
    # Before any other TensorFlow operation (a multi-worker strategy must come first).
    strategy = distribute.make_strategy(args.strategy)
    chief = distribute.is_chief()
    keras.utils.set_random_seed(args.seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if args.init is not None:
            model = _load_diffusion_model(args.init)
            saved_precision = model.dtype_policy.name
            if args.precision is not None and args.precision != saved_precision:
                raise CommandError(
                    f"--precision {args.precision} differs from the --init model's "
                    f"{saved_precision}; leave --precision out to fine-tune in {saved_precision}"
                )
            if tuple(model.image_shape) != tuple(image_shape):
                raise CommandError(
                    f"--init model {args.init!r} makes {model.image_shape} images but "
                    f"{args.dataset} gives {image_shape}; pass --image-size to match"
                )
        else:
            with _dtype_policy(keras, args.precision or "float32"):
                network = _build_network(args, image_shape, num_classes)
            model = DiffusionModel(
                network,
                beta1=args.beta1,
                beta2=args.beta2,
                T=args.T,
                schedule=args.schedule,
                prediction=args.prediction,
                num_classes=num_classes,
                cond_drop_prob=args.cond_drop_prob,
                seed=args.seed,
                loss_weighting=None if args.loss_weighting == "none" else args.loss_weighting,
                min_snr_gamma=args.min_snr_gamma,
                ema_decay=args.ema,
            )
    dataset = data.load_dataset(
        args.dataset,
        batch_size=args.batch_size,
        image_size=args.image_size,
        with_labels=model.num_classes is not None,
        classes=args.classes,
        data_dir=args.data_dir,
        seed=args.seed,
        num_examples=args.num_examples,
    )
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        jit_compile = "auto" if args.jit_compile is None else args.jit_compile
        model.compile(optimizer=_make_optimizer(args, dataset), jit_compile=jit_compile)
    height, width, channels = image_shape
    if args.init:
        what = f"Fine-tuning {args.init}"
    elif args.network == "naive":
        what = f"Training NaiveUnet (n_feat={args.n_feat})"
    else:
        what = f"Training Unet (widths={','.join(map(str, args.widths))})"
    classes = f" (classes {', '.join(map(str, args.classes))})" if args.classes else ""
    extras = f", {model.prediction} prediction" if model.prediction != "epsilon" else ""
    if model.num_classes is not None:
        extras += f", conditional on {model.num_classes} classes"
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    devices = f" on {replicas} replicas ({args.strategy} strategy)" if replicas > 1 else ""
    print(
        f"{what}, {model.network.count_params():,} parameters, on {args.dataset}{classes} "
        f"{height}x{width}x{channels} for {args.epochs} epoch(s) "
        f"(T={model.T}, {model.schedule} schedule, lr={args.lr:g}{extras}, "
        f"{model.dtype_policy.name}, XLA {'on' if model.jit_compile else 'off'}){devices}.",
        flush=True,
    )
    out_dir.mkdir(parents=True, exist_ok=True)  # Fail now, not after training.
    # Sample grids and TensorBoard logs come from the chief alone.
    callbacks = _train_callbacks(args, model, out_dir) if chief else []
    history = _fit_resumably(model, dataset, args, chief, callbacks)
    if not chief:
        print(f"Worker {distribute.worker_id()} done; the chief writes the outputs.")
        return {}

    paths = {
        "model": out_dir / "model.keras",
        "samples": out_dir / "samples.png",
        "history": out_dir / "history.json",
    }
    saving.save_model(model, paths["model"])
    losses = {name: [float(value) for value in values] for name, values in history.items()}
    with saving.atomic_path(paths["history"]) as temp:
        temp.write_text(json.dumps(losses, indent=2) + "\n")
    print(f"Sampling {args.n_samples} images ...", flush=True)
    labels = None
    if model.num_classes is not None:
        labels = [i % model.num_classes for i in range(args.n_samples)]
    images = model.sample(
        args.n_samples, steps=args.sample_steps, seed=args.seed, clip_x0=args.clip_x0,
        labels=labels,
    )
    plotting.save_image_grid(images, paths["samples"])
    for name, path in paths.items():
        print(f"Wrote {name}: {path}")
    return paths


def _build_network(args, image_shape, num_classes):
    """The network of a new model: `Unet` or the lecture's `NaiveUnet` (--network)."""
    from keras_ddpm.unet import NaiveUnet, Unet

    if args.network == "naive":
        return NaiveUnet(
            image_shape, n_feat=args.n_feat, time_embedding=args.time_embedding,
            num_classes=num_classes,
        )
    return Unet(
        image_shape,
        widths=args.widths,
        blocks_per_level=args.blocks_per_level,
        attention_levels=args.attention_levels,
        dropout=args.dropout,
        num_classes=num_classes,
    )


def _make_optimizer(args, dataset):
    """Adam with --lr, --warmup-steps, --lr-decay and --clipnorm over the run's steps."""
    from keras_ddpm.optimizers import make_optimizer

    steps_per_epoch = int(dataset.cardinality())
    total_steps = args.epochs * steps_per_epoch if steps_per_epoch > 0 else None
    warmup_steps = args.warmup_steps if total_steps is None else min(
        args.warmup_steps, total_steps // 5
    )
    return make_optimizer(
        args.lr, total_steps=total_steps, warmup_steps=warmup_steps, decay=args.lr_decay,
        clipnorm=args.clipnorm,
    )


@contextlib.contextmanager
def _dtype_policy(keras, name):
    """Sets Keras' global dtype policy to `name` inside the block, then restores it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _train_callbacks(args, model, out_dir):
    """Keras callbacks of `keras-ddpm train`: sample grids (averaged weights), TensorBoard."""
    import keras

    from keras_ddpm.callbacks import SampleGrid

    callbacks = []
    if args.log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=args.log_dir))
    labels = None
    if model.num_classes is not None:
        labels = [i % model.num_classes for i in range(args.n_samples)]
    callbacks.append(
        SampleGrid(
            every=args.grid_every,
            n=args.n_samples,
            steps=min(args.grid_steps, model.T),
            seed=args.seed,
            directory=out_dir / "grids",
            log_dir=args.log_dir,
            labels=labels,
        )
    )
    return callbacks


def _sampling_labels(model, labels, n):
    """The --labels of a sample command, repeated to n, checked against the model."""
    if labels is None:
        return None
    if model.num_classes is None:
        raise CommandError(
            "--labels needs a class-conditional model (trained with --conditional); this one "
            "is unconditional"
        )
    return [labels[i % len(labels)] for i in range(n)]


def _fit_resumably(model, dataset, args, chief, callbacks):
    """`model.fit` that stops on a NaN loss and, with --checkpoint-dir, resumes.

    `callbacks` come after the divergence check and the backup.
    Returns the loss history of every epoch, those of an interrupted earlier
    run included.
    """
    from keras_ddpm import distribute
    from keras_ddpm.callbacks import BackupAndRestore, StopOnDivergence, TrainingDivergedError

    # Stop at a NaN loss before anything is saved; then back up each completed epoch.
    first = [StopOnDivergence()]
    backup = None
    if args.checkpoint_dir is not None:
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
        first.append(backup)
    try:
        # The dataset is already shuffled each epoch; fit warns if asked to shuffle it.
        history = model.fit(dataset, epochs=args.epochs, verbose=2, callbacks=first + callbacks)
    except TrainingDivergedError as error:
        resume = (
            f"the checkpoint in {args.checkpoint_dir} (after the last completed epoch) is "
            "intact: run again with a lower --lr to resume from it"
            if backup is not None
            else "run again with a lower --lr (and --checkpoint-dir DIR to keep completed epochs)"
        )
        raise CommandError(
            f"training diverged: the loss is {error.loss} at epoch {error.epoch}, step "
            f"{error.step} (lr={args.lr:g}); {str(pathlib.Path(args.out) / 'model.keras')!r} "
            f"was not overwritten; {resume}"
        ) from error
    return backup.history if backup is not None else history.history


def _load_diffusion_model(path):
    """Loads a `DiffusionModel` safely (`saving.load_model`), or raises a clear error."""
    _import_keras()
    import keras_ddpm
    from keras_ddpm import saving

    model = saving.load_model(path)
    if not isinstance(model, keras_ddpm.DiffusionModel):
        raise CommandError(
            f"{str(path)!r} holds a {type(model).__name__} ({model.name!r}), not a "
            f"keras_ddpm.DiffusionModel: give the model.keras written by '{PROG} train' "
            "(a bare network cannot sample)"
        )
    return model


def sample_command(args):
    """Sample images as `keras-ddpm sample` does, write them and print the paths.

    Args:
        args: `argparse.Namespace` from `build_parser()` for the `sample` command.

    Returns:
        dict of `"samples"` (and `"frames"`, `"npz"` when asked for) to the
        `pathlib.Path` written.

    Example:
    >>> args = build_parser().parse_args(
    ...     ["sample", "runs/latest/model.keras", "--steps", "50", "--frames", "1000,0"])
    >>> paths = sample_command(args)
    """
    out_path = pathlib.Path(args.out)
    if out_path.suffix.lower() != ".png":
        raise CommandError(f"--out must be a .png path, got {args.out!r}")
    model = _load_diffusion_model(args.model)
    # None lets Keras resolve "auto" for this machine (the file keeps the
    # setting resolved where the model was trained).
    model.jit_compile = args.jit_compile
    import numpy as np

    from keras_ddpm import plotting

    result = model.sample(
        args.n,
        steps=args.steps,
        eta=args.eta,
        seed=args.seed,
        clip_x0=args.clip_x0,
        frames=args.frames,
        batch_size=args.batch_size,
        labels=_sampling_labels(model, args.labels, args.n),
        guidance_scale=args.guidance_scale,
    )
    images, frames = result if args.frames is not None else (result, None)
    paths = {"samples": plotting.save_image_grid(images, out_path)}
    if frames is not None:
        paths["frames"] = out_path.with_name(f"{out_path.stem}_frames.png")
        figure = plotting.plot_frames(frames, index=0)
        figure.savefig(paths["frames"])
    if args.npz is not None:
        paths["npz"] = pathlib.Path(args.npz)
        paths["npz"].parent.mkdir(parents=True, exist_ok=True)
        arrays = {"images": images}
        if frames is not None:
            timesteps = sorted(frames, reverse=True)
            arrays["frame_timesteps"] = np.array(timesteps, dtype=np.int32)
            arrays["frames"] = np.stack([frames[t] for t in timesteps])
        np.savez(paths["npz"], **arrays)
    for name, path in paths.items():
        print(f"Wrote {name}: {path}")
    return paths


def evaluate_command(args):
    """Measure sample quality as `keras-ddpm evaluate` does; print and return the figures.

    Args:
        args: `argparse.Namespace` from `build_parser()` for the `evaluate` command.

    Returns:
        dict of metric name to value (`"swd"`, and `"fid"`, `"kid"`, `"kid_std"`
        with --inception-weights).

    Example:
    >>> args = build_parser().parse_args(["evaluate", "runs/latest/model.keras", "--n", "256"])
    >>> evaluate_command(args)["swd"]
    """
    if args.inception_weights is not None and not pathlib.Path(args.inception_weights).is_file():
        raise CommandError(
            f"--inception-weights {args.inception_weights!r} not found: FID and KID need a local "
            "Keras InceptionV3 'notop' weights file (nothing is downloaded); leave the option "
            "out for the weight-free SWD only"
        )
    model = _load_diffusion_model(args.model)
    import numpy as np

    from keras_ddpm import data, metrics

    reference = data.load_dataset(
        args.dataset,
        split="test" if args.dataset in ("shapes", "cifar10", "cats64") else "train",
        batch_size=args.n,
        image_size=model.image_shape[0],
        with_labels=True,
        classes=args.classes,
        data_dir=args.data_dir,
        shuffle=True,
        seed=args.seed,
    )
    real_images, real_labels = (np.asarray(x) for x in next(iter(reference)))
    if real_images.shape[1:] != model.image_shape:
        raise CommandError(
            f"{args.dataset} gives {real_images.shape[1:]} images but the model makes "
            f"{model.image_shape}"
        )
    n = len(real_images)
    labels = None
    if model.num_classes is not None and not args.unconditional:
        labels = real_labels
    print(f"Sampling {n} images and comparing with {n} {args.dataset} images ...", flush=True)
    fake_images = model.sample(
        n,
        steps=args.steps,
        seed=args.seed,
        clip_x0=args.clip_x0,
        batch_size=args.batch_size,
        labels=labels,
        guidance_scale=args.guidance_scale if labels is not None else None,
    )
    results = {"n": n, "swd": metrics.sliced_wasserstein_distance(real_images, fake_images)}
    if args.inception_weights is not None:
        inception = metrics.inception_model(args.inception_weights)
        real_features = metrics.inception_features(real_images, model=inception)
        fake_features = metrics.inception_features(fake_images, model=inception)
        results["fid"] = metrics.frechet_distance(real_features, fake_features)
        results["kid"], results["kid_std"] = metrics.kernel_inception_distance(
            real_features, fake_features
        )
    for name, value in results.items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    if args.out is not None:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"Wrote metrics: {out}")
    return results


def _one_line(error, max_length=MAX_MESSAGE_LENGTH):
    """The message of `error` on one line, shortened to `max_length` characters."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {error.filename!r}"
    if len(text) > max_length:
        text = text[: max_length - 3] + "..."
    return text or type(error).__name__


def main(argv=None):
    """Run the `keras-ddpm` command line; returns the exit status (0 on success).

    Errors in the arguments or the files end the run with `SystemExit(2)` after
    one line on stderr (`keras-ddpm: error: ...`), never a traceback.

    Args:
        argv: list of str or None. The arguments without the program name;
            None reads `sys.argv[1:]`.

    Example:
    >>> main(["train", "--epochs", "1", "--num-examples", "256", "--out", "/tmp/run"])
    0
    >>> main(["sample", "/tmp/run/model.keras", "--steps", "20", "--out", "/tmp/s.png"])
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (CommandError, *USER_ERRORS) as error:
        parser.exit(ERROR_STATUS, f"{PROG}: error: {_one_line(error)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
