"""keras_ddpm: denoising diffusion probabilistic models for Keras 3.

Importing the package registers its layers and `DiffusionModel` with Keras, so
`keras.models.load_model("model.keras")` works with safe mode on.
"""
import os

# Quiet TensorFlow's start-up logging unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The imports below register the serializable classes: keep them eager.
from keras_ddpm.diffusion import DiffusionModel  # noqa: E402
from keras_ddpm.layers import Conv3Layer, TimeLayer, UnetDownLayer, UnetUpLayer  # noqa: E402
from keras_ddpm.schedule import ddpm_schedule  # noqa: E402
from keras_ddpm.unet import NaiveUnet, Unet  # noqa: E402
from keras_ddpm.unet_blocks import AttentionBlock, ResidualBlock  # noqa: E402

__all__ = [
    "AttentionBlock",
    "Conv3Layer",
    "DiffusionModel",
    "NaiveUnet",
    "ResidualBlock",
    "TimeLayer",
    "Unet",
    "UnetDownLayer",
    "UnetUpLayer",
    "ddpm_schedule",
]
__version__ = "0.1.0"
