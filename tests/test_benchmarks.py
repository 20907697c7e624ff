"""The benchmark scripts still run and print their tables last (timings are not asserted)."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

CORE_ROWS = (
    "Training images/s, 32x32, n_feat 16, batch 8",
    "compiled `sample` vs the lecture's `predict` loop",
    "Grid of 4 images: DDIM 10 steps vs compiled DDPM 100 steps",
    "Matmul ceiling 256x256 float32",
)


def run_script(script, args, backend="tensorflow"):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
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
