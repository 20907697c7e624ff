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
    >>> gather(sched["sqrtab"], keras.ops.array([1, 1000])).shape
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
    >>> ddpm_step(x * 0, x, keras.ops.array([1]), sched, x).shape
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
    >>> predict_x0(x * 0, x, keras.ops.array([1]), sched).shape
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
    >>> ddim_step(x * 0, x, keras.ops.array([5]), keras.ops.array([0]), sched, x).shape
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
    >>> stateless_normal((2, 3), keras.ops.array([7, 0], "int32")).shape
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


def compile_function(fn, jit_compile=False, variables=()):
    """Compile `fn` for the active backend (`tf.function`, `jax.jit`, or as is).

    TensorFlow: a `tf.function`, compiled with XLA when `jit_compile` is
    True (Keras' `"auto"` turns it on where there is a GPU). JAX: `jax.jit`,
    always XLA (`jit_compile` is ignored; JAX has no other compiler), and
    the current values of `variables` are passed to every call through a
    `keras.StatelessScope`, so the compiled function sees weights updated
    after it was traced (read from a closure they would be frozen as
    constants). Python values `fn` depends on (strings, flags) belong in its
    closure: one compiled function per setting. Other backends: `fn` itself.

    Args:
        fn: callable of tensors (nested lists and dicts of tensors too).
        jit_compile: bool. TensorFlow only: compile with XLA.
        variables: list of `keras.Variable`. The variables `fn` reads.

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
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # The loops are explicit (ops.fori_loop): no AutoGraph conversion needed.
        return tf.function(
            fn, jit_compile=bool(jit_compile), reduce_retracing=True, autograph=False
        )
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


def run_reverse_loop(
    denoise_fn,
    x_start,
    timesteps,
    prev_timesteps,
    seed,
    schedule,
    start,
    stop,
    sampler="ddpm",
    eta=0.0,
    clip_x0=False,
    variance="beta",
    known=None,
    mask=None,
    resample=1,
):
    """Run steps `start..stop-1` of a reverse trajectory in one `fori_loop`.

    With `known` and `mask` this is inpainting as in RePaint (Lugmayr et al.
    2022): after each step the pixels where `mask` is 1 are replaced by the
    known image noised to the step's target timestep, so the generated pixels
    (mask 0) are denoised in the context of the known ones. With
    `resample=r > 1` each step is repeated r times, going back from `prev_t`
    to `t` by forward diffusion, q(x_t | x_prev) = N(sqrt(ab_t / ab_prev)
    x_prev, (1 - ab_t / ab_prev) I), between repetitions, which lets the two
    regions agree.

    Args:
        denoise_fn: callable `(x_t, t) -> pred_noises`, `t` an int tensor
            `(batch,)`.
        x_start: tensor `(batch, H, W, C)`. Images at `timesteps[start]`.
        timesteps: int tensor `(steps,)`. Current timestep of each step.
        prev_timesteps: int tensor `(steps,)`. Timestep each step lands on.
        seed: int32 tensor `(2,)`; step `i` draws its k-th noise from
            `(seed[0] + k, seed[1] + i)` (k = 0 is the step's own noise).
        schedule: dict of tables (tensors or arrays) from `ddpm_schedule`.
        start: int tensor. First step index.
        stop: int tensor. One past the last step index.
        sampler: str. `"ddpm"` (ancestral) or `"ddim"`.
        eta: float. DDIM stochasticity.
        clip_x0: bool. Clip the predicted clean image to [-1, 1].
        variance: str. DDPM: `"beta"` or `"posterior"`.
        known: tensor like `x_start` or None. Clean known images (inpainting).
        mask: tensor broadcastable to `x_start` or None. 1 where `known` is
            kept, 0 where pixels are generated.
        resample: int. Repetitions of each step when inpainting (>= 1).

    Returns:
        The images after step `stop - 1`.

    Example:
    >>> sched = ddpm_schedule(1e-4, 0.02, 10)
    >>> ts, prev = ddpm_timesteps(10)
    >>> x = run_reverse_loop(lambda x, t: x * 0, keras.ops.ones((1, 2, 2, 1)),
    ...     ts, prev, keras.ops.array([0, 0], "int32"), sched, 0, 10)
    """
    batch = ops.shape(x_start)[0]
    timesteps = ops.convert_to_tensor(timesteps, "int32")
    prev_timesteps = ops.convert_to_tensor(prev_timesteps, "int32")

    def step(x_t, t, prev_t, draw):
        """One reverse step from t to prev_t; `draw(k)` is the step's k-th noise."""
        pred_noises = ops.cast(denoise_fn(x_t, t), x_t.dtype)
        if sampler == "ddpm":
            x_prev = ddpm_step(
                pred_noises, x_t, t, schedule, draw(0), variance, clip_x0=clip_x0
            )
        else:
            x_prev = ddim_step(
                pred_noises, x_t, t, prev_t, schedule, draw(0), eta=eta, clip_x0=clip_x0
            )
        if known is None:
            return x_prev
        known_prev = gather(schedule["sqrtab"], prev_t) * known + gather(
            schedule["sqrtmab"], prev_t
        ) * draw(1)
        return mask * known_prev + (1.0 - mask) * x_prev

    def body(i, x_t):
        t = ops.broadcast_to(ops.take(timesteps, i), (batch,))
        prev_t = ops.broadcast_to(ops.take(prev_timesteps, i), (batch,))

        def draw(k):
            step_seed = seed + ops.stack([ops.cast(k, "int32"), ops.cast(i, "int32")])
            return stateless_normal(ops.shape(x_t), step_seed, x_t.dtype)

        if known is None or resample == 1:
            return step(x_t, t, prev_t, draw)

        alphabar = schedule["alphabar_t"]
        ratio = gather(alphabar, t) / gather(alphabar, prev_t)

        def repeat(u, state):
            x_now, _ = state
            x_prev = step(x_now, t, prev_t, lambda k: draw(3 * u + k))
            # Back from prev_t to t by forward diffusion, for the next repetition.
            x_again = ops.sqrt(ratio) * x_prev + ops.sqrt(1.0 - ratio) * draw(3 * u + 2)
            return x_again, x_prev

        _, x_prev = ops.fori_loop(0, resample, repeat, (x_t, x_t))
        return x_prev

    return ops.fori_loop(start, stop, body, x_start)
