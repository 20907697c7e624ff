"""Class conditioning, classifier-free guidance, prediction targets and the score."""
import numpy as np
import pytest
import keras
from keras import ops

from helpers import analytic_model, tiny_network, two_colour_data
from keras_ddpm import DiffusionModel, NaiveUnet, ddpm_schedule, targets

SHAPE = (32, 32, 3)


def conditional_model(num_classes=3, **kwargs):
    """For the plumbing of labels and guidance: any conditional network will do, and the
    tiny one builds and traces in a fraction of `NaiveUnet`'s time (the conditional
    `NaiveUnet` itself is the first test's)."""
    network = tiny_network(SHAPE, num_classes)
    return DiffusionModel(network, T=20, num_classes=num_classes, seed=3, **kwargs)


def numpy(x):
    return ops.convert_to_numpy(x).astype(np.float64)


def test_conditional_unet_takes_a_label_and_it_changes_the_output(tmp_path):
    net = NaiveUnet(SHAPE, n_feat=8, num_classes=3)
    assert [tuple(x.shape) for x in net.inputs] == [(None,) + SHAPE, (None, 1), (None, 1)]
    x = np.random.default_rng(0).normal(size=(4,) + SHAPE).astype("float32")
    t = np.full((4, 1), 0.5, "float32")
    outs = [numpy(net([x, t, np.full((4, 1), label)])) for label in (0, 1, 3)]
    assert np.abs(outs[0] - outs[1]).mean() > 1e-3 and np.abs(outs[0] - outs[2]).mean() > 1e-3
    net.save(tmp_path / "net.keras")
    reloaded = keras.models.load_model(tmp_path / "net.keras")
    np.testing.assert_allclose(numpy(reloaded([x, t, np.full((4, 1), 1)])), outs[1], atol=1e-5)


def test_network_and_num_classes_must_agree():
    with pytest.raises(ValueError, match="needs a network with 3 inputs"):
        DiffusionModel(tiny_network(SHAPE), num_classes=3)
    with pytest.raises(ValueError, match="needs a network with 2 inputs"):
        DiffusionModel(tiny_network(SHAPE, num_classes=3))
    with pytest.raises(ValueError, match="cond_drop_prob must be in"):
        conditional_model(cond_drop_prob=1.0)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        NaiveUnet(SHAPE, n_feat=8, num_classes=0)


def test_labels_out_of_range_are_a_clear_error():
    model = conditional_model()
    for labels in ([0, 1, 3], [-1, 0, 0]):
        with pytest.raises(ValueError, match=r"labels must be class ids in 0\.\.2"):
            model.sample(3, steps=2, labels=labels)
    with pytest.raises(ValueError, match="one int or 3 ints"):
        model.sample(3, steps=2, labels=[0, 1])
    with pytest.raises(ValueError, match="guidance_scale needs labels"):
        model.sample(3, steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="unconditional"):
        DiffusionModel(tiny_network(SHAPE), T=20).sample(2, steps=2, labels=[0, 1])
    # The same in training: a dataset label outside 0..K-1 stops fit with the message.
    model.compile(optimizer="sgd")
    images = np.zeros((4,) + SHAPE, "float32")
    with pytest.raises(Exception, match=r"labels must be class ids in 0\.\.2"):
        model.fit(images, np.array([0, 1, 2, 5]), batch_size=4, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="train it on \\(images, labels\\) batches"):
        model.fit(images, batch_size=4, epochs=1, verbose=0)


def test_labels_are_dropped_at_the_requested_rate():
    model = conditional_model(cond_drop_prob=0.3)
    labels = ops.convert_to_tensor(np.zeros(20000, "int32"))
    dropped = numpy(model._drop_labels(labels))
    assert set(np.unique(dropped)) == {0, 3}  # 3 = "no class".
    assert (dropped == 3).mean() == pytest.approx(0.3, abs=0.015)
    no_drop = conditional_model(cond_drop_prob=0.0)
    np.testing.assert_array_equal(numpy(no_drop._drop_labels(labels)), 0)


def test_guidance_mixes_conditional_and_unconditional_predictions():
    model = conditional_model()
    x_t = np.random.default_rng(1).normal(size=(3,) + SHAPE).astype("float32")
    t = ops.convert_to_tensor([5, 10, 20])
    labels = ops.convert_to_tensor([0, 1, 2])
    cond = numpy(model.predict_noise(x_t, t, labels))
    uncond = numpy(model.predict_noise(x_t, t, None))
    np.testing.assert_allclose(uncond, numpy(model.predict_noise(x_t, t, [3, 3, 3])))
    for w in (0.0, 1.0, 3.0):
        guided = numpy(model.predict_noise(x_t, t, labels, guidance_scale=w))
        # One batched call of 2n against two calls of n: the kernels may differ in
        # float32 round-off (1.2e-5 seen at w = 3 on an AVX2-only CPU), far below 1e-4.
        np.testing.assert_allclose(guided, uncond + w * (cond - uncond), rtol=1e-4, atol=1e-4)


def test_guidance_with_the_exact_class_denoisers():
    """Class 0 is flat dark (-0.8), class 1 flat light (+0.8); the network is exact.

    w = 1 is the exact conditional model: every sample is its class's image. w = 0
    ignores the labels (the same images whatever they are), and w = 3 pushes further
    towards the class, so the class still decides the colour.
    """
    model = analytic_model([-0.8, 0.8], [0.0, 0.0], SHAPE, T=50, num_classes=2)
    labels = np.array([0, 1] * 4)
    target = np.where(labels == 1, 0.8, -0.8)
    for sampler_steps in (25, None):
        exact = model.sample(8, steps=sampler_steps, seed=5, labels=labels, guidance_scale=1.0)
        np.testing.assert_allclose(exact.mean(axis=(1, 2, 3)), target, atol=1e-3)
    pushed = model.sample(8, steps=25, seed=5, labels=labels, guidance_scale=3.0)
    assert np.all(pushed.mean(axis=(1, 2, 3)) * np.sign(target) > 0.75)
    np.testing.assert_array_equal(
        model.sample(8, steps=25, seed=5, labels=labels, guidance_scale=0.0),
        model.sample(8, steps=25, seed=5, labels=1 - labels, guidance_scale=0.0),
    )


def test_conditional_model_round_trips_through_keras_file(tmp_path):
    network = tiny_network(SHAPE, num_classes=2)  # The model's file is the property.
    model = DiffusionModel(network, T=20, schedule="cosine", prediction="v", num_classes=2, seed=0)
    model.save(tmp_path / "cond.keras")
    loaded = keras.models.load_model(tmp_path / "cond.keras")
    assert (loaded.num_classes, loaded.cond_drop_prob, loaded.prediction) == (2, 0.1, "v")
    for kwargs in ({"labels": [0, 1]}, {"labels": 1, "guidance_scale": 4.0}, {}):
        np.testing.assert_array_equal(
            loaded.sample(2, steps=5, seed=1, **kwargs), model.sample(2, steps=5, seed=1, **kwargs)
        )


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_prediction_targets_and_their_noise_conversion(prediction):
    """The loss compares the right target, and the sampler recovers eps from it."""
    T, seed = 40, 11
    model = DiffusionModel(tiny_network(SHAPE), T=T, seed=seed, prediction=prediction)
    images = np.random.default_rng(2).uniform(-1, 1, (8,) + SHAPE).astype("float32")
    t, noises = model.training_draws(images.shape)  # The model's own draws of t and eps.
    loss = float(model.diffusion_loss(ops.convert_to_tensor(images), draws=(t, noises)))
    noises = numpy(noises)
    tn = ops.convert_to_numpy(t)
    alphabar = np.cumprod(1 - np.linspace(1e-4, 0.02, T, dtype=np.float64))[tn - 1]
    a, s = np.sqrt(alphabar)[:, None, None, None], np.sqrt(1 - alphabar)[:, None, None, None]
    x_t = a * images + s * noises
    target = {"epsilon": noises, "v": a * noises - s * images, "x0": images}[prediction]
    np.testing.assert_allclose(numpy(model.prediction_target(images, noises, t)), target, atol=1e-5)
    outputs = numpy(model.network([x_t.astype("float32"), (tn / T)[:, None].astype("float32")]))
    assert loss == pytest.approx(np.mean((target - outputs) ** 2), rel=1e-4)

    # A perfect prediction of the target converts back to the true noise.
    recovered = numpy(targets.noise_from_prediction(
        prediction, ops.convert_to_tensor(target.astype("float32")),
        ops.convert_to_tensor(x_t.astype("float32")), t, model.tables,
    ))
    np.testing.assert_allclose(recovered, noises, atol=2e-3 if prediction == "x0" else 2e-5)


def test_v_and_x0_models_train_sample_and_round_trip(tmp_path):
    images, _ = two_colour_data(64)
    for prediction in ("v", "x0"):
        # The targets are the property, not the network: the tiny one traces and trains in
        # about a second (with NaiveUnet the test took 25-30 s).
        model = DiffusionModel(tiny_network(SHAPE), T=20, prediction=prediction, seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.05, global_clipnorm=1.0))
        history = model.fit(images, batch_size=16, epochs=3, verbose=0)
        # Measured, 4 seeds each (model and initial weights): the last epoch's loss is
        # 0.59-0.85 of the first's for v (the tiny network cannot go much below 1.0),
        # 0.16-0.53 for x0.
        assert history.history["loss"][-1] < history.history["loss"][0]
        model.save(tmp_path / f"{prediction}.keras")
        loaded = keras.models.load_model(tmp_path / f"{prediction}.keras")
        assert loaded.prediction == prediction
        np.testing.assert_array_equal(loaded.sample(2, seed=3), model.sample(2, seed=3))
    with pytest.raises(ValueError, match="prediction must be one of"):
        DiffusionModel(tiny_network(SHAPE), prediction="score")


def test_score_is_scaled_negative_noise():
    model = DiffusionModel(tiny_network(SHAPE), T=100, schedule="cosine")
    x_t = np.random.default_rng(3).normal(size=(2,) + SHAPE).astype("float32")
    t = ops.convert_to_tensor([1, 100])
    sqrtmab = ddpm_schedule(1e-4, 0.02, 100, kind="cosine")["sqrtmab"].astype(np.float64)
    expected = -numpy(model.predict_noise(x_t, t)) / sqrtmab[[1, 100]][:, None, None, None]
    np.testing.assert_allclose(numpy(model.score(x_t, t)), expected, rtol=1e-5)
