"""Perturbed-attention guidance: steer each step away from what the network predicts without attention.

Ahn et al. (2024) guide a diffusion model with a weakened copy of itself: the
same network with every self-attention map replaced by the identity, so each
pixel attends only to itself and no part of the image sees another. Its
prediction is what the network makes of local evidence alone (on `shapes`: a
background between the two real colours, a shape of two colours); the guided
noise estimate moves away from it,

    eps = eps_guided + s (eps(labels) - eps_perturbed(labels)),

where `eps_guided` is the classifier-free guided estimate (or the plain one)
and `s` the attention-guidance scale. It costs one more network pass per step
and needs no training: any network with `keras_ddpm.unet_blocks.AttentionBlock`
layers (`keras_ddpm.Unet`) can use it; `NaiveUnet` has none.

Reference:
    Ahn, Cho, Min, Jang, Kim, Kim, Park, Jin and Kim, "Self-Rectifying
    Diffusion Sampling with Perturbed-Attention Guidance", arXiv:2403.17377
    (2024).

Example:
>>> net = keras_ddpm.Unet((16, 16, 3), widths=(8, 16))
>>> perturbed = perturbed_attention_network(net)
>>> perturbed.count_params() == net.count_params()  # The same weights, shared.
True
"""

import math
import numbers
import weakref

import keras
from keras import layers

from keras_ddpm.unet_blocks import AttentionBlock

# Perturbed copies of networks, by network: built once, sharing its weights.
_PERTURBED = weakref.WeakKeyDictionary()


class PerturbedAttention(layers.Layer):
    """An `AttentionBlock` whose attention map is the identity, with the block's own weights.

    Never saved: `perturbed_attention_network` builds it from a network's
    blocks whenever it is needed.

    Args:
        block: the `AttentionBlock` to perturb (built).

    Example:
    >>> block = AttentionBlock()
    >>> x = keras.ops.ones((1, 2, 2, 8))
    >>> bool(keras.ops.all(PerturbedAttention(block)(x) == block.attend(x, identity=True)))
    True
    """

    def __init__(self, block, **kwargs):
        kwargs.setdefault("dtype", block.dtype_policy)
        super().__init__(name=f"{block.name}_perturbed", **kwargs)
        self.block = block

    def call(self, x):
        return self.block.attend(x, identity=True)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape


def has_attention(network):
    """Whether `network` has self-attention to perturb (an `AttentionBlock` layer).

    Example:
    >>> has_attention(keras_ddpm.Unet((16, 16, 3), widths=(8, 16)))
    True
    >>> has_attention(keras_ddpm.NaiveUnet((32, 32, 3), n_feat=8))
    False
    """
    return any(isinstance(layer, AttentionBlock) for layer in network.layers)


def perturbed_attention_network(network):
    """`network` with each `AttentionBlock` attending only pixel to itself; shared weights.

    Built once per network (`keras.models.clone_model` with every other layer
    reused as it is) and cached, so training the network updates its
    perturbed copy too.

    Args:
        network: a functional `keras.Model` with `AttentionBlock` layers,
            e.g. `keras_ddpm.Unet`.

    Returns:
        A `keras.Model` with the inputs and outputs of `network`.

    Example:
    >>> net = keras_ddpm.Unet((16, 16, 3), widths=(8, 16))
    >>> perturbed_attention_network(net) is perturbed_attention_network(net)
    True
    """
    if not has_attention(network):
        raise ValueError(_no_attention_message(network))
    if network not in _PERTURBED:
        _PERTURBED[network] = keras.models.clone_model(
            network,
            clone_function=lambda layer: (
                PerturbedAttention(layer) if isinstance(layer, AttentionBlock) else layer
            ),
        )
    return _PERTURBED[network]


def check_attention_guidance(scale, network):
    """The attention-guidance scale as a float, or None when off (None or 0).

    Raises a `ValueError` for a negative or non-finite scale, or a network
    without self-attention.

    Example:
    >>> check_attention_guidance(0.5, keras_ddpm.Unet((16, 16, 3), widths=(8, 16)))
    0.5
    """
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (
        math.isfinite(scale) and scale >= 0
    ):
        raise ValueError(
            f"attention_guidance must be a finite number >= 0 (0.5 is a good start), got {scale!r}."
        )
    if scale == 0:
        return None
    if not has_attention(network):
        raise ValueError(_no_attention_message(network))
    return float(scale)


def _no_attention_message(network):
    return (
        f"attention_guidance needs a network with self-attention (keras_ddpm.Unet); "
        f"{network.name!r} has no AttentionBlock layer: leave attention_guidance out."
    )
