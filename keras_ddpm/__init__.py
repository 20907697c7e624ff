"""keras_ddpm: denoising diffusion probabilistic models for Keras 3."""
from keras_ddpm.layers import Conv3Layer, TimeLayer, UnetDownLayer, UnetUpLayer
from keras_ddpm.schedule import ddpm_schedule
from keras_ddpm.unet import NaiveUnet

__version__ = "0.1.0"
from keras_ddpm.diffusion import DiffusionModel
