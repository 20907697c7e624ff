"""The building blocks of `keras_ddpm.Unet`: a residual block and self-attention.

Both are serializable Keras layers registered under the package name
`keras_ddpm`, so a `.keras` file that uses them loads with safe mode on after
`import keras_ddpm`.

References:
    Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models",
    arXiv:2006.11239 (2020), appendix B.
    Nichol and Dhariwal, "Improved Denoising Diffusion Probabilistic Models",
    arXiv:2102.09672 (2021).
"""

import keras
from keras import layers, ops

from keras_ddpm.layers import GROUPS


def check_width(width, what):
    """Raise a ValueError unless `width` is a positive multiple of `GROUPS`."""
    if isinstance(width, bool) or not isinstance(width, int) or width < GROUPS or width % GROUPS:
        raise ValueError(
            f"{what} must be a positive multiple of {GROUPS} (GroupNormalization uses "
            f"{GROUPS} groups), got {width!r}."
        )


@keras.saving.register_keras_serializable(package="keras_ddpm")
class ResidualBlock(layers.Layer):
    """A residual block with the time embedding added between its convolutions.

    Called on `[x, embedding]` with `x` of shape `(batch, H, W, C)` and
    `embedding` of shape `(batch, D)` (the time embedding, plus the class
    embedding of a conditional network):

        h = Conv3x3(SiLU(GroupNorm(x)))
        h = h + Dense(SiLU(embedding))            # one shift per channel
        h = Conv3x3(Dropout(SiLU(GroupNorm(h))))  # zero-initialised
        output = h + x (x through a 1x1 Conv2D when C != width)

    The second convolution starts at zero, so a new block is the identity and
    a deep network trains from its first steps (Ho et al. 2020).

    Args:
        width: int. Number of output channels, a multiple of 8.
        dropout: float in [0, 1). Dropout rate before the second convolution.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`...).

    Example:
    >>> block = ResidualBlock(16)
    >>> x, embedding = keras.ops.ones((2, 8, 8, 8)), keras.ops.ones((2, 32))
    >>> block([x, embedding]).shape
    (2, 8, 8, 16)
    """

    def __init__(self, width, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_width(width, "ResidualBlock: width")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"ResidualBlock: dropout must be in [0, 1), got {dropout!r}.")
        self.width = width
        self.dropout = float(dropout)
        self.norm_1 = layers.GroupNormalization(GROUPS, name="norm_1", dtype=self.dtype_policy)
        self.conv_1 = layers.Conv2D(
            width, 3, padding="same", name="conv_1", dtype=self.dtype_policy
        )
        self.embedding_projection = layers.Dense(
            width, name="embedding_projection", dtype=self.dtype_policy
        )
        self.norm_2 = layers.GroupNormalization(GROUPS, name="norm_2", dtype=self.dtype_policy)
        self.dropout_layer = layers.Dropout(self.dropout, name="dropout", dtype=self.dtype_policy)
        self.conv_2 = layers.Conv2D(
            width,
            3,
            padding="same",
            kernel_initializer="zeros",
            name="conv_2",
            dtype=self.dtype_policy,
        )
        self.shortcut = None

    def build(self, inputs_shape):
        x_shape, embedding_shape = inputs_shape
        hidden_shape = tuple(x_shape[:-1]) + (self.width,)
        self.norm_1.build(x_shape)
        self.conv_1.build(x_shape)
        self.embedding_projection.build(embedding_shape)
        self.norm_2.build(hidden_shape)
        self.conv_2.build(hidden_shape)
        if x_shape[-1] != self.width:
            self.shortcut = layers.Conv2D(
                self.width, 1, name="shortcut", dtype=self.dtype_policy
            )
            self.shortcut.build(x_shape)

    def call(self, inputs, training=None):
        x, embedding = inputs
        hidden = self.conv_1(ops.silu(self.norm_1(x)))
        shift = self.embedding_projection(ops.silu(embedding))
        hidden = hidden + shift[:, None, None, :]
        hidden = self.dropout_layer(ops.silu(self.norm_2(hidden)), training=training)
        hidden = self.conv_2(hidden)
        residual = x if self.shortcut is None else self.shortcut(x)
        return residual + hidden

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape[0][:-1]) + (self.width,)

    def get_config(self):
        config = super().get_config()
        config.update({"width": self.width, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="keras_ddpm")
class AttentionBlock(layers.Layer):
    """Multi-head self-attention over the pixels of a feature map, residual.

    `output = x + MultiHeadAttention(GroupNorm(x))`, each pixel attending to
    every pixel: worth its cost at coarse resolutions (8x8 and below), where
    it lets distant parts of the image agree (Ho et al. 2020 use it at 16x16).

    Args:
        num_heads: int. Number of attention heads; the channels are split
            evenly between them.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> block = AttentionBlock(num_heads=2)
    >>> block(keras.ops.ones((2, 4, 4, 16))).shape
    (2, 4, 4, 16)
    """

    def __init__(self, num_heads=1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"AttentionBlock: num_heads must be a positive integer, got {num_heads!r}.")
        self.num_heads = num_heads
        self.norm = layers.GroupNormalization(GROUPS, name="norm", dtype=self.dtype_policy)
        self.attention = None

    def build(self, inputs_shape):
        channels = inputs_shape[-1]
        check_width(channels, "AttentionBlock: the number of channels")
        if channels % self.num_heads:
            raise ValueError(
                f"AttentionBlock: {channels} channels do not split into "
                f"{self.num_heads} heads."
            )
        self.norm.build(inputs_shape)
        self.attention = layers.MultiHeadAttention(
            self.num_heads,
            channels // self.num_heads,
            name="attention",
            dtype=self.dtype_policy,
        )
        sequence_shape = (inputs_shape[0], None, channels)
        self.attention.build(sequence_shape, sequence_shape)

    def call(self, x):
        return self.attend(x)

    def attend(self, x, identity=False):
        """The block's output; with `identity`, each pixel attends only to itself.

        `identity=True` replaces the attention map by the identity matrix
        (perturbed-attention guidance, `keras_ddpm.guidance`): the same
        weights, but no pixel sees another.

        Example:
        >>> block = AttentionBlock()
        >>> block.attend(keras.ops.ones((1, 2, 2, 8)), identity=True).shape
        (1, 2, 2, 8)
        """
        if not self.built:  # Called directly, not through __call__.
            self.build(x.shape)
            self.built = True
        height, width, channels = x.shape[1:]  # Static in a functional network.
        sequence = ops.reshape(self.norm(x), (-1, height * width, channels))
        mask = None
        if identity:
            pixels = height * width
            mask = ops.broadcast_to(
                ops.eye(pixels, dtype="bool"), (ops.shape(sequence)[0], pixels, pixels)
            )
        attended = self.attention(sequence, sequence, attention_mask=mask)
        return x + ops.reshape(attended, (-1, height, width, channels))

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads})
        return config
