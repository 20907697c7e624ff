"""Reliability: resume after a kill, atomic saving, divergence, safe loading, bad input, memory."""

import ast
import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

from keras_ddpm import DiffusionModel, NaiveUnet, cli, saving
from keras_ddpm.callbacks import BackupAndRestore, StopOnDivergence, TrainingDivergedError

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import kills  # noqa: E402
from helpers import eager_functions, tiny_network  # noqa: E402

SHAPE = (32, 32, 3)


def small_model(T=10, seed=0, optimizer=None, n_feat=8, network=None):
    """A tiny compiled model; eager, as tracing the training step would take longer.

    `network="tiny"`: `helpers.tiny_network` instead of the lecture's network, for
    checkpoint and divergence tests whose property does not depend on the network.
    """
    network = tiny_network(SHAPE) if network == "tiny" else NaiveUnet(SHAPE, n_feat=n_feat)
    model = DiffusionModel(network, T=T, seed=seed)
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3), run_eagerly=True)
    return model


def random_images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + SHAPE).astype("float32")


def as_numpy(variables):
    return [ops.convert_to_numpy(v) for v in variables]


# --- resume ------------------------------------------------------------------------------

# The fault-injection run (`kills.ARGS`, one step per epoch) for 3 epochs: killed after
# epoch 1 (or 2, on a busy machine), the rerun runs at least one epoch.
RESUME_EPOCHS = 3


def resume_argv(folder, epochs=RESUME_EPOCHS):
    argv = kills.argv(folder)
    argv[argv.index("--epochs") + 1] = str(epochs)
    return argv


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """Kills a real `keras-ddpm train` process with SIGKILL after its first epoch, then
    reruns it (in this process). The killed process traces its `tf.function`s, as users
    run them; the rerun runs them eagerly, as the kill chain below (cheaper for 2 steps).

    Returns (run folder, epochs done when killed, the killed run's output, the rerun's).
    """
    folder = tmp_path_factory.mktemp("resume")
    argv = resume_argv(folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_ddpm.cli", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    # Kill it as soon as it prints the end of its first epoch (written to the checkpoint
    # just before).
    lines = []
    while not any("loss:" in line for line in lines):
        lines.append(process.stdout.readline())
        if not lines[-1]:  # It ended early: the assertion below shows its output.
            break
    process.send_signal(signal.SIGKILL)
    killed_output = "".join(lines) + process.communicate()[0]
    metadata = folder / "ck" / "training_metadata.json"
    assert process.returncode == -signal.SIGKILL, killed_output  # It was still running.
    killed_after = json.loads(metadata.read_text())["epoch"]

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), eager_functions():
        assert cli.main(argv) == 0  # The same command again.
    return folder, killed_after, killed_output, printed.getvalue()


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_completed_epoch(resumed_run):
    folder, killed_after, killed_output, output = resumed_run
    assert 1 <= killed_after < RESUME_EPOCHS
    assert f"{killed_after} of {RESUME_EPOCHS} epoch(s) done" in output
    epochs_run = [int(n) for n in re.findall(rf"Epoch (\d+)/{RESUME_EPOCHS}", output)]
    assert epochs_run == list(range(killed_after + 1, RESUME_EPOCHS + 1))

    history = json.loads((folder / "out" / "history.json").read_text())["loss"]
    assert len(history) == RESUME_EPOCHS and all(np.isfinite(history))
    # The epochs before the kill are the killed run's own (restored, not re-run).
    printed_losses = re.findall(r"loss: (\d+\.\d+)", killed_output)[:killed_after]
    assert printed_losses == [f"{loss:.4f}" for loss in history[:killed_after]]
    model = saving.load_model(folder / "out" / "model.keras")
    assert int(model.optimizer.iterations) == RESUME_EPOCHS  # 1 step per epoch


@pytest.mark.slow
def test_a_killed_and_resumed_run_has_the_losses_of_an_uninterrupted_one(resumed_run, tmp_path):
    """Same data order and training draws in every epoch, resumed or not: bit-exact.

    The uninterrupted run runs its functions eagerly (half the time of tracing them): the
    same kernels in the same order, so the same losses to the bit as a traced run."""
    with contextlib.redirect_stdout(io.StringIO()), eager_functions():
        assert cli.main(resume_argv(tmp_path)) == 0
    assert kills.history(resumed_run[0]) == kills.history(tmp_path)


# --- kills at the commit points (fault injection; benchmarks/kills.py kills at all 12) -----

# A chain of runs of `kills.ARGS` (2 epochs of one step), each killed at the next distinct
# state of the files and resumed by the next run: (file renamed, kill after the rename?,
# epochs the committed checkpoint holds then). "After renaming one file" and "before
# renaming the next" leave the same files, so these 7 kills cover every state.
TEAR_POINTS = [
    ("weights-000001", False, 0),  # Only a temporary weights file.
    ("weights-000001", True, 0),  # Epoch 1's weights, not yet named by the metadata.
    ("training_metadata.json", True, 1),  # Epoch 1 committed.
    ("weights-000002", True, 1),  # Epoch 2's weights beside epoch 1's commit.
    ("training_metadata.json", True, 2),  # Epoch 2 committed, epoch 1's weights still there.
    ("model.keras", True, 2),  # The model written, not the history.
    ("history.json", True, 2),  # Everything written but the sample grid.
]


@pytest.fixture(scope="module")
def uninterrupted_kill_run(tmp_path_factory):
    """One run of `kills.ARGS` never killed (tf.functions eager, as in the chain)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    with eager_functions():
        kills.train(folder)
    return folder


@pytest.mark.slow
def test_a_run_killed_at_every_commit_point_resumes_to_the_uninterrupted_run(
    uninterrupted_kill_run, tmp_path
):
    """Fault injection: killed just before or after each rename (checkpoint weights and
    metadata, model, history) and run again each time, the run leaves a whole checkpoint
    at every kill and ends with the history and weights of a run never killed."""
    reference = saving.load_model(uninterrupted_kill_run / "out" / "model.keras")
    with eager_functions():
        for name, after, epochs in TEAR_POINTS:
            killed = kills.train_until_killed(tmp_path, kills.first_rename_of(name), after)
            assert killed.startswith("after" if after else "before") and name in killed
            backup = BackupAndRestore(tmp_path / "ck")
            assert backup.completed_epochs == epochs, killed
            if backup.weights_path is not None:  # A committed checkpoint is whole.
                reference.load_weights(backup.weights_path)
        kills.train(tmp_path)  # The last run is not killed.
    assert kills.history(tmp_path) == kills.history(uninterrupted_kill_run)
    resumed = saving.load_model(tmp_path / "out" / "model.keras")
    expected = saving.load_model(uninterrupted_kill_run / "out" / "model.keras")
    for got, want in zip(as_numpy(resumed.weights), as_numpy(expected.weights)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_cli_divergence_names_epoch_and_step_and_keeps_the_last_good_files(
    resumed_run, tmp_path, capsys
):
    folder = resumed_run[0]
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    files = [pathlib.Path(BackupAndRestore(tmp_path / "ck").weights_path),
             tmp_path / "ck" / "training_metadata.json",
             tmp_path / "out" / "model.keras", tmp_path / "out" / "history.json"]
    before = [path.read_bytes() for path in files]
    argv = resume_argv(tmp_path, RESUME_EPOCHS + 1)
    # Resumes after the last epoch, then blows up: the first step's update (batches of 2,
    # so 2 steps in the epoch) makes the second step's loss nan.
    with pytest.raises(SystemExit) as exit_info, eager_functions():
        cli.main(argv + ["--lr", "1e30", "--batch-size", "2"])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("keras-ddpm: error: training diverged: the loss is nan at epoch "
                           f"{RESUME_EPOCHS + 1}, step ")
    assert "lower --lr" in line and "is intact" in line
    assert [path.read_bytes() for path in files] == before


def test_cli_checkpoint_holds_the_raw_weights_when_training_with_ema(tmp_path):
    """The backup is written before `fit` ends by swapping the averages into the network."""
    argv = kills.argv(tmp_path) + ["--epochs", "1", "--ema", "0.5"]
    with contextlib.redirect_stdout(io.StringIO()), eager_functions():
        assert cli.main(argv) == 0
    final = saving.load_model(tmp_path / "out" / "model.keras")  # Averages in the network.
    checkpoint = saving.load_model(tmp_path / "out" / "model.keras")
    checkpoint.load_weights(BackupAndRestore(tmp_path / "ck").weights_path)
    assert float(ops.convert_to_numpy(final.weight_average.swapped)) == 1.0
    assert float(ops.convert_to_numpy(checkpoint.weight_average.swapped)) == 0.0
    # The checkpoint's network holds the raw weights, kept aside in the final model ...
    for raw, kept in zip(as_numpy(checkpoint.network.trainable_variables),
                         as_numpy(final.weight_average.averages)):
        np.testing.assert_array_equal(raw, kept)
    # ... and its averages are what the final network samples with.
    for average, final_weight in zip(as_numpy(checkpoint.weight_average.averages),
                                     as_numpy(final.network.trainable_variables)):
        np.testing.assert_array_equal(average, final_weight)


def test_backup_restores_weights_optimizer_ema_epoch_and_history(tmp_path):
    images = random_images(8)
    model = small_model(optimizer=keras.optimizers.Adam(1e-3, use_ema=True), network="tiny")
    backup = BackupAndRestore(tmp_path, delete_checkpoint=False)
    model.fit(images, batch_size=4, epochs=2, verbose=0, callbacks=[backup])
    assert backup.completed_epochs == 2

    # A new process builds the same model with the same code and calls fit again:
    # with both epochs done, it only restores (and writes the EMA weights, as fit does).
    restored = small_model(optimizer=keras.optimizers.Adam(5e-4, use_ema=True), network="tiny")
    backup_again = BackupAndRestore(tmp_path, delete_checkpoint=False)
    history = restored.fit(images, batch_size=4, epochs=2, verbose=0, callbacks=[backup_again])
    assert history.history == {} and backup_again.history == backup.history
    ema = [v for v in restored.optimizer.variables if "average" in v.path]
    assert len(ema) == len(restored.network.trainable_variables)
    for original, resumed in zip(model.optimizer.variables, restored.optimizer.variables):
        if "learning_rate" not in original.path:
            np.testing.assert_array_equal(as_numpy([resumed])[0], as_numpy([original])[0],
                                          err_msg=original.path)
    for original, resumed in zip(as_numpy(model.weights), as_numpy(restored.weights)):
        np.testing.assert_array_equal(resumed, original)
    # The learning rate is the one compiled, so a diverged run can resume more gently.
    assert float(restored.optimizer.learning_rate) == pytest.approx(5e-4)

    # One more epoch continues the count and the history.
    history = restored.fit(images, batch_size=4, epochs=3, verbose=0, callbacks=[backup_again])
    assert len(history.history["loss"]) == 1  # Only epoch 3 ran.
    assert backup_again.history["loss"][:2] == backup.history["loss"]
    assert len(backup_again.history["loss"]) == 3 and backup_again.completed_epochs == 3
    assert int(restored.optimizer.iterations) == 6


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    small_model().fit(random_images(4), batch_size=4, epochs=1, verbose=0,
                      callbacks=[BackupAndRestore(tmp_path, delete_checkpoint=False)])
    other = small_model(n_feat=16)
    with pytest.raises(ValueError, match="Could not resume from the checkpoint in") as error:
        other.fit(random_images(4), batch_size=4, epochs=2, verbose=0,
                  callbacks=[BackupAndRestore(tmp_path)])
    assert "delete that folder to start over" in str(error.value)


# --- atomic saving -----------------------------------------------------------------------


class SimulatedCrash(Exception):
    pass


def test_crash_while_saving_a_model_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    model = small_model()
    saving.save_model(model, path)
    previous = path.read_bytes()

    def crash_midway(self, filepath, *args, **kwargs):
        pathlib.Path(filepath).write_bytes(previous[: len(previous) // 3])  # Half-written.
        raise SimulatedCrash("disk full")

    monkeypatch.setattr(keras.Model, "save", crash_midway)
    with pytest.raises(SimulatedCrash):
        saving.save_model(small_model(seed=1), path)
    assert path.read_bytes() == previous
    assert os.listdir(tmp_path) == ["model.keras"]  # No temporary file left.
    monkeypatch.undo()
    assert isinstance(saving.load_model(path), DiffusionModel)


def test_full_disk_is_reported_before_writing(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    model = small_model()
    saving.save_model(model, path)
    previous = path.read_bytes()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage._replace(free=100_000))
    with pytest.raises(OSError, match="Not enough disk space to write") as error:
        saving.save_model(model, path)
    assert re.search(r"needs about [\d.]+ MiB and 0.1 MiB are free", str(error.value))
    assert "the previous file is intact" in str(error.value)
    assert path.read_bytes() == previous and os.listdir(tmp_path) == ["model.keras"]


def test_crash_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    images = random_images(4)
    model = small_model(network="tiny")
    backup = BackupAndRestore(tmp_path, delete_checkpoint=False)
    model.fit(images, batch_size=4, epochs=1, verbose=0, callbacks=[backup])
    previous = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def crash_midway(filepath, *args, **kwargs):
        pathlib.Path(filepath).write_bytes(b"\x89HDF\r\n")
        raise SimulatedCrash("killed")

    monkeypatch.setattr(model, "save_weights", crash_midway)
    with pytest.raises(SimulatedCrash):
        model.fit(images, batch_size=4, epochs=2, verbose=0, callbacks=[backup])
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == previous
    assert BackupAndRestore(tmp_path).completed_epochs == 1


def test_atomic_path_removes_what_killed_writers_left(tmp_path):
    path = tmp_path / "model.keras"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True)
    host = socket.gethostname()
    dead = tmp_path / f".tmp-{host}-{int(finished.stdout)}-model.keras"
    alive = tmp_path / f".tmp-{host}-{os.getppid()}-model.keras"  # Still writing.
    other_host = tmp_path / f".tmp-elsewhere-{int(finished.stdout)}-model.keras"
    for temp in (dead, alive, other_host):
        temp.write_bytes(b"partial")
    with saving.atomic_path(path) as temp:
        temp.write_text("new")
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, alive.name, other_host.name])


def test_atomic_path_replaces_only_on_success(tmp_path):
    path = tmp_path / "history.json"
    with saving.atomic_path(path) as temp:
        assert temp.parent == tmp_path and temp.name.endswith("history.json")
        temp.write_text("1")
    with pytest.raises(SimulatedCrash), saving.atomic_path(path) as temp:
        temp.write_text("2")
        raise SimulatedCrash()
    assert path.read_text() == "1" and os.listdir(tmp_path) == ["history.json"]


# --- divergence --------------------------------------------------------------------------


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    import tensorflow as tf

    batches = random_images(16).reshape(4, 4, *SHAPE)
    batches[3, 0, 0, 0, 0] = np.nan  # Epoch 2 (batches 2 and 3), step 2.
    dataset = tf.data.Dataset.from_tensor_slices(batches)
    model = small_model(network="tiny")
    backup = BackupAndRestore(tmp_path, delete_checkpoint=False)
    with pytest.raises(TrainingDivergedError) as error:
        model.fit(dataset, epochs=3, steps_per_epoch=2, verbose=0,
                  callbacks=[StopOnDivergence(), backup])
    assert (error.value.epoch, error.value.step) == (2, 2)
    message = str(error.value)
    assert "loss is nan at epoch 2, step 2" in message
    assert "Lower the learning rate" in message and "NaN or infinite values" in message
    assert backup.completed_epochs == 1
    restored = small_model(network="tiny")
    restored.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0,  # Only restores.
                 callbacks=[BackupAndRestore(tmp_path, delete_checkpoint=False)])
    assert all(np.all(np.isfinite(w)) for w in as_numpy(restored.network.weights))


# --- safe loading ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    saving.save_model(small_model(), path)
    return path.read_bytes()


@pytest.mark.parametrize("time_embedding", ["learned", "sinusoidal"])
def test_package_models_load_in_safe_mode(tmp_path, time_embedding):
    model = DiffusionModel(NaiveUnet(SHAPE, n_feat=8, time_embedding=time_embedding), T=10)
    path = saving.save_model(model, tmp_path / "model.keras")
    loaded = saving.load_model(path)
    inputs = [random_images(2), np.array([[0.1], [0.9]], "float32")]
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(inputs)), ops.convert_to_numpy(model(inputs)))


def test_package_never_turns_safe_mode_off():
    unsafe = []
    for path in (ROOT / "keras_ddpm").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "safe_mode":
                if not (isinstance(node.value, ast.Constant) and node.value.value is True):
                    unsafe.append(f"{path.name}:{node.value.lineno}")
            if isinstance(node, ast.Attribute) and node.attr == "enable_unsafe_deserialization":
                unsafe.append(f"{path.name}:{node.lineno}")
    assert not unsafe


def test_lambda_layer_is_refused_with_an_explanation(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2, name="double")(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError) as error:
        saving.load_model(path)
    message = str(error.value)
    assert "Refusing to load" in message and "Lambda layer 'double'" in message
    assert "Python code that would run on this machine" in message
    assert "safe_mode=False" in message  # What to do, if the file is trusted.


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make_file, error_type, words",
    [
        (lambda folder, data: folder / "missing.keras", FileNotFoundError, ["not found"]),
        (lambda folder, data: _write(folder / "half.keras", data[: len(data) // 2]), ValueError,
         ["corrupt or truncated", "Save the model again"]),
        (lambda folder, data: _write(folder / "text.keras", b"hello"), ValueError,
         ["corrupt or truncated"]),
        (lambda folder, data: _write(folder / "model.h5", data), ValueError,
         ["is not a .keras file"]),
        (lambda folder, data: folder, ValueError, ["is not a .keras file"]),
    ],
    ids=["missing", "truncated", "not-a-zip", "not-.keras", "folder"],
)
def test_load_model_bad_files(tmp_path, saved_model_bytes, make_file, error_type, words):
    path = make_file(tmp_path, saved_model_bytes)
    with pytest.raises(error_type) as error:
        saving.load_model(path)
    assert repr(str(path)) in str(error.value)
    for word in words:
        assert word in str(error.value)


def test_load_model_unknown_class_says_what_to_do(tmp_path, saved_model_bytes):
    path = tmp_path / "model.keras"
    path.write_bytes(saved_model_bytes)
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    contents["config.json"] = contents["config.json"].replace(b"DiffusionModel", b"NoSuchModel")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="Could not rebuild the model") as error:
        saving.load_model(path)
    assert "import that package first" in str(error.value)


def _with_config(path, data, config_bytes):
    """A copy of the saved model `data` at `path` whose config.json is `config_bytes`."""
    path.write_bytes(data)
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    contents["config.json"] = config_bytes
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, member in contents.items():
            archive.writestr(name, member)
    return path


@pytest.mark.parametrize(
    "config_bytes, words",
    [
        (b"[" * 100_000 + b"]" * 100_000, "corrupt or truncated"),  # json's RecursionError
        (b'{"a": ' * 150 + b"1" + b"}" * 150, "nested 150 levels deep"),
        (b'{"pad": "' + b"x" * (17 * 2**20) + b'"}', "over the 16,777,216"),
    ],
    ids=["json-recursion", "too-deep", "too-large"],
)
def test_crafted_config_json_is_refused_in_one_line(tmp_path, saved_model_bytes, config_bytes,
                                                    words):
    path = _with_config(tmp_path / "crafted.keras", saved_model_bytes, config_bytes)
    with pytest.raises(ValueError) as error:
        saving.load_model(path)
    assert words in str(error.value) and repr(str(path)) in str(error.value)
    assert "\n" not in str(error.value)


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("t", [[[5.0], [1.0]], [[-0.1], [0.2]]], ids=["integer-steps", "negative"])
def test_time_outside_0_1_is_a_clear_error(t):
    model = small_model()
    x_t, t = random_images(2), np.array(t, "float32")
    with pytest.raises(ValueError, match=r"t must be the diffusion time in \[0, 1\]") as error:
        model([x_t, t])
    assert "Pass t / model.T" in str(error.value)
    with pytest.raises(ValueError, match=r"t must be the diffusion time in \[0, 1\]"):
        model.predict([x_t, t], verbose=0)
    with pytest.raises(ValueError, match=r"integer timesteps in 0..T=0..10; got values from 0 to 11"):
        model.q_sample(x_t, np.array([0, 11]), x_t)


def test_checkpoint_dir_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "ck"
    path.write_text("")
    with pytest.raises(SystemExit):
        cli.main(["train", "--checkpoint-dir", str(path), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert "--checkpoint-dir" in error and "is not a directory" in error


# --- memory ------------------------------------------------------------------------------


def test_sample_in_chunks_never_runs_more_than_batch_size_images(monkeypatch):
    from keras_ddpm.generation import ReverseProcess

    model = small_model()
    seen = []
    make_loop = ReverseProcess.loop

    def recording_loop(self, *args, **kwargs):
        loop = make_loop(self, *args, **kwargs)

        def recording(x, *loop_args):
            seen.append(int(x.shape[0]))  # The images the compiled loop holds.
            return loop(x, *loop_args)

        return recording

    monkeypatch.setattr(ReverseProcess, "loop", recording_loop)
    images = model.sample(4, steps=3, seed=4, batch_size=2)
    assert images.shape == (4,) + SHAPE
    assert seen == [2, 2]  # One compiled segment per chunk of 2 images.
    # The first chunk does not depend on how many images follow it.
    np.testing.assert_array_equal(model.sample(2, steps=3, seed=4, batch_size=2), images[:2])


def test_a_model_fits_again_after_a_failed_fit():
    # With a weight average, the harder case: its swap must be undone too. Traced (the
    # property is about the train function), on a tiny network (any network will do).
    model = DiffusionModel(tiny_network(SHAPE), T=20, seed=0, ema_decay=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [ops.convert_to_numpy(v) for v in model.network.trainable_variables]
    wrong = np.zeros((8, 16, 16, 3), "float32")
    with pytest.raises(ValueError, match="network expects"):
        model.fit(wrong, batch_size=8, epochs=1, verbose=0)
    # The failed call changed no weight (and left no average in the network's place) ...
    for value, variable in zip(before, model.network.trainable_variables):
        np.testing.assert_array_equal(value, ops.convert_to_numpy(variable))
    # ... and the next fit traces afresh instead of failing on the optimizer's variables.
    images = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype("float32")
    history = model.fit(images, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(model.optimizer.iterations) == 4
