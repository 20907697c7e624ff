"""Shared test set-up: quiet TensorFlow, a fixed Keras seed, small shapes."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# One thread per TensorFlow process: the workers (one per core) already fill the cores,
# and TensorFlow's own thread pools would compete with them (and with the subprocesses
# and notebook kernels the tests start, which inherit this).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fixed_keras_seed():
    keras.utils.set_random_seed(1234)
    yield


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (each worker holds TensorFlow, ~1 GB)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))
