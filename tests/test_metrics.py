"""FID / KID formulas, the weight-free sliced Wasserstein distance, Inception loading."""
import numpy as np
import pytest
import scipy.linalg

from keras_ddpm import metrics
from keras_ddpm.data import make_shapes


def gaussian_features(n, dim=16, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mixing + shift


def test_frechet_distance_matches_a_direct_scipy_computation():
    f1, f2 = gaussian_features(400, seed=1), gaussian_features(300, shift=0.5, seed=2) * 1.3
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert metrics.frechet_distance(f1, f2) == pytest.approx(expected, rel=1e-6)


def test_fid_and_kid_are_zero_for_identical_sets_and_grow_with_a_shift():
    f = gaussian_features(500)
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    fids = [metrics.frechet_distance(f, gaussian_features(500, shift=s, seed=3)) for s in (0, 0.5, 1)]
    kids = [metrics.kernel_inception_distance(f, gaussian_features(500, shift=s, seed=3))[0]
            for s in (0, 0.5, 1)]
    assert fids[0] < fids[1] < fids[2] and kids[0] < kids[1] < kids[2]
    # KID is unbiased: two sets from the same distribution give about 0.
    assert abs(kids[0]) < 0.02 * kids[1]
    # A shift by s in every one of 16 dimensions adds 16 s^2 to the squared distance.
    assert fids[2] - fids[0] == pytest.approx(16.0, rel=0.1)
    with pytest.raises(ValueError, match="same d"):
        metrics.frechet_distance(f, f[:, :8])


def test_sliced_wasserstein_distance():
    images, _ = make_shapes(128, seed=0)
    images = images.astype("float32") / 127.5 - 1
    other, _ = make_shapes(128, seed=1)
    other = other.astype("float32") / 127.5 - 1
    assert metrics.sliced_wasserstein_distance(images, images) == 0.0
    same_kind = metrics.sliced_wasserstein_distance(images, other)
    shifted = [metrics.sliced_wasserstein_distance(images, np.clip(other + s, -1, 1)) for s in (0.2, 0.5)]
    noise = np.random.default_rng(0).uniform(-1, 1, images.shape)
    assert 0 < same_kind < shifted[0] < shifted[1]
    assert metrics.sliced_wasserstein_distance(images, noise) > 3 * same_kind
    with pytest.raises(ValueError, match="same image shape"):
        metrics.sliced_wasserstein_distance(images, images[:, :16])


def test_laplacian_pyramid_levels_sum_back_to_the_image_scale():
    images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3))
    levels = metrics.laplacian_pyramid(images)
    assert [level.shape for level in levels] == [(2, 64, 64, 3), (2, 32, 32, 3), (2, 16, 16, 3)]
    flat = np.full((1, 32, 32, 1), 0.3)
    detail, coarse = metrics.laplacian_pyramid(flat)
    np.testing.assert_allclose(detail, 0, atol=1e-12)  # A flat image has no detail.
    np.testing.assert_allclose(coarse, 0.3)


def test_inception_weights_come_from_a_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        metrics.inception_model(tmp_path / "missing.h5")
    (tmp_path / "bad.h5").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="Could not load Inception-v3 weights"):
        metrics.inception_model(tmp_path / "bad.h5")


@pytest.mark.slow
def test_inception_features_from_a_weights_file(tmp_path):
    import keras

    net = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg",
                                         input_shape=(299, 299, 3))
    path = tmp_path / "inception.weights.h5"
    net.save_weights(path)
    model = metrics.inception_model(path)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype("float32")
    features = metrics.inception_features(images, model=model, batch_size=2)
    assert features.shape == (3, metrics.INCEPTION_FEATURES) and features.dtype == np.float64
    np.testing.assert_allclose(
        metrics.inception_features(images[:1], model=model), features[:1], rtol=1e-4, atol=1e-5
    )
