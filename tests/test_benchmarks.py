"""The benchmark scripts still run and print their tables last (timings are not asserted)."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

CORE_ROWS = (
    "Training images/s, 32x32, n_feat 8, batch 8",
    "compiled `sample` vs the lecture's `predict` loop",
    "Grid of 4 images: DDIM 5 steps vs compiled DDPM 20 steps",
    "Matmul ceiling 64x64 float32",
)


def run_script(script, args, backend="tensorflow"):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    if backend == "jax":
        # No LLVM optimisation of the compiled code: tiny programs compile several times
        # faster (timings are not asserted).
        env["XLA_FLAGS"] = " ".join(
            filter(None, [env.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
        )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.rstrip().splitlines()
    assert lines[-1].startswith("| "), lines[-3:]  # the table is printed last
    return result.stdout


@pytest.mark.slow
def test_core_benchmark_runs_on_the_jax_backend():
    """The GPU measurement runs this way: `KERAS_BACKEND=jax python benchmarks/bench_core.py`."""
    out = run_script("bench_core.py", ["--quick", "--precisions", "float32", "--no-pipeline"],
                     backend="jax")
    for row in CORE_ROWS:
        assert row in out, row
    assert "backend jax" in out


@pytest.mark.slow
def test_data_benchmark_quick_mode_prints_its_table():
    assert "Ratio cached / training" in run_script("bench_data.py", ["--quick"])


@pytest.mark.slow
def test_recipe_sweep_trains_the_cli_recipe_and_writes_its_samples(tmp_path):
    from keras_ddpm import data

    images = data.make_shapes(64, seed=data.SHAPE_SPLIT_SEEDS["train"])[0]
    np_path = tmp_path / "shapes.npz"
    import numpy as np

    np.savez(np_path, images=images)
    row = "tiny=--network naive --n-feat 8 --epochs 1 --num-examples 64 --T 20"
    out = run_script("recipe_sweep.py", [
        "--data", str(np_path), "--out-dir", str(tmp_path), "--row", row,
        "--samplers", "ddim:3", "ddpm", "--n", "4", "--save-models", "tiny",
    ])
    assert "| tiny | --network naive" in out
    with np.load(tmp_path / "tiny.npz") as samples:
        assert sorted(samples.files) == ["ddim-3", "ddpm-20"]
        assert samples["ddpm-20"].shape == (4, 32, 32, 3) and samples["ddpm-20"].dtype == np.uint8
    assert (tmp_path / "tiny.keras").is_file()


@pytest.mark.slow
def test_step_profile_times_every_leaf_layer_of_the_network(capsys):
    """In this process: NaiveUnet's 21 convolutions and 21 group norms each timed, then the step."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import profile_step

    profile_step.main(["--quick"])
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-1].startswith("| "), lines[-3:]  # the table is printed last
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines if line.startswith("| ")}
    assert rows["Conv2D"][0] == "21" and rows["GroupNormalization"][0] == "21"
    assert rows["Conv2DTranspose"][0] == "4"
    assert rows["(whole training step: fit)"][2] == "100%"


def test_gpu_benchmark_builds_the_ddpm_papers_cifar10_network():
    """`gpu_scale.ho_cifar10` is Ho et al.'s network: their 35,746,307 parameters, plus the
    (512 - 128) x 512 weights of a time MLP fed a 512-wide sinusoid instead of a 128-wide one."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_scale

    network = gpu_scale.ho_cifar10()
    assert network.count_params() - 35_746_307 == (512 - 128) * 512
    assert network.output_shape == (None,) + gpu_scale.SHAPE
