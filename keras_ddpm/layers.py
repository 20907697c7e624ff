"""The lecture's four U-Net layers, as serializable Keras layers.

`Conv3Layer`, `UnetDownLayer`, `UnetUpLayer` and `TimeLayer` keep the names and
arguments of the lecture's `unet.py` (seed 004) and are registered under the
package name `keras_ddpm`, so a `.keras` file that uses them loads with safe
mode on after `import keras_ddpm`.

Fixes to the lecture: `UnetUpLayer` up-samples x2 (its `Conv2DTranspose` has
`strides=2`, as in minDiffusion's `UnetUp`, from which the lecture's network
was ported), and activations are applied with `keras.ops` instead of creating
a new `ReLU` layer on every call.

References:
    Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models",
    arXiv:2006.11239 (2020).
"""

import keras
from keras import layers, ops

GROUPS = 8
TIME_EMBEDDINGS = ("learned", "sinusoidal")


def _check_num_chan(num_chan, layer_name):
    if not isinstance(num_chan, int) or num_chan < GROUPS or num_chan % GROUPS:
        raise ValueError(
            f"{layer_name}: num_chan must be a positive multiple of {GROUPS} "
            f"(GroupNormalization uses {GROUPS} groups), got {num_chan!r}."
        )


@keras.saving.register_keras_serializable(package="keras_ddpm")
class Conv3Layer(layers.Layer):
    """Two 3x3 convolutions, each followed by GroupNorm(8) and ReLU.

    With `is_res=True` the output of the first block is added to the output of
    the second (a residual connection), as in the lecture.

    Args:
        num_chan: int. Number of output channels, a multiple of 8.
        is_res: bool. Whether to add the residual connection.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`...).

    Example:
    >>> layer = Conv3Layer(16, is_res=True)
    >>> layer(keras.ops.ones((2, 32, 32, 3))).shape
    (2, 32, 32, 16)
    """

    def __init__(self, num_chan, is_res=False, **kwargs):
        super().__init__(**kwargs)
        _check_num_chan(num_chan, "Conv3Layer")
        self.num_chan = num_chan
        self.is_res = is_res
        self.Conv2D_1 = layers.Conv2D(
            num_chan, 3, padding="same", name="conv_1", dtype=self.dtype_policy
        )
        self.Norm_1 = layers.GroupNormalization(
            GROUPS, name="norm_1", dtype=self.dtype_policy
        )
        self.Conv2D_2 = layers.Conv2D(
            num_chan, 3, padding="same", name="conv_2", dtype=self.dtype_policy
        )
        self.Norm_2 = layers.GroupNormalization(
            GROUPS, name="norm_2", dtype=self.dtype_policy
        )

    def build(self, inputs_shape):
        self.Conv2D_1.build(inputs_shape)
        hidden_shape = tuple(inputs_shape[:-1]) + (self.num_chan,)
        self.Norm_1.build(hidden_shape)
        self.Conv2D_2.build(hidden_shape)
        self.Norm_2.build(hidden_shape)

    def call(self, inputs):
        first = ops.relu(self.Norm_1(self.Conv2D_1(inputs)))
        second = ops.relu(self.Norm_2(self.Conv2D_2(first)))
        if self.is_res:
            return first + second
        return second

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape[:-1]) + (self.num_chan,)

    def get_config(self):
        config = super().get_config()
        config.update({"num_chan": self.num_chan, "is_res": self.is_res})
        return config


@keras.saving.register_keras_serializable(package="keras_ddpm")
class UnetDownLayer(layers.Layer):
    """A `Conv3Layer` followed by 2x2 max pooling: halves height and width.

    Args:
        num_chan: int. Number of output channels, a multiple of 8.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> layer = UnetDownLayer(16)
    >>> layer(keras.ops.ones((2, 32, 32, 8))).shape
    (2, 16, 16, 16)
    """

    def __init__(self, num_chan, **kwargs):
        super().__init__(**kwargs)
        _check_num_chan(num_chan, "UnetDownLayer")
        self.num_chan = num_chan
        self.Conv3 = Conv3Layer(num_chan, name="conv3", dtype=self.dtype_policy)
        self.MaxPool2D = layers.MaxPool2D(
            pool_size=2, strides=2, name="max_pool", dtype=self.dtype_policy
        )

    def build(self, inputs_shape):
        self.Conv3.build(inputs_shape)

    def call(self, inputs):
        return self.MaxPool2D(self.Conv3(inputs))

    def compute_output_shape(self, inputs_shape):
        batch, height, width = inputs_shape[:3]
        half = lambda size: None if size is None else size // 2  # noqa: E731
        return (batch, half(height), half(width), self.num_chan)

    def get_config(self):
        config = super().get_config()
        config.update({"num_chan": self.num_chan})
        return config


@keras.saving.register_keras_serializable(package="keras_ddpm")
class UnetUpLayer(layers.Layer):
    """Concatenate with the skip connection, up-sample x2, two `Conv3Layer`s.

    Called on a pair `[img_input, skip]` of the same height and width; returns
    a tensor twice as high and wide with `num_chan` channels.

    Args:
        num_chan: int. Number of output channels, a multiple of 8.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> layer = UnetUpLayer(16)
    >>> x, skip = keras.ops.ones((2, 4, 4, 16)), keras.ops.ones((2, 4, 4, 16))
    >>> layer([x, skip]).shape
    (2, 8, 8, 16)
    """

    def __init__(self, num_chan, **kwargs):
        super().__init__(**kwargs)
        _check_num_chan(num_chan, "UnetUpLayer")
        self.num_chan = num_chan
        self.Concatenate = layers.Concatenate(
            axis=-1, name="concatenate", dtype=self.dtype_policy
        )
        self.Conv2DTranspose = layers.Conv2DTranspose(
            num_chan,
            kernel_size=2,
            strides=2,
            padding="same",
            name="conv_transpose",
            dtype=self.dtype_policy,
        )
        self.Conv3_1 = Conv3Layer(num_chan, name="conv3_1", dtype=self.dtype_policy)
        self.Conv3_2 = Conv3Layer(num_chan, name="conv3_2", dtype=self.dtype_policy)

    def build(self, inputs_shape):
        img_shape, skip_shape = inputs_shape
        if img_shape[1:3] != skip_shape[1:3]:
            raise ValueError(
                "UnetUpLayer: the input and the skip connection must have the "
                f"same height and width, got {img_shape} and {skip_shape}."
            )
        # Build every sublayer, or fit under a tf.distribute strategy finds
        # the model unbuilt and tries to build it by calling it on images.
        self.Concatenate.build([img_shape, skip_shape])
        merged_shape = tuple(img_shape[:-1]) + (img_shape[-1] + skip_shape[-1],)
        self.Conv2DTranspose.build(merged_shape)
        up_shape = self.compute_output_shape(inputs_shape)
        self.Conv3_1.build(up_shape)
        self.Conv3_2.build(up_shape)

    def call(self, inputs):
        img_input, skip = inputs
        x = self.Concatenate([img_input, skip])
        x = self.Conv2DTranspose(x)
        x = self.Conv3_1(x)
        return self.Conv3_2(x)

    def compute_output_shape(self, inputs_shape):
        batch, height, width = inputs_shape[0][:3]
        double = lambda size: None if size is None else size * 2  # noqa: E731
        return (batch, double(height), double(width), self.num_chan)

    def get_config(self):
        config = super().get_config()
        config.update({"num_chan": self.num_chan})
        return config


@keras.saving.register_keras_serializable(package="keras_ddpm")
class TimeLayer(layers.Layer):
    """Embeds the diffusion time `t` in [0, 1] (shape `(batch, 1)`) as a vector.

    `embedding="learned"` (default) is minDiffusion's `TimeSiren`, the network
    the lecture's code was ported from: `Dense(emb_dim, no bias) -> sin ->
    Dense(emb_dim)`. `embedding="sinusoidal"` uses the transformer's fixed sine
    and cosine features (KerasHub's `SinePositionEncoding`, at positions
    `t * max_period`) followed by `Dense -> swish -> Dense`, as in Ho et al.

    The embedding is computed in float32 (the layer's variable dtype) under any
    mixed precision policy and only its output is cast to the compute dtype:
    in bfloat16, t itself would keep 8 significant bits (only 128 distinct
    times between 0.5 and 1). It is a tiny part of the network's work.

    Args:
        emb_dim: int. Size of the embedding.
        embedding: str. `"learned"` or `"sinusoidal"`.
        max_period: float. Scale from t in [0, 1] to the sinusoid's positions
            (only for `"sinusoidal"`); 1000 matches T = 1000 steps.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> layer = TimeLayer(32)
    >>> layer(keras.ops.ones((4, 1)) * 0.5).shape
    (4, 32)
    """

    def __init__(self, emb_dim, embedding="learned", max_period=1000.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(emb_dim, int) or emb_dim < 2 or emb_dim % 2:
            raise ValueError(
                f"TimeLayer: emb_dim must be an even integer >= 2, got {emb_dim!r}."
            )
        if embedding not in TIME_EMBEDDINGS:
            raise ValueError(
                f"TimeLayer: embedding must be one of {TIME_EMBEDDINGS}, "
                f"got {embedding!r}."
            )
        self.emb_dim = emb_dim
        self.embedding = embedding
        self.max_period = float(max_period)
        # float32 under the mixed policies (and the policy's own dtype otherwise).
        time_dtype = self.dtype_policy.variable_dtype
        if embedding == "learned":
            self.Dense_1 = layers.Dense(
                emb_dim, use_bias=False, name="dense_1", dtype=time_dtype
            )
            self.sine_encoding = None
        else:
            import keras_hub  # Imported here: only this option needs it.

            self.sine_encoding = keras_hub.layers.SinePositionEncoding(
                name="sine_encoding", dtype=time_dtype
            )
            self.Dense_1 = layers.Dense(
                emb_dim, activation="swish", name="dense_1", dtype=time_dtype
            )
        self.Dense_2 = layers.Dense(emb_dim, name="dense_2", dtype=time_dtype)

    def build(self, t_shape):
        batch = t_shape[0]
        self.Dense_1.build((batch, 1 if self.sine_encoding is None else self.emb_dim))
        self.Dense_2.build((batch, self.emb_dim))

    def _features(self, t):
        """Time features of shape (batch, width) before the last Dense."""
        if self.sine_encoding is None:
            return ops.sin(self.Dense_1(t))
        positions = t * self.max_period
        zeros = ops.zeros_like(ops.repeat(ops.expand_dims(t, -1), self.emb_dim, -1))
        encoding = self.sine_encoding(zeros, positions=positions)
        return self.Dense_1(ops.squeeze(encoding, axis=1))

    @property
    def input_dtype(self):
        """t is cast to the variable dtype (float32 under mixed precision), not lower."""
        return self.dtype_policy.variable_dtype

    def call(self, t):
        t = ops.reshape(ops.cast(t, self.input_dtype), (-1, 1))
        return ops.cast(self.Dense_2(self._features(t)), self.compute_dtype)

    def compute_output_shape(self, t_shape):
        return (t_shape[0], self.emb_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "emb_dim": self.emb_dim,
                "embedding": self.embedding,
                "max_period": self.max_period,
            }
        )
        return config
