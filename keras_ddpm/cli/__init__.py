"""The `keras-ddpm` command line: train a DDPM on a dataset, then sample from it.

Three subcommands, one module each:

    keras-ddpm train --dataset shapes --epochs 6 --out runs/shapes     (cli/train.py)
    keras-ddpm sample runs/shapes/model.keras --n 16 --steps 50       (cli/sample.py)
    keras-ddpm evaluate runs/shapes/model.keras --dataset shapes      (cli/evaluate.py)

`sample` and `evaluate` share their sampling options (cli/sampling_options.py);
argument types, errors and quiet imports live in cli/common.py.

Every option is listed, with its default, by `keras-ddpm COMMAND --help`. A bad
argument, a missing or damaged file, or an invalid setting ends the command with
one line on stderr (`keras-ddpm: error: ...`) and exit status 2; Ctrl-C ends it
with one line and status 130.

Building the parser imports neither TensorFlow nor Keras: `--help`, `--version` and
argument errors answer at once when run through the `keras-ddpm` launcher.
"""

import sys

from keras_ddpm.cli import common, evaluate, sample, train
from keras_ddpm.cli.common import PROG, CommandError

__all__ = ["CommandError", "build_parser", "main"]


def _version():
    """The installed package's version, read without importing the package's maths."""
    from importlib import metadata

    try:
        return metadata.version("keras-ddpm")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


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
    parser = common.OneLineErrorParser(
        prog=PROG,
        description="Train denoising diffusion probabilistic models (DDPM) and sample from them.",
        epilog=f"Run '{PROG} COMMAND --help' (train, sample, evaluate) for the options.",
        formatter_class=common.HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (train, sample, evaluate):
        command.add_parser(subparsers)
    return parser


def main(argv=None):
    """Run the `keras-ddpm` command line; returns the exit status (0 on success).

    Errors in the arguments or the files end the run with `SystemExit(2)` after
    one line on stderr (`keras-ddpm: error: ...`), never a traceback; Ctrl-C ends
    it with `SystemExit(130)` after one line that says what was kept.

    Args:
        argv: list of str or None. The arguments without the program name;
            None reads `sys.argv[1:]`.

    Example:
    >>> main(["--version"])  # doctest: +SKIP
    keras-ddpm 0.1.0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (CommandError, *common.USER_ERRORS) as error:
        parser.exit(common.ERROR_STATUS, f"{PROG}: error: {common.one_line(error)}\n")
    except KeyboardInterrupt:
        parser.exit(common.INTERRUPTED_STATUS, f"{PROG}: interrupted; {_what_was_kept(args)}\n")
    return 0


def _what_was_kept(args):
    """After Ctrl-C: what survives, and how to go on."""
    if args.command != "train":
        return "nothing was written"
    if args.checkpoint_dir:
        return (
            f"the checkpoint in {args.checkpoint_dir!r} holds every completed epoch and is "
            "intact: run the same command again to resume"
        )
    return (
        f"{args.out!r}/model.keras was not written (add --checkpoint-dir DIR to keep "
        "completed epochs across interruptions)"
    )


if __name__ == "__main__":
    sys.exit(main())
