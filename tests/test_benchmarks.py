"""The benchmark script still runs (its figures are not asserted: timings are not tests)."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_core_benchmark_quick_mode_prints_its_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_core.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "speed-up per step" in result.stdout
    assert "| Measurement | Value | Note |" in result.stdout
