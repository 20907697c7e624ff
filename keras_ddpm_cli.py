"""The `keras-ddpm` console script: a launcher that answers at once.

`import keras_ddpm` loads TensorFlow (it registers the package's layers with Keras,
so that `keras.models.load_model` works), which takes seconds and prints start-up
lines. This launcher, outside the package, tells the package to defer those
imports, so `keras-ddpm --help`, `--version` and argument errors need no
TensorFlow; a command imports it (quietly) when it starts its real work.
"""
import sys

# Read by keras_ddpm/__init__.py: defer the TensorFlow imports to the command.
DEFER_IMPORTS = True


def main():
    """Runs `keras_ddpm.cli.main` on `sys.argv`; returns its exit status.

    Example:
    >>> import subprocess
    >>> subprocess.run(["keras-ddpm", "--version"]).returncode  # doctest: +SKIP
    0
    """
    from keras_ddpm.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    # `python -m keras_ddpm_cli`: the package looks for this module by its name.
    sys.modules.setdefault("keras_ddpm_cli", sys.modules[__name__])
    sys.exit(main())
