"""Tests for the `keras-ddpm` command line (keras_ddpm.cli), run in-process on tiny settings."""

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

import keras_ddpm
from helpers import eager_functions
from keras_ddpm import cli
from keras_ddpm.cli import recipe

# Every option of each subcommand, written out independently of the parser.
TRAIN_OPTIONS = (
    "--dataset",
    "--classes",
    "--data-dir",
    "--init",
    "--image-size",
    "--num-examples",
    "--T",
    "--beta1",
    "--beta2",
    "--schedule",
    "--prediction",
    "--conditional",
    "--unconditional",
    "--cond-drop-prob",
    "--n-feat",
    "--time-embedding",
    "--epochs",
    "--batch-size",
    "--lr",
    "--ema",
    "--network",
    "--widths",
    "--blocks-per-level",
    "--attention-levels",
    "--patch-size",
    "--dropout",
    "--warmup-steps",
    "--lr-decay",
    "--clipnorm",
    "--loss-weighting",
    "--min-snr-gamma",
    "--noise-offset",
    "--seed",
    "--precision",
    "--jit-compile",
    "--no-jit-compile",
    "--n-samples",
    "--sample-steps",
    "--eta",
    "--attention-guidance",
    "--denoise-at",
    "--calibration-samples",
    "--clip-x0",
    "--no-clip-x0",
    "--grid-every",
    "--grid-steps",
    "--log-dir",
    "--out",
    "--checkpoint-dir",
    "--strategy",
    "--verbose",
)
SAMPLE_OPTIONS = (
    "--n",
    "--steps",
    "--eta",
    "--seed",
    "--batch-size",
    "--out",
    "--frames",
    "--npz",
    "--clip-x0",
    "--no-clip-x0",
    "--jit-compile",
    "--no-jit-compile",
    "--calibration",
    "--no-calibration",
    "--labels",
    "--unconditional",
    "--guidance-scale",
    "--attention-guidance",
    "--denoise-at",
    "--sampler",
    "--spacing",
    "--verbose",
)
EVALUATE_OPTIONS = (
    "--dataset",
    "--data-dir",
    "--classes",
    "--n",
    "--steps",
    "--seed",
    "--batch-size",
    "--inception-weights",
    "--unconditional",
    "--guidance-scale",
    "--attention-guidance",
    "--clip-x0",
    "--no-clip-x0",
    "--eta",
    "--jit-compile",
    "--no-jit-compile",
    "--calibration",
    "--no-calibration",
    "--sampler",
    "--spacing",
    "--denoise-at",
    "--verbose",
    "--out",
)

# Tiny training run: 2 steps of 8 images, T = 20, the lecture's network, unconditional
# (the default on shapes is conditional: tested below).
TINY_TRAIN_ARGS = [
    "train",
    "--unconditional",
    "--network",
    "naive",
    "--num-examples",
    "16",
    "--epochs",
    "1",
    "--n-feat",
    "8",
    "--T",
    "20",
    "--batch-size",
    "8",
    "--n-samples",
    "4",
    "--calibration-samples",
    "2",  # Calibrated (the property), from few draws.
]


@pytest.fixture(scope="module", autouse=True)
def _eager_functions():
    """The commands' tf.functions run eagerly here: a few steps cost less than tracing.

    The traced path of `train` is tested by tests/test_reliability.py (a real SIGKILL
    resume), of XLA sampling by tests/test_precision.py.
    """
    with eager_functions():
        yield


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Trains once with TINY_TRAIN_ARGS; returns (output directory, printed text).

    The epoch's grid takes 2 steps and samples.png 4 (of which the calibrated model, starting
    at t = 15 of 20, runs 3): at the defaults' 20 (T) each, their eager network calls were
    15 of the run's 21 s."""
    out_dir = tmp_path_factory.mktemp("run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(TINY_TRAIN_ARGS + ["--grid-steps", "2", "--sample-steps", "4",
                                             "--out", str(out_dir)])
    assert status == 0
    return out_dir, printed.getvalue()


def _assert_png(path, width=None, height=None):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        if width is not None:
            assert image.size == (width, height)


def _run_error(argv, capsys):
    """Runs `cli.main(argv)`, expecting exit status 2; returns the stderr text."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("keras-ddpm: error: ")
    return lines[0]


# --- train -------------------------------------------------------------------------------


def test_train_writes_model_samples_and_history(trained_run):
    out_dir, printed = trained_run
    model_path = out_dir / "model.keras"
    samples_path = out_dir / "samples.png"
    history_path = out_dir / "history.json"
    for path in (model_path, samples_path, history_path):
        assert path.is_file()
        assert str(path) in printed

    model = keras.models.load_model(model_path)
    assert isinstance(model, keras_ddpm.DiffusionModel)
    # The lecture's network keeps Keras' auto: no XLA without a GPU (slower on a CPU).
    assert "XLA off" in printed
    assert model.T == 20
    # --precision auto (the default) picks by the hardware, says so, and saves the choice.
    from keras_ddpm.precision import auto_precision, bfloat16_support

    assert model.dtype_policy.name == auto_precision()
    assert f"{auto_precision()} by --precision auto ({bfloat16_support()[1]})" in printed
    assert model.image_shape == (32, 32, 3)
    # Calibrated after training (--calibration-samples), saved with the model.
    assert "Calibrating on 16 training images (2 draws x 1 condition(s)" in printed
    assert model.calibration is not None and model.calibration.num_conditions == 1

    history = json.loads(history_path.read_text())
    assert len(history["loss"]) == 1
    assert np.isfinite(history["loss"][0])

    # 4 images of 32x32 in a 2x2 grid with 2-pixel borders: 2 + 2 * (32 + 2) = 70.
    _assert_png(samples_path, 70, 70)
    # samples.png is the saved model's DDIM at train's default eta 1 (the run asked for 4
    # steps), denoised once more at 7% of T = 20, i.e. 1: not the deterministic DDIM, nor the images
    # without the final denoising.
    from keras_ddpm import plotting

    with Image.open(samples_path) as image:
        written = np.asarray(image.convert("RGB")).astype(int)
    for eta, denoise_at, same in ((1.0, 1, True), (0.0, 1, False), (1.0, None, False)):
        images = model.sample(4, steps=4, eta=eta, seed=0, denoise_at=denoise_at)
        grid = plotting.image_grid(images).astype(int)
        assert (np.abs(written - grid).max() <= 1) == same, (eta, denoise_at)


def test_train_init_fine_tunes_a_saved_model_on_one_class(trained_run, tmp_path):
    """Seed 002's workflow: fine-tune an existing model on one class ("ship" for CIFAR)."""
    out_dir, _ = trained_run
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main([
            "train", "--init", str(out_dir / "model.keras"), "--classes", "disc",
            "--num-examples", "8", "--epochs", "1", "--batch-size", "8",
            "--n-samples", "1", "--sample-steps", "2", "--grid-steps", "2", "--out", str(tmp_path),
        ])
    assert status == 0
    assert "Fine-tuning" in printed.getvalue() and "classes disc" in printed.getvalue()
    # The lecture's network has no attention to guide with: refused before training.
    refused = ["train", "--init", str(out_dir / "model.keras"), "--attention-guidance", "0.3",
               "--epochs", "1", "--out", str(tmp_path / "refused")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(refused)
    assert exit_info.value.code == 2
    assert not (tmp_path / "refused" / "model.keras").exists()
    original = keras.models.load_model(out_dir / "model.keras")
    tuned = keras.models.load_model(tmp_path / "model.keras")
    assert tuned.T == original.T == 20  # the saved model's settings, not the defaults
    changed = [
        not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
        for a, b in zip(original.network.weights, tuned.network.weights)
    ]
    assert any(changed)


def test_train_init_with_other_image_size_is_an_error(trained_run, tmp_path, capsys):
    out_dir, _ = trained_run
    line = _run_error(
        ["train", "--init", str(out_dir / "model.keras"), "--image-size", "64",
         "--out", str(tmp_path)],
        capsys,
    )
    assert "(32, 32, 3)" in line and "--image-size" in line


def test_train_real_dataset_offline_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from keras_ddpm import data

    def refuse(host, timeout=None):
        raise OSError(f"cannot reach {host} (test)")

    monkeypatch.setattr(data, "_check_connection", refuse)
    line = _run_error(
        ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
         "--out", str(tmp_path / "run")],
        capsys,
    )
    assert "cifar10" in line and str(tmp_path / "data") in line


def test_train_warns_of_a_coarsest_level_of_2x2():
    def warning(argv, shape=(32, 32, 3)):
        return recipe.coarse_level_warning(cli.build_parser().parse_args(["train", *argv]), shape)

    # 32 / (4 * 2**2) = 2: the 3-level networks on 4x4 patches that stalled in the GPU sweep.
    text = warning(["--patch-size", "4"])
    assert text.startswith("Warning: the Unet's coarsest level is 2x2") and "--patch-size" in text
    assert "1x1" in warning(["--widths", "8,16,32,64"], (16, 16, 3))  # 16 / (2 * 2**3)
    assert warning([]) is None  # the default: 32 / (2 * 2**2) = 4
    assert warning(["--widths", "24,48,96,192"], (64, 64, 3)) is None  # 4x4
    assert warning(["--network", "naive"]) is None


def test_parser_defaults():
    train_args = cli.build_parser().parse_args(["train"])
    assert (train_args.dataset, train_args.image_size, train_args.num_examples) == (
        "shapes",
        None,
        None,
    )
    assert (train_args.n_feat, train_args.epochs, train_args.batch_size) == (16, 8, 16)
    assert (train_args.lr, train_args.T, train_args.beta1, train_args.beta2) == (
        2e-3,
        1000,
        1e-4,
        0.02,
    )
    assert (train_args.schedule, train_args.time_embedding, train_args.seed) == (
        "cosine",
        "learned",
        0,
    )
    assert (train_args.network, train_args.widths, train_args.prediction) == (
        "unet", (24, 48, 96), "v"
    )
    assert train_args.patch_size == 2
    assert (train_args.ema, train_args.warmup_steps, train_args.clipnorm) == (0.999, 100, 1.0)
    assert (train_args.loss_weighting, train_args.lr_decay) == ("min_snr", "cosine")
    assert train_args.noise_offset == 0.2  # the library's DiffusionModel keeps 0
    off = cli.build_parser().parse_args(
        ["train", "--ema", "none", "--clipnorm", "off", "--attention-levels", "none",
         "--widths", "8,16,32", "--loss-weighting", "none"]
    )
    assert (off.ema, off.clipnorm, off.attention_levels, off.widths) == (None, None, (), (8, 16, 32))
    levels = cli.build_parser().parse_args(["train", "--attention-levels", "0,1"])
    assert levels.attention_levels == (0, 1)
    assert (train_args.sample_steps, train_args.n_samples, train_args.out) == (
        None,  # DDIM's 50 steps (capped at T), at --eta 1
        16,
        "runs/latest",
    )
    assert (train_args.eta, train_args.grid_steps) == (1.0, 50)

    sample_args = cli.build_parser().parse_args(["sample", "m.keras", "--frames", "1000,200,50,0"])
    assert (sample_args.model, sample_args.n, sample_args.steps, sample_args.eta) == (
        "m.keras",
        16,
        None,
        0.0,
    )
    assert (sample_args.seed, sample_args.batch_size, sample_args.out, sample_args.npz) == (
        0,
        256,
        "samples.png",
        None,
    )
    assert sample_args.frames == [1000, 200, 50, 0]


# --- sample ------------------------------------------------------------------------------


def test_sample_without_calibration(trained_run, tmp_path):
    """`train` saved a calibration; `sample --no-calibration` leaves it out (with it:
    samples.png in test_train_writes_model_samples_and_history)."""
    model = keras.models.load_model(trained_run[0] / "model.keras")
    npz_path = tmp_path / "plain.npz"
    assert cli.main(["sample", str(trained_run[0] / "model.keras"), "--n", "2", "--steps", "1",
                     "--no-calibration", "--out", str(tmp_path / "grid.png"),
                     "--npz", str(npz_path)]) == 0
    written = np.load(npz_path)["images"]
    calibrated = model.sample(2, steps=1, seed=0, denoise_at=1)  # --denoise-at: 7% of T = 20: 1
    model.calibration = None
    np.testing.assert_array_equal(written, model.sample(2, steps=1, seed=0, denoise_at=1))
    assert np.abs(written - calibrated).max() > 1e-3


def test_sample_writes_grid_frames_and_npz(trained_run, tmp_path, capsys):
    out_dir, _ = trained_run
    out_path = tmp_path / "new" / "grid.png"
    npz_path = tmp_path / "raw.npz"
    status = cli.main(
        [
            "sample",
            str(out_dir / "model.keras"),
            "--steps",
            "5",
            "--n",
            "4",
            "--frames",
            "20,5,0",
            "--out",
            str(out_path),
            "--npz",
            str(npz_path),
        ]
    )
    assert status == 0
    _assert_png(out_path, 70, 70)
    _assert_png(tmp_path / "new" / "grid_frames.png")

    with np.load(npz_path) as arrays:
        assert arrays["images"].shape == (4, 32, 32, 3)
        assert arrays["images"].dtype == np.float32
        assert list(arrays["frame_timesteps"]) == [20, 5, 0]
        # DDIM-5 of T = 20 samples t = 20, 16, 12, 8, 4; the calibrated model starts at its
        # start, 15, from the first of them at or below it: frame 20 is its start at t = 12,
        # frame 5 is recorded at t = 4.
        assert list(arrays["frame_sampled_timesteps"]) == [12, 4, 0]
        assert arrays["frames"].shape == (3, 4, 32, 32, 3)
        # The frame at t = 0 is the final sample.
        np.testing.assert_array_equal(arrays["frames"][-1], arrays["images"])
    # The command says where the moved frames were recorded, the one at t = 0 left out.
    assert ("(the first at or below each one asked for): t = 20 -> 12, t = 5 -> 4.\n"
            in capsys.readouterr().out)


def test_sample_guides_a_unet_with_perturbed_attention_by_default(tmp_path):
    """A Unet model samples with --attention-guidance 0.3 (and, conditional, --guidance-scale
    1.25) unless told otherwise; NaiveUnet never."""
    from keras_ddpm.cli import sampling_options

    rng = np.random.default_rng(3)
    net = keras_ddpm.Unet((32, 32, 3), widths=(8, 16), attention_levels=(1,), patch_size=2)
    for weight in net.weights:  # Random weights: the zero-initialised output conv must matter.
        if len(weight.shape) > 1:
            weight.assign(rng.normal(0, 0.2, weight.shape).astype("float32"))
    model = keras_ddpm.DiffusionModel(net, T=20)
    model.save(tmp_path / "unet.keras")
    naive = keras_ddpm.DiffusionModel(keras_ddpm.NaiveUnet((32, 32, 3), n_feat=8), T=20)
    options = sampling_options.guidance_options
    assert options(model, None) == {"guidance_scale": None, "attention_guidance": 0.3}
    assert options(model, [0, 1]) == {"guidance_scale": 1.25, "attention_guidance": 0.3}
    assert options(model, [0], 3.0, 0.0) == {"guidance_scale": 3.0, "attention_guidance": 0.0}
    assert options(naive, [0, 1]) == {"guidance_scale": None, "attention_guidance": None}

    npz = tmp_path / "samples.npz"
    # (Without XLA, the default for a float32 Unet: test_xla_by_default_for_a_float32_unet_only.)
    assert cli.main(["sample", str(tmp_path / "unet.keras"), "--n", "2", "--steps", "1",
                     "--no-jit-compile", "--npz", str(npz),
                     "--out", str(tmp_path / "grid.png")]) == 0
    with np.load(npz) as arrays:
        default = arrays["images"]
    # And with the final denoising at 7% of T = 20, i.e. 1 (--denoise-at 0: off).
    options = {"steps": 1, "seed": 0, "verbose": 0}
    np.testing.assert_allclose(
        default, model.sample(2, attention_guidance=0.3, denoise_at=1, **options), atol=1e-5)
    assert np.abs(default - model.sample(2, denoise_at=1, **options)).max() > 1e-3
    parser = cli.build_parser()
    for given, denoise_at in (([], 1), (["--denoise-at", "0"], None), (["--denoise-at", "7"], 7)):
        args = parser.parse_args(["sample", "unet.keras", *given])
        assert sampling_options.sampling_kwargs(args, model)["denoise_at"] == denoise_at
    too_late = parser.parse_args(["sample", "m.keras", "--denoise-at", "21"])
    with pytest.raises(cli.common.CommandError, match="--denoise-at must be a timestep in 0..T"):
        sampling_options.sampling_kwargs(too_late, model)


# --- errors ------------------------------------------------------------------------------


def test_sample_missing_file(tmp_path, capsys):
    line = _run_error(["sample", str(tmp_path / "nothing.keras")], capsys)
    assert "nothing.keras" in line and "not found" in line


def test_sample_not_a_keras_file(tmp_path, capsys):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\x89HDF")
    line = _run_error(["sample", str(path)], capsys)
    assert "weights.h5" in line and "is not a .keras file" in line


def test_sample_truncated_file(trained_run, tmp_path, capsys):
    whole = (trained_run[0] / "model.keras").read_bytes()
    path = tmp_path / "truncated.keras"
    path.write_bytes(whole[: len(whole) // 2])
    line = _run_error(["sample", str(path)], capsys)
    assert "truncated.keras" in line and "corrupt or truncated" in line


def test_sample_zip_with_bad_contents(tmp_path, capsys):
    path = tmp_path / "broken.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("metadata.json", "{}")
    line = _run_error(["sample", str(path)], capsys)
    assert "broken.keras" in line and "corrupt or truncated" in line


def test_sample_bare_network_file(tmp_path, capsys):
    path = tmp_path / "network.keras"
    keras_ddpm.NaiveUnet((32, 32, 3), n_feat=8).save(path)
    line = _run_error(["sample", str(path)], capsys)
    assert "not a keras_ddpm.DiffusionModel" in line


@pytest.mark.parametrize(
    "extra_args, words",
    [
        (["--steps", "0"], ["--steps", "positive integer"]),
        (["--steps", "50"], ["--steps must be in", "1..20", "got --steps 50"]),
        (["--frames", "1000,x"], ["--frames", "timesteps"]),
        (["--frames", "50,0", "--steps", "5"], ["--frames must be", "0..20"]),
        (["--out", "grid.jpg"], ["--out", ".png"]),
        (["--guidance-scale", "2", "--unconditional"], ["--guidance-scale needs", "--labels"]),
        (["--sampler", "dpm++", "--eta", "0.5"], ["--eta applies to the DDIM sampler only"]),
        (["--attention-guidance", "0.5"], ["--attention-guidance needs", "self-attention"]),
    ],
    ids=["steps-zero", "steps-above-T", "bad-frames", "frames-above-T", "out-not-png",
         "guidance-without-labels", "eta-deterministic", "attention-guidance-naive"],
)
def test_sample_bad_options(trained_run, extra_args, words, capsys):
    argv = ["sample", str(trained_run[0] / "model.keras"), "--n", "1"] + extra_args
    line = _run_error(argv, capsys)
    for word in words:
        assert word in line
    # The errors name the command's options, never the Python parameters behind them.
    assert not re.search(r"\b(guidance_scale|clip_x0|batch_size|[a-z]+=)", line)


@pytest.mark.parametrize(
    "extra_args, words",
    [
        (["--image-size", "48"], ["image_size", "multiple of 32", "48"]),
        (["--dataset", "no-such-data"], ["Unknown dataset", "no-such-data", "shapes"]),
        (["--network", "naive", "--n-feat", "12"], ["n_feat", "multiple of 8"]),
        (["--schedule", "linear", "--beta1", "0.5", "--beta2", "0.1"], ["beta1", "beta2"]),
        (["--T", "10", "--sample-steps", "20"], ["--sample-steps", "1..10"]),
        (["--schedule", "quadratic"], ["--schedule", "quadratic"]),
        (["--epochs", "0"], ["--epochs", "positive integer"]),
        (["--seed", "-1"], ["--seed", "0..2147483646"]),
        (["--seed", str(2**40)], ["--seed", "0..2147483646"]),
        (["--network", "naive", "--attention-guidance", "0.3"],
         ["--attention-guidance needs", "NaiveUnet"]),
        (["--noise-offset", "-0.1"], ["--noise-offset", "a number >= 0"]),
    ],
    ids=["image-size", "dataset", "n-feat", "betas", "sample-steps", "schedule", "epochs", "seed",
         "seed-too-large", "attention-guidance-naive", "noise-offset"],
)
def test_train_bad_options(extra_args, words, tmp_path, capsys):
    line = _run_error(["train", "--out", str(tmp_path / "run")] + extra_args, capsys)
    for word in words:
        assert word in line
    assert not (tmp_path / "run").exists()


def test_missing_command(capsys):
    line = _run_error([], capsys)
    assert "COMMAND" in line


# --- help --------------------------------------------------------------------------------


def test_parser_has_exactly_the_documented_options():
    subparsers = next(
        action
        for action in cli.build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    for command, expected in (
        ("train", TRAIN_OPTIONS), ("sample", SAMPLE_OPTIONS), ("evaluate", EVALUATE_OPTIONS)
    ):
        options = {
            option
            for action in subparsers.choices[command]._actions
            for option in action.option_strings
        }
        assert options - {"-h", "--help"} == set(expected)


def test_console_script_answers_help_without_tensorflow():
    """The `keras-ddpm` launcher parses, helps and refuses arguments before TensorFlow loads."""
    code = (
        "import sys, keras_ddpm_cli\n"
        "from keras_ddpm.cli import build_parser\n"
        "build_parser().parse_args(['train', '--epochs', '2'])\n"
        "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    for argv, status, stream in ((["--help"], 0, "stdout"), (["--version"], 0, "stdout"),
                                 (["sample", "m.keras", "--eta", "5"], 2, "stderr")):
        result = subprocess.run([sys.executable, "-m", "keras_ddpm_cli", *argv],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == status, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == status // 2  # One line for an error.
        assert "keras-ddpm" in getattr(result, stream)


@pytest.mark.parametrize(
    "command, expected",
    [("train", TRAIN_OPTIONS), ("sample", SAMPLE_OPTIONS), ("evaluate", EVALUATE_OPTIONS)],
)
def test_command_help_lists_every_option(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    words = [word.strip(",[]") for word in capsys.readouterr().out.split()]
    for option in expected:
        assert option in words, option
    assert "(default:" in " ".join(words)


# --- conditioning, EMA, grids, evaluate ---------------------------------------------------


def test_train_conditional_with_ema_grids_then_sample_and_evaluate(tmp_path, capsys):
    out_dir = tmp_path / "cond"
    # Conditional by default on a dataset with classes: TINY_TRAIN_ARGS without --unconditional.
    args = [arg for arg in TINY_TRAIN_ARGS if arg != "--unconditional"] + [
        "--prediction", "v", "--ema", "0.9", "--epochs", "2",
        "--num-examples", "8",  # One step per epoch: the outputs are the property.
        "--grid-steps", "2", "--sample-steps", "2", "--log-dir", str(tmp_path / "logs"),
        "--out", str(out_dir),
    ]
    assert cli.main(args) == 0
    assert "conditional on 3 classes" in capsys.readouterr().out
    model = keras.models.load_model(out_dir / "model.keras")
    assert (model.num_classes, model.prediction) == (3, "v")
    assert model.ema_decay == 0.9 and model.weight_average is not None
    grids = sorted(p.name for p in (out_dir / "grids").glob("*.png"))
    assert grids == ["samples_epoch_0001.png", "samples_epoch_0002.png"]
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))

    out = tmp_path / "labels.png"
    # Few steps: each is two eager calls of the network (with and without the label).
    assert cli.main(["sample", str(out_dir / "model.keras"), "--n", "3", "--steps", "2",
                     "--labels", "2", "--guidance-scale", "3", "--out", str(out),
                     "--npz", str(tmp_path / "s.npz")]) == 0
    saved = np.load(tmp_path / "s.npz")["images"]
    np.testing.assert_array_equal(  # With the command line's final denoising at 7% of T = 20: 1.
        saved, model.sample(3, steps=2, seed=0, labels=2, guidance_scale=3.0, denoise_at=1)
    )
    message = _run_error(["sample", str(out_dir / "model.keras"), "--labels", "3", "--steps", "4",
                         "--out", str(out)], capsys)
    assert "labels must be class ids in 0..2" in message
    # Without --labels: the classes in turn at the default guidance 2, not the "no class"
    # images (--unconditional: sampling_labels' doctest).
    assert cli.main(["sample", str(out_dir / "model.keras"), "--n", "4", "--steps", "2",
                     "--out", str(out), "--npz", str(tmp_path / "s.npz")]) == 0
    written = np.load(tmp_path / "s.npz")["images"]
    np.testing.assert_array_equal(written, model.sample(
        4, steps=2, seed=0, labels=[0, 1, 2, 0], guidance_scale=2.0, denoise_at=1))
    # Measured: 2.0 (the whole range) on the AMD EPYC; the bound only says "they differ".
    assert np.abs(written - model.sample(4, steps=2, seed=0, denoise_at=1)).max() > 1e-3
    # `train` calibrated it with a mean per class and one for "no class" (used above:
    # `written` is the calibrated model's; --no-calibration: test_sample_without_calibration).
    assert model.calibration is not None and model.calibration.num_conditions == 4

    metrics_path = tmp_path / "metrics.json"
    assert cli.main(["evaluate", str(out_dir / "model.keras"), "--n", "8", "--steps", "2",
                     "--out", str(metrics_path)]) == 0
    figures = json.loads(metrics_path.read_text())
    assert figures["n"] == 8 and figures["swd"] > 0 and "fid" not in figures


def test_labels_for_an_unconditional_model_and_missing_inception_weights(trained_run, tmp_path, capsys):
    out_dir, _ = trained_run
    model = str(out_dir / "model.keras")
    message = _run_error(["sample", model, "--labels", "0", "--out", str(tmp_path / "x.png")], capsys)
    assert "--labels needs a class-conditional model" in message
    message = _run_error(["evaluate", model, "--inception-weights", str(tmp_path / "none.h5")], capsys)
    assert "not found" in message and "nothing is downloaded" in message


# --- outputs proven writable, locked, and named exactly -------------------------------------


@pytest.mark.parametrize("option", ["--out", "--checkpoint-dir"])
def test_train_refuses_an_unwritable_folder_before_any_work(option, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = ["train", "--out", str(tmp_path / "run"), option, str(blocker / "sub")]
    line = _run_error(argv, capsys)
    assert option in line and "cannot be written" in line
    assert not (tmp_path / "run").exists()


def test_a_second_train_on_the_same_folder_is_refused(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    with open(out_dir / ".keras-ddpm.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # As a running train does.
        line = _run_error(TINY_TRAIN_ARGS + ["--out", str(out_dir)], capsys)
    assert "another 'keras-ddpm train'" in line and str(out_dir) in line
    assert not (out_dir / "model.keras").exists()


def test_sample_names_the_npz_it_writes_and_checks_outputs_first(trained_run, tmp_path, capsys):
    model = str(trained_run[0] / "model.keras")
    assert cli.main(["sample", model, "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png"),
                     "--npz", str(tmp_path / "raw")]) == 0
    assert f"Wrote npz: {tmp_path / 'raw.npz'}" in capsys.readouterr().out
    assert (tmp_path / "raw.npz").is_file()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _run_error(["sample", "missing.keras", "--out", str(blocker / "s.png")], capsys)
    assert "--out" in line and "cannot be written" in line  # Before loading anything.


def test_ctrl_c_is_one_line_that_says_what_was_kept(tmp_path, capsys):
    """A real SIGINT after the first epoch: one line, status 130, the checkpoint kept."""
    import os
    import signal
    import threading
    import time

    out_dir, checkpoint_dir = tmp_path / "run", tmp_path / "ck"

    def interrupt_after_first_grid():
        # However long the first epoch takes (no deadline: a SIGINT sent before training
        # starts is not the case under test); a run that is never interrupted ends after
        # its 20 epochs and fails the test.
        while not list(out_dir.glob("grids/*.png")):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    # What a terminal's Ctrl-C does to a Python program, whatever handler the test runner
    # (an xdist worker) installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_after_first_grid, daemon=True).start()
    argv = TINY_TRAIN_ARGS + ["--epochs", "20", "--grid-steps", "2",
                              "--out", str(out_dir), "--checkpoint-dir", str(checkpoint_dir)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "interrupted" in err and "run the same command again to resume" in err
    assert (checkpoint_dir / "training_metadata.json").is_file()
    assert not (out_dir / "model.keras").exists()


def test_xla_by_default_for_a_float32_unet_only():
    """--jit-compile's default (`common.resolve_jit_compile`): XLA for a float32 Unet,
    Keras' auto for NaiveUnet and for bfloat16; a given option always wins."""
    from keras_ddpm.cli.common import resolve_jit_compile
    from keras_ddpm.precision import dtype_policy

    def model(network):
        return keras_ddpm.DiffusionModel(network, T=10)

    unet = model(keras_ddpm.Unet((16, 16, 3), widths=(8, 16), attention_levels=()))
    naive = model(keras_ddpm.NaiveUnet((32, 32, 3), n_feat=8))
    with dtype_policy("mixed_bfloat16"):
        bf16_unet = model(keras_ddpm.Unet((16, 16, 3), widths=(8, 16), attention_levels=()))
    assert resolve_jit_compile(None, unet) is True
    assert resolve_jit_compile(None, naive) == "auto"
    assert resolve_jit_compile(None, bf16_unet) == "auto"
    assert resolve_jit_compile(False, unet) is False
    assert resolve_jit_compile(True, naive) is True


def test_train_unet_with_the_recipe_options(tmp_path, capsys):
    out_dir = tmp_path / "unet"
    args = [
        "train", "--num-examples", "20", "--epochs", "1", "--batch-size", "4", "--T", "20",
        "--widths", "8,16", "--blocks-per-level", "2", "--attention-levels", "none",
        "--patch-size", "2", "--dropout", "0.1", "--ema", "0.9", "--warmup-steps", "3",
        "--lr", "0.01",
        "--clipnorm", "0.5", "--loss-weighting", "min_snr", "--min-snr-gamma", "2",
        "--noise-offset", "0.2", "--calibration-samples", "0",
        "--n-samples", "2", "--grid-steps", "2", "--sample-steps", "2", "--out", str(out_dir),
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "Training Unet (widths=8,16, 2x2 patches)" in printed
    model = keras.models.load_model(out_dir / "model.keras")
    # A float32 Unet compiles with XLA by default, on a CPU too (--precision auto picks
    # mixed_bfloat16 on a CPU with bf16 units, where XLA is left to Keras: off on a CPU).
    assert ("XLA on" if model.dtype_policy.name == "float32" else "XLA off") in printed
    assert model.network.get_layer("stem").input.shape == (None, 16, 16, 12)
    blocks = [layer for layer in model.network.layers
              if isinstance(layer, keras_ddpm.ResidualBlock)]
    assert len(blocks) == 2 * 2 * 2 + 2 and blocks[0].dropout == 0.1
    # Self-attention only in the middle (the default adds it to level 1's 4 blocks; at
    # level 0, 32x32, it would make the steps several times slower).
    assert len([layer for layer in model.network.layers
                if isinstance(layer, keras_ddpm.AttentionBlock)]) == 1
    assert (model.ema_decay, model.loss_weighting, model.min_snr_gamma) == (0.9, "min_snr", 2.0)
    assert model.noise_offset == 0.2
    assert (model.prediction, model.schedule) == ("v", "cosine")
    assert float(model.weight_average.updates.numpy()) == 5  # 1 epoch of 5 steps.
    optimizer = model.optimizer
    assert optimizer.global_clipnorm == 0.5
    schedule = optimizer.get_config()["learning_rate"]["config"]
    assert schedule["warmup_steps"] == 1  # --warmup-steps 3, cut to a fifth of the 5 steps.
    assert (schedule["decay_steps"], schedule["warmup_target"], schedule["alpha"]) == (4, 0.01, 0.1)
