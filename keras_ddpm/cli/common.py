"""What every `keras-ddpm` command shares: errors, argument types, quiet imports.

Nothing here imports TensorFlow or Keras at module level, so building the parser,
`--help` and argument errors stay fast.
"""

import argparse
import contextlib
import math
import os
import pathlib
import sys
import tempfile

PROG = "keras-ddpm"

# The exit status of every error: the one argparse uses for bad arguments.
ERROR_STATUS = 2

# The exit status after Ctrl-C, as shells report SIGINT (128 + 2).
INTERRUPTED_STATUS = 130

# Errors that mean "bad input", reported in one line instead of a traceback.
USER_ERRORS = (ValueError, TypeError, OSError)  # OSError covers FileNotFoundError.

# Longest error message printed (Keras' loading errors can quote whole configs).
MAX_MESSAGE_LENGTH = 500

# Seeds are 0..MAX_SEED; keras_ddpm.generation.MAX_SEED is the same (a test pins it).
MAX_SEED = 2**31 - 2

# keras_ddpm.precision.PRECISIONS plus "auto" (that module imports Keras: not here).
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")

CLIP_X0_HELP = (
    "clip the predicted clean image to [-1, 1] inside every reverse step, as Ho et al.'s "
    "released code does; --no-clip-x0 runs the lecture's formula exactly (a briefly "
    "trained model can then drift out of range)"
)

JIT_COMPILE_HELP = (
    "compile with XLA (training and the sampling loop); --no-jit-compile turns it off "
    "(default: on for a Unet computing in float32, which XLA makes faster on a CPU too; "
    "otherwise Keras' auto, on with a GPU and off on CPU-only machines, where XLA was "
    "measured slower for NaiveUnet; the JAX backend always compiles with XLA)"
)


class CommandError(Exception):
    """A problem with the user's input, reported as one line on stderr.

    Example:
    >>> str(CommandError("model.keras not found"))
    'model.keras not found'
    """


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to each option's help, unless the help gives its own."""

    def _get_help_string(self, action):
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line: `keras-ddpm: error: ...`."""

    def error(self, message):
        hint = f"see '{self.prog} --help'"
        self.exit(ERROR_STATUS, f"{PROG}: error: {message} ({hint})\n")


# ------------------------------------------------------------ argument types
def number_type(convert, description, low=-math.inf, high=math.inf, open_low=False, open_high=False):
    """An argparse type: a finite number from `convert` in [low, high].

    `open_low` / `open_high` exclude the bound itself.

    Example:
    >>> number_type(int, "a positive integer", low=0, open_low=True)("3")
    3
    """

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        below = value <= low if open_low else value < low
        above = value >= high if open_high else value > high
        if below or above or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


positive_int = number_type(int, "a positive integer", low=0, open_low=True)
non_negative_int = number_type(int, "an integer >= 0", low=0)
positive_float = number_type(float, "a positive number", low=0.0, open_low=True)
non_negative_float = number_type(float, "a number >= 0", low=0.0)
probability = number_type(float, "a number in [0, 1)", low=0.0, high=1.0, open_high=True)
unit_interval = number_type(float, "a number in [0, 1]", low=0.0, high=1.0)
seed_type = number_type(int, f"a seed in 0..{MAX_SEED}", low=0, high=MAX_SEED)


def integer_list(description, minimum=0):
    """An argparse type: comma-separated integers >= `minimum`, e.g. "1000,200,50,0".

    Example:
    >>> integer_list("timesteps")("1000,0")
    [1000, 0]
    """

    def parse(text):
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values or any(value < minimum for value in values):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {description} >= {minimum}, got {text!r}"
            )
        return values

    return parse


def name_list(text):
    """argparse type: comma-separated class names or ids, e.g. "ship" or "0,8".

    Example:
    >>> name_list("ship,0")
    ['ship', 0]
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated class names, got {text!r}")
    return [int(name) if name.isdigit() else name for name in names]


# ------------------------------------------------------------ keras, quietly
def import_keras(verbose=False):
    """Imports Keras (and TensorFlow) and returns `keras`; quiet unless `verbose`.

    TensorFlow prints start-up lines (CUDA stubs, `cuInit` failures on machines
    without a GPU) from C++ before any Python setting can silence them. Unless
    `verbose`, or the user set `TF_CPP_MIN_LOG_LEVEL` themselves, those lines
    are captured and shown only if the import fails.

    Example:
    >>> keras = import_keras()
    """
    import keras_ddpm

    asked_for_logs = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1")
    if "keras" in sys.modules or verbose or asked_for_logs:
        import keras

        keras_ddpm._import_all()  # Registers the classes (deferred by the launcher).
        return keras
    with _captured_stderr() as captured:
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                tf.config.list_physical_devices()  # cuInit, while quiet.
            keras_ddpm._import_all()
        except BaseException:
            sys.stderr.write(captured())
            raise
    return keras


@contextlib.contextmanager
def _captured_stderr():
    """Sends file descriptor 2 to a temporary file; yields a reader of what came."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # No real stderr (e.g. some embedded interpreters): nothing to do.
        yield lambda: ""
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)

        def read():
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield read
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_diffusion_model(path):
    """Loads a `DiffusionModel` safely (`saving.load_model`), or raises a clear error.

    Example:
    >>> model = load_diffusion_model("runs/shapes/model.keras")  # doctest: +SKIP
    """
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


def resolve_jit_compile(option, model):
    """The `jit_compile` of `model` for --jit-compile's `option` (None when not given).

    Without the option: XLA for a network of `keras_ddpm.Unet`'s residual blocks
    computing in float32 on TensorFlow, and Keras' "auto" otherwise (XLA on a GPU,
    not on a CPU). On a 2-core CPU XLA trains the default Unet about 1.3x faster
    and samples it 1.45x faster, but trains the lecture's NaiveUnet 0.83x as fast
    (`benchmarks/xla_cpu.py`, BENCHMARKS.md). On a CPU with AVX-512 BF16 XLA trains
    the Unet in bfloat16 1.35x faster as well, but one whole run of the default was
    not faster for it (one run each way, the cause not traced): bfloat16 keeps Keras'
    auto.

    Example:
    >>> resolve_jit_compile(False, model=None)
    False
    """
    if option is not None:
        return option
    import keras

    from keras_ddpm.unet_blocks import ResidualBlock

    if (keras.backend.backend() == "tensorflow" and model.dtype_policy.name == "float32"
            and any(isinstance(layer, ResidualBlock) for layer in model.network.layers)):
        return True
    return "auto"


def one_line(error, max_length=MAX_MESSAGE_LENGTH):
    """The message of `error` on one line, shortened to `max_length` characters.

    Example:
    >>> one_line(ValueError("two\\nlines"))
    'two lines'
    """
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {error.filename!r}"
    if len(text) > max_length:
        text = text[: max_length - 3] + "..."
    return text or type(error).__name__


def check_writable(path, option, folder=False):
    """Proves that `path` (a file, or with `folder` a directory) can be written, now.

    Writes and removes a probe file in the folder that will hold it (or, where
    that does not exist yet, in its nearest existing parent, which is where it
    will be created), so a run fails in a second instead of after hours of work,
    and creates nothing.

    Example:
    >>> check_writable(pathlib.Path(tempfile.mkdtemp()) / "new" / "samples.png", "--out")
    """
    path = pathlib.Path(path)
    if folder and path.exists() and not path.is_dir():
        raise CommandError(f"{option} {str(path)!r} exists and is not a directory")
    if not folder and path.is_dir():
        raise CommandError(f"{option} {str(path)!r} is a directory; give a file path")
    target = (path if folder else path.parent).absolute()
    while not target.exists():
        target = target.parent
    try:
        if not target.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(target))
        with tempfile.NamedTemporaryFile(dir=target, prefix=".keras_ddpm_probe_"):
            pass
        if not folder and path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied", str(path))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CommandError(f"{option} {str(path)!r} cannot be written ({reason})") from None
