"""`keras-ddpm sample`: load a saved model and write a grid of new images."""

import pathlib

from keras_ddpm.cli import common
from keras_ddpm.cli.sampling_options import (
    add_sampling_arguments, in_option_names, sampling_kwargs, sampling_labels,
)


def add_parser(subparsers):
    """Registers the `sample` subcommand and its options.

    Example:
    >>> import argparse
    >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.split()[-1]
    'sample'
    """
    sample = subparsers.add_parser(
        "sample",
        help="generate images with a saved model",
        description=(
            "Load a DiffusionModel saved by 'keras-ddpm train' (MODEL.keras) and write a "
            "PNG grid of new images. With fewer --steps than the model's T it samples with "
            "strided DDIM, which is much faster."
        ),
        formatter_class=common.HelpFormatter,
    )
    sample.add_argument("model", metavar="MODEL.keras", help="model file written by 'keras-ddpm train'")
    sample.add_argument("--n", metavar="N", type=common.positive_int, default=16, help="number of images")
    add_sampling_arguments(sample)
    sample.add_argument("--out", metavar="PNG", default="samples.png", help="path of the PNG grid to write")
    sample.add_argument(
        "--frames",
        metavar="T1,T2,...",
        type=common.integer_list("integer timesteps like 1000,200,50,0"),
        default=None,
        help="comma-separated timesteps, e.g. 1000,200,50,0: also plot the first image "
        "at those steps, as a strip in <stem of --out>_frames.png beside --out; each "
        "is recorded at the first sampled timestep at or below it (a model that train "
        "calibrated starts at 0.76 T), and the command says where it moved one "
        "(default: no strip)",
    )
    sample.add_argument(
        "--npz",
        metavar="PATH",
        default=None,
        help="also save the raw float32 images (model space, about [-1, 1]) to this .npz "
        "file, as 'images' (and with --frames: 'frames', 'frame_timesteps' as asked and "
        "'frame_sampled_timesteps' as recorded); '.npz' is added when missing (default: "
        "not saved)",
    )
    sample.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up log")
    sample.set_defaults(handler=run)
    return sample


def output_paths(args):
    """The files `sample` will write, checked before any work: {name: Path}.

    Example:
    >>> import argparse
    >>> args = argparse.Namespace(out="a.png", frames=None, npz="raw")
    >>> sorted(str(path) for path in output_paths(args).values())
    ['a.png', 'raw.npz']
    """
    out_path = pathlib.Path(args.out)
    if out_path.suffix.lower() != ".png":
        raise common.CommandError(f"--out must be a .png path, got {args.out!r}")
    paths = {"samples": out_path}
    if args.frames is not None:
        paths["frames"] = out_path.with_name(f"{out_path.stem}_frames.png")
    if args.npz is not None:
        npz = pathlib.Path(args.npz)
        # np.savez adds the suffix itself: say the name it really writes.
        paths["npz"] = npz if npz.suffix == ".npz" else npz.with_name(npz.name + ".npz")
    for name, path in paths.items():
        common.check_writable(path, f"--{'out' if name != 'npz' else 'npz'}")
    return paths


def run(args):
    """Sample images as `keras-ddpm sample` does, write them and print the paths.

    Args:
        args: `argparse.Namespace` from `build_parser()` for the `sample` command.

    Returns:
        dict of `"samples"` (and `"frames"`, `"npz"` when asked for) to the
        `pathlib.Path` written.

    Example:
    >>> from keras_ddpm.cli import build_parser
    >>> args = build_parser().parse_args(
    ...     ["sample", "runs/latest/model.keras", "--steps", "50", "--frames", "1000,0"])
    >>> paths = run(args)  # doctest: +SKIP
    """
    paths = output_paths(args)  # Before the (slow) sampling.
    common.import_keras(args.verbose)
    model = common.load_diffusion_model(args.model)
    if not args.calibration:
        model.calibration = None
    # As `train` resolves it, so that a run's samples.png and `sample` agree.
    model.jit_compile = common.resolve_jit_compile(args.jit_compile, model)
    import numpy as np

    from keras_ddpm import plotting

    try:
        labels = sampling_labels(model, args.labels, args.n, args.unconditional)
        result = model.sample(
            args.n, frames=args.frames, labels=labels, **sampling_kwargs(args, model, labels)
        )
    except (ValueError, TypeError) as error:  # Named as options, not Python parameters.
        raise common.CommandError(in_option_names(common.one_line(error))) from error
    images, frames = result if args.frames is not None else (result, None)
    plotting.save_image_grid(images, paths["samples"])
    if frames is not None:
        plotting.plot_frames(frames, index=0).savefig(paths["frames"])
        timesteps = sorted(frames, reverse=True)
        moved = {t: frames.sampled[t] for t in timesteps if frames.sampled[t] != t}
        if moved:  # Above a calibrated model's start, or between strided steps.
            print("Frames at the sampled timesteps (the first at or below each one asked for): "
                  + ", ".join(f"t = {t} -> {s}" for t, s in moved.items()) + ".")
    if args.npz is not None:
        arrays = {"images": images}
        if frames is not None:
            arrays["frame_timesteps"] = np.array(timesteps, dtype=np.int32)
            # Where each frame was recorded: the first sampled timestep <= the one asked for.
            arrays["frame_sampled_timesteps"] = np.array(
                [frames.sampled[t] for t in timesteps], dtype=np.int32)
            arrays["frames"] = np.stack([frames[t] for t in timesteps])
        np.savez(paths["npz"], **arrays)
    for name, path in paths.items():
        print(f"Wrote {name}: {path}")
    return paths
