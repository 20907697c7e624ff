"""Perturbed-attention guidance (`keras_ddpm.guidance`): the perturbed network and the guided estimate."""
import doctest

import numpy as np
import pytest
import keras

import keras_ddpm
from keras_ddpm import AttentionBlock, DiffusionModel, NaiveUnet, Unet, guidance

SHAPE = (16, 16, 3)
TINY = {"widths": (8, 16), "attention_levels": (1,)}


def randomized(net, seed=3):
    """Every weight drawn at random, so the zero-initialised output and attention matter."""
    rng = np.random.default_rng(seed)
    for weight in net.weights:
        if len(weight.shape) > 1:
            weight.assign(rng.normal(0, 0.2, weight.shape).astype("float32"))
    return net


def conditional_model(seed=3):
    return DiffusionModel(randomized(Unet(SHAPE, num_classes=3, **TINY), seed), T=20,
                          num_classes=3, prediction="v")


def numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


def test_docstring_examples_run():
    globs = dict(vars(guidance), keras=keras, keras_ddpm=keras_ddpm)
    result = doctest.testmod(guidance, globs=globs, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6 and result.failed == 0


def test_identity_attention_is_each_pixel_attending_to_itself_alone():
    """With the identity map each normalised pixel goes through attention over itself only."""
    block = AttentionBlock(num_heads=2)
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 16)).astype("float32")
    plain, identity = numpy(block(x)), numpy(block.attend(x, identity=True))
    sequence = keras.ops.reshape(block.norm(x), (2, 16, 16))
    for pixel in (0, 7, 15):
        token = sequence[:, pixel:pixel + 1]  # A sequence of one pixel.
        alone = numpy(block.attention(token, token))[:, 0]
        row, column = divmod(pixel, 4)
        np.testing.assert_allclose(identity[:, row, column], x[:, row, column] + alone,
                                   atol=1e-5)
    assert np.abs(plain - identity).max() > 1e-3
    np.testing.assert_array_equal(numpy(block.attend(x)), plain)


def test_perturbed_network_shares_the_weights():
    net = randomized(Unet(SHAPE, **TINY))
    perturbed = guidance.perturbed_attention_network(net)
    assert [id(w) for w in perturbed.weights] == [id(w) for w in net.weights]
    x_t = np.random.default_rng(1).normal(size=(2,) + SHAPE).astype("float32")
    t = np.array([[0.3], [0.8]], "float32")
    before = numpy(perturbed([x_t, t]))
    assert np.abs(before - numpy(net([x_t, t]))).max() > 1e-3
    randomized(net, seed=4)  # Training the network moves its perturbed copy too.
    assert np.abs(numpy(perturbed([x_t, t])) - before).max() > 1e-3
    assert guidance.perturbed_attention_network(net) is perturbed


def test_predict_noise_adds_the_attention_guidance_term():
    """eps = eps_u + w (eps_c - eps_u) + s (eps_c - eps_perturbed), against float64 arithmetic."""
    model = conditional_model()
    rng = np.random.default_rng(2)
    x_t = rng.normal(size=(3,) + SHAPE).astype("float32")
    t, labels = np.array([5, 12, 19]), np.array([0, 2, 1])
    cond = numpy(model.predict_noise(x_t, t, labels))
    uncond = numpy(model.predict_noise(x_t, t, None))
    outputs = numpy(model.network_output(
        x_t, t, labels, network=guidance.perturbed_attention_network(model.network)))
    sqrtab, sqrtmab = (model.tables[k][t][:, None, None, None].astype(np.float64)
                       for k in ("sqrtab", "sqrtmab"))
    perturbed = sqrtmab * x_t + sqrtab * outputs  # eps from a v prediction.
    expected = uncond + 2.0 * (cond - uncond) + 0.5 * (cond - perturbed)
    got = numpy(model.predict_noise(x_t, t, labels, 2.0, attention_guidance=0.5))
    np.testing.assert_allclose(got, expected, atol=2e-5)
    plain = numpy(model.predict_noise(x_t, t, labels, attention_guidance=1.0))
    np.testing.assert_allclose(plain, 2 * cond - perturbed, atol=2e-5)


def test_sample_with_attention_guidance(tmp_path):
    model = conditional_model()
    options = {"steps": 2, "seed": 0, "labels": [0, 1, 2, 0], "verbose": 0}
    plain = model.sample(4, **options)
    np.testing.assert_array_equal(model.sample(4, attention_guidance=0, **options), plain)
    guided = model.sample(4, attention_guidance=0.5, **options)
    assert np.all(np.isfinite(guided)) and np.abs(guided - plain).max() > 1e-3
    # A reloaded model guides alike (its perturbed copy is built anew from the file's weights).
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    x_t, t, labels = guided, np.array([3, 9, 15, 19]), np.array([0, 1, 2, 0])
    np.testing.assert_allclose(
        numpy(reloaded.predict_noise(x_t, t, labels, 2.0, attention_guidance=0.5)),
        numpy(model.predict_noise(x_t, t, labels, 2.0, attention_guidance=0.5)), atol=1e-5)
    # Inpainting takes it too, and keeps the known pixels.
    mask = np.ones(SHAPE[:2])
    mask[4:12, 4:12] = 0
    done = model.inpaint(guided, mask, steps=2, seed=1, attention_guidance=0.5, labels=0)
    np.testing.assert_array_equal(done[:, :4], guided[:, :4])


@pytest.mark.parametrize("scale,match", [
    (-0.5, "attention_guidance must be a finite number >= 0"),
    (float("nan"), "attention_guidance must be a finite number >= 0"),
    ("1", "attention_guidance must be a finite number >= 0"),
])
def test_bad_scales_raise_one_clear_error(scale, match):
    with pytest.raises(ValueError, match=match):
        conditional_model().sample(2, steps=2, attention_guidance=scale)


def test_network_without_attention_is_refused_before_sampling():
    model = DiffusionModel(NaiveUnet((32, 32, 3), n_feat=8), T=10)
    with pytest.raises(ValueError, match="needs a network with self-attention"):
        model.sample(2, steps=2, attention_guidance=0.5)
    assert model.sample(1, steps=2, attention_guidance=0).shape == (1, 32, 32, 3)
