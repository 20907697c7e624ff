"""Starting part-way down from the data's Gaussian (`keras_ddpm.gaussian_start`)."""
import doctest

import keras
import numpy as np
import pytest

import keras_ddpm
from keras_ddpm import DiffusionModel, Unet, ddpm_schedule, gaussian_start, generation, sampling
from keras_ddpm.gaussian_start import GaussianStart

SHAPE = (16, 16, 3)
T = 20


def test_docstring_examples_run():
    globs = dict(vars(gaussian_start), keras=keras, keras_ddpm=keras_ddpm, np=np)
    result = doctest.testmod(gaussian_start, globs=globs, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6 and result.failed == 0


def test_estimate_is_each_conditions_mean_and_principal_variances():
    """Against NumPy's covariance eigendecomposition, in float64."""
    rng = np.random.default_rng(0)
    # Correlated pixels: 2x2x2 images from 3 latent factors, plus a little noise.
    images = (rng.normal(size=(40, 3)) @ rng.normal(size=(3, 8))
              + 0.1 * rng.normal(size=(40, 8))).reshape(40, 2, 2, 2)
    pools = [np.arange(15), np.arange(15, 40), np.arange(40)]
    start = gaussian_start.estimate(images, t=5, T=10, pools=pools, components=3, clusters=1)
    assert (start.t, start.T, start.num_conditions) == (5, 10, 3)
    for condition, pool in enumerate(pools):
        flat = images[pool].reshape(len(pool), -1)
        np.testing.assert_allclose(start.means[condition].reshape(-1), flat.mean(0), atol=1e-6)
        eigenvalues, eigenvectors = np.linalg.eigh(np.cov(flat, rowvar=False))
        eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
        np.testing.assert_allclose(start.variances[condition], eigenvalues[:3], rtol=1e-5)
        np.testing.assert_allclose(start.residual[condition], eigenvalues[3:].mean(), rtol=1e-5)
        # The same directions, up to sign.
        overlap = np.abs(start.components[condition] @ eigenvectors[:, :3])
        np.testing.assert_allclose(overlap, np.eye(3), atol=1e-4)


def test_draw_has_the_noised_datas_mean_and_covariance():
    """x_s = sqrt(ab) mu + A z is affine in z: A A^T = ab Sigma_K + (1 - ab) I exactly, Sigma_K
    the kept principal variances and the mean variance in the other directions."""
    rng = np.random.default_rng(1)
    images = rng.normal(size=(30, 2, 2, 1)) * np.array([3.0, 1.0, 0.5, 0.2]).reshape(2, 2, 1)
    start = gaussian_start.estimate(images + 0.4, t=5, T=10, components=2, clusters=1)
    alphabar = 0.3
    mean = start.draw(np.zeros((1, 2, 2, 1)), None, alphabar)[0].reshape(-1)
    np.testing.assert_allclose(mean, np.sqrt(alphabar) * start.means[0].reshape(-1), atol=1e-6)
    columns = start.draw(np.eye(4).reshape(4, 2, 2, 1), None, alphabar).reshape(4, 4) - mean
    directions = start.components[0].astype(np.float64)
    kept = directions.T @ np.diag(start.variances[0]) @ directions
    covariance = kept + start.residual[0] * (np.eye(4) - directions.T @ directions)
    want = alphabar * covariance + (1 - alphabar) * np.eye(4)
    np.testing.assert_allclose(columns.T @ columns, want, atol=1e-5)


@pytest.mark.parametrize(
    "sampler, steps, t, first",
    [("ddim", 5, 70, [60, 80]), ("dpm++", 5, 40, [38, 100]), ("heun", 3, 60, [17, 17]),
     ("ddim", 5, 5, [20, 40]), ("ddpm", 100, 37, [37, 38])],
)
def test_plan_starts_at_the_first_step_at_or_below_the_start(sampler, steps, t, first):
    """`first`: the first timestep kept and the last one left out (a plan of one step
    keeps its last step)."""
    schedule = ddpm_schedule(T=100)
    plan = generation.make_plan(sampling.get_sampler(sampler), schedule, steps, frames=[100, 0])
    start = gaussian_start.estimate(np.zeros((2, 1, 1, 1)), t=t, T=100)
    started = plan.starting_from(start)
    cut = len(plan.timesteps) - len(started.timesteps)
    assert started.timesteps[0] == first[0] and plan.timesteps[cut - 1] == first[1]
    np.testing.assert_array_equal(started.prev_timesteps, plan.prev_timesteps[cut:])
    assert started.boundaries[-1] == len(started.timesteps) and started.start is start
    if sampler == "heun":  # A step and its correction stay together.
        assert started.timesteps[0] != started.prev_timesteps[0]


def test_sample_starts_from_the_gaussian_draw_of_its_noise():
    """The first frame of a calibrated model's run is the start's draw from the run's own
    x_T noise, at the start timestep; the steps above it are left out."""
    net = Unet(SHAPE, widths=(8, 16), attention_levels=(), num_classes=3)
    model = DiffusionModel(net, T=T, prediction="v", num_classes=3, schedule="cosine")
    images = np.random.default_rng(2).uniform(-1, 1, (12,) + SHAPE).astype("float32")
    labels = np.arange(12) % 3
    model.calibrate(images, labels, samples_per_step=2, timesteps=[1, T], start=12)
    _, frames = model.sample(3, steps=5, seed=4, labels=[0, 2, 1], guidance_scale=1.0,
                             frames=[T], verbose=0)
    assert frames.sampled[T] == 12  # Trailing DDIM-5 of 20: 20, 16, 12, 8, 4.
    noise, picks = (keras.ops.convert_to_numpy(generation.stateless_normal(
        shape, generation.noise_seed(4, 0, 3, draw=draw))) for shape, draw in (((3,) + SHAPE, 0),
                                                                              ((3,), 1)))
    alphabar = float(np.asarray(model.tables["alphabar_t"])[12])
    start = model.calibration.start
    assert len(start.means) > start.num_conditions  # A mixture: picks matter.
    want = start.draw(noise, np.array([0, 2, 1]), alphabar, gaussian_start.normal_to_uniform(picks))
    np.testing.assert_allclose(frames[T], want, atol=1e-6)
    # Without a start: from pure noise at T, as before.
    model.calibrate(images, labels, samples_per_step=2, timesteps=[1, T], start=None)
    assert model.sample(1, steps=5, seed=4, frames=[T], verbose=0)[1].sampled[T] == T


@pytest.mark.parametrize("start", [0, T + 1, "middle", True, 2.5])
def test_bad_start_is_one_clear_error(start):
    model = DiffusionModel(Unet(SHAPE, widths=(8, 16), attention_levels=()), T=T)
    with pytest.raises(ValueError, match=r"start must be a timestep in 1\.\.T"):
        model.calibrate(np.zeros((4,) + SHAPE), start=start)


def test_a_start_of_another_shape_is_refused():
    start = GaussianStart(5, 10, np.zeros((2, 2, 2, 1)), np.zeros((2, 1, 4)), np.ones((2, 1)),
                          np.zeros(2))
    with pytest.raises(ValueError, match="the Gaussian start is for"):
        keras_ddpm.calibration.Calibration(np.array([1, 10]), np.zeros((2, 1, 2, 2, 1)), 10,
                                           start=start)
    with pytest.raises(ValueError, match="components"):
        GaussianStart(5, 10, np.zeros((1, 2, 2, 1)), np.zeros((1, 1, 3)), np.ones((1, 1)),
                      np.zeros(1))


def test_large_estimate_matches_the_full_eigendecomposition():
    """Past 2 K + 16 dimensions the top K come from subspace iteration: the same variances and
    directions as NumPy's full decomposition, on a spectrum that decays as image data's does."""
    rng = np.random.default_rng(3)
    scales = 0.96 ** np.arange(300)
    images = ((rng.normal(size=(400, 300)) * scales) @ np.linalg.qr(rng.normal(size=(300, 300)))[0])
    start = gaussian_start.estimate(images.reshape(400, 10, 10, 3), t=5, T=10, components=64,
                                    clusters=1)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(images, rowvar=False))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    np.testing.assert_allclose(start.variances[0], eigenvalues[:64], rtol=1e-5)
    np.testing.assert_allclose(start.residual[0], eigenvalues[64:].mean(), rtol=1e-5)
    overlap = np.abs(np.sum(start.components[0].astype(np.float64) * eigenvectors[:, :64].T, 1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-4)


def _three_groups(rng, per_group=(30, 60, 90)):
    """Images of three well-separated groups (means 8 apart, spread 0.3) in 2x2x2 pixels."""
    centres = 8.0 * np.eye(8)[:3]
    rows = [centre + 0.3 * rng.normal(size=(count, 8)) for centre, count in zip(centres, per_group)]
    return np.concatenate(rows).reshape(-1, 2, 2, 2), np.repeat(np.arange(3), per_group)


def test_mixture_is_one_gaussian_per_kmeans_group():
    """Separated groups are found exactly: each Gaussian is its group's mean and principal
    variances (against NumPy's covariance eigendecomposition), weighted by its share."""
    images, group = _three_groups(np.random.default_rng(4))
    start = gaussian_start.estimate(images, t=5, T=10, components=2, clusters=3)
    assert len(start.means) == 3 and start.num_conditions == 1
    flat = images.reshape(len(images), -1)
    # Each Gaussian is matched to the group whose centre it is near.
    for mean, variances, residual, weight in zip(start.means.reshape(3, -1), start.variances,
                                                 start.residual, start.weights):
        g = int(np.argmax(mean[:3]))
        members = flat[group == g]
        np.testing.assert_allclose(mean, members.mean(0), atol=1e-6)
        eigenvalues = np.linalg.eigvalsh(np.cov(members, rowvar=False))[::-1]
        np.testing.assert_allclose(variances, eigenvalues[:2], rtol=1e-5)
        np.testing.assert_allclose(residual, eigenvalues[2:].mean(), rtol=1e-5)
        assert weight == pytest.approx(len(members) / len(flat))


def test_the_groups_do_not_depend_on_the_images_order():
    """Eight separated groups of unequal sizes are found whatever the order of the images.
    One k-means++ run from a fixed seed picks its first centres by row index: with these
    groups it found other groups in 2 of these 6 orders. The best of `KMEANS_STARTS` runs
    finds the groups, and their shares, in all of them."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 30, 8)
    group = np.repeat(np.arange(8), sizes)
    centres = rng.normal(size=(8, 16)) * 2.0
    images = (centres[group] + 0.3 * rng.normal(size=(len(group), 16))).reshape(-1, 4, 2, 2)
    for order in range(6):
        shuffled = np.random.default_rng(order).permutation(len(images))
        start = gaussian_start.estimate(images[shuffled], t=8, T=10, components=2, clusters=8)
        np.testing.assert_allclose(np.sort(start.weights), np.sort(sizes / sizes.sum()))


def test_draws_pick_the_gaussians_in_proportion_to_their_weights():
    """With zero noise and alphabar 1 a draw is its Gaussian's mean; evenly spread uniform
    draws pick each Gaussian of the row's condition as often as its weight says."""
    images, group = _three_groups(np.random.default_rng(5))
    pools = [np.flatnonzero(group < 2), np.arange(len(group))]  # A class, and "no class".
    start = gaussian_start.estimate(images, t=5, T=10, pools=pools, components=1, clusters=3)
    n = 900
    uniform = (np.arange(n) + 0.5) / n
    means = start.means.reshape(len(start.means), -1)
    for condition in (0, 1):
        members = np.flatnonzero(start.conditions == condition)
        assert len(members) == 3
        draws = start.draw(np.zeros((n, 2, 2, 2)), np.full(n, condition), 1.0, uniform)
        distances = np.abs(draws.reshape(n, 1, -1) - means[members][None]).max(-1)
        assert np.all(distances.min(1) < 1e-5)  # Every draw is one of its condition's means.
        counts = np.bincount(distances.argmin(1), minlength=3) / n
        shares = start.weights[members] / start.weights[members].sum()
        np.testing.assert_allclose(counts, shares, atol=2 / n)
        assert shares.sum() == pytest.approx(1.0) and np.all(shares > 0.1)


def test_a_mixture_needs_its_uniform_draws_and_old_tables_still_load():
    images, _ = _three_groups(np.random.default_rng(6))
    start = gaussian_start.estimate(images, t=5, T=10, components=1, clusters=3)
    with pytest.raises(ValueError, match="uniform="):
        start.draw(np.zeros((2, 2, 2, 2)), None, 0.5)
    with pytest.raises(ValueError, match="uniform must hold 2 draws"):
        start.draw(np.zeros((2, 2, 2, 2)), None, 0.5, uniform=[0.5, 1.0])
    with pytest.raises(ValueError, match="clusters must be a positive integer"):
        gaussian_start.estimate(images, t=5, T=10, clusters=0)
    with pytest.raises(ValueError, match="conditions must cover"):
        GaussianStart(5, 10, start.means, start.components, start.variances, start.residual,
                      conditions=[0, 2, 2])
    # Tables written before the mixture: one Gaussian per condition, no conditions or weights.
    single = gaussian_start.estimate(images, t=5, T=10, pools=[np.arange(30), np.arange(180)],
                                     components=2, clusters=1)
    old = {key: value for key, value in single.arrays().items()
           if key not in ("start_conditions", "start_weights")}
    loaded = GaussianStart.from_arrays(old)
    assert loaded.num_conditions == 2 and loaded.conditions.tolist() == [0, 1]
    z = np.random.default_rng(7).normal(size=(4, 2, 2, 2))
    np.testing.assert_array_equal(loaded.draw(z, np.array([0, 1, 1, 0]), 0.3),
                                  single.draw(z, np.array([0, 1, 1, 0]), 0.3))
    # One Gaussian per condition in any order needs no uniform draws.
    swapped = GaussianStart(5, 10, single.means[::-1], single.components[::-1],
                            single.variances[::-1], single.residual[::-1], conditions=[1, 0])
    np.testing.assert_array_equal(swapped.draw(z, np.array([0, 1, 1, 0]), 0.3),
                                  single.draw(z, np.array([0, 1, 1, 0]), 0.3))
