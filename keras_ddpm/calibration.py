"""Calibration: take the mean error out of a model's noise estimate, timestep by timestep.

For the exact model the noise estimate averages to zero over the noised data at
every timestep t,

    E_{x0, eps} [eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t)] = E[eps] = 0,

and Pang et al. (2023) show that subtracting a trained network's mean, per
timestep, pixel and channel, lowers its score-matching loss by exactly the
mean's squared norm: an improvement for free, with no training. It matters
most at high noise, where the clean image is read from the noise estimate as
x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t): on the cosine schedule a mean
error of 0.005 in eps is one of 0.15 (about 20 grey levels) in x0 at t = 980,
in every sample, and the first steps are where a sample's colours are decided.

The means are estimated once, from training images, with a paired estimator:
the average of eps_theta(x_t, t) - eps over draws (x0, eps). Its spread is the
denoising error rather than eps itself, so a few hundred draws per timestep
suffice. A class-conditional model gets one mean per class (from images of
that class) and one for "no class" (from all of them), the estimate that
classifier-free guidance pairs with each; a network with self-attention also
gets the means of its perturbed-attention copy (`keras_ddpm.guidance`), so
that guidance adds no mean error either. The means are kept on a grid of
timesteps and interpolated linearly in t between its points.

Above some timestep even a calibrated network is a poor guide (its colour mix
on `shapes` is decided there), and the noised data is close to its Gaussian
approximation: a calibration also keeps a Gaussian mixture fitted to the
training images of each condition, and sampling starts from it part-way down
(`keras_ddpm.gaussian_start`, 0.76 T by default).

Reference:
    Pang, Lu, Du, Lin, Yan and Deng, "On Calibrating Diffusion Probabilistic
    Models", NeurIPS 2023, arXiv:2302.10688.

Example:
>>> calibration = Calibration(np.array([1, 10]), np.zeros((2, 1, 2, 2, 1)), T=10)
>>> tuple(calibration.offset(np.array([5, 10])).shape)
(2, 2, 2, 1)
"""

import io
import numbers

import keras
import numpy as np
from keras import ops

from keras_ddpm import gaussian_start, guidance, sampling, targets

# Timesteps of the default grid: those of `steps`-step strided sampling, and t = 1.
DEFAULT_GRID_STEPS = 50
# Draws (x0, eps) per timestep and condition.
DEFAULT_SAMPLES_PER_STEP = 64
# Draws per network call (whole blocks of one timestep and condition).
DRAWS_PER_CALL = 1024


class Calibration:
    """The mean errors of a model's noise estimate, by timestep and condition.

    Subtracted from the estimate by `DiffusionModel` when set as its
    `calibration` (`DiffusionModel.calibrate` estimates and sets one).

    Args:
        timesteps: increasing ints `(K,)` in 1..T, where the means were taken.
        offsets: float array `(K, L, H, W, C)`: the mean of eps_theta - eps
            at each timestep for each condition: one per class, then "no
            class" (L = num_classes + 1), or L = 1 for an unconditional model.
        T: int. The model's number of timesteps.
        perturbed_offsets: array like `offsets` for the perturbed-attention
            copy of the network, or None (its estimates are left as they are).
        start: a `keras_ddpm.gaussian_start.GaussianStart` (sampling starts
            at its timestep from the data's Gaussian mixture), or None (from
            pure noise at T).

    Example:
    >>> offsets = np.stack([np.full((1, 2, 2, 1), 1.0), np.full((1, 2, 2, 1), 3.0)])
    >>> calibration = Calibration(np.array([2, 6]), offsets, T=10)
    >>> keras.ops.convert_to_numpy(calibration.offset(np.array([1, 4, 9])))[:, 0, 0, 0]
    array([1., 2., 3.], dtype=float32)
    """

    def __init__(self, timesteps, offsets, T, perturbed_offsets=None, start=None):
        self.timesteps = np.asarray(timesteps, np.int32)
        self.offsets = np.asarray(offsets, np.float32)
        self.T = int(T)
        self.perturbed_offsets = (
            None if perturbed_offsets is None else np.asarray(perturbed_offsets, np.float32)
        )
        _check_tables(self.timesteps, self.offsets, self.T, self.perturbed_offsets)
        self.start = start
        if start is not None and (start.T, start.image_shape, start.num_conditions) != (
                self.T, self.image_shape, self.num_conditions):
            raise ValueError(
                f"the Gaussian start is for T={start.T}, images {start.image_shape} and "
                f"{start.num_conditions} condition(s), the offsets for T={self.T}, images "
                f"{self.image_shape} and {self.num_conditions}."
            )
        # Per timestep 0..T: the grid points on either side and the weight of the upper one
        # (constant beyond the grid's ends).
        t, last = np.arange(self.T + 1), len(self.timesteps) - 1
        lower = np.clip(np.searchsorted(self.timesteps, t, "right") - 1, 0, last)
        upper = np.clip(np.searchsorted(self.timesteps, t, "left"), 0, last)
        span = self.timesteps[upper] - self.timesteps[lower]
        weight = np.where(span > 0, (t - self.timesteps[lower]) / np.maximum(span, 1), 0.0)
        self._lower, self._upper = lower.astype(np.int32), upper.astype(np.int32)
        self._weight = weight.astype(np.float32)
        # The tables as rows of (timestep, condition), gathered at each sampling step.
        self._rows = {
            perturbed: None if table is None else table.reshape((-1,) + self.image_shape)
            for perturbed, table in ((False, self.offsets), (True, self.perturbed_offsets))
        }

    @property
    def num_conditions(self):
        """L: the classes and "no class" of a conditional model, or 1."""
        return self.offsets.shape[1]

    @property
    def image_shape(self):
        return tuple(self.offsets.shape[2:])

    def offset(self, t, labels=None, perturbed=False):
        """The mean error to subtract at timesteps `t` `(batch,)` for condition `labels`.

        Args:
            t: int tensor `(batch,)` in 0..T.
            labels: int tensor `(batch,)` in 0..L-1, or None for the last
                condition ("no class", or an unconditional model's only one).
            perturbed: bool. The perturbed-attention copy's means.

        Returns:
            A float32 tensor `(batch, H, W, C)`, or None for `perturbed`
            when there are no such means.

        Example:
        >>> calibration = Calibration(np.array([1, 10]), np.ones((2, 3, 2, 2, 1)), T=10)
        >>> tuple(calibration.offset(np.array([3]), labels=np.array([2])).shape)
        (1, 2, 2, 1)
        """
        rows = self._rows[bool(perturbed)]
        if rows is None:
            return None
        t = ops.cast(ops.reshape(t, (-1,)), "int32")
        conditions = self.num_conditions
        if labels is None:
            labels = ops.full(ops.shape(t), conditions - 1, "int32")
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        below = ops.take(rows, ops.take(self._lower, t) * conditions + labels, axis=0)
        above = ops.take(rows, ops.take(self._upper, t) * conditions + labels, axis=0)
        weight = ops.reshape(ops.take(self._weight, t), (-1, 1, 1, 1))
        return below + weight * (above - below)

    def to_bytes(self):
        """The tables as the bytes of an `.npz` file (`from_bytes` reads them).

        Example:
        >>> calibration = Calibration(np.array([1, 10]), np.zeros((2, 1, 2, 2, 1)), T=10)
        >>> Calibration.from_bytes(calibration.to_bytes()).T
        10
        """
        arrays = {"timesteps": self.timesteps, "offsets": self.offsets, "T": np.int32(self.T)}
        if self.perturbed_offsets is not None:
            arrays["perturbed_offsets"] = self.perturbed_offsets
        if self.start is not None:
            arrays.update(self.start.arrays())
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data):
        """The `Calibration` that `to_bytes` wrote."""
        with np.load(io.BytesIO(data)) as arrays:
            return cls(arrays["timesteps"], arrays["offsets"], int(arrays["T"]),
                       arrays["perturbed_offsets"] if "perturbed_offsets" in arrays else None,
                       gaussian_start.GaussianStart.from_arrays(arrays))

    def __repr__(self):
        perturbed = ", with the perturbed-attention copy" if self.perturbed_offsets is not None else ""
        start = "" if self.start is None else f", starting at t={self.start.t}"
        return (f"Calibration({len(self.timesteps)} timesteps of 1..{self.T}, "
                f"{self.num_conditions} condition(s){perturbed}{start})")


def _check_timesteps(timesteps, T):
    if timesteps.ndim != 1 or len(timesteps) == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D array, got shape {timesteps.shape}.")
    if np.any(np.diff(timesteps) <= 0) or timesteps[0] < 1 or timesteps[-1] > T:
        raise ValueError(f"timesteps must increase within 1..T = 1..{T}, got {timesteps}.")


def _check_tables(timesteps, offsets, T, perturbed_offsets):
    _check_timesteps(timesteps, T)
    if offsets.ndim != 5 or offsets.shape[0] != len(timesteps):
        raise ValueError(
            f"offsets must be shaped (timesteps, conditions, H, W, C) with {len(timesteps)} "
            f"timesteps, got {offsets.shape}."
        )
    if perturbed_offsets is not None and perturbed_offsets.shape != offsets.shape:
        raise ValueError(
            f"perturbed_offsets must be shaped like offsets {offsets.shape}, got "
            f"{perturbed_offsets.shape}."
        )
    if not np.all(np.isfinite(offsets)) or (
        perturbed_offsets is not None and not np.all(np.isfinite(perturbed_offsets))
    ):
        raise ValueError("the calibration's offsets must be finite.")


def default_timesteps(T, steps=DEFAULT_GRID_STEPS):
    """The default grid: the timesteps of `steps`-step strided sampling, and t = 1.

    Example:
    >>> default_timesteps(1000, 4).tolist()
    [1, 250, 500, 750, 1000]
    """
    strided = sampling.strided_timesteps(T, min(steps, T))[0]
    return np.unique(np.concatenate([[1], strided])).astype(np.int32)


def estimate(model, images, labels=None, samples_per_step=DEFAULT_SAMPLES_PER_STEP,
             timesteps=None, seed=0, verbose=0, start="auto",
             start_clusters=gaussian_start.DEFAULT_CLUSTERS):
    """The `Calibration` of `model`, estimated from `images` (and their `labels`).

    For each timestep of the grid and each condition, `samples_per_step`
    draws of an image (of that class; any image for "no class") and of eps,
    and the mean of eps_theta(x_t, t) - eps over them; and, unless `start`
    is None, a Gaussian mixture fitted to the images of each condition, from
    which sampling starts (`keras_ddpm.gaussian_start`).

    Args:
        model: a `DiffusionModel`.
        images: array `(n, H, W, C)` in [-1, 1]: training images.
        labels: int array `(n,)`: their classes (class-conditional models;
            ignored by unconditional ones).
        samples_per_step: int >= 1. Draws per timestep and condition (64
            did as well as 256 on `shapes`, BENCHMARKS.md).
        timesteps: increasing ints in 1..T, or None for `default_timesteps`.
        seed: int. The draws' seed: the same seed, the same calibration.
        verbose: 0 or 1. A progress bar over the (timestep, condition) blocks.
        start: int in 1..T, "auto" or None. The timestep at which sampling
            starts from the data's Gaussian mixture ("auto": `gaussian_start.
            default_start`, 0.76 T); None: from pure noise at T.
        start_clusters: int >= 1. Gaussians of the mixture per condition
            (k-means groups of its images); 1: one Gaussian per condition.

    Returns:
        A `Calibration`.

    Example:
    >>> net = keras_ddpm.Unet((16, 16, 3), widths=(8, 16))
    >>> model = keras_ddpm.DiffusionModel(net, T=20, prediction="v")
    >>> images = np.zeros((8, 16, 16, 3), "float32")
    >>> estimate(model, images, samples_per_step=4, timesteps=[1, 10, 20])
    Calibration(3 timesteps of 1..20, 1 condition(s), with the perturbed-attention copy,
                starting at t=15)
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(model.image_shape):
        raise ValueError(
            f"images must be shaped (n,) + {tuple(model.image_shape)} like the model's, "
            f"got {images.shape}."
        )
    _check_count(samples_per_step)
    grid = default_timesteps(model.T) if timesteps is None else np.asarray(timesteps, np.int32)
    _check_timesteps(grid, model.T)  # Before the network calls.
    start_t = _start_timestep(start, model.T)
    gaussian_start.check_positive_int("start_clusters", start_clusters)
    pools = _condition_pools(model, images, labels)
    networks = [model.network]
    if guidance.has_attention(model.network):
        networks.append(guidance.perturbed_attention_network(model.network))
    mean_errors = _mean_errors_function(model, networks, samples_per_step)
    # (timestep index, condition index) blocks of draws, several blocks to a network call.
    blocks = [(k, condition) for k in range(len(grid)) for condition in range(len(pools))]
    per_call = max(1, DRAWS_PER_CALL // samples_per_step)
    rng = np.random.default_rng(seed)
    offsets = np.zeros((len(networks), len(grid), len(pools)) + images.shape[1:], np.float32)
    progress = keras.utils.Progbar(len(blocks), verbose=verbose, unit_name="block")
    for first in range(0, len(blocks), per_call):
        chunk = blocks[first:first + per_call]
        pools_drawn = [pools[condition][1] for _, condition in chunk]
        x0 = np.concatenate([images[pool[rng.integers(0, len(pool), samples_per_step)]]
                             for pool in pools_drawn])
        noises = rng.standard_normal(x0.shape).astype(np.float32)
        if model.noise_offset:  # The noise the model trained and samples with.
            channels = x0.shape[-1]
            noises += np.float32(model.noise_offset) * rng.standard_normal(
                (len(x0), 1, 1, channels)).astype(np.float32)
        steps = np.repeat(grid[[k for k, _ in chunk]], samples_per_step).astype(np.int32)
        call_labels = None if model.num_classes is None else np.repeat(
            [pools[condition][0] for _, condition in chunk], samples_per_step).astype(np.int32)
        means = ops.convert_to_numpy(mean_errors(x0, noises, steps, call_labels))
        for j, (k, condition) in enumerate(chunk):
            offsets[:, k, condition] = means[:, j]
        progress.update(first + len(chunk))
    perturbed = offsets[1] if len(networks) > 1 else None
    start = None if start_t is None else gaussian_start.estimate(
        images, start_t, model.T, [pool for _, pool in pools], clusters=start_clusters)
    return Calibration(grid, offsets[0], model.T, perturbed, start)


def _start_timestep(start, T):
    """The start timestep of `estimate`'s `start` argument, or None."""
    if start is None:
        return None
    if isinstance(start, str) and start == "auto":
        return gaussian_start.default_start(T)
    if isinstance(start, bool) or not isinstance(start, numbers.Integral) or not 1 <= start <= T:
        raise ValueError(
            f'start must be a timestep in 1..T = 1..{T}, "auto" or None (from pure noise), '
            f"got {start!r}."
        )
    return int(start)


def _check_count(samples_per_step):
    if isinstance(samples_per_step, bool) or not isinstance(samples_per_step, numbers.Integral) \
            or samples_per_step < 1:
        raise ValueError(
            f"samples_per_step must be a positive integer (256 is a good start), "
            f"got {samples_per_step!r}."
        )


def _condition_pools(model, images, labels):
    """`[(label, indices of its images)]`: each class, then "no class" (all images)."""
    everything = np.arange(len(images))
    if len(images) == 0:
        raise ValueError("calibration needs at least one image.")
    if model.num_classes is None:
        return [(None, everything)]
    if labels is None:
        raise ValueError(
            "a class-conditional model is calibrated per class: give the images' labels."
        )
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"labels must be one per image ({len(images)}), got {len(labels)}.")
    pools = []
    for label in range(model.num_classes):
        pool = np.flatnonzero(labels == label)
        if len(pool) == 0:
            raise ValueError(
                f"calibration needs images of every class; class {label} has none among "
                f"the {len(images)} given."
            )
        pools.append((label, pool))
    return pools + [(model.num_classes, everything)]


def _mean_errors_function(model, networks, samples_per_step):
    """A compiled `(x0, eps, t, labels) -> (networks, blocks, H, W, C)`: the mean of
    eps_theta - eps over each block of `samples_per_step` consecutive draws."""
    block_shape = (-1, samples_per_step) + tuple(model.image_shape)

    def mean_errors(images, noises, t, labels):
        x_t = model.q_sample(images, t, noises)
        errors = []
        for network in networks:
            outputs = ops.cast(model.network_output(x_t, t, labels, False, network), "float32")
            noise = targets.noise_from_prediction(model.prediction, outputs, x_t, t, model.tables)
            errors.append(ops.mean(ops.reshape(noise - noises, block_shape), axis=1))
        return ops.stack(errors)

    jit_compile = model.jit_compile if isinstance(model.jit_compile, bool) else False
    return sampling.compile_function(mean_errors, jit_compile, model.network.variables,
                                     any_leading_size=True)
