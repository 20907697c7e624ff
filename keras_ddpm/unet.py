"""`NaiveUnet`: the lecture's noise-prediction U-Net as a functional Keras model.

Shapes through the network for a 32x32 input (64x64 doubles each spatial size):

    x_t (32x32xC) -> Conv3Layer(n, residual) -> x           32x32 n
    x  -> UnetDownLayer(n)   -> d1                           16x16 n
    d1 -> UnetDownLayer(2n)  -> d2                            8x8 2n
    d2 -> UnetDownLayer(2n)  -> d3                            4x4 2n
    d3 -> AveragePooling(4) -> ReLU -> + TimeLayer(t)          1x1 2n
       -> Conv2DTranspose(x4) -> GroupNorm -> ReLU -> thro      4x4 2n
    [thro, d3] -> UnetUpLayer(2n) (+ time) -> up1              8x8 2n
    [up1, d2]  -> UnetUpLayer(2n)          -> up2             16x16 2n
    [up2, d1]  -> UnetUpLayer(2n)          -> up3             32x32 2n
    [up3, x] -> Conv2D(3x3, C) -> predicted noise            32x32 C

Fixes to the lecture (see DESIGN.md): the bottleneck's `Conv2DTranspose` has
kernel 4 and stride 4, undoing the 4x4 average pool, and each `UnetUpLayer`
up-samples x2; the output has as many channels as the input (the lecture
hard-codes 3). As in minDiffusion, the time embedding is also added to the
first up-sampling block's output.
"""

import keras
from keras import layers

from keras_ddpm.layers import GROUPS, Conv3Layer, TimeLayer, UnetDownLayer, UnetUpLayer

SIZE_MULTIPLE = 32  # Three 2x poolings and one 4x pooling.


def check_image_shape(input_shape):
    """Return `input_shape` as a tuple of ints, or raise a `ValueError`.

    The U-Net needs height and width that are positive multiples of 32 and
    at least one channel.

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)`.

    Example:
    >>> check_image_shape((64, 64, 3))
    (64, 64, 3)
    """
    try:
        shape = tuple(int(size) for size in input_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"input_shape must be (height, width, channels), got {input_shape!r}."
        ) from None
    if len(shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels), got {input_shape!r}."
        )
    height, width, channels = shape
    if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(
            f"Image height and width must be positive multiples of {SIZE_MULTIPLE} "
            f"for NaiveUnet (three 2x poolings and one 4x pooling), got "
            f"{height}x{width}. Resize or crop the images, e.g. to 32x32 or 64x64."
        )
    if channels <= 0:
        raise ValueError(f"Images need at least one channel, got {channels}.")
    return shape


def NaiveUnet(
    input_shape,
    n_feat=64,
    time_embedding="learned",
    num_classes=None,
    name="naive_unet",
):
    """The lecture's U-Net: predicts the noise in `x_t` given `t` in [0, 1].

    Inputs are `[x_t, t]`, with `x_t` of shape `(batch, H, W, C)` and `t` of
    shape `(batch, 1)` (a vector `(batch,)` is accepted too, as the lecture's
    sampling loop passes); the output has the shape of `x_t`.

    With `num_classes=K` the network is class-conditional: a third input
    `label` of shape `(batch, 1)` holds int class ids in 0..K-1, or K for
    "no class" (what classifier-free guidance trains and samples with). A
    learned class embedding, initialised at unit scale so that it is not
    drowned by the time embedding, is added to the time embedding wherever
    that enters the network.

    At the lecture's setting (64x64x3, `n_feat=512`) it has 194 million
    parameters (the slides quote 129 million); `n_feat=64` has 3.0 million and
    `n_feat=16` 0.19 million, at any image size.

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)`; height and
            width must be multiples of 32.
        n_feat: int. Width of the first level (a multiple of 8); deeper
            levels use `2 * n_feat`.
        time_embedding: str. `"learned"` (the lecture's `TimeLayer`) or
            `"sinusoidal"`.
        num_classes: int or None. Number of classes for a class-conditional
            network; None (the lecture's) for an unconditional one.
        name: str. Name of the model.

    Returns:
        A functional `keras.Model`.

    Example:
    >>> net = NaiveUnet((32, 32, 3), n_feat=16)
    >>> x_t = keras.random.normal((2, 32, 32, 3))
    >>> net.predict([x_t, keras.ops.ones((2, 1)) * 0.5], verbose=0).shape
    (2, 32, 32, 3)
    >>> cond = NaiveUnet((32, 32, 3), n_feat=16, num_classes=3)
    >>> labels = keras.ops.array([[0], [3]])  # A class id, and 3 = "no class".
    >>> cond.predict([x_t, keras.ops.ones((2, 1)), labels], verbose=0).shape
    (2, 32, 32, 3)
    """
    height, width, channels = check_image_shape(input_shape)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(
            f"num_classes must be a positive integer or None, got {num_classes!r}."
        )
    if not isinstance(n_feat, int) or n_feat < GROUPS or n_feat % GROUPS:
        raise ValueError(
            f"n_feat must be a positive multiple of {GROUPS} (GroupNormalization "
            f"uses {GROUPS} groups), got {n_feat!r}."
        )

    img_in = keras.Input(shape=(height, width, channels), name="x_t")
    t_in = keras.Input(shape=(1,), name="t")

    x = Conv3Layer(n_feat, is_res=True, name="init_conv")(img_in)

    d1 = UnetDownLayer(n_feat, name="down_1")(x)
    d2 = UnetDownLayer(2 * n_feat, name="down_2")(d1)
    d3 = UnetDownLayer(2 * n_feat, name="down_3")(d2)

    thro = layers.AveragePooling2D(pool_size=4, name="to_vec_pool")(d3)
    thro = layers.ReLU(name="to_vec_relu")(thro)

    t_emb = TimeLayer(2 * n_feat, embedding=time_embedding, name="time_embedding")(t_in)
    t_emb = layers.Reshape((1, 1, 2 * n_feat), name="time_reshape")(t_emb)
    inputs = [img_in, t_in]
    if num_classes is not None:
        label_in = keras.Input(shape=(1,), dtype="int32", name="label")
        c_emb = layers.Embedding(
            num_classes + 1,  # The last id means "no class".
            2 * n_feat,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="class_embedding",
        )(label_in)
        c_emb = layers.Reshape((1, 1, 2 * n_feat), name="class_reshape")(c_emb)
        t_emb = layers.Add(name="add_class")([t_emb, c_emb])
        inputs.append(label_in)

    thro = layers.Add(name="add_time_bottleneck")([thro, t_emb])
    thro = layers.Conv2DTranspose(
        2 * n_feat, kernel_size=4, strides=4, padding="same", name="up_0"
    )(thro)
    thro = layers.GroupNormalization(GROUPS, name="up_0_norm")(thro)
    thro = layers.ReLU(name="up_0_relu")(thro)

    up1 = UnetUpLayer(2 * n_feat, name="up_1")([thro, d3])
    up1 = layers.Add(name="add_time_up_1")([up1, t_emb])
    up2 = UnetUpLayer(2 * n_feat, name="up_2")([up1, d2])
    up3 = UnetUpLayer(2 * n_feat, name="up_3")([up2, d1])

    out = layers.Concatenate(axis=-1, name="concat_out")([up3, x])
    out = layers.Conv2D(
        channels, kernel_size=3, padding="same", name="out", dtype="float32"
    )(out)

    return keras.Model(inputs=inputs, outputs=out, name=name)
