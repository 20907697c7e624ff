"""Shared test set-up: quiet TensorFlow, a fixed Keras seed, small shapes."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# One thread per TensorFlow process: the workers (one per core) already fill the cores,
# and TensorFlow's own thread pools would compete with them (and with the subprocesses
# and notebook kernels the tests start, which inherit this).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
# XLA compiles the JAX process's programs and TensorFlow's `jit_compile` ones, and
# compiling is most of their time in tests of tiny networks: the compiler does less
# (no LLVM optimisation, XLA's classic fusion emitters instead of the MLIR ones, one
# LLVM module per program). Measured on 2 cores: the JAX process 91 -> 55 s, a fit
# and two sampling loops on JAX 21-24 -> 13-14 CPU-s, the XLA tests 24 -> 18 CPU-s.
# The compiled programs compute the same things, a little slower.
CHEAP_XLA_FLAGS = (
    "--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_parallel_codegen_split_count=1",
)
_xla_flags = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(
    _xla_flags + [flag for flag in CHEAP_XLA_FLAGS if flag not in _xla_flags]
)

import keras  # noqa: E402
import pytest  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # Grappler, TensorFlow's graph optimiser, rewrites every traced function before its
    # first run (folding, fusions, layouts): in tests of tiny networks that costs more than
    # it saves. The graphs compute the same things unoptimised. Measured on 2 cores (an
    # Intel Xeon, 2026-11-26, one run each, all passing): the suite 304 -> 268 s, 546 ->
    # 480 CPU-s. The subprocesses the tests start keep it (the notebooks' kernel does not).
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.fixture(autouse=True)
def _fixed_keras_seed():
    keras.utils.set_random_seed(1234)
    yield


# The test files that take longest (seconds of one worker in a full run on 2 cores,
# 2026-11-27, 347 s of wall time: 122, 92, 88 (now about 70), 57, 37, 36, 33, 28, 26, 18;
# all others 16 or less), heaviest first. The suite hands whole files to the workers
# (`--dist loadfile`) in collection order (`--no-loadscope-reorder`, pyproject.toml): the
# long files start first and the short ones fill the end, so both workers finish together.
# xdist's own order (most tests first) left the JAX and benchmark files, few tests but long
# ones, for last.
LONGEST_FILES = (
    "test_cli.py", "test_notebooks.py", "test_reliability.py", "test_backend_jax.py",
    "test_quality.py", "test_calibration.py", "test_benchmarks.py", "test_precision.py",
    "test_distribute.py", "test_guidance.py",
)


def pytest_collection_modifyitems(items):
    """Runs the files of `LONGEST_FILES` first, in that order (each file's tests keep
    theirs, and the other files theirs)."""

    def rank(item):
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (each worker holds TensorFlow, ~1 GB)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))
