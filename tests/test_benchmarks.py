"""The benchmark scripts still run and print their tables last (timings are not asserted)."""
import importlib
import pathlib
import sys

import keras
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def run_main(script, args, capsys):
    """Runs `benchmarks/<script>.py`'s `main(args)` in this process; returns what it printed.

    In-process, as `python benchmarks/<script>.py ARGS` runs it, without importing
    TensorFlow a second time.
    """
    importlib.import_module(script).main(args)
    out = capsys.readouterr().out
    lines = out.rstrip().splitlines()
    assert lines[-1].startswith("| "), lines[-3:]  # the table is printed last
    return out


@pytest.mark.slow
def test_data_benchmark_quick_mode_prints_its_table(capsys):
    assert "Ratio cached / training" in run_main("bench_data", ["--quick"], capsys)


@pytest.mark.slow
def test_recipe_sweep_trains_the_cli_recipe_and_writes_its_samples(tmp_path, capsys):
    from keras_ddpm import data

    images, labels = data.make_shapes(64, seed=data.SHAPE_SPLIT_SEEDS["train"])
    np_path = tmp_path / "shapes.npz"
    np.savez(np_path, images=images, labels=labels)
    row = "tiny=--network naive --n-feat 8 --epochs 1 --num-examples 64 --T 20 --calibration-samples 2"
    out = run_main("recipe_sweep", [
        "--data", str(np_path), "--out-dir", str(tmp_path), "--row", row,
        "--samplers", "ddim:3:1", "ddpm", "--n", "4", "--save-models", "tiny", "--quick",
        "--steps-per-execution", "2",
    ], capsys)
    assert "| tiny | --network naive" in out
    # Conditional on the file's labels, as `train` on shapes: sampled with guidance 2;
    # `ddim:3:1` is DDIM at eta 1, named as `quality.py` names it.
    with np.load(tmp_path / "tiny.npz") as samples:
        # Then the same draws again, calibrated as `train` calibrates (`-cal`).
        assert sorted(samples.files) == [
            "ddim-3-eta1-w2", "ddim-3-eta1-w2-cal", "ddpm-20-w2", "ddpm-20-w2-cal"]
        ddpm = samples["ddpm-20-w2"]
        assert ddpm.shape == (4, 32, 32, 3) and ddpm.dtype == np.uint8
        assert np.any(samples["ddpm-20-w2-cal"] != ddpm)
    model = keras.models.load_model(tmp_path / "tiny.keras")
    assert model.num_classes == 3
    assert model.calibration is not None and model.calibration.num_conditions == 4
    assert int(model.optimizer.iterations.numpy()) == 4  # 64 images at batch 16, 2 per call.


@pytest.mark.slow
def test_recipe_sweep_refuses_a_bad_sampler_before_training(capsys):
    for bad in ("ddim:fifty", "dpm++:20:1", "ddim:50:2"):  # as quality.py refuses them
        with pytest.raises(SystemExit):
            importlib.import_module("recipe_sweep").main(["--row", "x=", "--samplers", bad])
        assert "--samplers" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # The lecture's network has no attention to perturb.
        importlib.import_module("recipe_sweep").main(
            ["--row", "x=--network naive", "--attention-guidance", "0.5"])
    assert "needs a Unet" in capsys.readouterr().err


def test_step_profile_times_every_leaf_layer_of_the_network(capsys):
    """In this process: NaiveUnet's 21 convolutions and 21 group norms each timed, then the step."""
    lines = run_main("profile_step", ["--quick"], capsys).splitlines()
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines if line.startswith("| ")}
    assert rows["Conv2D"][0] == "21" and rows["GroupNormalization"][0] == "21"
    assert rows["Conv2DTranspose"][0] == "4"
    assert rows["(whole training step: fit)"][2] == "100%"


def test_gpu_benchmark_builds_the_ddpm_papers_cifar10_network():
    """`gpu_scale.ho_cifar10` is Ho et al.'s network: their 35,746,307 parameters, plus the
    (512 - 128) x 512 weights of a time MLP fed a 512-wide sinusoid instead of a 128-wide one."""
    import gpu_scale

    network = gpu_scale.ho_cifar10()
    assert network.count_params() - 35_746_307 == (512 - 128) * 512
    assert network.output_shape == (None,) + gpu_scale.SHAPE


def test_xla_benchmark_table_gives_medians_and_ratios():
    """`xla_cpu.table_rows`: medians of the rounds, XLA over no XLA for training speed and
    no XLA over XLA for sampling time (above 1: XLA faster in both)."""
    import xla_cpu

    results = {
        False: {"first_s": 10.0, "images_per_s": [100.0, 50.0, 120.0], "sample_s": [3.0, 5.0]},
        True: {"first_s": 20.0, "images_per_s": [200.0, 180.0, 150.0], "sample_s": [2.0]},
    }
    rows = {row[1]: row for row in xla_cpu.table_rows("unet", results)}
    assert rows["training images/s (median)"][2:5] == ["180.0", "100.0", "1.80x"]
    assert rows["first fit s (tracing, compiling)"][4] == "2.00x"
    assert rows["sampling s, DDIM-50 (median)"][2:5] == ["2.00", "4.00", "2.00x"]


def test_xla_benchmark_names_the_fastest_training_over_precisions():
    """With several precisions, the note names the copy with the highest median training
    speed and its ratio over every other copy."""
    import xla_cpu

    results = {("auto", False): {"images_per_s": [280.0, 290.0, 100.0]},
               ("auto", True): {"images_per_s": [380.0, 390.0, 385.0]},
               ("float32", False): {"images_per_s": [280.0]},
               ("float32", True): {"images_per_s": [420.0, 400.0, 410.0]}}
    note = xla_cpu.fastest_training("unet", results,
                                    {"auto": "mixed_bfloat16", "float32": "float32"})
    assert note == ("unet: fastest training float32 XLA on (410.0 img/s): "
                    "1.46x mixed_bfloat16 XLA off, 1.06x mixed_bfloat16 XLA on, "
                    "1.46x float32 XLA off")
