import numpy as np
import pytest
import keras
from keras import ops

from helpers import tiny_network
from keras_ddpm import DiffusionModel, NaiveUnet, ddpm_schedule
from keras_ddpm.data import load_dataset

SHAPE = (32, 32, 3)


def small_model(T=100, seed=7, **kwargs):
    return DiffusionModel(NaiveUnet(SHAPE, n_feat=8), T=T, seed=seed, **kwargs)


def tiny_model(T=100, seed=7, **kwargs):
    """For `DiffusionModel`'s plumbing (draws, fit's arguments, saving): any network will do,
    and `tiny_network` builds and traces in a fraction of `NaiveUnet`'s time."""
    return DiffusionModel(tiny_network(SHAPE), T=T, seed=seed, **kwargs)


def random_images(n, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype("float32")


def test_q_sample_matches_closed_form():
    model = tiny_model(T=1000)
    sched = ddpm_schedule(1e-4, 0.02, 1000)
    images, noises = random_images(3, 1), random_images(3, 2)
    t = np.array([1, 500, 1000])
    out = ops.convert_to_numpy(model.q_sample(images, ops.convert_to_tensor(t), noises))
    alphabar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    expected = (np.sqrt(alphabar[t - 1])[:, None, None, None] * images
                + np.sqrt(1 - alphabar[t - 1])[:, None, None, None] * noises)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sched["sqrtab"][t], np.sqrt(alphabar[t - 1]), rtol=1e-6)


def test_loss_is_the_lectures_mse_with_t_in_1_to_T():
    """Recomputes the loss from the model's random draws: t ~ U{1..T}, eps ~ N(0, I), input t / T."""
    T, seed = 50, 3
    model = tiny_model(T=T, seed=seed)
    images = random_images(16)
    t, noises = model.training_draws(images.shape)
    loss = float(model.diffusion_loss(ops.convert_to_tensor(images), draws=(t, noises)))
    x_t = model.q_sample(images, t, noises)
    pred = model.network([x_t, ops.reshape(ops.cast(t, "float32") / T, (-1, 1))])
    expected = np.mean((ops.convert_to_numpy(noises) - ops.convert_to_numpy(pred)) ** 2)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    t = ops.convert_to_numpy(t)
    assert t.shape == (16,) and t.min() >= 1 and t.max() <= T


def test_training_draws_cover_1_to_T_and_are_standard_normal():
    model = tiny_model(T=5, seed=0)
    draws = [model.training_draws((256, 4, 4, 1)) for _ in range(4)]
    timesteps = np.concatenate([ops.convert_to_numpy(t) for t, _ in draws])
    assert set(timesteps.tolist()) == {1, 2, 3, 4, 5}
    noises = np.stack([ops.convert_to_numpy(noise) for _, noise in draws])
    assert abs(noises.mean()) < 0.02 and abs(noises.std() - 1) < 0.02
    # Every call draws anew.
    assert not np.array_equal(noises[0], noises[1])


def test_fit_lowers_the_loss_on_shapes():
    model = small_model(T=200, seed=1)
    # SGD with clipping: its update traces in a tenth of Adam's time, and it lowers the
    # loss as much here (Adam 2e-3: 0.46-0.47).
    model.compile(optimizer=keras.optimizers.SGD(0.05, global_clipnorm=1.0))
    # Batches of 8: the loss falls as much per step as with batches of 32 (0.46-0.47 of
    # the first epoch's after 32 steps, 3 seeds), and each step costs less.
    dataset = load_dataset("shapes", batch_size=8, num_examples=64, seed=0)
    history = model.fit(dataset, epochs=4, verbose=0)
    losses = history.history["loss"]
    # Measured on an AVX2 CPU, seeds 1-3: the last epoch's loss is 0.47-0.49 of the first's.
    assert losses[-1] < 0.6 * losses[0], losses
    assert model.evaluate(dataset.take(2), verbose=0) < losses[0]


def test_fit_reads_batch_size_from_data_and_accepts_labels():
    model = tiny_model(T=10)
    model.compile(optimizer="sgd", run_eagerly=True)  # Batches of 4, 2, 3, 1: no retracing.
    images = random_images(10)
    labels = np.zeros(10, "int32")
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)  # 4, 4, 2
    assert np.isfinite(history.history["loss"][0])
    dataset = load_dataset("shapes", batch_size=3, num_examples=7, with_labels=True)
    assert np.isfinite(model.fit(dataset, epochs=1, verbose=0).history["loss"][0])


def test_data_with_wrong_channels_is_a_clear_error():
    model = tiny_model(T=10)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"expects \(32, 32, 3\)"):
        model.fit(random_images(4, shape=(32, 32, 1)), batch_size=2, epochs=1, verbose=0)


def test_save_load_samples_identically_and_resumes_training(tmp_path):
    model = tiny_model(T=20)  # The property is the model's file, not the network's.
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = random_images(16)
    model.fit(images, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.models.load_model(path)  # safe mode on, no custom_objects
    assert isinstance(loaded, DiffusionModel)
    assert (loaded.T, loaded.beta1, loaded.beta2, loaded.schedule) == (20, 1e-4, 0.02, "linear")
    np.testing.assert_array_equal(
        loaded.sample(3, seed=9, verbose=0), model.sample(3, seed=9, verbose=0)
    )
    np.testing.assert_array_equal(
        loaded.sample(2, steps=5, seed=9, verbose=0), model.sample(2, steps=5, seed=9, verbose=0)
    )
    # The optimizer state (step count and Adam moments) came back.
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    for original, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(original), ops.convert_to_numpy(restored))
    loaded.fit(images, batch_size=8, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 4


def test_config_round_trip():
    model = small_model(T=30, schedule="cosine", variance="posterior")
    config = model.get_config()
    rebuilt = DiffusionModel.from_config(config)
    assert (rebuilt.T, rebuilt.schedule, rebuilt.variance, rebuilt.seed) == (30, "cosine", "posterior", 7)
    assert rebuilt.network.count_params() == model.network.count_params()


def test_call_predicts_noise_shaped_like_input():
    model = small_model()
    out = model([random_images(2), np.full((2, 1), 0.5, "float32")])
    assert tuple(out.shape) == (2,) + SHAPE


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"beta1": 0.1, "beta2": 0.01}, "beta1 must be smaller than beta2"),
        ({"T": 0}, "T must be at least 1"),
        ({"schedule": "sigmoid"}, "Unknown schedule kind"),
        ({"variance": "learned"}, "variance must be one of"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionModel(tiny_network(SHAPE), **kwargs)


def test_network_must_be_a_model():
    with pytest.raises(ValueError, match="network must be a keras.Model"):
        DiffusionModel(keras.layers.Dense(3))


def test_fit_on_a_dataset_does_not_warn_about_shuffle():
    import warnings

    model = tiny_model(T=10)
    model.compile(optimizer="sgd", run_eagerly=True)  # fit's warnings, without tracing.
    dataset = load_dataset("shapes", batch_size=8, num_examples=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(dataset, epochs=1, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]


def test_frames_may_be_a_numpy_array():
    model = tiny_model(T=10)
    _, frames = model.sample(1, steps=2, seed=0, frames=np.array([10, 0]))
    assert sorted(frames) == [0, 10]


def test_tf_steps_docstring_examples_run():
    """`keras_ddpm.tf_steps`' examples, executed on a small model (TensorFlow backend)."""
    import doctest

    from keras_ddpm import tf_steps

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf_steps is the TensorFlow backend's")
    globs = dict(vars(tf_steps), model=tiny_model())
    result = doctest.testmod(tf_steps, globs=globs, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0


def test_training_draws_of_a_step_are_fixed_by_the_seed_and_step():
    """Stateless draws: step k draws the same t and eps in any run with the seed (resume)."""
    first, again, other = tiny_model(seed=5), tiny_model(seed=5), tiny_model(seed=6)
    draws = [m.training_draws((4,) + SHAPE, step=3) for m in (first, again, other)]
    np.testing.assert_array_equal(*(ops.convert_to_numpy(d[1]) for d in draws[:2]))
    assert not np.allclose(ops.convert_to_numpy(draws[0][1]), ops.convert_to_numpy(draws[2][1]))
    later = ops.convert_to_numpy(first.training_draws((4,) + SHAPE, step=4)[1])
    assert not np.allclose(later, ops.convert_to_numpy(draws[0][1]))


def test_noise_offset_adds_one_normal_constant_per_image_and_channel():
    """Offset noise: the draws of `noise_offset=s` are the plain draws (same seed, same
    step) plus s times a standard normal constant per image and channel; 0 is off."""
    shape = (512, 4, 4, 3)
    plain = DiffusionModel(tiny_network(), T=10, seed=5)
    offset = DiffusionModel(tiny_network(), T=10, seed=5, noise_offset=0.5)
    t_plain, noises_plain = plain.training_draws(shape, step=3)
    t_offset, noises_offset = offset.training_draws(shape, step=3)
    np.testing.assert_array_equal(ops.convert_to_numpy(t_offset), ops.convert_to_numpy(t_plain))
    added = ops.convert_to_numpy(noises_offset) - ops.convert_to_numpy(noises_plain)
    np.testing.assert_allclose(added, np.broadcast_to(added[:, :1, :1, :], shape), atol=1e-6)
    constants = added[:, 0, 0, :]
    assert 0.45 < constants.std() < 0.55 and abs(constants.mean()) < 0.06  # 1536 draws
    assert abs(np.corrcoef(constants[:, 0], constants[:, 1])[0, 1]) < 0.15
    again = ops.convert_to_numpy(offset.training_draws(shape, step=3)[1])
    np.testing.assert_array_equal(again, ops.convert_to_numpy(noises_offset))  # step-seeded

    restored = DiffusionModel.from_config(offset.get_config())
    assert restored.noise_offset == 0.5
    old_config = plain.get_config()
    del old_config["noise_offset"]  # a model saved before the option
    assert DiffusionModel.from_config(old_config).noise_offset == 0.0
    for bad in (-0.1, float("nan"), True, "0.2"):
        with pytest.raises(ValueError, match="noise_offset must be a number >= 0"):
            DiffusionModel(tiny_network(), T=10, noise_offset=bad)
