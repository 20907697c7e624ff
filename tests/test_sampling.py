"""The sampler's maths against float64 NumPy references, with an analytic network."""
import numpy as np
import pytest
import keras
from keras import ops

from keras_ddpm import DiffusionModel, ddpm_schedule
from keras_ddpm import sampling

SHAPE = (32, 32, 1)


class AnalyticNoise(keras.layers.Layer):
    """A weightless stand-in for the U-Net: eps(x_t, t) = 0.3 * x_t * (1 + t)."""

    def call(self, inputs):
        x_t, t = inputs
        return 0.3 * x_t * (1.0 + ops.reshape(t, (-1, 1, 1, 1)))


def analytic_model(T, **kwargs):
    x_in, t_in = keras.Input(SHAPE), keras.Input((1,))
    network = keras.Model([x_in, t_in], AnalyticNoise()([x_in, t_in]))
    return DiffusionModel(network, T=T, **kwargs)


def float64_tables(T, beta1=1e-4, beta2=0.02):
    betas = np.concatenate([[0.0], np.linspace(beta1, beta2, T)])
    alphas = 1.0 - betas
    return betas, alphas, np.cumprod(alphas)


def draw(seed_pair, n):
    seed = ops.convert_to_tensor(np.array(seed_pair, np.int32))
    return ops.convert_to_numpy(sampling.stateless_normal((n,) + SHAPE, seed)).astype(np.float64)


def reference_ddpm(T, n, seed, variance="beta"):
    """Ho et al. Algorithm 2, the lecture's formula, written out in float64."""
    betas, alphas, alphabar = float64_tables(T)
    x = draw([seed, 0], n)
    states = {T: x}
    for i, t in enumerate(range(T, 0, -1)):
        eps = 0.3 * x * (1.0 + t / T)
        mean = (x - betas[t] / np.sqrt(1.0 - alphabar[t]) * eps) / np.sqrt(alphas[t])
        if variance == "beta":
            sigma = np.sqrt(betas[t])
        else:
            sigma = np.sqrt(betas[t] * (1.0 - alphabar[t - 1]) / (1.0 - alphabar[t]))
        z = draw([seed, 1 + i], n) if t > 1 else 0.0
        x = mean + sigma * z
        states[t - 1] = x
    return x, states


def reference_ddim(T, steps, n, seed, eta, clip):
    """Song et al. eq. (12) on the strided timesteps, in float64."""
    _, _, alphabar = float64_tables(T)
    times = np.round(np.linspace(T, 0, steps + 1)).astype(int)
    x = draw([seed, 0], n)
    for i, (t, prev) in enumerate(zip(times[:-1], times[1:])):
        eps = 0.3 * x * (1.0 + t / T)
        x0 = (x - np.sqrt(1 - alphabar[t]) * eps) / np.sqrt(alphabar[t])
        if clip:
            x0 = np.clip(x0, -1, 1)
            eps = (x - np.sqrt(alphabar[t]) * x0) / np.sqrt(1 - alphabar[t])
        sigma = eta * np.sqrt((1 - alphabar[prev]) / (1 - alphabar[t])) * np.sqrt(
            1 - alphabar[t] / alphabar[prev]
        )
        z = draw([seed, 1 + i], n)
        x = (np.sqrt(alphabar[prev]) * x0
             + np.sqrt(1 - alphabar[prev] - sigma**2) * eps + sigma * z)
    return x


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_sampler_matches_float64_reference(variance):
    T, n, seed = 20, 3, 11
    model = analytic_model(T, variance=variance)
    images, frames = model.sample(n, seed=seed, frames=[20, 10, 3, 0], verbose=0)
    expected, states = reference_ddpm(T, n, seed, variance)
    np.testing.assert_allclose(images, expected, rtol=1e-4, atol=1e-4)
    for t in (20, 10, 3, 0):
        np.testing.assert_allclose(frames[t], states[t], rtol=1e-4, atol=1e-4)
    assert images.dtype == np.float32


@pytest.mark.parametrize("eta,clip", [(0.0, False), (0.0, True), (0.5, True), (1.0, False)])
def test_ddim_sampler_matches_float64_reference(eta, clip):
    T, steps, n, seed = 100, 7, 2, 5
    model = analytic_model(T)
    images = model.sample(n, steps=steps, eta=eta, clip_x0=clip, seed=seed, verbose=0)
    np.testing.assert_allclose(images, reference_ddim(T, steps, n, seed, eta, clip),
                               rtol=1e-4, atol=1e-4)


def test_progress_segments_and_chunks_do_not_change_the_maths():
    model = analytic_model(50)
    quiet = model.sample(2, seed=3, verbose=0)
    with_progress = model.sample(2, seed=3, verbose=1)
    np.testing.assert_array_equal(quiet, with_progress)
    chunked = model.sample(5, seed=3, batch_size=2, verbose=0)
    assert chunked.shape == (5,) + SHAPE
    np.testing.assert_array_equal(chunked[:2], quiet)  # first chunk, same seed


def test_seed_reproducible_and_different_seeds_differ():
    model = analytic_model(10)
    a, b = model.sample(2, seed=1, verbose=0), model.sample(2, seed=1, verbose=0)
    c = model.sample(2, seed=2, verbose=0)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_ddim_with_eta_one_on_consecutive_steps_is_the_posterior_ddpm_step():
    sched = ddpm_schedule(1e-4, 0.02, 50)
    rng = np.random.default_rng(0)
    x_t, eps, z = (rng.normal(size=(2,) + SHAPE).astype("float32") for _ in range(3))
    t = ops.convert_to_tensor(np.array([30, 2], np.int32))
    ddim = sampling.ddim_step(eps, x_t, t, t - 1, sched, z, eta=1.0, clip_x0=False)
    ddpm = sampling.ddpm_step(eps, x_t, t, sched, z, variance="posterior")
    np.testing.assert_allclose(ops.convert_to_numpy(ddim), ops.convert_to_numpy(ddpm),
                               rtol=1e-4, atol=1e-5)


def test_ddpm_step_clip_uses_posterior_mean_of_clipped_x0():
    T = 50
    sched = ddpm_schedule(1e-4, 0.02, T)
    betas, alphas, alphabar = float64_tables(T)
    rng = np.random.default_rng(1)
    x_t = 3 * rng.normal(size=(1,) + SHAPE)
    eps = rng.normal(size=(1,) + SHAPE)
    t = 10
    out = sampling.ddpm_step(eps.astype("float32"), x_t.astype("float32"),
                             ops.convert_to_tensor([t]), sched, np.zeros_like(x_t, "float32"),
                             clip_x0=True)
    x0 = np.clip((x_t - np.sqrt(1 - alphabar[t]) * eps) / np.sqrt(alphabar[t]), -1, 1)
    # Posterior mean, eq. (7) of Ho et al.
    mean = (np.sqrt(alphabar[t - 1]) * betas[t] / (1 - alphabar[t]) * x0
            + np.sqrt(alphas[t]) * (1 - alphabar[t - 1]) / (1 - alphabar[t]) * x_t)
    np.testing.assert_allclose(ops.convert_to_numpy(out), mean, rtol=1e-4, atol=1e-5)


def test_timestep_sequences():
    ts, prev = sampling.ddpm_timesteps(5)
    assert ts.tolist() == [5, 4, 3, 2, 1] and prev.tolist() == [4, 3, 2, 1, 0]
    for steps in (1, 7, 50, 1000):
        ts, prev = sampling.strided_timesteps(1000, steps)
        assert len(ts) == steps and ts[0] == 1000 and prev[-1] == 0
        assert np.all(np.diff(ts) < 0) and np.all(prev < ts) and np.all(prev[:-1] == ts[1:])
    ts, _ = sampling.strided_timesteps(10, 10)
    assert ts.tolist() == list(range(10, 0, -1))


@pytest.mark.parametrize("steps", [0, 101, -3, 2.5, True])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps must be"):
        analytic_model(100).sample(1, steps=steps, verbose=0)


@pytest.mark.parametrize("n", [0, -1, 1.5])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        analytic_model(10).sample(n, verbose=0)


def test_bad_sampler_options():
    model = analytic_model(10)
    with pytest.raises(ValueError, match="runs all T=10 steps"):
        model.sample(1, steps=5, sampler="ddpm", verbose=0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        model.sample(1, sampler="euler", verbose=0)
    with pytest.raises(ValueError, match="frames must be timesteps in 0..10"):
        model.sample(1, frames=[11], verbose=0)
