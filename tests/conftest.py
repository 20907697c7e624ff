"""Shared test set-up: quiet TensorFlow, a fixed Keras seed, small shapes."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fixed_keras_seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def two_colour_model():
    """A tiny class-conditional model trained on flat dark/light images (see helpers)."""
    from helpers import train_two_colour_model

    return train_two_colour_model()
