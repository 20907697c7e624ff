"""Calibration (`keras_ddpm.calibration`): the mean error of the noise estimate, taken out."""
import doctest

import numpy as np
import pytest
import keras

import keras_ddpm
from keras_ddpm import DiffusionModel, Unet, calibration
from keras_ddpm.calibration import Calibration

SHAPE = (16, 16, 3)
T = 20
TINY = {"widths": (8, 16), "attention_levels": (1,)}
# Without self-attention: no perturbed-attention copy to estimate, half the network calls,
# where that copy is not the property.
PLAIN = {"widths": (8, 16), "attention_levels": ()}
# Constant images of three classes, and their values.
CLASS_VALUES = (-0.5, 0.2, 0.8)


def numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


def class_images(per_class=4):
    images = np.concatenate([np.full((per_class,) + SHAPE, v, "float32") for v in CLASS_VALUES])
    return images, np.repeat(np.arange(len(CLASS_VALUES)), per_class)


def zero_output_model(num_classes=3, attention=True):
    """A v-predicting Unet as built: its output convolution is zero-initialised, so it predicts
    v = 0 and the implied noise is sqrt(1 - ab) x_t: the mean error is known in closed form."""
    net = Unet(SHAPE, num_classes=num_classes, **(TINY if attention else PLAIN))
    return DiffusionModel(net, T=T, prediction="v", num_classes=num_classes, schedule="cosine")


def randomized_model(seed=3, attention=True):
    net = Unet(SHAPE, num_classes=3, **(TINY if attention else PLAIN))
    rng = np.random.default_rng(seed)
    for weight in net.weights:
        if len(weight.shape) > 1:
            weight.assign(rng.normal(0, 0.2, weight.shape).astype("float32"))
    return DiffusionModel(net, T=T, prediction="v", num_classes=3, schedule="cosine")


def random_calibration(seed=0, timesteps=(1, 7, T), perturbed=True):
    rng = np.random.default_rng(seed)
    shape = (len(timesteps), 4) + SHAPE
    return Calibration(np.array(timesteps), rng.normal(0, 0.1, shape), T,
                       rng.normal(0, 0.1, shape) if perturbed else None)


def test_docstring_examples_run():
    globs = dict(vars(calibration), keras=keras, keras_ddpm=keras_ddpm, np=np)
    result = doctest.testmod(calibration, globs=globs, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6 and result.failed == 0


def test_offset_interpolates_linearly_in_t_per_condition():
    """Against NumPy's interpolation of each pixel of the table, in float64."""
    table = random_calibration(timesteps=(2, 5, 13, 17))
    t = np.arange(0, T + 1)
    for perturbed, offsets in ((False, table.offsets), (True, table.perturbed_offsets)):
        for label in range(4):
            got = numpy(table.offset(t, np.full_like(t, label), perturbed=perturbed))
            flat = offsets[:, label].reshape(4, -1).astype(np.float64)
            want = np.stack([np.interp(t, table.timesteps, flat[:, i]) for i in range(flat.shape[1])], -1)
            np.testing.assert_allclose(got.reshape(len(t), -1), want, atol=1e-6)
    # No labels: the last condition ("no class").
    np.testing.assert_allclose(numpy(table.offset(t)), numpy(table.offset(t, np.full_like(t, 3))))


def test_estimate_matches_the_closed_form_mean_error():
    """v = 0 implies eps = sqrt(1 - ab) x_t, so the mean error is sqrt(ab (1 - ab)) E[x0]
    (per class; "no class" over all images) plus a zero-mean term in eps of spread
    ab / sqrt(draws); the perturbed copy predicts the same."""
    model = zero_output_model()
    images, labels = class_images()
    steps = [1, 10, T]
    draws = 128
    table = calibration.estimate(model, images, labels, samples_per_step=draws, timesteps=steps)
    alphabar = np.asarray(model.tables["alphabar_t"], np.float64)
    means = np.array(CLASS_VALUES + (np.mean(CLASS_VALUES),))
    for k, t in enumerate(steps):
        scale = np.sqrt(alphabar[t] * (1 - alphabar[t]))
        want = scale * means
        # The spread of the estimate: eps's term in each pixel, and for "no class" the
        # mix of classes drawn, common to all pixels.
        pixel = alphabar[t] / np.sqrt(draws)
        mix = np.array([0, 0, 0, scale * np.std(CLASS_VALUES) / np.sqrt(draws)])
        got = table.offsets[k].astype(np.float64)
        assert np.all(np.abs(got.mean(axis=(1, 2, 3)) - want) < 6 * (pixel / 16 + mix) + 1e-6)
        assert np.all(np.abs(got - want[:, None, None, None]).max(axis=(1, 2, 3))
                      < 6 * (pixel + mix) + 1e-6)
        np.testing.assert_allclose(table.perturbed_offsets[k], table.offsets[k], atol=1e-6)


def test_calibration_lowers_the_noise_error_by_the_squared_mean():
    """Pang et al.'s identity: subtracting the mean error eta lowers the mean squared error
    of the noise estimate by |eta|^2, checked on fresh draws (for this network eta is
    sqrt(ab (1 - ab)) x0 and the error left is ab^2 |eps|^2)."""
    model = zero_output_model(attention=False)
    images, labels = class_images(per_class=8)
    # One timestep, the one checked: the table is constant in t.
    model.calibrate(images, labels, samples_per_step=512, timesteps=[10])
    t = np.full((len(images),), 10, "int32")
    noises = np.random.default_rng(9).standard_normal(images.shape).astype("float32")
    x_t = numpy(model.q_sample(images, t, noises)).astype("float32")
    offsets = numpy(model.calibration.offset(t, labels))
    calibrated = numpy(model.predict_noise(x_t, t, labels))
    model.calibration = None
    plain = numpy(model.predict_noise(x_t, t, labels))
    error_plain = np.mean((plain - noises) ** 2)
    error_calibrated = np.mean((calibrated - noises) ** 2)
    assert error_plain - error_calibrated == pytest.approx(np.mean(offsets**2), rel=0.15)


def test_guided_estimate_subtracts_each_branch_offset():
    """eps = u + w (c - u) + s (c - p), each branch less its condition's offset."""
    model = randomized_model()
    table = random_calibration()
    rng = np.random.default_rng(1)
    x_t = rng.standard_normal((3,) + SHAPE).astype("float32")
    t, labels = np.array([1, 9, 20]), np.array([0, 2, 1])
    w, s = 1.5, 0.3
    plain = numpy(model.predict_noise(x_t, t, labels, guidance_scale=w, attention_guidance=s))
    model.calibration = table
    calibrated = numpy(model.predict_noise(x_t, t, labels, guidance_scale=w, attention_guidance=s))
    cond, uncond = numpy(table.offset(t, labels)), numpy(table.offset(t))
    perturbed = numpy(table.offset(t, labels, perturbed=True))
    shift = uncond + w * (cond - uncond) + s * (cond - perturbed)
    np.testing.assert_allclose(calibrated, plain - shift, atol=1e-5)
    # Training is not calibrated: the loss sees the network's own estimate.
    np.testing.assert_allclose(numpy(model.predict_noise(x_t, t, labels, training=True)),
                               numpy(_uncalibrated_noise(model, x_t, t, labels)), atol=1e-5)


def _uncalibrated_noise(model, x_t, t, labels):
    saved, model.calibration = model.calibration, None
    try:
        return model.predict_noise(x_t, t, labels)
    finally:
        model.calibration = saved


def test_calibration_is_saved_with_the_model_and_reproduces_samples(tmp_path):
    model = randomized_model()
    images, labels = class_images()
    model.calibrate(images, labels, samples_per_step=8, timesteps=[1, 10, T])
    samples = model.sample(3, steps=4, seed=0, labels=[0, 1, 2], verbose=0)
    model.save(tmp_path / "calibrated.keras")
    reloaded = keras.models.load_model(tmp_path / "calibrated.keras")
    assert reloaded.calibration is not None
    np.testing.assert_array_equal(reloaded.calibration.offsets, model.calibration.offsets)
    np.testing.assert_array_equal(reloaded.calibration.perturbed_offsets,
                                  model.calibration.perturbed_offsets)
    # With its Gaussian start (by default at 0.76 T: t = 15 of 20, where DDIM-4 starts).
    assert reloaded.calibration.start.t == model.calibration.start.t == 15
    for name, table in model.calibration.start.arrays().items():
        np.testing.assert_array_equal(reloaded.calibration.start.arrays()[name], table)
    np.testing.assert_allclose(
        reloaded.sample(3, steps=4, seed=0, labels=[0, 1, 2], verbose=0), samples, atol=1e-5)
    # (What the offsets do to the estimate: test_guided_estimate_subtracts_each_branch_offset.)
    # Set to None, it is saved as none: the file loads with None.
    reloaded.calibration = None
    reloaded.save(tmp_path / "plain.keras")
    assert keras.models.load_model(tmp_path / "plain.keras").calibration is None


def test_fit_drops_a_calibration_of_the_old_weights():
    model = zero_output_model(num_classes=None, attention=False)
    images, _ = class_images(2)
    model.calibrate(images, samples_per_step=2, timesteps=[1, T])
    # Eagerly: one step, cheaper than tracing it.
    model.compile(optimizer=keras.optimizers.SGD(1e-3), run_eagerly=True)
    model.fit(images, batch_size=6, epochs=1, verbose=0)
    assert model.calibration is None


def test_estimate_is_reproducible_from_its_seed():
    model = randomized_model(attention=False)
    images, labels = class_images()
    first = calibration.estimate(model, images, labels, samples_per_step=4, timesteps=[5, T], seed=3)
    again = calibration.estimate(model, images, labels, samples_per_step=4, timesteps=[5, T], seed=3)
    other = calibration.estimate(model, images, labels, samples_per_step=4, timesteps=[5, T], seed=4)
    np.testing.assert_array_equal(first.offsets, again.offsets)
    assert np.abs(first.offsets - other.offsets).max() > 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x, y: m.calibrate(x), "give the images' labels"),
        (lambda m, x, y: m.calibrate(x[y != 2], y[y != 2]), "class 2 has none"),
        (lambda m, x, y: m.calibrate(x[:, :8], y), "shaped"),
        (lambda m, x, y: m.calibrate(x, y, samples_per_step=0), "positive integer"),
        (lambda m, x, y: m.calibrate(x, y[:3]), "one per image"),
        (lambda m, x, y: m.calibrate(x, y, timesteps=[5, 5]), "increase"),
    ],
)
def test_bad_calibration_inputs_get_one_clear_error(call, message):
    model = zero_output_model(attention=False)
    images, labels = class_images(2)
    with pytest.raises(ValueError, match=message):
        call(model, images, labels)


def test_a_calibration_of_another_model_is_refused():
    model = zero_output_model()
    unconditional = Calibration(np.array([1, T]), np.zeros((2, 1) + SHAPE), T)
    with pytest.raises(ValueError, match="calibrate this model instead"):
        model.calibration = unconditional
    with pytest.raises(ValueError, match="Calibration"):
        model.calibration = np.zeros(3)
