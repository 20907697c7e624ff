"""Start sampling part-way down, from the noised data's Gaussian approximation.

At high noise the noised data x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps is
nearly Gaussian: its distribution is fixed by the data's mean and covariance,
and the exact score there is, to a close approximation, the Gaussian one
(Wang and Vastola 2024). A short training run learns that regime worst: its
loss weight is smallest there, and on `shapes` the colour of each sample is
decided above t = 900 of 1000, where the trained network's mean prediction
was 20-30 grey levels off and one colour in four came out half as often as
in the data (BENCHMARKS.md). So the sampler skips it: it draws x_s directly
from N(sqrt(ab_s) mu, ab_s Sigma + (1 - ab_s) I) at a start timestep s (per
class, from that class's images) and runs its steps below s as usual. Wang
and Vastola call this "analytical teleportation"; it also saves the steps
above s.

The covariance is kept as its top `components` principal directions and
variances, and one mean variance for the rest: at the start's noise level
only the largest variances differ much from the noise's.

Reference:
    Wang and Vastola, "The Unreasonable Effectiveness of Gaussian Score
    Approximation for Diffusion Models and its Applications", TMLR 2024,
    arXiv:2311.10892.

Example:
>>> images = np.random.default_rng(0).uniform(-1, 1, (16, 4, 4, 1))
>>> start = estimate(images, t=8, T=10, components=3)
>>> start.draw(np.zeros((2, 4, 4, 1)), labels=None, alphabar=0.5).shape
(2, 4, 4, 1)
"""

import numpy as np

# Principal directions kept per condition (the rest: one mean variance).
DEFAULT_COMPONENTS = 64
# The default start, as a fraction of T: t = 760 of 1000 (BENCHMARKS.md,
# "Starting from the data's Gaussian").
DEFAULT_START_FRACTION = 0.76


class GaussianStart:
    """The data's mean and principal variances per condition, and where sampling starts.

    Args:
        t: int in 1..T. The timestep at which sampling starts.
        T: int. The model's number of timesteps.
        means: float array `(L, H, W, C)`: each condition's mean image (one
            per class, then "no class"; L = 1 for an unconditional model).
        components: float array `(L, K, H*W*C)`: orthonormal principal
            directions of each condition's images.
        variances: float array `(L, K)`: the variances along them.
        residual: float array `(L,)`: the mean variance in the directions left.

    Example:
    >>> start = GaussianStart(8, 10, np.zeros((1, 2, 2, 1)), np.eye(4)[None, :1],
    ...                       np.ones((1, 1)), np.zeros(1))
    >>> start
    GaussianStart(t=8 of 10, 1 condition(s), 1 component(s))
    """

    def __init__(self, t, T, means, components, variances, residual):
        self.t, self.T = int(t), int(T)
        self.means = np.asarray(means, np.float32)
        self.components = np.asarray(components, np.float32)
        self.variances = np.asarray(variances, np.float32)
        self.residual = np.asarray(residual, np.float32)
        _check(self)

    @property
    def num_conditions(self):
        return self.means.shape[0]

    @property
    def image_shape(self):
        return tuple(self.means.shape[1:])

    def draw(self, normal, labels, alphabar):
        """x_s from standard normal draws: `normal` `(n, H, W, C)` mapped to the Gaussian.

        x_s = sqrt(ab) mu + A z, with A A^T = ab Sigma + (1 - ab) I: the
        noise's own spread, widened along each principal direction.

        Args:
            normal: float array `(n, H, W, C)` of standard normal draws.
            labels: int array `(n,)` in 0..L-1, or None for the last condition.
            alphabar: float. ab_s, the schedule's alphabar at the start.

        Returns:
            A float32 array `(n, H, W, C)`.

        Example:
        >>> start = GaussianStart(8, 10, np.ones((1, 2, 2, 1)), np.eye(4)[None, :1],
        ...                       np.full((1, 1), 3.0), np.zeros(1))
        >>> start.draw(np.ones((1, 2, 2, 1)), None, alphabar=1.0)[0, :, :, 0]
        array([[2.732051, 1.      ],
               [1.      , 1.      ]], dtype=float32)
        """
        normal = np.asarray(normal, np.float64)
        n = len(normal)
        flat = normal.reshape(n, -1)
        labels = np.full((n,), self.num_conditions - 1) if labels is None else np.asarray(labels)
        out = np.empty_like(flat)
        for condition in np.unique(labels):
            rows = labels == condition
            components = self.components[condition].astype(np.float64)
            spread = np.sqrt(alphabar * self.variances[condition] + 1 - alphabar)
            rest = np.sqrt(alphabar * self.residual[condition] + 1 - alphabar)
            z = flat[rows]
            out[rows] = (np.sqrt(alphabar) * self.means[condition].reshape(-1) + rest * z
                         + ((z @ components.T) * (spread - rest)) @ components)
        return out.reshape(normal.shape).astype(np.float32)

    def arrays(self):
        """The tables by name (`from_arrays` reads them back)."""
        return {"start_t": np.int32(self.t), "start_T": np.int32(self.T), "start_means": self.means,
                "start_components": self.components, "start_variances": self.variances,
                "start_residual": self.residual}

    @classmethod
    def from_arrays(cls, arrays):
        """The `GaussianStart` of `arrays()`'s entries, or None when they are absent.

        Example:
        >>> start = GaussianStart(8, 10, np.zeros((1, 2, 2, 1)), np.eye(4)[None, :1],
        ...                       np.ones((1, 1)), np.zeros(1))
        >>> GaussianStart.from_arrays(start.arrays()).t, GaussianStart.from_arrays({})
        (8, None)
        """
        if "start_t" not in arrays:
            return None
        return cls(int(arrays["start_t"]), int(arrays["start_T"]), arrays["start_means"],
                   arrays["start_components"], arrays["start_variances"], arrays["start_residual"])

    def __repr__(self):
        return (f"GaussianStart(t={self.t} of {self.T}, {self.num_conditions} condition(s), "
                f"{self.components.shape[1]} component(s))")


def estimate(images, t, T, pools=None, components=DEFAULT_COMPONENTS):
    """The `GaussianStart` at timestep `t` of the images' mean and principal variances.

    Args:
        images: float array `(n, H, W, C)` in [-1, 1]: training images.
        t: int in 1..T. Where sampling is to start.
        T: int. The model's number of timesteps.
        pools: list of int arrays, the images of each condition (one per
            class, then all of them for "no class"), or None: one condition,
            all images.
        components: int >= 1. Principal directions kept per condition (at
            most the condition's images less one).

    Returns:
        A `GaussianStart`.

    Example:
    >>> images = np.random.default_rng(0).uniform(-1, 1, (10, 2, 2, 1))
    >>> estimate(images, t=8, T=10, pools=[np.arange(5), np.arange(10)], components=2)
    GaussianStart(t=8 of 10, 2 condition(s), 2 component(s))
    """
    images = np.asarray(images, np.float64)
    flat = images.reshape(len(images), -1)
    pools = [np.arange(len(images))] if pools is None else pools
    kept = max(1, min([components, flat.shape[1]] + [len(pool) - 1 for pool in pools]))
    means, directions, variances, residual = [], [], [], []
    for pool in pools:
        mean = flat[pool].mean(axis=0)
        centred = flat[pool] - mean
        pool_directions, pool_variances = _principal(centred, kept)
        total = np.sum(centred**2) / max(1, len(pool) - 1)
        means.append(mean.reshape(images.shape[1:]))
        directions.append(pool_directions)
        variances.append(pool_variances)
        residual.append(max(0.0, total - pool_variances.sum()) / max(1, flat.shape[1] - kept))
    return GaussianStart(t, T, np.stack(means), np.stack(directions), np.stack(variances),
                         np.array(residual))


def _principal(centred, kept):
    """The `kept` largest variances of the rows of `centred` `(n, D)` and their orthonormal
    directions `(kept, D)`, from the smaller of the two Gram matrices (n x n or D x D)."""
    n, size = centred.shape
    small = centred @ centred.T if n < size else centred.T @ centred
    values, vectors = _top_eigenpairs(small, kept)
    order = np.argsort(values)[::-1][:kept]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    if n < size:  # Eigenvectors of X X^T to those of X^T X: X^T v / |X^T v|.
        projected = centred.T @ vectors
        norms = np.linalg.norm(projected, axis=0)
        valid = norms > 1e-9 * max(1.0, norms.max())
        # Where the variance is 0, any direction orthogonal to the others (it stays 0).
        projected = np.where(valid, projected / np.where(valid, norms, 1.0), np.eye(size, kept))
        vectors, _ = np.linalg.qr(projected)
        vectors *= np.where(np.sum(vectors * projected, axis=0) < 0, -1.0, 1.0)
        values = np.where(valid, values, 0.0)
    return vectors.T, values / max(1, n - 1)


def _top_eigenpairs(matrix, kept, iterations=8):
    """Eigenvalues and eigenvectors of the symmetric `matrix`, at least the `kept` largest.

    A full eigendecomposition for small matrices; for larger ones subspace iteration
    (Halko, Martinsson and Tropp 2011, Algorithm 4.4) on 2 kept + 16 directions and the
    eigenproblem of the matrix in that subspace: on the 3072 x 3072 covariance of 8192
    `shapes` images the 64 largest eigenvalues agree with the full decomposition's to
    3e-12, in 0.7 s instead of 3.5 s.
    """
    width = 2 * kept + 16
    if width >= len(matrix):
        return np.linalg.eigh(matrix)
    basis = np.random.default_rng(0).standard_normal((len(matrix), width))
    for _ in range(iterations + 1):
        basis, _ = np.linalg.qr(matrix @ basis)
    values, rotation = np.linalg.eigh(basis.T @ matrix @ basis)
    return values, basis @ rotation


def default_start(T):
    """The default start timestep of a model with `T` timesteps.

    Example:
    >>> default_start(1000)
    760
    """
    return max(1, round(DEFAULT_START_FRACTION * T))


def _check(start):
    if not 1 <= start.t <= start.T:
        raise ValueError(f"the start timestep must be in 1..T = 1..{start.T}, got {start.t}.")
    size = int(np.prod(start.image_shape))
    L, K = start.variances.shape if start.variances.ndim == 2 else (None, None)
    if (start.means.ndim != 4 or L != start.num_conditions
            or start.components.shape != (L, K, size) or start.residual.shape != (L,)):
        raise ValueError(
            f"a GaussianStart needs means (L, H, W, C), components (L, K, H*W*C), variances "
            f"(L, K) and residual (L,); got {start.means.shape}, {start.components.shape}, "
            f"{start.variances.shape} and {start.residual.shape}."
        )
    if not all(np.all(np.isfinite(a)) for a in (start.means, start.components, start.variances,
                                                 start.residual)):
        raise ValueError("the Gaussian start's tables must be finite.")
