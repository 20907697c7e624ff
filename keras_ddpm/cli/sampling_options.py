"""The sampling options that `sample` and `evaluate` share, declared once.

Each default mirrors `DiffusionModel.sample`'s, except two, said here once:
`--clip-x0` is on (the library clips only in strided samplers by default: the
lecture's DDPM formula is exact without it, but a briefly trained model drifts out
of range), and `--batch-size` chunks the images (the library samples all at once)
so that large `--n` runs in bounded memory.
"""

import argparse

from keras_ddpm.cli import common

# Images per sampling chunk in the command line: bounded memory for any --n.
DEFAULT_BATCH_SIZE = 256

# The command line's guidance of a network with self-attention (keras_ddpm.Unet):
# perturbed-attention guidance 0.3 and, for a conditional model, classifier-free
# guidance 1.25 instead of the library's 2. Chosen on shapes: 1.5 with 0.3 beat 2
# alone in valid rate and Fréchet ratio on every model measured; with the mixture
# start and the model's own noise 1.25 then beat 1.5 in Fréchet ratio on 8 of 9
# models at the same valid rate (1: lower still, at a lower valid rate; BENCHMARKS.md,
# "Guidance with the k-means of 32 runs"). The library's own defaults are unchanged
# (attention guidance off).
DEFAULT_ATTENTION_GUIDANCE = 0.3
GUIDANCE_SCALE_WITH_ATTENTION = 1.25
ATTENTION_GUIDANCE_HELP = (
    "perturbed-attention guidance (keras_ddpm.guidance): steer each step away from what "
    "the network predicts with its self-attention switched off, at one more network pass "
    "a step; 0 is off (default: {default:g} for a Unet, then with classifier-free guidance "
    "{scale:g} for a conditional one; off for NaiveUnet, which has no attention)"
).format(default=DEFAULT_ATTENTION_GUIDANCE, scale=GUIDANCE_SCALE_WITH_ATTENTION)

# The command line's final denoising (DiffusionModel.sample's denoise_at): at 7% of T
# (t = 70 of 1000). At 70 it lowered the Fréchet ratio of every draw measured (ten DDIM-50
# draws of four models of the default recipe), more than at 50 on each (DDPM's two draws:
# one better, one equal); at 100 it blurs (worse than at 70 on three models of four).
# BENCHMARKS.md. The library's default is off.
DENOISE_AT_FRACTION = 0.07
DENOISE_AT_HELP = (
    "denoise the finished images once more as if they were noisy images at this timestep "
    "(Tweedie's formula: one more network evaluation per image, which removes the fine "
    "grain of a briefly trained network); 0 is off (default: 7%% of T, 70 of T = 1000)"
)

# keras_ddpm.sampling.SAMPLERS and SPACINGS, written out so that --help does not
# import TensorFlow (tests/test_generation.py pins them to the library's).
SAMPLER_CHOICES = ("ddpm", "ddim", "dpm++", "dpm++2m", "dpm++3m", "heun", "euler")
SPACING_CHOICES = ("linspace", "leading", "trailing", "logsnr", "karras")


def add_sampling_arguments(parser, labels=True):
    """Adds --steps, --eta, --seed, --batch-size, --clip-x0, --jit-compile, --calibration,
    --sampler, --spacing, --attention-guidance, --denoise-at (and labels).

    Args:
        parser: `argparse.ArgumentParser` of a subcommand.
        labels: bool. Also add --labels and --guidance-scale (class-conditional
            models); False adds --guidance-scale alone.

    Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_sampling_arguments(parser)
    >>> parser.parse_args(["--steps", "50"]).steps
    50
    """
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--steps",
        metavar="STEPS",
        type=common.positive_int,
        default=None,
        help="reverse steps, in 1..T; fewer than T samples with DDIM "
        "(default: all T steps, the DDPM sampler)",
    )
    group.add_argument(
        "--eta",
        type=common.unit_interval,
        default=0.0,
        help="DDIM stochasticity, in [0, 1], used when --steps < T: 0 is deterministic, "
        "1 adds DDPM-like noise; for a briefly trained model 1 gives cleaner images "
        "(no two-coloured shapes at 50 steps on the default model, BENCHMARKS.md)",
    )
    group.add_argument(
        "--seed",
        type=common.seed_type,
        default=0,
        help="seed of the noise; the same seed gives the same images",
    )
    group.add_argument(
        "--batch-size",
        metavar="N",
        type=common.positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="generate in chunks of this many images to bound memory; the images "
        "depend on it",
    )
    group.add_argument(
        "--clip-x0",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=common.CLIP_X0_HELP,
    )
    group.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=common.JIT_COMPILE_HELP,
    )
    group.add_argument(
        "--calibration",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the model's calibration, saved by `keras-ddpm train` (keras_ddpm.calibration: "
        "the mean error of its noise estimate at each timestep, subtracted, and a Gaussian "
        "mixture fitted to the training images, from which sampling starts part-way down); "
        "--no-calibration samples without either, from pure noise",
    )
    group.add_argument(
        "--sampler",
        choices=SAMPLER_CHOICES,
        default=None,
        help="reverse sampler: ddpm (all T steps), ddim, dpm++ (DPM-Solver++ 2M), dpm++3m, "
        "heun or euler (Karras noise levels) (default: ddpm for T steps, ddim for fewer)",
    )
    group.add_argument(
        "--spacing",
        choices=SPACING_CHOICES,
        default=None,
        help="timestep spacing of the strided samplers (default: the sampler's own: "
        "trailing for ddim, logsnr for dpm++, karras for heun and euler)",
    )
    if labels:
        which = group.add_mutually_exclusive_group()
        which.add_argument(
            "--labels",
            metavar="ID,ID,...",
            type=common.integer_list("class ids like 0,1,2"),
            default=None,
            help="class ids of a conditional model's images: one id for all, or one per "
            "image, repeated to fill --n (default: the classes in turn, 0,1,2,...)",
        )
        which.add_argument(
            "--unconditional",
            action="store_true",
            help="sample a conditional model without labels (its 'no class' output)",
        )
    group.add_argument(
        "--attention-guidance",
        metavar="S",
        type=common.non_negative_float,
        default=None,
        help=ATTENTION_GUIDANCE_HELP,
    )
    group.add_argument(
        "--denoise-at",
        metavar="T",
        type=common.non_negative_int,
        default=None,
        help=DENOISE_AT_HELP,
    )
    group.add_argument(
        "--guidance-scale",
        metavar="W",
        type=common.non_negative_float,
        default=None,
        help="classifier-free guidance of a conditional model: 0 ignores the labels, 1 is "
        "plain conditional, larger pushes harder towards the class (default with labels: "
        f"{GUIDANCE_SCALE_WITH_ATTENTION:g} with --attention-guidance, else 2.0)",
    )


def guidance_options(model, labels, guidance_scale=None, attention_guidance=None):
    """The guidance arguments of `DiffusionModel.sample`, with the command line's defaults.

    An `attention_guidance` of None is `DEFAULT_ATTENTION_GUIDANCE` for a network
    with self-attention and off for one without; a `guidance_scale` of None is
    `GUIDANCE_SCALE_WITH_ATTENTION` when attention guidance is on and `labels` are
    given, else the library's default. Numbers given are kept as they are, so that
    a bad one gets the library's error.

    Example:
    >>> guidance_options(model=None, labels=None, guidance_scale=2.0, attention_guidance=0.0)
    {'guidance_scale': 2.0, 'attention_guidance': 0.0}
    """
    if attention_guidance is None:
        from keras_ddpm import guidance

        if guidance.has_attention(model.network):
            attention_guidance = DEFAULT_ATTENTION_GUIDANCE
    if guidance_scale is None and attention_guidance and labels is not None:
        guidance_scale = GUIDANCE_SCALE_WITH_ATTENTION
    return {"guidance_scale": guidance_scale, "attention_guidance": attention_guidance}


def denoise_option(T, denoise_at=None):
    """`DiffusionModel.sample`'s `denoise_at` for a --denoise-at value and a model's `T`:
    None is `DENOISE_AT_FRACTION` of T (at least 1), 0 is off (None); above T, a
    `common.CommandError`.

    Example:
    >>> denoise_option(1000), denoise_option(1000, 0), denoise_option(1000, 30)
    (70, None, 30)
    """
    if denoise_at is None:
        return max(1, round(T * DENOISE_AT_FRACTION))
    if denoise_at > T:
        raise common.CommandError(
            f"--denoise-at must be a timestep in 0..T = 0..{T} (0 is off), got {denoise_at}"
        )
    return denoise_at or None


def sampling_kwargs(args, model=None, labels=None):
    """The keyword arguments of `DiffusionModel.sample` that these options give.

    With `model` (and the run's `labels`), --guidance-scale,
    --attention-guidance and --denoise-at get the command line's defaults
    (`guidance_options`, `denoise_option`); without it they are passed as given.

    Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_sampling_arguments(parser)
    >>> sampling_kwargs(parser.parse_args(["--steps", "50"]))["steps"]
    50
    """
    kwargs = {
        "steps": args.steps,
        "eta": args.eta,
        "seed": args.seed,
        "clip_x0": args.clip_x0,
        "batch_size": args.batch_size,
        "guidance_scale": args.guidance_scale,
        "sampler": args.sampler,
        "spacing": args.spacing,
        "attention_guidance": args.attention_guidance,
        "denoise_at": args.denoise_at,
    }
    if model is not None:
        kwargs.update(guidance_options(model, labels, args.guidance_scale,
                                       args.attention_guidance))
        kwargs["denoise_at"] = denoise_option(model.T, args.denoise_at)
    return kwargs


# `DiffusionModel.sample` parameters that a CLI option sets, for its error messages.
_OPTION_OF_PARAMETER = {
    name: "--" + name.replace("_", "-")
    for name in ("steps", "eta", "seed", "clip_x0", "batch_size", "guidance_scale", "sampler",
                 "spacing", "labels", "frames", "attention_guidance", "denoise_at")
}


def in_option_names(message):
    """`message` of a `DiffusionModel.sample` error, naming the CLI options instead.

    A parameter is renamed where it is a Python name: written `name=`, containing
    an underscore, or opening the message.

    Example:
    >>> in_option_names("steps must be in 1..T = 1..1000, got steps=5000.")
    '--steps must be in 1..T = 1..1000, got --steps 5000.'
    >>> in_option_names("guidance_scale needs labels: give them (labels=...).")
    '--guidance-scale needs labels: give them (--labels ...).'
    """
    import re

    names = "|".join(_OPTION_OF_PARAMETER)

    def option(match):
        return _OPTION_OF_PARAMETER[match.group(1)] + (" " if match.group(2) else "")

    message = re.sub(rf"\b({names})(=)", option, message)
    message = re.sub(rf"(?<![-\w])({names})()(?=\s)", lambda m: option(m)
                     if "_" in m.group(1) or m.start() == 0 else m.group(0), message)
    return message


def classes_in_turn(model, n):
    """Labels 0, 1, ..., k-1, 0, 1, ... for `n` images of a conditional model with k
    classes (None for an unconditional model): what `train`'s grids and `sample` draw.

    Example:
    >>> class Model:
    ...     num_classes = 3
    >>> classes_in_turn(Model(), 5)
    [0, 1, 2, 0, 1]
    """
    if model.num_classes is None:
        return None
    return [i % model.num_classes for i in range(n)]


def sampling_labels(model, labels, n, unconditional=False):
    """The labels of `sample`'s `n` images: --labels repeated to `n` and checked
    against the model; without them, a conditional model's classes in turn (None
    with --unconditional, and for an unconditional model).

    Example:
    >>> class Model:
    ...     num_classes = 3
    >>> sampling_labels(Model(), None, 4), sampling_labels(Model(), None, 4, unconditional=True)
    ([0, 1, 2, 0], None)
    >>> sampling_labels(Model(), [2], 3)
    [2, 2, 2]
    """
    if labels is None:
        return None if unconditional else classes_in_turn(model, n)
    if model.num_classes is None:
        raise common.CommandError(
            "--labels needs a class-conditional model (trained with --conditional); this one "
            "is unconditional"
        )
    return [labels[i % len(labels)] for i in range(n)]
