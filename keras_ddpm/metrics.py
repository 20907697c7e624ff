"""Sample-quality metrics: FID and KID on Inception-v3 features, and a weight-free SWD.

- `frechet_distance` (FID, Heusel et al. 2017) and `kernel_inception_distance`
  (KID, Binkowski et al. 2018) compare two sets of features, usually the 2048
  pool features of Inception-v3 from `inception_features`.
- `sliced_wasserstein_distance` (SWD, as in Karras et al. 2018) compares image
  patches of a Laplacian pyramid directly: no pretrained weights, so quality
  can be tracked on any machine, offline, on any image size.

Inception weights are never downloaded here: `inception_features` loads them
from a local file. Which file you use decides what your FID means:

- Published FIDs (the DDPM paper's 3.17 on CIFAR-10, ...) use the TensorFlow
  Inception graph of Heusel et al. (`pt_inception-2015-12-05`, as ported by
  `pytorch-fid`/`torch-fidelity`). Only those weights, with their resizing,
  give numbers comparable to papers; they are not Keras weights.
- Keras' ImageNet weights for `keras.applications.InceptionV3`
  (`inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`, from the Keras
  applications release page) give a sound FID for comparing your own models
  with each other, but not with published values (typically off by a few
  points). Fetch the file on a machine with internet access and pass its path.
"""

import pathlib

import numpy as np

INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048


# ------------------------------------------------------------------ features
def inception_model(weights_path):
    """Inception-v3 without its classifier, average-pooled: images -> 2048 features.

    Args:
        weights_path: str or path. A local weights file for
            `keras.applications.InceptionV3(include_top=False)` (see the
            module docstring for which file to use).

    Returns:
        A `keras.Model` mapping `(n, 299, 299, 3)` images in [-1, 1] to `(n, 2048)`.

    Raises:
        FileNotFoundError: the file does not exist (nothing is downloaded).

    Example:
    >>> net = inception_model("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")
    """
    path = pathlib.Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception-v3 weights not found at {str(path)!r}. FID and KID need a local "
            "weights file (nothing is downloaded): copy Keras' "
            "'inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5' there from a "
            "machine with internet access, or use sliced_wasserstein_distance, which "
            "needs no weights."
        )
    import keras

    try:
        return keras.applications.InceptionV3(
            include_top=False,
            weights=str(path),
            input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3),
            pooling="avg",
        )
    except Exception as error:  # h5py, shape mismatches, bad files alike.
        raise ValueError(
            f"Could not load Inception-v3 weights from {str(path)!r} "
            f"({type(error).__name__}: {error}). Give the 'notop' weights of "
            "keras.applications.InceptionV3."
        ) from error


def inception_features(images, weights_path=None, model=None, batch_size=50):
    """Inception-v3 pool features of images in model space [-1, 1].

    Images are clipped to [-1, 1] (the input range Inception-v3 expects),
    grey images are repeated to 3 channels, and all are resized bilinearly
    to 299x299.

    Args:
        images: array `(n, H, W, C)`, C = 1 or 3, in [-1, 1].
        weights_path: str or None. Weights file (see `inception_model`).
        model: `keras.Model` or None. An `inception_model` to reuse instead.
        batch_size: int. Images per forward pass.

    Returns:
        A float64 array `(n, 2048)`.

    Example:
    >>> net = inception_model("inception_notop.h5")
    >>> features = inception_features(images, model=net)
    """
    import keras

    if model is None:
        if weights_path is None:
            raise ValueError("Give weights_path (a local Inception-v3 weights file) or model.")
        model = inception_model(weights_path)
    images = np.clip(np.asarray(images, dtype=np.float32), -1.0, 1.0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (n, H, W, 1 or 3), got {images.shape}.")
    features = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        batch = keras.ops.image.resize(batch, (INCEPTION_SIZE, INCEPTION_SIZE))
        features.append(keras.ops.convert_to_numpy(model(batch, training=False)))
    return np.concatenate(features).astype(np.float64)


# ---------------------------------------------------------------- distances
def _check_features(features1, features2):
    features1 = np.asarray(features1, dtype=np.float64)
    features2 = np.asarray(features2, dtype=np.float64)
    if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
        raise ValueError(
            "features must be two arrays (n1, d) and (n2, d) with the same d, got "
            f"{features1.shape} and {features2.shape}."
        )
    if min(len(features1), len(features2)) < 2:
        raise ValueError("Each feature set needs at least 2 samples.")
    return features1, features2


def _sqrt_psd(matrix):
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(features1, features2):
    """Fréchet distance between Gaussians fitted to two feature sets (FID on Inception).

    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). The trace of the
    matrix square root is computed as Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), a
    symmetric positive semi-definite form with the same eigenvalues, which
    needs no complex arithmetic.

    Args:
        features1: array `(n1, d)`.
        features2: array `(n2, d)`.

    Returns:
        A float >= 0 (0 for identical sets).

    Example:
    >>> frechet_distance(np.random.normal(size=(500, 8)), np.random.normal(1, 1, (500, 8)))
    """
    features1, features2 = _check_features(features1, features2)
    mu1, mu2 = features1.mean(axis=0), features2.mean(axis=0)
    sigma1 = np.cov(features1, rowvar=False)
    sigma2 = np.cov(features2, rowvar=False)
    root1 = _sqrt_psd(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def kernel_inception_distance(features1, features2, num_subsets=10, subset_size=1000, seed=0):
    """KID: unbiased squared MMD with the kernel (x.y / d + 1)^3, averaged over subsets.

    Unlike FID it is unbiased for small sample sizes, so values from a few
    hundred images can be compared; it can be slightly negative.

    Args:
        features1: array `(n1, d)`.
        features2: array `(n2, d)`.
        num_subsets: int. Number of random subsets averaged.
        subset_size: int. Size of each subset (capped at the smaller set).
        seed: int. Seed of the subset draws.

    Returns:
        `(mean, std)` over the subsets.

    Example:
    >>> kid, kid_std = kernel_inception_distance(real_features, fake_features)
    """
    features1, features2 = _check_features(features1, features2)
    dim = features1.shape[1]
    size = min(subset_size, len(features1), len(features2))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = features1[rng.choice(len(features1), size, replace=False)]
        y = features2[rng.choice(len(features2), size, replace=False)]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        off_diagonal = size * (size - 1)
        mmd = (
            (k_xx.sum() - np.trace(k_xx)) / off_diagonal
            + (k_yy.sum() - np.trace(k_yy)) / off_diagonal
            - 2 * k_xy.mean()
        )
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


# ------------------------------------------------------------ weight-free SWD
_BINOMIAL = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16


def _blur(images):
    """Separable 5-tap binomial blur of `(n, H, W, C)` with reflected borders."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    rows = sum(w * padded[:, i : i + height, :, :] for i, w in enumerate(_BINOMIAL))
    return sum(w * rows[:, :, j : j + width, :] for j, w in enumerate(_BINOMIAL))


def laplacian_pyramid(images, min_size=16):
    """Laplacian pyramid levels of `(n, H, W, C)` images, finest first.

    Each level but the last holds the detail lost by blurring and halving;
    the last is the blurred image at `min_size` (or the smallest size
    reached by halving).

    Example:
    >>> [level.shape[1] for level in laplacian_pyramid(np.zeros((2, 64, 64, 3)))]
    [64, 32, 16]
    """
    levels = []
    current = np.asarray(images, dtype=np.float64)
    while current.shape[1] // 2 >= min_size and current.shape[1] % 2 == 0 and current.shape[2] % 2 == 0:
        smaller = _blur(current)[:, ::2, ::2, :]
        upsampled = np.repeat(np.repeat(smaller, 2, axis=1), 2, axis=2)
        levels.append(current - _blur(upsampled))
        current = smaller
    levels.append(current)
    return levels


def _patches(level, patches_per_image, patch_size, rng):
    """Random `patch_size` square patches of every image, flattened."""
    n, height, width, channels = level.shape
    size = min(patch_size, height, width)
    ys = rng.integers(0, height - size + 1, (n, patches_per_image))
    xs = rng.integers(0, width - size + 1, (n, patches_per_image))
    offsets = np.arange(size)
    rows = (ys[:, :, None] + offsets)[:, :, :, None]  # (n, P, size, 1)
    cols = (xs[:, :, None] + offsets)[:, :, None, :]  # (n, P, 1, size)
    patches = level[np.arange(n)[:, None, None, None], rows, cols]  # (n, P, s, s, C)
    return patches.reshape(n * patches_per_image, size * size * channels)


def sliced_wasserstein_distance(
    images1,
    images2,
    patches_per_image=64,
    patch_size=7,
    num_projections=512,
    min_size=16,
    seed=0,
):
    """Sliced Wasserstein distance between the image patches of two sets (x 1000).

    As in Karras et al. (2018): each set's images are split into a Laplacian
    pyramid; at each level, random 7x7 patches are normalised per channel
    (with the first set's mean and standard deviation, so that colour shifts
    count), projected on random unit directions, and the 1-D Wasserstein-1
    distances of the sorted projections are averaged. The result is the mean
    over levels, times 1000. It needs no pretrained network: lower is closer.

    Args:
        images1: array `(n1, H, W, C)`. The reference set (e.g. real images).
        images2: array `(n2, H, W, C)`. The set to compare (e.g. samples).
        patches_per_image: int. Patches drawn from each image per level.
        patch_size: int. Patch height and width.
        num_projections: int. Random directions.
        min_size: int. Size of the coarsest pyramid level.
        seed: int. Seed of the patch positions and directions (the same for
            both sets, so identical sets give exactly 0).

    Returns:
        A float >= 0.

    Example:
    >>> real = load_dataset("shapes", split="test", batch_size=256).take(1).get_single_element()
    >>> sliced_wasserstein_distance(real, model.sample(256, steps=50))
    """
    images1 = np.asarray(images1, dtype=np.float64)
    images2 = np.asarray(images2, dtype=np.float64)
    if images1.ndim != 4 or images1.shape[1:] != images2.shape[1:]:
        raise ValueError(
            "images1 and images2 must be (n, H, W, C) arrays of the same image shape, "
            f"got {images1.shape} and {images2.shape}."
        )
    count = min(len(images1), len(images2))
    if count < 2:
        raise ValueError("Each image set needs at least 2 images.")
    images1, images2 = images1[:count], images2[:count]
    distances = []
    for level1, level2 in zip(laplacian_pyramid(images1, min_size), laplacian_pyramid(images2, min_size)):
        # The same positions in both sets: identical sets give identical patches.
        patches1 = _patches(level1, patches_per_image, patch_size, np.random.default_rng(seed))
        patches2 = _patches(level2, patches_per_image, patch_size, np.random.default_rng(seed))
        channels = level1.shape[-1]
        by_channel = patches1.reshape(len(patches1), -1, channels)
        mean = by_channel.mean(axis=(0, 1))
        std = by_channel.std(axis=(0, 1)) + 1e-8
        patches1 = ((by_channel - mean) / std).reshape(len(patches1), -1)
        patches2 = ((patches2.reshape(len(patches2), -1, channels) - mean) / std).reshape(
            len(patches2), -1
        )
        directions = np.random.default_rng(seed + 1).normal(size=(patches1.shape[1], num_projections))
        directions /= np.linalg.norm(directions, axis=0, keepdims=True)
        projected1 = np.sort(patches1 @ directions, axis=0)
        projected2 = np.sort(patches2 @ directions, axis=0)
        distances.append(np.abs(projected1 - projected2).mean())
    return float(np.mean(distances) * 1000)
