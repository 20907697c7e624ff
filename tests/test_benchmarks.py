"""The benchmark script still runs (its figures are not asserted: timings are not tests)."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,expected",
    [("bench_core.py", "speed-up per step"), ("bench_data.py", "Ratio cached / training")],
)
def test_benchmark_quick_mode_prints_its_table(script, expected):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
    assert "| ---" in result.stdout  # a Markdown table
