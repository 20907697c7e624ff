import numpy as np
import pytest
import keras

from helpers import run_layer_test
from keras_ddpm import Conv3Layer, TimeLayer, UnetDownLayer, UnetUpLayer


def random_images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("is_res", [False, True])
def test_conv3_layer(is_res, tmp_path):
    # Two convolutions (kernel + bias) and two GroupNorms (gamma + beta).
    run_layer_test(
        Conv3Layer,
        {"num_chan": 16, "is_res": is_res},
        random_images((2, 8, 8, 3)),
        (2, 8, 8, 16),
        expected_num_weights=8,
        tmp_path=tmp_path,
    )


def test_conv3_residual_adds_first_block():
    x = random_images((2, 8, 8, 3))
    layer = Conv3Layer(8, is_res=True)
    out = keras.ops.convert_to_numpy(layer(x))
    first = keras.ops.relu(layer.Norm_1(layer.Conv2D_1(x)))
    second = keras.ops.relu(layer.Norm_2(layer.Conv2D_2(first)))
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(first + second), atol=1e-6)


def test_unet_down_layer_halves(tmp_path):
    run_layer_test(
        UnetDownLayer,
        {"num_chan": 16},
        random_images((2, 16, 16, 8)),
        (2, 8, 8, 16),
        expected_num_weights=8,
        tmp_path=tmp_path,
    )


def test_unet_up_layer_doubles(tmp_path):
    # Conv2DTranspose (2) + two Conv3Layers (8 each).
    run_layer_test(
        UnetUpLayer,
        {"num_chan": 16},
        [random_images((2, 4, 4, 16), 1), random_images((2, 4, 4, 8), 2)],
        (2, 8, 8, 16),
        expected_num_weights=18,
        tmp_path=tmp_path,
    )


def test_unet_up_layer_rejects_mismatched_skip():
    layer = UnetUpLayer(8)
    with pytest.raises(ValueError, match="same height and width"):
        layer([random_images((1, 4, 4, 8)), random_images((1, 8, 8, 8))])


@pytest.mark.parametrize("embedding,num_weights", [("learned", 3), ("sinusoidal", 4)])
def test_time_layer(embedding, num_weights, tmp_path):
    t = np.linspace(0, 1, 5, dtype="float32").reshape(5, 1)
    layer = run_layer_test(
        TimeLayer,
        {"emb_dim": 16, "embedding": embedding},
        t,
        (5, 16),
        expected_num_weights=num_weights,
        tmp_path=tmp_path,
    )
    out = keras.ops.convert_to_numpy(layer(t))
    # Different times give different embeddings.
    assert np.min(np.abs(out[1:] - out[:-1]).sum(axis=1)) > 1e-3


def test_time_layer_accepts_vector_t():
    layer = TimeLayer(8)
    t = np.array([0.1, 0.5, 0.9], dtype="float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(t)),
        keras.ops.convert_to_numpy(layer(t[:, None])),
    )


def test_time_layer_learned_formula():
    """TimeSiren: Dense_2(sin(Dense_1(t)))."""
    layer = TimeLayer(8)
    t = np.array([[0.25], [0.75]], dtype="float32")
    out = keras.ops.convert_to_numpy(layer(t))
    w1 = keras.ops.convert_to_numpy(layer.Dense_1.kernel).astype(np.float64)
    w2 = keras.ops.convert_to_numpy(layer.Dense_2.kernel).astype(np.float64)
    b2 = keras.ops.convert_to_numpy(layer.Dense_2.bias).astype(np.float64)
    expected = np.sin(t.astype(np.float64) @ w1) @ w2 + b2
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("embedding", ["learned", "sinusoidal"])
def test_time_layer_embeds_t_in_float32_under_mixed_bfloat16(embedding):
    """bfloat16 keeps 8 significant bits: t in [0.5, 1) would take 128 values only.

    The layer computes in float32 and rounds only its output to bfloat16.
    """
    t = (np.arange(500, 1001, dtype="float32") / 1000)[:, None]  # t = 500/1000 .. 1000/1000
    exact = TimeLayer(16, embedding=embedding)
    exact(t)
    mixed = TimeLayer(16, embedding=embedding, dtype="mixed_bfloat16")
    mixed(t)
    mixed.set_weights(exact.get_weights())
    assert mixed.compute_dtype == "bfloat16" and mixed.Dense_2.compute_dtype == "float32"
    out = keras.ops.convert_to_numpy(keras.ops.cast(mixed(t), "float32"))
    assert mixed(t).dtype == "bfloat16"
    rounded = keras.ops.cast(keras.ops.cast(exact(t), "bfloat16"), "float32")
    np.testing.assert_array_equal(out, keras.ops.convert_to_numpy(rounded))
    assert np.any(out[0] != out[1])  # t = 500/1000 and 501/1000 differ.
    assert len(np.unique(out, axis=0)) > 450  # 128 or fewer when t was cast to bfloat16.


@pytest.mark.parametrize(
    "layer_cls,kwargs,match",
    [
        (Conv3Layer, {"num_chan": 12}, "multiple of 8"),
        (UnetDownLayer, {"num_chan": 0}, "multiple of 8"),
        (UnetUpLayer, {"num_chan": 4}, "multiple of 8"),
        (TimeLayer, {"emb_dim": 7}, "even integer"),
        (TimeLayer, {"emb_dim": 8, "embedding": "fourier"}, "embedding must be"),
    ],
)
def test_layers_reject_bad_arguments(layer_cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_cls(**kwargs)
