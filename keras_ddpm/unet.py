"""`NaiveUnet`, the lecture's noise-prediction U-Net, and `Unet`, a modern one.

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
from keras_ddpm.unet_blocks import AttentionBlock, ResidualBlock, check_width

SIZE_MULTIPLE = 32  # Three 2x poolings and one 4x pooling.


def check_image_shape(input_shape, multiple=SIZE_MULTIPLE, why=None):
    """Return `input_shape` as a tuple of ints, or raise a `ValueError`.

    The U-Net needs height and width that are positive multiples of
    `multiple` (32 for `NaiveUnet`) and at least one channel.

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)`.
        multiple: int. What height and width must be multiples of.
        why: str or None. The reason, for the error message (default:
            NaiveUnet's).

    Example:
    >>> check_image_shape((64, 64, 3))
    (64, 64, 3)
    """
    if why is None:
        why = "for NaiveUnet (three 2x poolings and one 4x pooling)"
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
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise ValueError(
            f"Image height and width must be positive multiples of {multiple} "
            f"{why}, got {height}x{width}. Resize or crop the images, e.g. to 32x32 "
            "or 64x64."
        )
    if channels <= 0:
        raise ValueError(f"Images need at least one channel, got {channels}.")
    return shape


def check_num_classes(num_classes):
    """Raise a `ValueError` unless `num_classes` is a positive int or None."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(
            f"num_classes must be a positive integer or None, got {num_classes!r}."
        )


def class_embedding(num_classes, dim):
    """The `label` input `(batch, 1)` and its learned embedding `(batch, 1, dim)`.

    Ids 0..num_classes-1 are the classes, `num_classes` is "no class". The
    embedding starts at unit scale so that it is not drowned by the time
    embedding (see TOOLCHAIN.md).
    """
    label_in = keras.Input(shape=(1,), dtype="int32", name="label")
    c_emb = layers.Embedding(
        num_classes + 1,  # The last id means "no class".
        dim,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
        name="class_embedding",
    )(label_in)
    return label_in, c_emb


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
    check_num_classes(num_classes)
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
        label_in, c_emb = class_embedding(num_classes, 2 * n_feat)
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


def Unet(
    input_shape,
    widths=(32, 64, 128),
    blocks_per_level=1,
    attention_levels=None,
    num_heads=1,
    dropout=0.0,
    num_classes=None,
    patch_size=1,
    name="unet",
):
    """A modern noise-prediction U-Net (Ho et al. 2020; Nichol and Dhariwal 2021).

    Residual blocks (GroupNorm, SiLU, 3x3 convolutions) with the time
    embedding (sinusoidal, then an MLP) added in every block, self-attention
    at the coarse levels and in the middle, down-sampling by strided
    convolution and up-sampling by nearest neighbour then convolution, skip
    connections from every down block to its mirror up block, and a
    zero-initialised output convolution (the untrained network predicts 0).

    Level `i` works at `1 / 2**i` of the input resolution with `widths[i]`
    channels, so height and width must be multiples of `2**(len(widths) - 1)`.
    With `patch_size` p > 1 the network works on p x p patches: the image is
    cut into them and each patch's pixels become channels (space-to-depth, as
    in DiT and simple diffusion), and the output is put back together the same
    way; every level then works at `1 / (p * 2**i)` of the input resolution,
    and height and width must be multiples of `p * 2**(len(widths) - 1)`.
    Patches of 2 made training 2-4x cheaper on a 2-core CPU (BENCHMARKS.md).

    Same contract as `NaiveUnet`: inputs `[x_t, t]`, t in [0, 1] of shape
    `(batch, 1)`, plus `label` `(batch, 1)` when `num_classes` is set (ids
    0..K-1, and K for "no class"); the output has the shape of `x_t`.

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)`.
        widths: tuple of ints. Channels of each level, multiples of 8.
        blocks_per_level: int. Residual blocks per level on each side.
        attention_levels: tuple of ints or None. Levels (0 = the finest)
            whose blocks are followed by self-attention; None is
            the coarsest level alone.
        num_heads: int. Attention heads.
        dropout: float in [0, 1). Dropout in the residual blocks.
        num_classes: int or None. Number of classes of a class-conditional
            network; None for an unconditional one.
        patch_size: int. Side of the square patches the network works on;
            1 works on pixels.
        name: str. Name of the model.

    Returns:
        A functional `keras.Model`.

    Example:
    >>> net = Unet((32, 32, 3), widths=(16, 32), attention_levels=(1,))
    >>> x_t = keras.random.normal((2, 32, 32, 3))
    >>> net.predict([x_t, keras.ops.ones((2, 1)) * 0.5], verbose=0).shape
    (2, 32, 32, 3)
    >>> patched = Unet((32, 32, 3), widths=(16, 32), patch_size=2)
    >>> patched.get_layer("stem").input.shape  # 2x2 patches of 3 channels
    (None, 16, 16, 12)
    >>> patched.predict([x_t, keras.ops.ones((2, 1)) * 0.5], verbose=0).shape
    (2, 32, 32, 3)
    """
    widths = tuple(widths)
    if attention_levels is None:
        attention_levels = (len(widths) - 1,)
    attention_levels = tuple(attention_levels)
    height, width, channels = _check_unet_settings(
        input_shape, widths, blocks_per_level, attention_levels, num_classes, patch_size
    )
    img_in = keras.Input(shape=(height, width, channels), name="x_t")
    t_in = keras.Input(shape=(1,), name="t")
    inputs = [img_in, t_in]
    emb_dim = 4 * widths[0]
    embedding = TimeLayer(emb_dim, embedding="sinusoidal", name="time_embedding")(t_in)
    if num_classes is not None:
        label_in, c_emb = class_embedding(num_classes, emb_dim)
        c_emb = layers.Reshape((emb_dim,), name="class_reshape")(c_emb)
        embedding = layers.Add(name="add_class")([embedding, c_emb])
        inputs.append(label_in)

    def block(x, level, label):
        x = ResidualBlock(widths[level], dropout, name=f"{label}_residual")([x, embedding])
        if level in attention_levels:
            x = AttentionBlock(num_heads, name=f"{label}_attention")(x)
        return x

    x = img_in
    if patch_size > 1:
        x = _to_patches(x, patch_size)
    x = layers.Conv2D(widths[0], 3, padding="same", name="stem")(x)
    skips = []
    for level in range(len(widths)):
        if level:
            x = layers.Conv2D(
                widths[level], 3, strides=2, padding="same", name=f"down_{level}"
            )(x)
        for index in range(blocks_per_level):
            x = block(x, level, f"down_{level}_{index}")
            skips.append(x)
    x = ResidualBlock(widths[-1], dropout, name="middle_residual_1")([x, embedding])
    x = AttentionBlock(num_heads, name="middle_attention")(x)
    x = ResidualBlock(widths[-1], dropout, name="middle_residual_2")([x, embedding])
    for level in reversed(range(len(widths))):
        for index in range(blocks_per_level):
            x = layers.Concatenate(name=f"up_{level}_{index}_skip")([x, skips.pop()])
            x = block(x, level, f"up_{level}_{index}")
        if level:
            x = layers.UpSampling2D(2, name=f"up_{level}_resize")(x)
            x = layers.Conv2D(widths[level - 1], 3, padding="same", name=f"up_{level}")(x)
    x = layers.GroupNormalization(GROUPS, name="out_norm")(x)
    x = layers.Activation("silu", name="out_silu")(x)
    out = layers.Conv2D(
        channels * patch_size**2, 3, padding="same", kernel_initializer="zeros", name="out",
        dtype="float32",
    )(x)
    if patch_size > 1:
        out = _from_patches(out, patch_size, channels)
    return keras.Model(inputs=inputs, outputs=out, name=name)


def _to_patches(images, patch):
    """(B, H, W, C) -> (B, H/p, W/p, p*p*C): each p x p patch's pixels as channels."""
    height, width, channels = images.shape[1:]
    x = layers.Reshape((height // patch, patch, width // patch, patch, channels),
                       name="patches_split")(images)
    x = layers.Permute((1, 3, 2, 4, 5), name="patches_gather")(x)
    return layers.Reshape((height // patch, width // patch, patch * patch * channels),
                          name="patches")(x)


def _from_patches(patches, patch, channels):
    """The inverse of `_to_patches`, in float32 as the output convolution."""
    height, width = patches.shape[1] * patch, patches.shape[2] * patch
    x = layers.Reshape((height // patch, width // patch, patch, patch, channels),
                       name="unpatches_split", dtype="float32")(patches)
    x = layers.Permute((1, 3, 2, 4, 5), name="unpatches_gather", dtype="float32")(x)
    return layers.Reshape((height, width, channels), name="unpatches", dtype="float32")(x)


def _check_unet_settings(input_shape, widths, blocks_per_level, attention_levels, num_classes,
                         patch_size=1):
    """The checked `(height, width, channels)` for `Unet`, or a `ValueError`."""
    if not widths:
        raise ValueError("widths must list the channels of at least one level, got ().")
    for level_width in widths:
        check_width(level_width, "Every entry of widths")
    if isinstance(blocks_per_level, bool) or not isinstance(blocks_per_level, int) or blocks_per_level < 1:
        raise ValueError(f"blocks_per_level must be a positive integer, got {blocks_per_level!r}.")
    if any(level not in range(len(widths)) for level in attention_levels):
        raise ValueError(
            f"attention_levels must be level indices in 0..{len(widths) - 1} "
            f"(one per entry of widths), got {attention_levels!r}."
        )
    check_num_classes(num_classes)
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}.")
    downsamplings = len(widths) - 1
    why = f"for a Unet with {len(widths)} levels ({downsamplings} down-samplings by 2)"
    if patch_size > 1:
        why += f" on {patch_size}x{patch_size} patches"
    return check_image_shape(input_shape, multiple=patch_size * 2**downsamplings, why=why)
