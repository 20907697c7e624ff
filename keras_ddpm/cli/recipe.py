"""`keras-ddpm train`'s network and training-recipe options (issue 12).

`--network unet` (the default) builds `keras_ddpm.Unet`; `--network naive` the
lecture's `NaiveUnet`. The recipe: Adam with warm-up, cosine decay and gradient
clipping (`keras_ddpm.optimizers.make_optimizer`), Min-SNR loss weighting, a
warmed-up average of the weights and offset noise (`DiffusionModel(loss_weighting=...,
ema_decay=..., noise_offset=...)`).
"""

import argparse

from keras_ddpm.cli import common

# Chosen on shapes within the README main command's budget (see README).
DEFAULTS = {
    "network": "unet",
    "widths": (24, 48, 96),
    "blocks_per_level": 1,
    "patch_size": 2,
    "schedule": "cosine",
    "prediction": "v",
    "lr": 2e-3,
    "ema": 0.999,
    "warmup_steps": 100,
    "lr_decay": "cosine",
    "clipnorm": 1.0,
    "loss_weighting": "min_snr",
    "noise_offset": 0.2,
}

_ema_decay = common.number_type(float, "a decay in [0, 1) or none", low=0.0, high=1.0,
                                open_high=True)


def _optional(parse):
    """`parse`, or None for "none" / "off"."""

    def parse_or_none(text):
        return None if text.strip().lower() in ("none", "off") else parse(text)

    return parse_or_none


def _int_tuple(text):
    """argparse type: "32,64,128" -> (32, 64, 128); "none" -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None


def add_network_arguments(network):
    """The Unet options, added to the "network" group."""
    network.add_argument(
        "--network", choices=("unet", "naive"), default=DEFAULTS["network"],
        help="unet: keras_ddpm.Unet, residual blocks with attention (--widths, "
        "--blocks-per-level, --attention-levels, --dropout); naive: the lecture's NaiveUnet "
        "(--n-feat, --time-embedding)",
    )
    network.add_argument(
        "--widths", metavar="W1,W2,...", type=_int_tuple, default=DEFAULTS["widths"],
        help="unet: channels of each level, multiples of 8; image sizes must be multiples "
        "of 2**(levels - 1)",
    )
    network.add_argument(
        "--blocks-per-level", metavar="N", type=common.positive_int,
        default=DEFAULTS["blocks_per_level"], help="unet: residual blocks per level on each side",
    )
    network.add_argument(
        "--attention-levels", metavar="L1,...", type=_int_tuple, default=None,
        help="unet: levels (0 = the finest) with self-attention, or none (default: the "
        "coarsest)",
    )
    network.add_argument(
        "--patch-size", metavar="P", type=common.positive_int, default=DEFAULTS["patch_size"],
        help="unet: work on PxP patches of pixels (space-to-depth), 2-4x cheaper at 2 on a CPU; "
        "image sizes must be multiples of P * 2**(levels - 1)",
    )
    network.add_argument(
        "--dropout", metavar="RATE", type=common.probability, default=0.0,
        help="unet: dropout rate in the residual blocks",
    )


def add_recipe_arguments(optimization):
    """The recipe options (and --ema), added to the "optimization" group."""
    optimization.add_argument(
        "--ema", metavar="DECAY", type=_optional(_ema_decay), default=DEFAULTS["ema"],
        help="keep an exponential moving average of the weights with this decay, warmed up "
        "as min(DECAY, (1 + n) / (10 + n)) at step n; the grids and the saved model use the "
        "averaged weights; none to train without",
    )
    optimization.add_argument(
        "--warmup-steps", metavar="N", type=common.non_negative_int,
        default=DEFAULTS["warmup_steps"],
        help="steps of linear learning-rate warm-up from 0 to --lr (at most a fifth of the run)",
    )
    optimization.add_argument(
        "--lr-decay", choices=("cosine", "none"), default=DEFAULTS["lr_decay"],
        help="after the warm-up: cosine decay to a tenth of --lr at the last step, or none",
    )
    optimization.add_argument(
        "--clipnorm", metavar="NORM", type=_optional(common.positive_float),
        default=DEFAULTS["clipnorm"],
        help="clip the gradients' global norm to this; none to train without clipping",
    )
    optimization.add_argument(
        "--loss-weighting", choices=("min_snr", "none"), default=DEFAULTS["loss_weighting"],
        help="min_snr: weight each timestep's error by Min-SNR-gamma (Hang et al. 2023); none: "
        "the lecture's plain mean squared error",
    )
    optimization.add_argument(
        "--min-snr-gamma", metavar="GAMMA", type=common.positive_float, default=5.0,
        help="the SNR cap of --loss-weighting min_snr",
    )
    optimization.add_argument(
        "--noise-offset", metavar="SCALE", type=common.non_negative_float,
        default=DEFAULTS["noise_offset"],
        help="offset noise: add SCALE times a normal draw per image and channel to the training "
        "noise, so the network learns to correct colours that are off as a whole; the model "
        "samples with the same noise (on shapes 0.2 lifted five seeds' valid rate from "
        "0.73-0.93 to 0.92-0.98 and unbalanced the colours, BENCHMARKS.md); 0: off, the "
        "library's default",
    )


def build_network(args, image_shape, num_classes):
    """The network of a new model: `Unet` or the lecture's `NaiveUnet` (--network)."""
    from keras_ddpm.unet import NaiveUnet, Unet

    if args.network == "naive":
        return NaiveUnet(
            image_shape, n_feat=args.n_feat, time_embedding=args.time_embedding,
            num_classes=num_classes,
        )
    return Unet(
        image_shape, widths=args.widths, blocks_per_level=args.blocks_per_level,
        attention_levels=args.attention_levels, dropout=args.dropout, num_classes=num_classes,
        patch_size=args.patch_size,
    )


def model_options(args):
    """The `DiffusionModel` keyword arguments of the recipe."""
    return {
        "loss_weighting": None if args.loss_weighting == "none" else args.loss_weighting,
        "min_snr_gamma": args.min_snr_gamma,
        "ema_decay": args.ema,
        "noise_offset": args.noise_offset,
    }


def make_optimizer(args, steps_per_epoch):
    """Adam with --lr, --warmup-steps, --lr-decay and --clipnorm over the run's steps.

    `steps_per_epoch` (int or None when unknown) times --epochs is the run's length,
    over which the learning rate decays; warm-up takes at most a fifth of it.
    """
    from keras_ddpm.optimizers import make_optimizer as make

    total_steps = args.epochs * steps_per_epoch if steps_per_epoch else None
    warmup_steps = args.warmup_steps
    if total_steps is not None:
        warmup_steps = min(warmup_steps, total_steps // 5)
    return make(
        args.lr, total_steps=total_steps, warmup_steps=warmup_steps, decay=args.lr_decay,
        clipnorm=args.clipnorm,
    )


def new_model(args, image_shape, num_classes):
    """The untrained `DiffusionModel` that `keras-ddpm train` ARGS builds.

    Network (--network and its options) under the dtype policy of --precision,
    diffusion settings and the recipe's model options. Used by `train` and by
    the benchmarks that train the CLI's recipe outside the CLI.
    """
    from keras_ddpm.diffusion import DiffusionModel
    from keras_ddpm.precision import dtype_policy, resolve_precision

    with dtype_policy(resolve_precision(args.precision or "float32")):
        network = build_network(args, image_shape, num_classes)
    return DiffusionModel(
        network,
        beta1=args.beta1,
        beta2=args.beta2,
        T=args.T,
        schedule=args.schedule,
        prediction=args.prediction,
        num_classes=num_classes,
        cond_drop_prob=args.cond_drop_prob,
        seed=args.seed,
        **model_options(args),
    )


def describe(args):
    """What `train` prints for a new network."""
    if args.network == "naive":
        return f"Training NaiveUnet (n_feat={args.n_feat})"
    patches = f", {args.patch_size}x{args.patch_size} patches" if args.patch_size > 1 else ""
    return f"Training Unet (widths={','.join(map(str, args.widths))}{patches})"


def coarse_level_warning(args, image_shape):
    """A warning line when a new Unet's coarsest level is 2x2 or smaller, else None.

    Every such network trained on shapes (32x32 on 4x4 patches with 3 levels, or on
    2x2 patches with 4) stalled at a loss of 0.06-0.2 where the default reaches 0.008
    (BENCHMARKS.md, "Seeds, not knobs"); the cause is not known.

    Example:
    >>> from keras_ddpm.cli import build_parser
    >>> args = build_parser().parse_args(["train", "--patch-size", "4"])
    >>> coarse_level_warning(args, (32, 32, 3))[:45]
    "Warning: the Unet's coarsest level is 2x2 (32"
    >>> coarse_level_warning(build_parser().parse_args(["train"]), (32, 32, 3)) is None
    True
    """
    if args.init is not None or args.network != "unet":
        return None
    shrink = args.patch_size * 2 ** (len(args.widths) - 1)
    height, width = image_shape[0] // shrink, image_shape[1] // shrink
    if min(height, width) > 2:
        return None
    return (
        f"Warning: the Unet's coarsest level is {height}x{width} ({image_shape[0]}x"
        f"{image_shape[1]} images, {args.patch_size}x{args.patch_size} patches, "
        f"{len(args.widths)} levels); every such network measured on shapes stalled at a "
        "high loss (BENCHMARKS.md): use fewer --widths or a smaller --patch-size"
    )
