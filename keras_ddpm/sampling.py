"""Reverse diffusion: small step functions and the compiled loop that runs them.

The step functions know nothing about the network: each maps
`(pred_noises, x_t, t, ...) -> x_{t-1}` (or to the previous strided timestep)
using the schedule tables. `run_reverse_loop` calls a denoising function in a
compiled `fori_loop`, so there is no host round trip per step (the lecture's
`model.predict` loop pays one per step).

Noise is drawn statelessly from `(seed, step)`, so a run is reproducible for a
seed whatever else happened before it, and identical after a `.keras` reload.

References:
    Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models",
    arXiv:2006.11239 (2020), Algorithm 2.
    Song, Meng and Ermon, "Denoising Diffusion Implicit Models",
    arXiv:2010.02502 (2020), eq. (12).
"""

import dataclasses

import numpy as np
import keras
from keras import ops

VARIANCES = ("beta", "posterior")


def gather(table, t, ndim=4):
    """Values of a schedule table at a batch of timesteps, broadcastable to images.

    Args:
        table: tensor or array of shape `(T + 1,)`.
        t: int tensor of shape `(batch,)` (or a scalar).
        ndim: int. Rank of the images the result multiplies.

    Returns:
        A float tensor of shape `(batch, 1, 1, 1)` for `ndim=4`.

    Example:
    >>> sched = ddpm_schedule(1e-4, 0.02, 1000)
    >>> tuple(gather(sched["sqrtab"], keras.ops.array([1, 1000])).shape)
    (2, 1, 1, 1)
    """
    values = ops.take(ops.convert_to_tensor(table), ops.cast(t, "int32"), axis=0)
    return ops.reshape(values, (-1,) + (1,) * (ndim - 1))


def ddpm_timesteps(T):
    """The ancestral sampler's timesteps, `T, T-1, ..., 1`, and their successors.

    Args:
        T: int. Number of diffusion steps.

    Returns:
        `(timesteps, prev_timesteps)`: int32 arrays of length T.

    Example:
    >>> ddpm_timesteps(3)
    (array([3, 2, 1], dtype=int32), array([2, 1, 0], dtype=int32))
    """
    timesteps = np.arange(T, 0, -1, dtype=np.int32)
    return timesteps, timesteps - 1


def strided_timesteps(T, steps):
    """`steps` evenly spaced timesteps from T down to about T / steps, and successors.

    The first step starts from pure noise at `t = T` and the last one lands on
    `t = 0` (the clean image). With `steps == T` this is `T, T-1, ..., 1`.

    Args:
        T: int. Number of diffusion steps of the model.
        steps: int. Number of sampling steps, in 1..T.

    Returns:
        `(timesteps, prev_timesteps)`: int32 arrays of length `steps`.

    Example:
    >>> strided_timesteps(1000, 4)
    (array([1000,  750,  500,  250], dtype=int32), array([750, 500, 250,   0], dtype=int32))
    """
    check_steps(steps, T)
    timesteps = np.round(np.linspace(T, 0, steps + 1)).astype(np.int32)
    return timesteps[:-1], timesteps[1:]


def check_steps(steps, T):
    """Raise `ValueError` unless `steps` is an integer in 1..T.

    Example:
    >>> check_steps(50, 1000)
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}.")
    if not 1 <= steps <= T:
        raise ValueError(
            f"steps must be in 1..T = 1..{T} (the model was trained with T={T}), "
            f"got steps={steps}."
        )


def ddpm_step(pred_noises, x_t, t, schedule, noise, variance="beta", clip_x0=False):
    """One ancestral DDPM step, the lecture's formula (Ho et al., Algorithm 2).

    x_{t-1} = oneover_sqrtalpha[t] * (x_t - mab_over_sqrtmab[t] * eps) + sigma_t * z

    with `sigma_t = sqrt(beta_t)` (`variance="beta"`, the lecture's
    `sqrt_beta_t`) or the posterior standard deviation
    (`variance="posterior"`), and no noise added at the last step (t = 1).
    With `clip_x0=True` the noise estimate is first made consistent with a
    predicted clean image clipped to [-1, 1]; the mean is then the posterior
    mean of q(x_{t-1} | x_t, x0) at that clipped x0 (off by default: the
    lecture does not clip).

    Args:
        pred_noises: tensor `(batch, H, W, C)`. The network's noise estimate.
        x_t: tensor `(batch, H, W, C)`. Current images.
        t: int tensor `(batch,)`. Current timestep, in 1..T.
        schedule: dict of tables from `ddpm_schedule`.
        noise: tensor like `x_t`. Standard normal draws `z`.
        variance: str. `"beta"` or `"posterior"`.
        clip_x0: bool. Clip the implied clean image to [-1, 1].

    Returns:
        `x_{t-1}`, a tensor like `x_t`.

    Example:
    >>> sched = ddpm_schedule(1e-4, 0.02, 10)
    >>> x = keras.ops.ones((1, 2, 2, 1))
    >>> tuple(ddpm_step(x * 0, x, keras.ops.array([1]), sched, x).shape)
    (1, 2, 2, 1)
    """
    if clip_x0:
        _, pred_noises = clip_prediction(pred_noises, x_t, t, schedule)
    # 1. Posterior mean from the predicted noise, eq. (11) of Ho et al.
    mean = gather(schedule["oneover_sqrtalpha"], t) * (
        x_t - gather(schedule["mab_over_sqrtmab"], t) * pred_noises
    )
    # 2. Standard deviation sigma_t; z = 0 at the last step, Algorithm 2 line 3.
    std_key = "sqrt_beta_t" if variance == "beta" else "posterior_std"
    not_last = ops.cast(ops.greater(t, 1), x_t.dtype)
    sigma = gather(schedule[std_key], t) * ops.reshape(not_last, (-1, 1, 1, 1))
    return mean + sigma * noise


def predict_x0(pred_noises, x_t, t, schedule):
    """Clean-image estimate x0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t).

    Example:
    >>> sched = ddpm_schedule(1e-4, 0.02, 10)
    >>> x = keras.ops.ones((1, 2, 2, 1))
    >>> tuple(predict_x0(x * 0, x, keras.ops.array([1]), sched).shape)
    (1, 2, 2, 1)
    """
    return (x_t - gather(schedule["sqrtmab"], t) * pred_noises) / gather(
        schedule["sqrtab"], t
    )


def clip_prediction(pred_noises, x_t, t, schedule):
    """Clip the implied clean image to [-1, 1] and recompute the noise from it.

    Returns:
        `(pred_images, pred_noises)` consistent with `x_t`:
        `x_t = sqrtab[t] * pred_images + sqrtmab[t] * pred_noises`.

    Example:
    >>> sched = ddpm_schedule(1e-4, 0.02, 10)
    >>> x = keras.ops.ones((1, 2, 2, 1))
    >>> images, noises = clip_prediction(x * 0, x * 3, keras.ops.array([1]), sched)
    """
    pred_images = ops.clip(predict_x0(pred_noises, x_t, t, schedule), -1.0, 1.0)
    pred_noises = (x_t - gather(schedule["sqrtab"], t) * pred_images) / gather(
        schedule["sqrtmab"], t
    )
    return pred_images, pred_noises


def ddim_step(pred_noises, x_t, t, prev_t, schedule, noise, eta=0.0, clip_x0=True):
    """One DDIM step from `t` to an earlier `prev_t` (Song et al., eq. 12).

    1. x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), clipped to [-1, 1] when
       `clip_x0` (then eps is recomputed from the clipped x0 so both agree).
    2. sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev).
    3. x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z.

    `eta=0` is deterministic DDIM; `eta=1` with `prev_t = t - 1` is the DDPM
    step with the posterior variance.

    Args:
        pred_noises: tensor `(batch, H, W, C)`. The network's noise estimate.
        x_t: tensor like `pred_noises`. Current images.
        t: int tensor `(batch,)`. Current timestep, in 1..T.
        prev_t: int tensor `(batch,)`. Target timestep, in 0..t-1.
        schedule: dict of tables from `ddpm_schedule`.
        noise: tensor like `x_t`. Standard normal draws `z`.
        eta: float. Amount of stochasticity.
        clip_x0: bool. Clip the predicted clean image to the data range.

    Returns:
        The images at `prev_t`.

    Example:
    >>> sched = ddpm_schedule(1e-4, 0.02, 10)
    >>> x = keras.ops.ones((1, 2, 2, 1))
    >>> tuple(ddim_step(x * 0, x, keras.ops.array([5]), keras.ops.array([0]), sched, x).shape)
    (1, 2, 2, 1)
    """
    alphabar = schedule["alphabar_t"]
    alphabar_t = gather(alphabar, t)
    alphabar_prev = gather(alphabar, prev_t)
    # 1. Predicted clean image, eq. (12) "predicted x0".
    if clip_x0:
        pred_images, pred_noises = clip_prediction(pred_noises, x_t, t, schedule)
    else:
        pred_images = predict_x0(pred_noises, x_t, t, schedule)
    # 2. Noise level of this step, eq. (16).
    sigma = (
        eta
        * ops.sqrt((1.0 - alphabar_prev) / (1.0 - alphabar_t))
        * ops.sqrt(1.0 - alphabar_t / alphabar_prev)
    )
    # 3. Direction pointing to x_t, and the step itself.
    direction = ops.sqrt(ops.maximum(1.0 - alphabar_prev - sigma**2, 0.0)) * pred_noises
    return ops.sqrt(alphabar_prev) * pred_images + direction + sigma * noise


def stateless_normal(shape, seed, dtype="float32"):
    """Standard normal draws determined by `seed`, an int32 tensor of shape (2,).

    Works inside compiled loops on the TensorFlow and JAX backends, where
    `keras.random` needs a `SeedGenerator` (a variable) instead.

    Example:
    >>> tuple(stateless_normal((2, 3), keras.ops.array([7, 0], "int32")).shape)
    (2, 3)
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)
    if backend == "jax":
        import jax

        key = jax.random.PRNGKey(0)
        key = jax.random.fold_in(jax.random.fold_in(key, seed[0]), seed[1])
        return jax.random.normal(key, shape, dtype=dtype)
    # Other backends: eager only, drawn through keras.random with an int seed.
    return keras.random.normal(
        shape, dtype=dtype, seed=int(ops.convert_to_numpy(seed[0] * 1000003 + seed[1]))
    )


def compile_function(fn, jit_compile=False, variables=(), any_leading_size=False):
    """Compile `fn` for the active backend (`tf.function`, `jax.jit`, or as is).

    TensorFlow: a `tf.function`, compiled with XLA when `jit_compile` is
    True (Keras' `"auto"` turns it on where there is a GPU). JAX: `jax.jit`,
    always XLA (`jit_compile` is ignored; JAX has no other compiler), and
    the current values of `variables` are passed to every call through a
    `keras.StatelessScope`, so the compiled function sees weights updated
    after it was traced (read from a closure they would be frozen as
    constants). Python values `fn` depends on (strings, flags) belong in its
    closure: one compiled function per setting. Other backends: `fn` itself.

    `any_leading_size=True` (TensorFlow): the first call traces `fn` for any
    size of the first dimension of each tensor argument of rank >= 1 (a batch,
    a number of steps), so calls at other sizes reuse that trace. Without it
    TensorFlow traces again at the second size (and then for any size): the
    same trace, made twice.

    Args:
        fn: callable of tensors (nested lists and dicts of tensors too).
        jit_compile: bool. TensorFlow only: compile with XLA.
        variables: list of `keras.Variable`. The variables `fn` reads.
        any_leading_size: bool. TensorFlow only: one trace for any first
            dimension (`fn` must not need its arguments' first sizes as
            Python numbers).

    Returns:
        A callable with the signature of `fn`.

    Example:
    >>> double = compile_function(lambda x: x * 2)
    >>> int(double(keras.ops.array(2)))
    4
    >>> scale = keras.Variable(3.0)
    >>> times = compile_function(lambda x: x * scale, variables=[scale])
    >>> float(times(keras.ops.array(2.0)))
    6.0
    >>> total = compile_function(keras.ops.sum, any_leading_size=True)
    >>> int(total(keras.ops.ones(3))), int(total(keras.ops.ones(5)))
    (3, 5)
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # The loops are explicit (ops.fori_loop): no AutoGraph conversion needed.
        function = tf.function(
            fn, jit_compile=bool(jit_compile), reduce_retracing=True, autograph=False
        )
        if not any_leading_size:
            return function

        def any_size(value):
            if not tf.is_tensor(value) or value.shape.rank in (None, 0):
                return value
            return tf.TensorSpec([None] + value.shape.as_list()[1:], value.dtype)

        def call(*args):
            # Under `tf.config.run_functions_eagerly(True)` `fn` runs untraced: no trace.
            eager = tf.config.functions_run_eagerly()
            if function.experimental_get_tracing_count() == 0 and not eager:
                function.get_concrete_function(*tf.nest.map_structure(any_size, args))
            return function(*args)

        return call
    if backend == "jax":
        import jax

        variables = list(variables)

        def stateless_fn(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        compiled = jax.jit(stateless_fn)

        def call(*args):
            return compiled([variable.value for variable in variables], *args)

        return call
    return fn


def add_noise(images, t, noises, schedule):
    """Forward diffusion in one jump, x_t = sqrtab[t] x0 + sqrtmab[t] eps (eq. (4) of Ho et al.).

    The one forward-noising formula of the package: training, RePaint and the
    plots all call it.

    Args:
        images: tensor `(batch, H, W, C)`. Clean images x0.
        t: int tensor `(batch,)`. Timesteps in 0..T.
        noises: tensor like `images`. Standard normal noise eps.
        schedule: dict of tables from `ddpm_schedule`.

    Returns:
        The noisy images x_t.

    Example:
    >>> sched = ddpm_schedule(1e-4, 0.02, 10)
    >>> x0 = keras.ops.zeros((2, 4, 4, 1))
    >>> tuple(add_noise(x0, keras.ops.array([0, 10]), x0 + 1, sched).shape)
    (2, 4, 4, 1)
    """
    signal_rates = gather(schedule["sqrtab"], t, ops.ndim(images))
    noise_rates = gather(schedule["sqrtmab"], t, ops.ndim(images))
    return signal_rates * images + noise_rates * noises


# ------------------------------------------------------------------ timesteps
SPACINGS = ("linspace", "leading", "trailing", "logsnr", "karras")


def spaced_timesteps(schedule, steps, spacing="trailing", rho=7.0):
    """`steps` timesteps from about T down towards 1, each step's successor, and 0 last.

    With T = 1000 and 10 steps (Lin et al. 2023, Table 2, timesteps 1..T):

    - `"trailing"`: T, 900, ..., 100 (round(linspace(T, 0, steps + 1))
      without the final 0): the package's strided DDIM timesteps.
    - `"linspace"`: round(linspace(T, 1, steps)): 1000, 889, ..., 112, 1.
    - `"leading"`: 901, 801, ..., 1 (multiples of T // steps, plus one).
    - `"logsnr"`: uniform in log-SNR lambda = log(sqrtab / sqrtmab) from t = T
      to t = 1 (Lu et al. 2022, "DPM-Solver", section 3.3), each level mapped
      to the nearest discrete timestep.
    - `"karras"`: noise levels sigma = sqrtmab / sqrtab spaced as
      (sigma_max^(1/rho) + i / (steps - 1) (sigma_min^(1/rho) -
      sigma_max^(1/rho)))^rho (Karras et al. 2022, eq. (5)), sigma_max and
      sigma_min those of t = T and t = 1, mapped to the nearest timestep.

    The last two can map two levels onto one timestep: duplicates are dropped,
    so they may give fewer than `steps` timesteps (never with T = 1000 and
    steps <= 100).

    Args:
        schedule: dict of tables from `ddpm_schedule`.
        steps: int. Number of sampling steps, in 1..T.
        spacing: str. One of `SPACINGS`.
        rho: float. Exponent of the `"karras"` spacing.

    Returns:
        `(timesteps, prev_timesteps)`: int32 arrays, `prev_timesteps[-1] == 0`.

    Example:
    >>> sched = ddpm_schedule(1e-4, 0.02, 1000)
    >>> spaced_timesteps(sched, 4, "leading")[0]
    array([751, 501, 251,   1], dtype=int32)
    """
    alphabar = np.asarray(schedule["alphabar_t"], np.float64)
    T = len(alphabar) - 1
    check_steps(steps, T)
    if spacing == "trailing":
        return strided_timesteps(T, steps)
    if spacing == "linspace":
        timesteps = np.round(np.linspace(T, 1, steps))
    elif spacing == "leading":
        timesteps = np.arange(steps)[::-1] * (T // steps) + 1
    elif spacing in ("logsnr", "karras"):
        # Noise level sigma_t = sqrt((1 - ab_t) / ab_t) of t = 1..T, increasing.
        log_sigmas = 0.5 * np.log((1.0 - alphabar[1:]) / alphabar[1:])
        levels = np.linspace(log_sigmas[-1], log_sigmas[0], steps)  # logsnr = -2 log sigma.
        if spacing == "karras":
            ramp = np.linspace(0.0, 1.0, steps)
            low, high = np.exp(log_sigmas[0] / rho), np.exp(log_sigmas[-1] / rho)
            levels = rho * np.log(high + ramp * (low - high))
        nearest = np.argmin(np.abs(log_sigmas[None, :] - levels[:, None]), axis=1) + 1
        timesteps = nearest[np.sort(np.unique(nearest, return_index=True)[1])]
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}.")
    timesteps = np.asarray(timesteps, np.int32)
    return timesteps, np.append(timesteps[1:], 0).astype(np.int32)


# ------------------------------------------------------------------ samplers
def check_eta(eta):
    """`eta` as a float if it is a finite number in [0, 1], else a ValueError.

    Example:
    >>> check_eta(1)
    1.0
    """
    if (
        isinstance(eta, (bool, np.bool_))
        or not isinstance(eta, (int, float, np.integer, np.floating))
        or not 0.0 <= float(eta) <= 1.0  # False for NaN too.
    ):
        raise ValueError(
            f"eta must be a finite number in [0, 1] (0: deterministic DDIM, "
            f"1: DDPM-like noise), got {eta!r}."
        )
    return float(eta)


def check_bool(name, value):
    """`value` if it is a bool (NumPy's too), else a TypeError: "no" is not False.

    Example:
    >>> check_bool("clip_x0", True)
    True
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


class Sampler:
    """What every sampler object provides (a frozen dataclass of its settings).

    A sampler knows nothing about the network: `timesteps` says where the
    network is evaluated and where each evaluation lands, `step` maps one
    noise estimate to the next images. A multistep sampler keeps its history
    in `state`, a tuple of tensors the compiled loop carries from step to
    step (`initial_state` gives the first).

    Subclasses set `name`, `stochastic` and `default_spacing`.

    Example:
    >>> sampler = DDIMSampler(eta=0.0)
    >>> isinstance(sampler, Sampler), sampler.name, sampler.default_spacing
    (True, 'ddim', 'trailing')
    """

    name = None
    stochastic = False  # Whether `step` draws noise.
    default_spacing = "trailing"

    def timesteps(self, schedule, steps, spacing=None):
        """`(timesteps, prev_timesteps)`: one pair per network evaluation."""
        return spaced_timesteps(schedule, steps, spacing or self.default_spacing)

    def initial_state(self, x):
        """The loop state before the first step: a tuple of tensors."""
        return ()

    def step(self, pred_noises, x_t, t, prev_t, schedule, state, draw, index, num_steps):
        """One step from `t` to `prev_t`: `(x_prev, state)`.

        Args:
            pred_noises: tensor `(batch, H, W, C)`. The noise estimate at `t`.
            x_t: tensor like `pred_noises`. Current images.
            t: int tensor `(batch,)`. Current timestep.
            prev_t: int tensor `(batch,)`. Timestep the step lands on.
            schedule: dict of tables from `ddpm_schedule`.
            state: tuple of tensors, from `initial_state` or the last step.
            draw: callable `k -> tensor like x_t`, the step's k-th standard
                normal draw (k = 0 for the sampler; RePaint uses 1 and 2).
            index: int tensor. Position of this step in `timesteps`.
            num_steps: int tensor. Length of `timesteps`.
        """
        raise NotImplementedError


def _check_clip(sampler):
    check_bool("clip_x0", sampler.clip_x0)


@dataclasses.dataclass(frozen=True)
class DDPMSampler(Sampler):
    """The lecture's ancestral sampler over all T steps (Ho et al. 2020, Algorithm 2).

    Args:
        variance: str. `"beta"` (sigma_t^2 = beta_t, the lecture's) or
            `"posterior"` (the posterior variance).
        clip_x0: bool. Clip the implied clean image to [-1, 1] (see `ddpm_step`).

    Example:
    >>> sampler = DDPMSampler(variance="beta")
    >>> sampler.timesteps(ddpm_schedule(1e-4, 0.02, 3), 3)
    (array([3, 2, 1], dtype=int32), array([2, 1, 0], dtype=int32))
    """

    variance: str = "beta"
    clip_x0: bool = False
    name = "ddpm"
    stochastic = True

    def __post_init__(self):
        _check_clip(self)
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}.")

    def timesteps(self, schedule, steps, spacing=None):
        T = len(schedule["alphabar_t"]) - 1
        check_steps(steps, T)
        if steps != T or spacing not in (None, "trailing"):
            raise ValueError(
                f"The ancestral DDPM sampler runs all T={T} steps; got steps={steps}"
                f"{'' if spacing is None else f', spacing={spacing!r}'}. Use sampler='ddim' "
                "(eta=1.0 is the stochastic strided equivalent)."
            )
        return ddpm_timesteps(T)

    def step(self, pred_noises, x_t, t, prev_t, schedule, state, draw, index, num_steps):
        x_prev = ddpm_step(
            pred_noises, x_t, t, schedule, draw(0), self.variance, clip_x0=self.clip_x0
        )
        return x_prev, state


@dataclasses.dataclass(frozen=True)
class DDIMSampler(Sampler):
    """Strided DDIM (Song et al. 2020, eq. (12)); `eta` sets its stochasticity.

    Args:
        eta: float in [0, 1]. 0 is deterministic DDIM, 1 the DDPM posterior
            noise on the strided timesteps.
        clip_x0: bool. Clip the predicted clean image to [-1, 1] (diffusers' default).

    Example:
    >>> DDIMSampler(eta=0.0).timesteps(ddpm_schedule(1e-4, 0.02, 1000), 4)
    (array([1000,  750,  500,  250], dtype=int32), array([750, 500, 250,   0], dtype=int32))
    """

    eta: float = 0.0
    clip_x0: bool = True
    name = "ddim"

    def __post_init__(self):
        _check_clip(self)
        object.__setattr__(self, "eta", check_eta(self.eta))

    @property
    def stochastic(self):
        return self.eta > 0

    def step(self, pred_noises, x_t, t, prev_t, schedule, state, draw, index, num_steps):
        x_prev = ddim_step(
            pred_noises, x_t, t, prev_t, schedule, draw(0), eta=self.eta, clip_x0=self.clip_x0
        )
        return x_prev, state


def _log_snr(t, schedule):
    """lambda_t = log(sqrtab[t] / sqrtmab[t]), +inf at t = 0 (Lu et al. 2022, eq. (3.1))."""
    return ops.log(gather(schedule["sqrtab"], t)) - ops.log(gather(schedule["sqrtmab"], t))


@dataclasses.dataclass(frozen=True)
class DPMSolverSampler(Sampler):
    """DPM-Solver++ multistep, data-prediction form (Lu et al. 2022, "DPM-Solver++").

    With alpha_t = sqrtab[t], sigma_t = sqrtmab[t], lambda_t = log(alpha_t /
    sigma_t) and the clean-image estimates m_k of the last steps, a step from
    s to t with h = lambda_t - lambda_s is (Algorithm 2 for order 2):

        x_t = (sigma_t / sigma_s) x_s - alpha_t (e^(-h) - 1) D.

    Order 1: D = m_0 (this is DDIM with eta = 0). Order 2: D = m_0 +
    (m_0 - m_1) / (2 r), r = h_prev / h. Order 3 adds the second difference
    (the third-order multistep update of the authors' reference code). The
    first steps lack history and run at lower order, and so do the final ones
    (`min(order, steps left)`): the last step lands on t = 0 where lambda is
    infinite and only order 1 (x_0 = m_0) is defined.

    Args:
        order: int. 2 (DPM-Solver++(2M)) or 3 (3M).
        clip_x0: bool. Clip each clean-image estimate to [-1, 1] (thresholding).

    Example:
    >>> sampler = DPMSolverSampler(order=2)
    >>> ts, prev = sampler.timesteps(ddpm_schedule(1e-4, 0.02, 1000), 5)
    >>> ts[0], prev[-1]
    (np.int32(1000), np.int32(0))
    """

    order: int = 2
    clip_x0: bool = True
    name = "dpm++"
    default_spacing = "logsnr"

    def __post_init__(self):
        _check_clip(self)
        if self.order not in (1, 2, 3) or isinstance(self.order, bool):
            raise ValueError(f"order must be 1, 2 or 3, got {self.order!r}.")

    def initial_state(self, x):
        # (m_1, m_2, lambda_1, lambda_2): the last two clean-image estimates and
        # the log-SNRs they were made at.
        lam = ops.zeros((ops.shape(x)[0], 1, 1, 1), x.dtype)
        return (ops.zeros_like(x), ops.zeros_like(x), lam, lam)

    def step(self, pred_noises, x_t, t, prev_t, schedule, state, draw, index, num_steps):
        m_1, m_2, lambda_1, lambda_2 = state
        # 1. Clean-image estimate (data prediction), optionally clipped.
        m_0 = predict_x0(pred_noises, x_t, t, schedule)
        if self.clip_x0:
            m_0 = ops.clip(m_0, -1.0, 1.0)
        # 2. Step size in log-SNR and the exponential factor e^(-h) - 1 (-1 at t = 0).
        lambda_0, lambda_t = _log_snr(t, schedule), _log_snr(prev_t, schedule)
        h = lambda_t - lambda_0
        phi = ops.expm1(-h)
        alpha_t = gather(schedule["sqrtab"], prev_t)
        x_first = (gather(schedule["sqrtmab"], prev_t) / gather(schedule["sqrtmab"], t)) * x_t
        # 3. Order of this step: no more than the history and the steps left allow.
        order = ops.minimum(ops.minimum(index + 1, num_steps - index), self.order)
        # 4. Differences of the estimates, scaled by r_k = h_k / h.
        r_0, r_1 = (lambda_0 - lambda_1) / h, (lambda_1 - lambda_2) / h
        d1_0, d1_1 = (m_0 - m_1) / r_0, (m_1 - m_2) / r_1
        second = m_0 + 0.5 * d1_0  # Algorithm 2: D = (1 + 1/(2r)) m_0 - 1/(2r) m_1.
        x_prev = ops.where(order == 1, x_first - alpha_t * phi * m_0, x_first - alpha_t * phi * second)
        if self.order == 3:
            d1 = d1_0 + r_0 / (r_0 + r_1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r_0 + r_1)
            third = (
                x_first - alpha_t * phi * m_0 + alpha_t * (phi / h + 1.0) * d1
                - alpha_t * ((phi / h + 1.0) / h - 0.5) * d2
            )
            x_prev = ops.where(order == 3, third, x_prev)
        return x_prev, (m_0, m_1, ops.broadcast_to(lambda_0, ops.shape(lambda_1)), lambda_1)


@dataclasses.dataclass(frozen=True)
class EulerSampler(Sampler):
    """Euler's method on the probability-flow ODE in noise levels (Karras et al. 2022).

    With sigma_t = sqrtmab[t] / sqrtab[t] and x~ = x_t / sqrtab[t], the ODE is
    dx~/dsigma = eps(x_t, t) (Karras et al., eq. (4) and Table 1, VP column);
    an Euler step is x~' = x~ + (sigma' - sigma) eps, which is deterministic
    DDIM on the same timesteps. Timesteps default to Karras' noise levels
    (rho = 7) mapped onto the model's discrete timesteps.

    Args:
        clip_x0: bool. Clip the implied clean image to [-1, 1].

    Example:
    >>> ts, prev = EulerSampler().timesteps(ddpm_schedule(1e-4, 0.02, 1000), 4)
    >>> ts.tolist(), prev.tolist()
    ([1000, 776, 302, 1], [776, 302, 1, 0])
    """

    clip_x0: bool = True
    name = "euler"
    default_spacing = "karras"

    def __post_init__(self):
        _check_clip(self)

    def _noise(self, pred_noises, x_t, t, schedule):
        if self.clip_x0:
            _, pred_noises = clip_prediction(pred_noises, x_t, t, schedule)
        return pred_noises

    def step(self, pred_noises, x_t, t, prev_t, schedule, state, draw, index, num_steps):
        # Algorithm 1 of Karras et al., lines 4-5: d = eps, x~' = x~ + (sigma' - sigma) d.
        slope = self._noise(pred_noises, x_t, t, schedule)
        x_scaled = x_t / gather(schedule["sqrtab"], t)
        x_next = x_scaled + (_sigma(prev_t, schedule) - _sigma(t, schedule)) * slope
        return gather(schedule["sqrtab"], prev_t) * x_next, state


def _sigma(t, schedule):
    """Noise level sigma_t = sqrtmab[t] / sqrtab[t] of the variance-exploding view."""
    return gather(schedule["sqrtmab"], t) / gather(schedule["sqrtab"], t)


@dataclasses.dataclass(frozen=True)
class HeunSampler(EulerSampler):
    """Heun's 2nd-order method on Karras noise levels (Karras et al. 2022, Algorithm 1).

    Each step from sigma_i to sigma_{i+1} > 0 is an Euler step followed by a
    correction with the slope at its end, x~_{i+1} = x~_i + (sigma_{i+1} -
    sigma_i) (d_i + d'_{i+1}) / 2; the last step, to sigma = 0, is Euler's
    (Algorithm 1, line 7). One network evaluation per loop iteration: the
    correction is an iteration whose timestep equals its target (`t ==
    prev_t`), so `steps` steps cost 2 steps - 1 evaluations. The state holds
    x~_i, d_i and sigma_i for the correction.

    Args:
        clip_x0: bool. Clip the implied clean image to [-1, 1].

    Example:
    >>> HeunSampler().timesteps(ddpm_schedule(1e-4, 0.02, 1000), 3)[0].tolist()
    [1000, 594, 594, 1, 1]
    """

    name = "heun"

    def timesteps(self, schedule, steps, spacing=None):
        timesteps, prev_timesteps = super().timesteps(schedule, steps, spacing)
        # Each step that does not end at t = 0 gets a correction evaluation at its end.
        pairs = []
        for t, prev_t in zip(timesteps.tolist(), prev_timesteps.tolist()):
            pairs += [(t, prev_t), (prev_t, prev_t)] if prev_t > 0 else [(t, prev_t)]
        timesteps, prev_timesteps = np.array(pairs, np.int32).T
        return timesteps, prev_timesteps

    def initial_state(self, x):
        return (ops.zeros_like(x), ops.zeros_like(x), ops.zeros((ops.shape(x)[0], 1, 1, 1), x.dtype))

    def step(self, pred_noises, x_t, t, prev_t, schedule, state, draw, index, num_steps):
        saved_x, saved_slope, saved_sigma = state
        slope = self._noise(pred_noises, x_t, t, schedule)
        sigma_t, sigma_prev = _sigma(t, schedule), _sigma(prev_t, schedule)
        # 1. Euler step from (x~_i, sigma_i) to sigma_{i+1}, lines 4-5.
        x_scaled = x_t / gather(schedule["sqrtab"], t)
        euler = gather(schedule["sqrtab"], prev_t) * (x_scaled + (sigma_prev - sigma_t) * slope)
        # 2. Correction at sigma_{i+1} = sigma_t with the averaged slope, lines 7-8.
        corrected = gather(schedule["sqrtab"], t) * (
            saved_x + (sigma_t - saved_sigma) * 0.5 * (saved_slope + slope)
        )
        correcting = ops.reshape(ops.equal(t, prev_t), (-1, 1, 1, 1))
        x_prev = ops.where(correcting, corrected, euler)
        state = (
            ops.where(correcting, saved_x, x_scaled),
            ops.where(correcting, saved_slope, slope),
            ops.where(correcting, saved_sigma, sigma_t),
        )
        return x_prev, state


SAMPLERS = ("ddpm", "ddim", "dpm++", "dpm++2m", "dpm++3m", "heun", "euler")


def get_sampler(sampler, eta=0.0, clip_x0=None, variance="beta"):
    """A sampler object from a name (one of `SAMPLERS`) and its settings, or `sampler` itself.

    `clip_x0=None` takes each sampler's default: off for DDPM (the lecture's
    formula), on for the strided samplers. `eta` is DDIM's (the ancestral
    DDPM sampler ignores it, as it always did); `variance` is DDPM's.

    Example:
    >>> get_sampler("ddim", eta=0.5)
    DDIMSampler(eta=0.5, clip_x0=True)
    >>> get_sampler("dpm++3m", clip_x0=False)
    DPMSolverSampler(order=3, clip_x0=False)
    """
    if isinstance(sampler, Sampler):
        if eta != 0.0 or clip_x0 is not None:
            raise ValueError(
                f"Give eta and clip_x0 to the sampler object ({sampler!r}), not to sample()."
            )
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(
            f"sampler must be one of {SAMPLERS} or a sampler object "
            f"(e.g. keras_ddpm.sampling.DDIMSampler(eta=0.5)), got {sampler!r}."
        )
    if sampler == "ddpm":
        return DDPMSampler(variance, False if clip_x0 is None else clip_x0)
    clip = True if clip_x0 is None else clip_x0
    if sampler == "ddim":
        return DDIMSampler(eta, clip)
    if eta != 0.0:
        raise ValueError(f"eta applies to the DDIM sampler only; {sampler!r} is deterministic.")
    if sampler.startswith("dpm++"):
        return DPMSolverSampler(3 if sampler == "dpm++3m" else 2, clip)
    return (HeunSampler if sampler == "heun" else EulerSampler)(clip)
