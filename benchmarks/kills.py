"""Fault injection: `keras-ddpm train` killed at every rename, then run again.

A tiny run (2 epochs of one step) commits its files with 6 renames (`os.replace`):
per epoch the checkpoint's weights file, then the checkpoint metadata that names
it; at the end the model, then the history. Each kill raises a `BaseException`
(which no `except Exception` stops) just before or just after one rename, inside
an in-process `keras-ddpm train`. After each kill the script checks that the
checkpoint left behind, if any, loads into the model, runs the same command
again, and compares the resumed run's history with that of a run never killed.

Usage: `python benchmarks/kills.py [--graph]`: the 12 kills (before and after each
rename), one table, last. By default `tf.function`s run eagerly (the same code
path without tracing, about twice as fast on 2 CPU cores); `--graph` traces them as
`keras-ddpm train` does. tests/test_reliability.py uses these functions for a
shorter check: one chain of runs, each killed at the next distinct state of the
files and resumed by the next.
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_ddpm import cli, saving  # noqa: E402
from keras_ddpm.callbacks import BackupAndRestore  # noqa: E402

# Two epochs of one step of 4 images: 2 checkpoint saves of 2 renames, then model and history.
# The default network and recipe (weight average, Min-SNR, warm-up) at their smallest: one
# level of 8 channels, whose steps trace and run faster than the lecture's smallest network;
# without XLA (the default for a float32 Unet), whose compilation would be most of the time.
ARGS = [
    "train", "--dataset", "shapes", "--num-examples", "4", "--batch-size", "4",
    "--epochs", "2", "--widths", "8", "--attention-levels", "none", "--T", "10",
    "--precision", "float32", "--n-samples", "1", "--sample-steps", "1",
    "--grid-every", "1000", "--grid-steps", "1", "--calibration-samples", "0",
    "--no-jit-compile",
]
RENAMES = 2 * 2 + 2
ALL_KILL_POINTS = [(n, after) for n in range(1, RENAMES + 1) for after in (False, True)]


class Killed(BaseException):
    """A kill as the code sees it: no `except Exception` handler stops it."""


def argv(folder):
    folder = pathlib.Path(folder)
    return ARGS + ["--checkpoint-dir", str(folder / "ck"), "--out", str(folder / "out")]


@contextlib.contextmanager
def eager_functions(eager=True):
    """Runs `tf.function`s eagerly inside the block (TensorFlow's public switch)."""
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(eager)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(before)


def train(folder):
    """`keras-ddpm train` in-process, its output swallowed; raises if it fails."""
    with contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(argv(folder))
    if status != 0:
        raise RuntimeError(f"keras-ddpm train exited with {status}")


def killing_replace(should_kill, after):
    """A stand-in for `os.replace` that raises `Killed` just before (or just after) the
    first rename for which `should_kill(count, target)` is true (count from 1)."""
    real_replace = os.replace
    count = [0]

    def replace(source, target, *args, **kwargs):
        count[0] += 1
        kill = should_kill(count[0], pathlib.Path(target).name)
        if kill and not after:
            raise Killed(f"before rename {count[0]}: {target}")
        real_replace(source, target, *args, **kwargs)
        if kill and after:
            raise Killed(f"after rename {count[0]}: {target}")

    return replace


def train_until_killed(folder, should_kill, after):
    """Runs `train(folder)` killed at a rename (see `killing_replace`); returns the
    message of the kill, "before/after rename N: PATH"."""
    real_replace = os.replace
    os.replace = killing_replace(should_kill, after)
    try:
        train(folder)
    except Killed as kill:
        return str(kill)
    finally:
        os.replace = real_replace
    raise AssertionError("the run ended without reaching the kill point")


def nth_rename(n):
    """Kill at the n-th rename of the run."""
    return lambda count, name: count == n


def first_rename_of(prefix):
    """Kill at the run's first rename of a file whose name starts with `prefix`."""
    return lambda count, name: name.startswith(prefix)


def history(folder):
    return json.loads((pathlib.Path(folder) / "out" / "history.json").read_text())


def checkpoint_state(folder, model_path):
    """"none" without a committed checkpoint; "loads" if its weights load into the model."""
    weights = BackupAndRestore(pathlib.Path(folder) / "ck").weights_path
    if weights is None:
        return "none"
    saving.load_model(model_path).load_weights(weights)  # Raises on a damaged file.
    return "loads"


def kill_and_resume(folder, n, after, reference):
    """One kill, the check of what it left, the rerun; returns a row of the table."""
    killed = train_until_killed(folder, nth_rename(n), after)
    state = checkpoint_state(folder, pathlib.Path(reference) / "out" / "model.keras")
    train(folder)
    return {"kill": killed.split(":")[0], "file": pathlib.Path(killed.split(": ")[1]).name,
            "checkpoint": state, "identical": history(folder) == history(reference)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="trace tf.functions (slower)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, eager_functions(not options.graph):
        reference = pathlib.Path(root) / "reference"
        train(reference)
        rows = [kill_and_resume(pathlib.Path(root) / f"kill-{n}-{after}", n, after, reference)
                for n, after in ALL_KILL_POINTS]
    print("| Kill point | Renamed file | Checkpoint left | Resumed history identical |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['kill']} | {row['file']} | {row['checkpoint']} | {row['identical']} |")
    return 0 if all(row["identical"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
