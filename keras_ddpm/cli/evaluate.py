"""`keras-ddpm evaluate`: sample from a saved model and compare with a dataset."""

import json
import pathlib

from keras_ddpm.cli import common
from keras_ddpm.cli.sampling_options import add_sampling_arguments, sampling_kwargs


def add_parser(subparsers):
    """Registers the `evaluate` subcommand and its options.

    Example:
    >>> import argparse
    >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.split()[-1]
    'evaluate'
    """
    evaluate = subparsers.add_parser(
        "evaluate",
        help="measure sample quality against a dataset",
        description=(
            "Sample --n images from MODEL.keras and compare them with --n test images of "
            "--dataset: the sliced Wasserstein distance (SWD, no weights needed) and, with "
            "--inception-weights, FID and KID. A conditional model samples the labels of "
            "the test images. Lower is better for all three."
        ),
        formatter_class=common.HelpFormatter,
    )
    evaluate.add_argument("model", metavar="MODEL.keras", help="model file written by 'keras-ddpm train'")
    evaluate.add_argument("--dataset", metavar="NAME", default="shapes", help="reference dataset")
    evaluate.add_argument(
        "--data-dir", metavar="DIR", default="data", help="where TensorFlow Datasets keeps its data"
    )
    evaluate.add_argument(
        "--classes",
        metavar="A,B,...",
        type=common.name_list,
        default=None,
        help="compare with only these classes (default: all)",
    )
    evaluate.add_argument(
        "--n", metavar="N", type=common.positive_int, default=512, help="number of images in each set"
    )
    add_sampling_arguments(evaluate, labels=False)
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
        "--out", metavar="JSON", default=None, help="also write the figures to this JSON file"
    )
    evaluate.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up log")
    evaluate.set_defaults(handler=run)
    return evaluate


def run(args):
    """Measure sample quality as `keras-ddpm evaluate` does; print and return the figures.

    Args:
        args: `argparse.Namespace` from `build_parser()` for the `evaluate` command.

    Returns:
        dict of metric name to value (`"swd"`, and `"fid"`, `"kid"`, `"kid_std"`
        with --inception-weights).

    Example:
    >>> from keras_ddpm.cli import build_parser
    >>> args = build_parser().parse_args(["evaluate", "runs/latest/model.keras", "--n", "256"])
    >>> run(args)["swd"]  # doctest: +SKIP
    """
    if args.inception_weights is not None and not pathlib.Path(args.inception_weights).is_file():
        raise common.CommandError(
            f"--inception-weights {args.inception_weights!r} not found: FID and KID need a local "
            "Keras InceptionV3 'notop' weights file (nothing is downloaded); leave the option "
            "out for the weight-free SWD only"
        )
    if args.out is not None:
        common.check_writable(args.out, "--out")
    common.import_keras(args.verbose)
    model = common.load_diffusion_model(args.model)
    if not args.calibration:
        model.calibration = None
    model.jit_compile = common.resolve_jit_compile(args.jit_compile, model)
    real_images, real_labels = _reference_images(model, args)
    n = len(real_images)
    labels = None
    if model.num_classes is not None and not args.unconditional:
        labels = real_labels
    print(f"Sampling {n} images and comparing with {n} {args.dataset} images ...", flush=True)
    options = sampling_kwargs(args, model, labels)
    if labels is None:
        options["guidance_scale"] = None
    fake_images = model.sample(n, labels=labels, **options)
    results = _metrics(real_images, fake_images, args.inception_weights)
    results = {"n": n, **results}
    for name, value in results.items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    if args.out is not None:
        out = pathlib.Path(args.out)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"Wrote metrics: {out}")
    return results


def _reference_images(model, args):
    """`--n` test images (and labels) of `--dataset`, checked against the model's shape."""
    import numpy as np

    from keras_ddpm import data

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
        raise common.CommandError(
            f"{args.dataset} gives {real_images.shape[1:]} images but the model makes "
            f"{model.image_shape}"
        )
    return real_images, real_labels


def _metrics(real_images, fake_images, inception_weights):
    """SWD, and FID/KID with Inception weights, of the two image sets."""
    from keras_ddpm import metrics

    results = {"swd": metrics.sliced_wasserstein_distance(real_images, fake_images)}
    if inception_weights is not None:
        inception = metrics.inception_model(inception_weights)
        real_features = metrics.inception_features(real_images, model=inception)
        fake_features = metrics.inception_features(fake_images, model=inception)
        results["fid"] = metrics.frechet_distance(real_features, fake_features)
        results["kid"], results["kid_std"] = metrics.kernel_inception_distance(
            real_features, fake_features
        )
    return results
