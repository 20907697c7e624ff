"""The reverse process: plan, chunks, the compiled loop, frames and progress.

It knows the model only as a `denoise(x_t, t, **conditions)` callable (the
noise estimate at integer timesteps `t`), the image shape and the variables
the callable reads; the maths of each step belongs to a sampler object of
`keras_ddpm.sampling`. One sampling run is:

1. `make_plan`: the sampler's timesteps, the requested frames, and where the
   compiled loop returns to Python (frames, progress bar).
2. `ReverseProcess.run`: the images in chunks of at most `batch_size`; each
   chunk starts from x_T drawn from its seed (`noise_seed`) and runs the plan's
   segments through one compiled loop per (sampler, inpainting) setting.
3. Inside the loop: the network's noise estimate, the sampler's step, and for
   inpainting the RePaint wrapper (`repaint`) around them.
4. With the plan's `denoise_at`, one more denoising of the finished images
   (`ReverseProcess.final_denoise`).

Example:
>>> from keras_ddpm import ddpm_schedule
>>> from keras_ddpm.sampling import DDIMSampler
>>> process = ReverseProcess(lambda x_t, t: 0.1 * x_t, (4, 4, 1), ddpm_schedule(T=100))
>>> sampler = DDIMSampler(eta=0.0)
>>> plan = make_plan(sampler, process.schedule, steps=10, frames=[100, 0])
>>> images, frames = process.run(2, sampler, plan, seed=0)
>>> images.shape, sorted(frames)
((2, 4, 4, 1), [0, 100])
"""

import dataclasses
import math

import numpy as np
import keras
from keras import ops

from keras_ddpm.gaussian_start import normal_to_uniform
from keras_ddpm.sampling import add_noise, compile_function, gather, predict_x0, stateless_normal

MAX_SEED = 2**31 - 2  # Seeds are int32 pairs: 0..MAX_SEED.


def noise_seed(seed, chunk, num_steps, step=-1, draw=0):
    """The stateless seed of one noise draw: the package's seed layout, in one place.

    Chunk `c` of a run with seed `s` and `S` steps draws its starting noise
    x_T from `(s, c (S + 1))` (and, starting from a Gaussian mixture, the
    draws that pick each image's Gaussian from `(s + 1, c (S + 1))`), and the
    `k`-th noise of step `i` from
    `(s + k, c (S + 1) + 1 + i)` (k = 0: the sampler's noise; RePaint uses
    k = 1 for the known pixels and 2 to go back a step, and 3 r + k for its
    r-th repetition). So every draw of a run is distinct and reproducible for
    a seed, whatever happened before, and after a `.keras` reload. With a
    noise offset (`offset_normal`) the constants of the draw from `(a, b)`
    come from `(a, b + OFFSET_SEED_SHIFT)`.

    Args:
        seed: int (or int32 tensor). The run's seed, in 0..MAX_SEED.
        chunk: int (or tensor). Index of the chunk of images.
        num_steps: int (or tensor). Network evaluations of the plan.
        step: int (or tensor). Step index, -1 for x_T.
        draw: int (or tensor). Which draw of the step.

    Returns:
        An int32 tensor of shape (2,).

    Example:
    >>> keras.ops.convert_to_numpy(noise_seed(7, chunk=1, num_steps=10)).tolist()
    [7, 11]
    >>> keras.ops.convert_to_numpy(noise_seed(7, 1, 10, step=0, draw=1)).tolist()
    [8, 12]
    """
    seed, chunk, num_steps, step, draw = (
        ops.cast(value, "int32") for value in (seed, chunk, num_steps, step, draw)
    )
    return ops.stack([seed + draw, chunk * (num_steps + 1) + step + 1])


# Added to the second entry of a draw's seed for the offsets of that draw (`offset_normal`);
# no image draw's second entry, c (S + 1) + 1 + i, comes near it.
OFFSET_SEED_SHIFT = 2**30


def offset_normal(shape, seed, noise_offset=0.0, dtype="float32"):
    """Draws of the noise of a model trained with offset noise, determined by `seed`.

    Standard normal draws `(batch, H, W, C)` plus `noise_offset` times one
    standard normal constant per image and channel: the noise whose
    covariance `DiffusionModel(noise_offset=...)` trained with, so that the
    reverse process adds the noise of the forward one. The constants come
    from the seed `seed + (0, OFFSET_SEED_SHIFT)`; `noise_offset` 0 is
    `stateless_normal` itself.

    Example:
    >>> seed = keras.ops.array([3, 0], "int32")
    >>> plain = offset_normal((2, 4, 4, 3), seed)
    >>> shifted = offset_normal((2, 4, 4, 3), seed, noise_offset=0.5)
    >>> difference = keras.ops.convert_to_numpy(shifted - plain)
    >>> bool(np.allclose(difference, difference[:, :1, :1, :], atol=1e-6))  # constant per channel
    True
    """
    draws = stateless_normal(shape, seed, dtype)
    if not noise_offset:
        return draws
    return draws + _offsets(shape, seed, noise_offset, dtype)


def _offsets(shape, seed, noise_offset, dtype="float32"):
    """`noise_offset` times the normal constants `(batch, 1, 1, C)` of `offset_normal`."""
    seed = ops.cast(seed, "int32") + ops.convert_to_tensor(np.array([0, OFFSET_SEED_SHIFT], "int32"))
    return ops.cast(noise_offset, dtype) * stateless_normal((shape[0], 1, 1, shape[-1]), seed, dtype)


def check_seed(seed):
    """`seed` as an int in 0..MAX_SEED (a fresh random one for None), or a ValueError.

    Example:
    >>> check_seed(3)
    3
    """
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1)[0] >> 1) % (MAX_SEED + 1)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED} or None, got {seed!r}.")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"seed must be in 0..{MAX_SEED} (2**31 - 2; the noise is drawn from int32 "
            f"seeds), got {seed}."
        )
    return int(seed)


def check_frames(frames, T):
    """Requested frame timesteps, descending and unique, or a TypeError/ValueError.

    Example:
    >>> check_frames([0, 1000, 200], 1000)
    [1000, 200, 0]
    """
    if frames is None:
        return []
    if isinstance(frames, (str, bytes)):
        raise TypeError(f"frames must be integer timesteps (e.g. [1000, 0]), got {frames!r}.")
    array = np.asarray(list(frames) if not isinstance(frames, np.ndarray) else frames)
    if array.ndim > 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"frames must be integer timesteps (e.g. [1000, 0]), got {frames!r}.")
    if np.any(array < 0) or np.any(array > T):
        raise ValueError(f"frames must be timesteps in 0..{T}, got {frames!r}.")
    return sorted({int(t) for t in array}, reverse=True)


def check_denoise_at(denoise_at, T):
    """`denoise_at` as an int timestep in 1..T, or None (off); else a ValueError.

    Example:
    >>> check_denoise_at(50, 1000), check_denoise_at(None, 1000)
    (50, None)
    """
    if denoise_at is None:
        return None
    if (
        isinstance(denoise_at, (bool, np.bool_))
        or not isinstance(denoise_at, (int, np.integer))
        or not 1 <= denoise_at <= T
    ):
        raise ValueError(
            f"denoise_at must be a timestep in 1..{T} ({max(1, round(0.07 * T))} is a good start) "
            f"or None (off), got {denoise_at!r}."
        )
    return int(denoise_at)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one sampling run does, fixed before it starts.

    Attributes:
        timesteps: int32 array. Where the network is evaluated, per step.
        prev_timesteps: int32 array. Where each step lands.
        boundaries: list of int. End index of each compiled segment.
        frame_times: list of int. Requested frame timesteps, descending.
        verbose: bool. Show a progress bar.
        start: a `keras_ddpm.gaussian_start.GaussianStart` that draws the
            images at `timesteps[0]`, or None: pure noise.
        denoise_at: int or None. The timestep of one more denoising of the
            finished images (`ReverseProcess.final_denoise`); None: none.
    """

    timesteps: np.ndarray
    prev_timesteps: np.ndarray
    boundaries: list
    frame_times: list
    verbose: bool
    start: object = None
    denoise_at: object = None

    def starting_from(self, start):
        """This plan from `start`'s draw, at its first step that begins at or below `start.t`
        (or its last step).

        The steps above are left out (a Heun step with its correction).

        Example:
        >>> from keras_ddpm import ddpm_schedule, gaussian_start
        >>> from keras_ddpm.sampling import DDIMSampler
        >>> plan = make_plan(DDIMSampler(), ddpm_schedule(T=100), 5)
        >>> start = gaussian_start.estimate(np.zeros((4, 2, 2, 1)), t=70, T=100)
        >>> plan.starting_from(start).timesteps.tolist()
        [60, 40, 20]
        """
        t = start.t
        # Where each evaluation's input lies, and which evaluations begin a step.
        inputs = np.concatenate([self.timesteps[:1], self.prev_timesteps[:-1]])
        begins = np.nonzero((inputs == self.timesteps) & (self.timesteps != self.prev_timesteps))[0]
        below = begins[self.timesteps[begins] <= t]
        first = int(below[0] if len(below) else begins[-1])
        prev_timesteps = self.prev_timesteps[first:]
        return dataclasses.replace(
            self, timesteps=self.timesteps[first:], prev_timesteps=prev_timesteps,
            boundaries=segment_boundaries(prev_timesteps, self.frame_times, self.verbose),
            start=start,
        )

    def sampled_time(self, t):
        """The timestep at which frame `t` is recorded: the first sampled one <= t.

        x_T counts as sampled at `timesteps[0]`.
        """
        if t >= self.timesteps[0]:
            return int(self.timesteps[0])
        return int(self.prev_timesteps[np.nonzero(self.prev_timesteps <= t)[0][0]])


def make_plan(sampler, schedule, steps, spacing=None, frames=None, verbose=0, repeats=1,
              denoise_at=None):
    """The `Plan` of a run of `sampler` with `steps` steps.

    Args:
        sampler: a sampler object of `keras_ddpm.sampling`.
        schedule: dict of tables from `ddpm_schedule`.
        steps: int. Number of steps, in 1..T.
        spacing: str or None. Timestep spacing (None: the sampler's default).
        frames: iterable of int or None. Timesteps at which to keep images.
        verbose: "auto", 0 or 1. Progress bar; auto: on for more than 100
            network evaluations (times `repeats`).
        repeats: int. Evaluations per step (RePaint's resampling).
        denoise_at: int in 1..T or None. See `Plan`.

    Example:
    >>> from keras_ddpm import ddpm_schedule
    >>> from keras_ddpm.sampling import DDIMSampler
    >>> make_plan(DDIMSampler(), ddpm_schedule(T=100), 4, frames=[60]).boundaries
    [2, 4]
    """
    T = len(schedule["alphabar_t"]) - 1
    denoise_at = check_denoise_at(denoise_at, T)
    timesteps, prev_timesteps = sampler.timesteps(schedule, steps, spacing)
    frame_times = check_frames(frames, T)
    if verbose == "auto":
        verbose = len(timesteps) * repeats > 100
    return Plan(
        timesteps=timesteps,
        prev_timesteps=prev_timesteps,
        boundaries=segment_boundaries(prev_timesteps, frame_times, verbose),
        frame_times=frame_times,
        verbose=bool(verbose),
        denoise_at=denoise_at,
    )


def segment_boundaries(prev_timesteps, frame_times, verbose, progress_segments=20):
    """End indices of the compiled loop's segments.

    The loop returns to Python only to record a requested frame (after the
    last evaluation landing on the first timestep <= it, so a Heun correction
    is included) or to update the progress bar (about `progress_segments`
    times per run).

    Example:
    >>> segment_boundaries(np.array([3, 2, 1, 0]), [2], verbose=False)
    [2, 4]
    """
    steps = len(prev_timesteps)
    boundaries = {steps}
    for t in frame_times:
        reached = np.nonzero(prev_timesteps <= t)[0]
        if len(reached):
            end = int(reached[0])
            while end + 1 < steps and prev_timesteps[end + 1] == prev_timesteps[end]:
                end += 1
            boundaries.add(end + 1)
    if verbose:
        stride = max(1, math.ceil(steps / progress_segments))
        boundaries.update(range(stride, steps, stride))
    return sorted(boundaries)


def repaint(advance, known, mask, resample, schedule):
    """RePaint (Lugmayr et al. 2022) around any step: keep the known pixels in context.

    After each step the pixels where `mask` is 1 are replaced by the known
    image noised to the step's target timestep (`add_noise`), so the
    generated pixels (mask 0) are denoised in the context of the known ones.
    With `resample = r > 1` each step is repeated r times, going back from
    `prev_t` to `t` by forward diffusion, q(x_t | x_prev) = N(sqrt(ab_t /
    ab_prev) x_prev, (1 - ab_t / ab_prev) I), between repetitions, which lets
    the two regions agree. Each repetition starts from the sampler state the
    step began with.

    Args:
        advance: callable `(x_t, state, t, prev_t, draw, index) -> (x_prev,
            state)`: the network and the sampler's step.
        known: tensor `(batch, H, W, C)`. Clean known images.
        mask: tensor like `known`. 1 where `known` is kept, 0 where generated.
        resample: int >= 1. Repetitions of each step.
        schedule: dict of tables from `ddpm_schedule`.

    Returns:
        A callable like `advance`.
    """

    def once(x_t, state, t, prev_t, draw, index):
        x_prev, state = advance(x_t, state, t, prev_t, draw, index)
        known_prev = add_noise(known, prev_t, draw(1), schedule)
        return mask * known_prev + (1.0 - mask) * x_prev, state

    if resample == 1:
        return once

    def repeated(x_t, state, t, prev_t, draw, index):
        alphabar = schedule["alphabar_t"]
        ratio = gather(alphabar, t) / gather(alphabar, prev_t)

        def repeat(u, carry):
            x_now, _, _ = carry
            x_prev, new_state = once(x_now, state, t, prev_t, lambda k: draw(3 * u + k), index)
            # Back from prev_t to t by forward diffusion, for the next repetition.
            x_again = ops.sqrt(ratio) * x_prev + ops.sqrt(1.0 - ratio) * draw(3 * u + 2)
            return x_again, x_prev, new_state

        _, x_prev, state = ops.fori_loop(0, resample, repeat, (x_t, x_t, state))
        return x_prev, state

    return repeated


class ReverseProcess:
    """Runs samplers' reverse processes for one denoising function.

    Args:
        denoise: callable `(x_t, t, **conditions) -> pred_noises`, `t` an
            int tensor `(batch,)` of timesteps; conditions are the tensors
            given to `run` (e.g. labels), a chunk of them for per-image ones.
        image_shape: tuple `(H, W, C)`.
        schedule: dict of tables from `ddpm_schedule`.
        variables: list of `keras.Variable`. What `denoise` reads (JAX passes
            their current values to the compiled loop).
        jit_compile: bool. TensorFlow: compile the loop with XLA.
        noise_offset: float >= 0. Every noise draw gets this times a normal
            constant per image and channel (`offset_normal`): the noise of a
            model trained with `DiffusionModel(noise_offset=...)`. 0: plain.

    Example:
    >>> from keras_ddpm import ddpm_schedule
    >>> from keras_ddpm.sampling import DPMSolverSampler
    >>> process = ReverseProcess(lambda x_t, t: 0 * x_t, (2, 2, 1), ddpm_schedule(T=50))
    >>> sampler = DPMSolverSampler(order=2, clip_x0=False)
    >>> tuple(process.run(1, sampler, make_plan(sampler, process.schedule, 10), seed=0).shape)
    (1, 2, 2, 1)
    """

    def __init__(self, denoise, image_shape, schedule, variables=(), jit_compile=False,
                 noise_offset=0.0):
        self.denoise = denoise
        self.noise_offset = float(noise_offset)
        self.image_shape = tuple(image_shape)
        self.schedule = schedule
        self.variables = list(variables)
        self.jit_compile = bool(jit_compile)
        self._loops = {}  # Compiled loops, by (sampler, resample).

    def loop(self, sampler, resample=None):
        """The compiled loop over a range of steps for `sampler` (traced once, cached).

        `resample` None: plain sampling; an int: RePaint with that many
        repetitions, reading `known` and `mask` from the conditions.
        """
        key = (sampler, resample)
        if key not in self._loops:
            tables = {k: ops.convert_to_tensor(v) for k, v in self.schedule.items()}
            # One trace for every chunk size and number of steps.
            self._loops[key] = compile_function(
                self._segment_function(sampler, resample, tables),
                self.jit_compile,
                variables=self.variables,
                any_leading_size=True,
            )
        return self._loops[key]

    def final_denoise(self, images, t, conditions, clip_x0=True):
        """Finished `images` denoised once more, as if they were noisy images at timestep `t`.

        Returns x0_theta(sqrt(ab_t) x, t) = x - sigma_t eps(sqrt(ab_t) x, t)
        with sigma_t = sqrt((1 - ab_t) / ab_t) (clipped to [-1, 1] with
        `clip_x0`): by Tweedie's formula a step of sigma_t^2 up the score of
        the data blurred to noise level sigma_t, the denoising step that
        score-based samplers end with (Song & Ermon 2020; Jolicoeur-Martineau
        et al. 2021). A network trained for minutes leaves a fine grain in
        its samples that it removes when shown it as noise (BENCHMARKS.md).
        One network evaluation (with the run's guidance) per image.

        Args:
            images: tensor `(n, H, W, C)`.
            t: int. A timestep in 1..T.
            conditions: dict of the run's conditions, as for `run`'s chunks.
            clip_x0: bool. Clip the result to [-1, 1].

        Example:
        >>> from keras_ddpm import ddpm_schedule
        >>> process = ReverseProcess(lambda x_t, t: 0 * x_t, (2, 2, 1), ddpm_schedule(T=10))
        >>> x = np.full((1, 2, 2, 1), 0.5, np.float32)
        >>> float(process.final_denoise(x, 3, {})[0, 0, 0, 0])  # eps = 0: unchanged
        0.5
        """
        # One call per chunk: run as is, not compiled (a trace would cost more than it saves).
        conditions = {k: v for k, v in conditions.items() if k not in ("known", "mask")}
        x = ops.convert_to_tensor(images)
        t = ops.full((ops.shape(x)[0],), t, "int32")
        x_t = gather(self.schedule["sqrtab"], t) * x
        pred_noises = ops.cast(self.denoise(x_t, t, **conditions), x.dtype)
        images = predict_x0(pred_noises, x_t, t, self.schedule)
        return ops.clip(images, -1.0, 1.0) if clip_x0 else images

    def _segment_function(self, sampler, resample, schedule):
        def segment(x, state, timesteps, prev_timesteps, seed, chunk, start, stop, conditions):
            conditions = dict(conditions)
            known, mask = conditions.pop("known", None), conditions.pop("mask", None)
            num_steps = ops.cast(ops.shape(timesteps)[0], "int32")
            batch = ops.shape(x)[0]

            def advance(x_t, state, t, prev_t, draw, index):
                pred_noises = ops.cast(self.denoise(x_t, t, **conditions), x_t.dtype)
                return sampler.step(
                    pred_noises, x_t, t, prev_t, schedule, state, draw, index, num_steps
                )

            if resample is not None:
                advance = repaint(advance, known, mask, resample, schedule)

            def body(i, carry):
                x_t, state = carry
                t = ops.broadcast_to(ops.take(timesteps, i), (batch,))
                prev_t = ops.broadcast_to(ops.take(prev_timesteps, i), (batch,))

                def draw(k):
                    step_seed = noise_seed(seed, chunk, num_steps, i, k)
                    return offset_normal(ops.shape(x_t), step_seed, self.noise_offset, x_t.dtype)

                return advance(x_t, state, t, prev_t, draw, i)

            return ops.fori_loop(start, stop, body, (x, state))

        return segment

    def run(self, n, sampler, plan, seed, conditions=None, batch_size=None, inpainting=None):
        """Generate `n` images following `plan`, in chunks of at most `batch_size`.

        Args:
            n: int. Number of images.
            sampler: a sampler object of `keras_ddpm.sampling`.
            plan: `Plan` from `make_plan` for this sampler.
            seed: int in 0..MAX_SEED, or None (random).
            conditions: dict of arrays or None, passed to `denoise`; arrays of
                rank >= 1 hold one entry per image and are chunked.
            batch_size: int or None. Images per chunk (None: all at once).
                Chunks draw from different seeds, so results depend on it.
            inpainting: `(known, mask, resample)` or None: RePaint.

        Returns:
            A float32 array `(n, H, W, C)`, or `(images, frames)` when the plan
            has frames, `frames` a `Frames` dict from requested timestep to
            images, whose `sampled` attribute says where each was recorded.
        """
        seed = check_seed(seed)
        batch_size = n if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        conditions = dict(conditions or {})
        resample = None
        if inpainting is not None:
            conditions["known"], conditions["mask"], resample = inpainting
        loop = self.loop(sampler, resample)
        steps = len(plan.timesteps)
        progbar = keras.utils.Progbar(math.ceil(n / batch_size) * steps) if plan.verbose else None
        chunks, frame_chunks = [], {t: [] for t in plan.frame_times}
        for chunk_index, chunk_start in enumerate(range(0, n, batch_size)):
            chunk = slice(chunk_start, min(chunk_start + batch_size, n))
            chunk_conditions = {
                key: ops.convert_to_tensor(value[chunk] if np.ndim(value) else value)
                for key, value in conditions.items()
            }
            images, chunk_frames = self._run_chunk(
                loop, sampler, plan, chunk.stop - chunk.start, seed, chunk_index,
                chunk_conditions, progbar,
            )
            chunks.append(images)
            for t in plan.frame_times:
                frame_chunks[t].append(chunk_frames[t])
        images = np.concatenate(chunks, axis=0)
        if not plan.frame_times:
            return images
        frames = Frames(
            {t: np.concatenate(frame_chunks[t], axis=0) for t in plan.frame_times},
            sampled={t: plan.sampled_time(t) for t in plan.frame_times},
        )
        return images, frames

    def _run_chunk(self, loop, sampler, plan, n, seed, chunk_index, conditions, progbar):
        """Sample one chunk of `n` images; see `noise_seed` for its draws."""
        steps = len(plan.timesteps)
        x_seed = noise_seed(seed, chunk_index, steps)
        x = stateless_normal((n,) + self.image_shape, x_seed)
        alphabar = float(np.asarray(self.schedule["alphabar_t"])[int(plan.timesteps[0])])
        if plan.start is not None:  # The same draws, mapped to the data's Gaussian mixture.
            labels = conditions.get("labels")
            picks = stateless_normal((n,), noise_seed(seed, chunk_index, steps, draw=1))
            x = ops.convert_to_tensor(plan.start.draw(
                ops.convert_to_numpy(x), None if labels is None else ops.convert_to_numpy(labels),
                alphabar, uniform=normal_to_uniform(ops.convert_to_numpy(picks)),
            ))
        if self.noise_offset:  # The forward noise at the first timestep, sqrt(1 - ab) eps, has them.
            offsets = _offsets((n,) + self.image_shape, x_seed, self.noise_offset)
            x = x + math.sqrt(1.0 - alphabar) * offsets
        state = sampler.initial_state(x)
        arrays = [ops.convert_to_tensor(a) for a in (plan.timesteps, plan.prev_timesteps)]
        recorded = {t: ops.convert_to_numpy(x) for t in plan.frame_times if t >= plan.timesteps[0]}
        start = 0
        for stop in plan.boundaries:
            x, state = loop(
                x, state, *arrays,
                ops.convert_to_tensor(seed, "int32"),
                ops.convert_to_tensor(chunk_index, "int32"),
                ops.convert_to_tensor(start, "int32"),
                ops.convert_to_tensor(stop, "int32"),
                conditions,
            )
            landed = int(plan.prev_timesteps[stop - 1])
            for t in plan.frame_times:
                if t not in recorded and landed <= t:
                    recorded[t] = ops.convert_to_numpy(x)
            if progbar is not None:
                progbar.add(stop - start)
            start = stop
        if plan.denoise_at is not None:
            clip_x0 = getattr(sampler, "clip_x0", True)
            x = self.final_denoise(x, plan.denoise_at, conditions, clip_x0)
            if 0 in recorded:  # The frame at 0 is the finished images.
                recorded[0] = ops.convert_to_numpy(x)
        images = ops.convert_to_numpy(x).astype(np.float32)
        if not np.all(np.isfinite(images)):
            raise FloatingPointError(
                f"Sampling with {sampler!r} produced non-finite values (NaN or inf) in "
                f"{np.count_nonzero(~np.isfinite(images))} of {images.size} pixels: the "
                "model's weights or its schedule are broken (e.g. a diverged training "
                "run, or alphabar underflowing to 0)."
            )
        return images, recorded


class Frames(dict):
    """Frames of a sampling run: requested timestep -> images `(n, H, W, C)`.

    `sampled` maps each requested timestep to the one actually sampled (the
    first sampled timestep <= it), for labels.

    Example:
    >>> frames = Frames({50: np.zeros((1, 2, 2, 1))}, sampled={50: 40})
    >>> frames.sampled[50]
    40
    """

    def __init__(self, frames=(), sampled=None):
        super().__init__(frames)
        self.sampled = dict(sampled or {})
