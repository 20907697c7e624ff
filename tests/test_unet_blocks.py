"""The modern U-Net (`keras_ddpm.Unet`) and its blocks."""
import numpy as np
import pytest
import keras

from helpers import run_layer_test
from keras_ddpm import AttentionBlock, DiffusionModel, ResidualBlock, Unet

SHAPE = (32, 32, 3)
TINY = {"widths": (8, 16), "attention_levels": (1,)}


def inputs(batch, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    x_t = rng.normal(size=(batch,) + shape).astype("float32")
    t = rng.uniform(size=(batch, 1)).astype("float32")
    return x_t, t


@pytest.mark.parametrize("in_channels,weights", [(16, 10), (8, 12)])
def test_residual_block(in_channels, weights, tmp_path):
    # Two GroupNorms, two convs and the embedding's Dense (2 weights each),
    # plus a 1x1 shortcut conv when the channel count changes.
    rng = np.random.default_rng(0)
    run_layer_test(
        ResidualBlock,
        {"width": 16, "dropout": 0.1},
        [rng.normal(size=(2, 8, 8, in_channels)).astype("float32"),
         rng.normal(size=(2, 32)).astype("float32")],
        (2, 8, 8, 16),
        expected_num_weights=weights,
        tmp_path=tmp_path,
    )


def test_residual_block_starts_as_the_identity_plus_shortcut():
    """The second convolution is zero-initialised: a new block returns its input."""
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 16)).astype("float32")
    block = ResidualBlock(16)
    out = block([x, np.ones((2, 8), "float32")])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), x, atol=1e-6)


def test_attention_block(tmp_path):
    # GroupNorm (2) + query, key, value and output projections (2 each).
    run_layer_test(
        AttentionBlock,
        {"num_heads": 2},
        np.random.default_rng(0).normal(size=(2, 4, 4, 16)).astype("float32"),
        (2, 4, 4, 16),
        expected_num_weights=10,
        tmp_path=tmp_path,
    )


def test_attention_mixes_distant_pixels():
    """Changing one pixel changes the output at the opposite corner."""
    block = AttentionBlock()
    x = np.random.default_rng(2).normal(size=(1, 4, 4, 8)).astype("float32")
    changed = x.copy()
    changed[0, 0, 0] += 3.0
    before = keras.ops.convert_to_numpy(block(x))[0, 3, 3]
    after = keras.ops.convert_to_numpy(block(changed))[0, 3, 3]
    assert np.abs(before - after).max() > 1e-4


@pytest.mark.parametrize("shape,widths", [
    ((32, 32, 3), (8, 16)), ((16, 24, 1), (8, 16, 16)), ((8, 8, 3), (8,)),
])
def test_output_shaped_like_input_and_zero_at_start(shape, widths):
    net = Unet(shape, widths=widths)
    x_t, t = inputs(2, shape)
    out = keras.ops.convert_to_numpy(net([x_t, t]))
    assert out.shape == x_t.shape
    np.testing.assert_array_equal(out, 0.0)  # Zero-initialised output convolution.


def perturbed(net, seed=3):
    """Give the zero-initialised convolutions random weights, so outputs vary."""
    rng = np.random.default_rng(seed)
    for weight in net.weights:
        if not np.any(keras.ops.convert_to_numpy(weight)) and len(weight.shape) == 4:
            weight.assign(rng.normal(0, 0.05, weight.shape).astype("float32"))
    return net


def test_time_and_blocks_reach_the_output():
    net = perturbed(Unet(SHAPE, blocks_per_level=2, **TINY))
    assert len([layer for layer in net.layers if isinstance(layer, ResidualBlock)]) == 2 * 2 * 2 + 2
    x_t, _ = inputs(1)
    early = net([x_t, np.array([[0.01]], "float32")])
    late = net([x_t, np.array([[0.99]], "float32")])
    assert np.abs(keras.ops.convert_to_numpy(early - late)).max() > 1e-4


def test_keras_round_trip_reproduces_outputs(tmp_path):
    net = perturbed(Unet(SHAPE, dropout=0.1, num_heads=2, **TINY))
    x_t, t = inputs(3, seed=1)
    # Plain calls in inference mode (predict would trace a function for each network).
    expected = keras.ops.convert_to_numpy(net([x_t, t], training=False))
    net.save(tmp_path / "unet.keras")
    reloaded = keras.models.load_model(tmp_path / "unet.keras")  # safe mode
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded([x_t, t], training=False)),
                               expected, atol=1e-5)
    config = net.get_layer("down_1_0_residual").get_config()
    assert (config["width"], config["dropout"]) == (16, 0.1)


def test_conditional_input_changes_the_output():
    net = perturbed(Unet(SHAPE, num_classes=3, **TINY))
    assert [tensor.name for tensor in net.inputs] == ["x_t", "t", "label"]
    x_t, t = inputs(2)
    x_t, t = np.repeat(x_t[:1], 4, 0), np.repeat(t[:1], 4, 0)
    out = keras.ops.convert_to_numpy(net([x_t, t, np.array([[0], [1], [2], [3]])]))
    assert out.shape == x_t.shape
    for other in (1, 2, 3):  # 3 is "no class".
        assert np.abs(out[0] - out[other]).max() > 1e-4
    model = DiffusionModel(net, T=10, num_classes=3)
    assert model.sample(2, steps=2, labels=[0, 2], seed=0).shape == (2,) + SHAPE


def test_patches_are_exact_space_to_depth_and_back(tmp_path):
    """patch_size 2: the network sees each 2x2 patch's pixels as channels, in
    (row, column, channel) order, and its output is put back pixel for pixel."""
    net = perturbed(Unet((16, 8, 3), patch_size=2, **TINY))
    x_t, t = inputs(2, (16, 8, 3))
    seen = keras.Model(net.inputs, net.get_layer("patches").output)([x_t, t])
    reference = x_t.reshape(2, 8, 2, 4, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 8, 4, 12)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(seen), reference)
    # The last three layers undo the first three: the output pixel (i, j) is channels
    # ((i % 2) * 2 + j % 2) * 3 + (0, 1, 2) of the output convolution at (i // 2, j // 2).
    patched_out = keras.ops.convert_to_numpy(
        keras.Model(net.inputs, net.get_layer("out").output)([x_t, t]))
    out = keras.ops.convert_to_numpy(net([x_t, t]))
    np.testing.assert_array_equal(out[:, 5, 3], patched_out[:, 2, 1, 9:12])  # (1 * 2 + 1) * 3 = 9
    np.testing.assert_array_equal(
        out, patched_out.reshape(2, 8, 4, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 8, 3))
    net.save(tmp_path / "patched.keras")
    reloaded = keras.models.load_model(tmp_path / "patched.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded([x_t, t])), out, atol=1e-5)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_mixed_bfloat16_computes_in_bfloat16_with_float32_output(patch_size):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        net = perturbed(Unet(SHAPE, patch_size=patch_size, **TINY))
    finally:
        keras.config.set_dtype_policy(previous)
    block = net.get_layer("down_1_0_residual")
    assert block.conv_1.compute_dtype == "bfloat16"
    assert net.get_layer("middle_attention").attention.compute_dtype == "bfloat16"
    assert all(weight.dtype == "float32" for weight in net.weights)
    x_t, t = inputs(2)
    out = net([x_t, t])
    assert out.dtype == "float32" and np.all(np.isfinite(keras.ops.convert_to_numpy(out)))


@pytest.mark.parametrize("kwargs,match", [
    ({"input_shape": (30, 32, 3), "widths": (8, 16, 16)}, "multiples of 4 for a Unet with 3 levels"),
    ({"input_shape": (32, 32, 3), "widths": (8, 16, 16, 16, 16, 16, 16)}, "multiples of 64"),
    ({"input_shape": (32, 32)}, "height, width, channels"),
    ({"input_shape": (32, 32, 3), "widths": (8, 12)}, "multiple of 8"),
    ({"input_shape": (32, 32, 3), "widths": ()}, "at least one level"),
    ({"input_shape": (32, 32, 3), "attention_levels": (2,)}, "level indices in 0..1"),
    ({"input_shape": (32, 32, 3), "blocks_per_level": 0}, "blocks_per_level"),
    ({"input_shape": (32, 32, 3), "num_classes": 0}, "num_classes"),
    ({"input_shape": (32, 32, 3), "dropout": 1.0}, "dropout"),
    ({"input_shape": (36, 36, 3), "patch_size": 4}, "multiples of 8 .* on 4x4 patches"),
    ({"input_shape": (32, 32, 3), "patch_size": 0}, "patch_size"),
    ({"input_shape": (32, 32, 3), "patch_size": 2.0}, "patch_size"),
])
def test_bad_settings_raise_one_clear_error(kwargs, match):
    kwargs = {"widths": (8, 16), **kwargs}
    with pytest.raises(ValueError, match=match):
        Unet(**kwargs)
