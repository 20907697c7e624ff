"""Start sampling part-way down, from a Gaussian mixture fitted to the data.

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

One Gaussian per class fixes each image's overall colours well but not
which colours go together: on `shapes`, where shape colour and background
are independent, the network turned a single Gaussian's draws into red
shapes on navy twice as often as on grey, and yellow ones the other way
round. So each class's images are first split into `clusters` groups by
k-means (in their top principal coordinates), and the start is a mixture of
one Gaussian per group, weighted by the group's size: a draw picks a group,
then draws from its Gaussian, noised to s. On the README's model this halved
the Fréchet ratio (6.8 -> 3.3, BENCHMARKS.md "A Gaussian mixture start").

Each covariance is kept as its top `components` principal directions and
variances, and one mean variance for the rest: at the start's noise level
only the largest variances differ much from the noise's.

Reference:
    Wang and Vastola, "The Unreasonable Effectiveness of Gaussian Score
    Approximation for Diffusion Models and its Applications", TMLR 2024,
    arXiv:2311.10892.

Example:
>>> images = np.random.default_rng(0).uniform(-1, 1, (16, 4, 4, 1))
>>> start = estimate(images, t=8, T=10, components=3, clusters=2)
>>> start.draw(np.zeros((2, 4, 4, 1)), labels=None, alphabar=0.5, uniform=[0.1, 0.9]).shape
(2, 4, 4, 1)
"""

import math

import numpy as np

# Principal directions kept per Gaussian (the rest: one mean variance).
DEFAULT_COMPONENTS = 8
# Gaussians (k-means groups) per condition: 16 and 32 did alike on `shapes`,
# 8 less well (BENCHMARKS.md, "A Gaussian mixture start").
DEFAULT_CLUSTERS = 16
# Principal coordinates in which the groups are found, and k-means' rounds.
CLUSTER_DIMENSIONS = 32
CLUSTER_ITERATIONS = 50
# k-means runs per condition, each from its own k-means++ seeding; the best is
# kept. One run's groups, and the samples, moved with the images' order; 32
# runs give the same samples in any order, within a draw's noise, for 2 s more
# on 8192 images (BENCHMARKS.md, "The mixture start's k-means").
KMEANS_STARTS = 32
# The default start, as a fraction of T: t = 760 of 1000 (BENCHMARKS.md,
# "Starting from the data's Gaussian"; with the mixture 700 and 820 did worse).
DEFAULT_START_FRACTION = 0.76


class GaussianStart:
    """A Gaussian mixture per condition fitted to the data, and where sampling starts.

    The mixture is a list of G Gaussians, each belonging to one condition
    (one per class, then "no class"; one condition for an unconditional
    model) with a weight within it. One Gaussian per condition (G = L, the
    default `conditions` and `weights`) is Wang and Vastola's start.

    Args:
        t: int in 1..T. The timestep at which sampling starts.
        T: int. The model's number of timesteps.
        means: float array `(G, H, W, C)`: each Gaussian's mean image.
        components: float array `(G, K, H*W*C)`: orthonormal principal
            directions of each Gaussian's images (rows of zeros where a group
            had fewer than K + 1 images).
        variances: float array `(G, K)`: the variances along them.
        residual: float array `(G,)`: the mean variance in the directions left.
        conditions: int array `(G,)`: the condition of each Gaussian, every
            one of 0..L-1 present; None: Gaussian g is condition g.
        weights: float array `(G,)`: positive weights, relative within each
            condition (a draw picks Gaussian g of its condition with
            probability w_g / the sum of its condition's); None: all 1.

    Example:
    >>> start = GaussianStart(8, 10, np.zeros((1, 2, 2, 1)), np.eye(4)[None, :1],
    ...                       np.ones((1, 1)), np.zeros(1))
    >>> start
    GaussianStart(t=8 of 10, 1 condition(s), 1 Gaussian(s) of 1 component(s))
    """

    def __init__(self, t, T, means, components, variances, residual, conditions=None,
                 weights=None):
        self.t, self.T = int(t), int(T)
        self.means = np.asarray(means, np.float32)
        self.components = np.asarray(components, np.float32)
        self.variances = np.asarray(variances, np.float32)
        self.residual = np.asarray(residual, np.float32)
        count = len(self.means)
        self.conditions = np.asarray(np.arange(count) if conditions is None else conditions,
                                     np.int32)
        self.weights = np.asarray(np.ones(count) if weights is None else weights, np.float32)
        _check(self)

    @property
    def num_conditions(self):
        return int(self.conditions.max()) + 1

    @property
    def image_shape(self):
        return tuple(self.means.shape[1:])

    def draw(self, normal, labels, alphabar, uniform=None):
        """x_s from standard normal draws: `normal` `(n, H, W, C)` mapped to the mixture.

        Each row picks a Gaussian of its condition by `uniform` (the weights'
        cumulative sums cut [0, 1) into one interval per Gaussian); then
        x_s = sqrt(ab) mu + A z, with A A^T = ab Sigma + (1 - ab) I: the
        noise's own spread, widened along each principal direction.

        Args:
            normal: float array `(n, H, W, C)` of standard normal draws.
            labels: int array `(n,)` in 0..L-1, or None for the last condition.
            alphabar: float. ab_s, the schedule's alphabar at the start.
            uniform: float array `(n,)` of uniform draws in [0, 1), which pick
                the Gaussians; needed when a condition has more than one.

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
        chosen = self._choose(labels, uniform)
        out = np.empty_like(flat)
        for g in np.unique(chosen):
            rows = chosen == g
            components = self.components[g].astype(np.float64)
            spread = np.sqrt(alphabar * self.variances[g] + 1 - alphabar)
            rest = np.sqrt(alphabar * self.residual[g] + 1 - alphabar)
            z = flat[rows]
            out[rows] = (np.sqrt(alphabar) * self.means[g].reshape(-1) + rest * z
                         + ((z @ components.T) * (spread - rest)) @ components)
        return out.reshape(normal.shape).astype(np.float32)

    def _choose(self, labels, uniform):
        """The Gaussian of each row: by `uniform` among its condition's, in their order."""
        if uniform is None:
            if len(self.conditions) > self.num_conditions:
                raise ValueError("this start is a mixture: draw(..., uniform=) must pick its "
                                 "Gaussians (uniform draws in [0, 1), one per image).")
            uniform = np.zeros(len(labels))  # One Gaussian per condition: any draw picks it.
        uniform = np.asarray(uniform, np.float64).reshape(-1)
        if uniform.shape != labels.shape or not np.all((uniform >= 0) & (uniform < 1)):
            raise ValueError(f"uniform must hold {len(labels)} draws in [0, 1), got "
                             f"{np.shape(uniform)} values in [{uniform.min()}, {uniform.max()}].")
        chosen = np.empty(len(labels), np.int64)
        for condition in np.unique(labels):
            rows = labels == condition
            members = np.flatnonzero(self.conditions == condition)
            edges = np.cumsum(self.weights[members], dtype=np.float64)
            picks = np.searchsorted(edges / edges[-1], uniform[rows], side="right")
            chosen[rows] = members[np.minimum(picks, len(members) - 1)]
        return chosen

    def arrays(self):
        """The tables by name (`from_arrays` reads them back)."""
        return {"start_t": np.int32(self.t), "start_T": np.int32(self.T), "start_means": self.means,
                "start_components": self.components, "start_variances": self.variances,
                "start_residual": self.residual, "start_conditions": self.conditions,
                "start_weights": self.weights}

    @classmethod
    def from_arrays(cls, arrays):
        """The `GaussianStart` of `arrays()`'s entries, or None when they are absent.

        Tables saved before the mixture (one Gaussian per condition, no
        `start_conditions`) read back as that.

        Example:
        >>> start = GaussianStart(8, 10, np.zeros((1, 2, 2, 1)), np.eye(4)[None, :1],
        ...                       np.ones((1, 1)), np.zeros(1))
        >>> GaussianStart.from_arrays(start.arrays()).t, GaussianStart.from_arrays({})
        (8, None)
        """
        if "start_t" not in arrays:
            return None
        return cls(int(arrays["start_t"]), int(arrays["start_T"]), arrays["start_means"],
                   arrays["start_components"], arrays["start_variances"], arrays["start_residual"],
                   arrays.get("start_conditions"), arrays.get("start_weights"))

    def __repr__(self):
        return (f"GaussianStart(t={self.t} of {self.T}, {self.num_conditions} condition(s), "
                f"{len(self.means)} Gaussian(s) of {self.components.shape[1]} component(s))")


def estimate(images, t, T, pools=None, components=DEFAULT_COMPONENTS, clusters=DEFAULT_CLUSTERS):
    """The `GaussianStart` at timestep `t` of a Gaussian mixture fitted to the images.

    Each condition's images are split into `clusters` groups by k-means on
    their top `CLUSTER_DIMENSIONS` principal coordinates (the best of
    `KMEANS_STARTS` k-means++ runs from fixed seeds: the same images, the same
    groups, and in another order nearly the same); each group gives one
    Gaussian (its mean, top principal variances and a mean variance for the
    rest), weighted by the group's share of the condition's images.

    Args:
        images: float array `(n, H, W, C)` in [-1, 1]: training images.
        t: int in 1..T. Where sampling is to start.
        T: int. The model's number of timesteps.
        pools: list of int arrays, the images of each condition (one per
            class, then all of them for "no class"), or None: one condition,
            all images.
        components: int >= 1. Principal directions kept per Gaussian (at
            most its group's images less one; zero rows pad the others).
        clusters: int >= 1. Gaussians per condition (at most its images);
            1: one Gaussian of all of the condition's images.

    Returns:
        A `GaussianStart`.

    Example:
    >>> images = np.random.default_rng(0).uniform(-1, 1, (10, 2, 2, 1))
    >>> estimate(images, t=8, T=10, pools=[np.arange(5), np.arange(10)], components=2,
    ...          clusters=1)
    GaussianStart(t=8 of 10, 2 condition(s), 2 Gaussian(s) of 2 component(s))
    """
    check_positive_int("components", components)
    check_positive_int("clusters", clusters)
    images = np.asarray(images, np.float64)
    flat = images.reshape(len(images), -1)
    pools = [np.arange(len(images))] if pools is None else pools
    kept = min(components, flat.shape[1])
    gaussians, conditions, weights = [], [], []
    for condition, pool in enumerate(pools):
        rows = flat[pool]
        for group in _groups(rows, clusters):
            gaussians.append(_gaussian(rows[group], kept))
            conditions.append(condition)
            weights.append(len(group) / len(pool))
    means, directions, variances, residual = (np.stack(table) for table in zip(*gaussians))
    return GaussianStart(t, T, means.reshape((-1,) + images.shape[1:]), directions, variances,
                         residual, np.array(conditions), np.array(weights))


def _gaussian(rows, kept):
    """Mean, `kept` principal directions and variances (zero-padded), and residual variance
    of `rows` `(n, D)`."""
    mean = rows.mean(axis=0)
    centred = rows - mean
    size = centred.shape[1]
    found = max(1, min(kept, len(rows) - 1))
    directions, variances = _principal(centred, found)
    total = np.sum(centred**2) / max(1, len(rows) - 1)
    residual = max(0.0, total - variances.sum()) / max(1, size - found)
    padding = kept - found
    return (mean, np.pad(directions, ((0, padding), (0, 0))), np.pad(variances, (0, padding)),
            residual)


def _groups(rows, clusters):
    """k-means groups of `rows` `(n, D)`: lists of row indices, none empty.

    The best (least within-group sum of squares) of `KMEANS_STARTS` runs, each
    from its own k-means++ seeding: one run's groups depend on the rows' order
    (its seeding picks rows by index), and so did the samples.
    """
    clusters = min(clusters, len(rows))
    if clusters == 1:
        return [np.arange(len(rows))]
    centred = rows - rows.mean(axis=0)
    directions, _ = _principal(centred, min(CLUSTER_DIMENSIONS, centred.shape[1], len(rows) - 1))
    points = centred @ directions.T
    assignment, _ = min((_kmeans(points, clusters, np.random.default_rng(seed))
                         for seed in range(KMEANS_STARTS)), key=lambda run: run[1])
    return [np.flatnonzero(assignment == k) for k in range(clusters) if np.any(assignment == k)]


def _kmeans(points, clusters, rng):
    """`(assignment, within-group sum of squares)` of k-means on `points` `(n, d)`:
    k-means++ seeding (Arthur and Vassilvitskii 2007), then Lloyd's rounds."""
    centres = [points[rng.integers(len(points))]]
    nearest = np.sum((points - centres[0]) ** 2, axis=1)
    for _ in range(clusters - 1):
        total = nearest.sum()
        chosen = (rng.choice(len(points), p=nearest / total) if total > 0
                  else rng.integers(len(points)))
        centres.append(points[chosen])
        nearest = np.minimum(nearest, np.sum((points - points[chosen]) ** 2, axis=1))
    centres = np.stack(centres)
    assignment = None
    for _ in range(CLUSTER_ITERATIONS):
        distances = np.sum(centres**2, axis=1) - 2 * points @ centres.T
        new_assignment = np.argmin(distances, axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for k in range(clusters):
            if np.any(assignment == k):
                centres[k] = points[assignment == k].mean(axis=0)
    inertia = np.sum((points - centres[assignment]) ** 2)
    return assignment, inertia


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


def check_positive_int(name, value):
    """`value` as an int if it is a positive integer, else a ValueError naming `name`.

    Example:
    >>> check_positive_int("clusters", 16)
    16
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def normal_to_uniform(normal):
    """Uniform draws in [0, 1) from standard normal ones, by the normal CDF.

    Example:
    >>> normal_to_uniform(np.array([-1.0, 0.0, 1.0])).round(4)
    array([0.1587, 0.5   , 0.8413])
    """
    cdf = 0.5 * np.vectorize(math.erfc)(-np.asarray(normal, np.float64) / math.sqrt(2.0))
    return np.minimum(cdf, np.nextafter(1.0, 0.0))


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
    G, K = start.variances.shape if start.variances.ndim == 2 else (None, None)
    if (start.means.ndim != 4 or G != len(start.means)
            or start.components.shape != (G, K, size) or start.residual.shape != (G,)
            or start.conditions.shape != (G,) or start.weights.shape != (G,)):
        raise ValueError(
            f"a GaussianStart needs means (G, H, W, C), components (G, K, H*W*C), variances "
            f"(G, K), residual, conditions and weights (G,); got {start.means.shape}, "
            f"{start.components.shape}, {start.variances.shape}, {start.residual.shape}, "
            f"{start.conditions.shape} and {start.weights.shape}."
        )
    if not all(np.all(np.isfinite(a)) for a in (start.means, start.components, start.variances,
                                                 start.residual, start.weights)):
        raise ValueError("the Gaussian start's tables must be finite.")
    present = np.unique(start.conditions)
    if not np.array_equal(present, np.arange(len(present))) or not np.all(start.weights > 0):
        raise ValueError(
            f"a GaussianStart's conditions must cover 0..L-1 and its weights be positive; got "
            f"conditions {present.tolist()} and weights down to {start.weights.min()}."
        )
