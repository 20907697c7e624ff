"""keras_ddpm: denoising diffusion probabilistic models for Keras 3.

Importing the package registers its layers and `DiffusionModel` with Keras, so
`keras.models.load_model("model.keras")` works with safe mode on.

Example:
>>> import keras_ddpm
>>> sorted(keras_ddpm.__all__)[:2]
['Conv3Layer', 'DiffusionModel']
"""
import importlib
import os
import sys

# Quiet TensorFlow's start-up logging unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Public name -> the module that defines (and registers) it.
_EXPORTS = {
    "Conv3Layer": "keras_ddpm.layers",
    "TimeLayer": "keras_ddpm.layers",
    "UnetDownLayer": "keras_ddpm.layers",
    "UnetUpLayer": "keras_ddpm.layers",
    "NaiveUnet": "keras_ddpm.unet",
    "Unet": "keras_ddpm.unet",
    "AttentionBlock": "keras_ddpm.unet_blocks",
    "ResidualBlock": "keras_ddpm.unet_blocks",
    "DiffusionModel": "keras_ddpm.diffusion",
    "ddpm_schedule": "keras_ddpm.schedule",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def _import_all():
    """Imports every module that registers serializable classes; binds the exports."""
    for name, module in _EXPORTS.items():
        globals()[name] = getattr(importlib.import_module(module), name)


def __getattr__(name):
    # Reached only when the imports were deferred (the `keras-ddpm` launcher).
    if name in _EXPORTS:
        _import_all()
        return globals()[name]
    raise AttributeError(f"module 'keras_ddpm' has no attribute {name!r}")


# The keras-ddpm launcher (keras_ddpm_cli) defers TensorFlow until a command runs;
# everyone else gets the classes registered at import, as the docstring promises.
if not getattr(sys.modules.get("keras_ddpm_cli"), "DEFER_IMPORTS", False):
    _import_all()
