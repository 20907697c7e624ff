"""`DiffusionModel.sample` and `inpaint` behind their thin methods: arguments to a reverse process.

The model keeps the network and its noise estimate (`predict_noise`); this
module does the rest of a sampling call, in this order:

1. check the arguments (`check_count`, `check_labels`, `broadcast_mask`...);
2. turn `sampler`, `eta`, `clip_x0` into a sampler object
   (`SamplingAPI.sampler`, `keras_ddpm.sampling.get_sampler`);
3. build the plan (`keras_ddpm.generation.make_plan`: timesteps, frames,
   progress);
4. wire the labels and the classifier-free guidance scale into the denoising
   function (`SamplingAPI.conditions`, `SamplingAPI.process`);
5. run `keras_ddpm.generation.ReverseProcess` (chunks, the compiled loop,
   RePaint for inpainting), one per (guided, jit) setting, cached.

Example:
>>> from keras_ddpm import ddpm_schedule
>>> api = SamplingAPI(lambda x_t, t, labels, guidance_scale: 0.1 * x_t, (4, 4, 1),
...                   ddpm_schedule(T=20))
>>> api.sample(2, SampleOptions(steps=5, seed=0)).shape
(2, 4, 4, 1)
"""

import dataclasses
import math

import numpy as np

from keras_ddpm import generation, guidance, sampling

# Classifier-free guidance scale used when labels are given without a scale:
# eps = eps(no class) + w * (eps(class) - eps(no class)).
DEFAULT_GUIDANCE_SCALE = 2.0


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """The settings that `DiffusionModel.sample` and `inpaint` share, with their defaults.

    Each field is the argument of the same name of `DiffusionModel.sample`
    and `inpaint` (a test pins the defaults to their signatures').

    Attributes:
        steps: int or None. Number of reverse steps, in 1..T (Heun evaluates
            the network 2 steps - 1 times). None: all T.
        eta: float in [0, 1]. DDIM stochasticity (0 is deterministic DDIM).
        seed: int in 0..2**31 - 2, or None. The same seed gives the same
            images, also after saving and reloading the model.
        sampler: str, sampler object or None. One of
            `keras_ddpm.sampling.SAMPLERS`, e.g. `"ddpm"`, `"ddim"`,
            `"dpm++"`, `"heun"`; by default DDPM for T steps and DDIM for
            fewer.
        clip_x0: bool or None. Clip the predicted clean image to [-1, 1]
            inside each step. Default: off for DDPM (the lecture's exact
            formula), on for the others.
        batch_size: int or None. Generate in chunks of at most this many
            images, so memory stays bounded for large `n`: the compiled loop
            only ever holds `batch_size` images (and their activations);
            finished chunks wait on the host as NumPy arrays. Chunks draw
            from different seeds, so results depend on it.
        verbose: "auto", 0 or 1. Progress bar (auto: on for > 100 steps).
        labels: int, sequence of n ints, or None. Class ids for a
            class-conditional model (one int: the same class for all); None
            samples unconditionally.
        guidance_scale: float or None. Classifier-free guidance scale w (see
            `DiffusionModel.predict_noise`); default `DEFAULT_GUIDANCE_SCALE`
            when labels are given.
        spacing: str or None. Timestep spacing of the strided samplers, one
            of `keras_ddpm.sampling.SPACINGS` (None: the sampler's default,
            `"trailing"` for DDIM, today's timesteps).
        attention_guidance: float >= 0 or None. Perturbed-attention guidance
            scale (`keras_ddpm.guidance`; networks with self-attention, one
            more network pass a step); None or 0: off.
        denoise_at: int in 1..T or None. Denoise the finished images once
            more, as if they were noisy images at this timestep
            (`keras_ddpm.generation.ReverseProcess.final_denoise`: one more
            network evaluation per image, with the run's guidance); it
            removes the fine grain a briefly trained network leaves (the
            command line's default: 50 of T = 1000). None: off.

    Example:
    >>> SampleOptions(steps=20, sampler="dpm++").eta
    0.0
    """

    steps: object = None
    eta: float = 0.0
    seed: object = None
    sampler: object = None
    clip_x0: object = None
    batch_size: object = None
    verbose: object = "auto"
    labels: object = None
    guidance_scale: object = None
    spacing: object = None
    attention_guidance: object = None
    denoise_at: object = None


class SamplingAPI:
    """Samples and inpaints with one model's noise estimate.

    Args:
        predict_noise: callable `(x_t, t, labels, guidance_scale) -> pred_noises`,
            `t` an int tensor `(batch,)` of timesteps, `labels` int `(batch,)`
            or None, `guidance_scale` a scalar or None (one pass), e.g.
            `DiffusionModel.predict_noise`.
        image_shape: tuple `(H, W, C)`.
        schedule: dict of tables from `ddpm_schedule`.
        variables: list of `keras.Variable`. What `predict_noise` reads.
        num_classes: int or None. Classes of a conditional model (label
            `num_classes` is "no class"); None: unconditional.
        variance: str. The ancestral DDPM sampler's noise, one of
            `keras_ddpm.sampling.VARIANCES`.
        network: `keras.Model` or None. The network behind `predict_noise`,
            checked for self-attention when a call asks for
            `attention_guidance` (None: such calls are refused).
        noise_offset: float >= 0. The offset noise of the model's training
            (`DiffusionModel(noise_offset=...)`), which every noise draw of
            sampling gets too (`keras_ddpm.generation.offset_normal`).

    Example:
    >>> from keras_ddpm import ddpm_schedule
    >>> api = SamplingAPI(lambda x_t, t, labels, guidance_scale: 0 * x_t, (2, 2, 1),
    ...                   ddpm_schedule(T=10))
    >>> api.sampler("dpm++", steps=4, eta=0.0, clip_x0=None)
    (DPMSolverSampler(order=2, clip_x0=True), 4)
    """

    def __init__(self, predict_noise, image_shape, schedule, variables=(), num_classes=None,
                 variance="beta", network=None, noise_offset=0.0):
        self.predict_noise = predict_noise
        self.image_shape = tuple(image_shape)
        self.schedule = schedule
        self.T = len(schedule["alphabar_t"]) - 1
        self.variables = list(variables)
        self.num_classes = num_classes
        self.variance = variance
        self.network = network
        self.noise_offset = float(noise_offset)
        # generation.ReverseProcess, by (guided, attention-guided, jit_compile).
        self._processes = {}

    def forget_compiled(self):
        """Drop the compiled reverse processes (after the denoiser changed in a way they baked in).

        Example:
        >>> from keras_ddpm import ddpm_schedule
        >>> api = SamplingAPI(lambda x_t, t, labels, guidance_scale: 0 * x_t, (2, 2, 1),
        ...                   ddpm_schedule(T=10))
        >>> first = api.process(guided=False)
        >>> api.forget_compiled()
        >>> api.process(guided=False) is first
        False
        """
        self._processes.clear()

    def sample(self, n, options=SampleOptions(), frames=None, jit_compile=False, start=None):
        """`n` images from pure noise (see `DiffusionModel.sample`).

        Args:
            n: int > 0. Number of images.
            options: `SampleOptions`.
            frames: iterable of int or None. Timesteps whose images to keep.
            jit_compile: bool. TensorFlow: compile the loop with XLA.
            start: a `keras_ddpm.gaussian_start.GaussianStart`, or None. Start
                part-way down from the data's Gaussian mixture (`Plan.starting_from`).

        Returns:
            A float32 array `(n, H, W, C)`, or `(images, frames)`.

        Example:
        >>> from keras_ddpm import ddpm_schedule
        >>> api = SamplingAPI(lambda x_t, t, labels, guidance_scale: 0 * x_t, (2, 2, 1),
        ...                   ddpm_schedule(T=10))
        >>> images, frames = api.sample(1, SampleOptions(seed=0), frames=[10, 0])
        >>> sorted(frames)
        [0, 10]
        """
        check_count("n", n)
        sampler, plan, conditions, process = self._prepare(n, options, frames, 1, jit_compile)
        if start is not None:
            plan = plan.starting_from(start)
        return process.run(n, sampler, plan, options.seed, conditions, options.batch_size)

    def inpaint(self, images, mask, resample=1, options=SampleOptions(), jit_compile=False):
        """RePaint: regenerate `images` where `mask` is 0 (see `DiffusionModel.inpaint`).

        Args:
            images: array `(n, H, W, C)` in [-1, 1].
            mask: array broadcastable to `images` (see `broadcast_mask`).
            resample: int >= 1. RePaint's repetitions of each step.
            options: `SampleOptions`.
            jit_compile: bool. TensorFlow: compile the loop with XLA.

        Returns:
            A float32 array `(n, H, W, C)` equal to `images` where `mask` is 1.

        Example:
        >>> from keras_ddpm import ddpm_schedule
        >>> api = SamplingAPI(lambda x_t, t, labels, guidance_scale: 0 * x_t, (2, 2, 1),
        ...                   ddpm_schedule(T=10))
        >>> known = np.ones((1, 2, 2, 1), np.float32)
        >>> api.inpaint(known, [[1, 0], [1, 1]], options=SampleOptions(seed=0))[0, :, :, 0] == 1
        array([[ True, False],
               [ True,  True]])
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(
                f"images must have shape (n, {', '.join(map(str, self.image_shape))}) "
                f"for this model, got {images.shape}."
            )
        mask = broadcast_mask(mask, images.shape)
        if isinstance(resample, bool) or not isinstance(resample, (int, np.integer)) or resample < 1:
            raise ValueError(f"resample must be an integer >= 1, got {resample!r}.")
        n = len(images)
        sampler, plan, conditions, process = self._prepare(
            n, options, None, int(resample), jit_compile
        )
        completed = process.run(
            n, sampler, plan, options.seed, conditions, options.batch_size,
            (images, mask, int(resample)),
        )
        # The known pixels are the input's, bit for bit.
        return np.where(mask > 0, images, completed)

    def _prepare(self, n, options, frames, repeats, jit_compile):
        """`(sampler, plan, conditions, process)` of a run (`repeats`: RePaint's resampling)."""
        sampler, steps = self.sampler(options.sampler, options.steps, options.eta, options.clip_x0)
        plan = generation.make_plan(
            sampler, self.schedule, steps, options.spacing, frames, options.verbose, repeats,
            options.denoise_at,
        )
        conditions, guided = self.conditions(
            n, options.labels, options.guidance_scale, options.attention_guidance
        )
        perturbed = "attention_guidance" in conditions
        return sampler, plan, conditions, self.process(guided, jit_compile, perturbed)

    def sampler(self, sampler, steps, eta, clip_x0):
        """`(sampler object, steps)` for a call's arguments (`sampling.get_sampler`).

        `steps=None` is all T steps; `sampler=None` is DDPM for T steps and
        DDIM for fewer.

        Example:
        >>> from keras_ddpm import ddpm_schedule
        >>> api = SamplingAPI(lambda x_t, t, labels, guidance_scale: 0 * x_t, (2, 2, 1),
        ...                   ddpm_schedule(T=10))
        >>> api.sampler(None, None, 0.0, None)
        (DDPMSampler(variance='beta', clip_x0=False), 10)
        """
        steps = self.T if steps is None else steps
        sampling.check_steps(steps, self.T)
        if sampler is None:
            sampler = "ddpm" if steps == self.T else "ddim"
        if clip_x0 is not None:
            clip_x0 = sampling.check_bool("clip_x0", clip_x0)
        eta = sampling.check_eta(eta)
        return sampling.get_sampler(sampler, eta, clip_x0, self.variance), steps

    def conditions(self, n, labels, guidance_scale, attention_guidance=None):
        """`(conditions, guided)`: per-image labels `(n,)` and the guidance scales, as arrays.

        `guided` says whether a step needs two network passes (a scale other
        than None, 0 and 1). Without labels every image gets "no class"
        (`num_classes`, or 0 for an unconditional model, which ignores it).
        An `attention_guidance` scale other than None and 0 is in the
        conditions as `"attention_guidance"` (checked against `network`).

        Example:
        >>> from keras_ddpm import ddpm_schedule
        >>> api = SamplingAPI(lambda x_t, t, labels, guidance_scale: 0 * x_t, (2, 2, 1),
        ...                   ddpm_schedule(T=10), num_classes=3)
        >>> conditions, guided = api.conditions(2, labels=1, guidance_scale=None)
        >>> conditions["labels"].tolist(), float(conditions["guidance_scale"]), guided
        ([1, 1], 2.0, True)
        """
        scale = check_guidance_scale(labels, guidance_scale)
        if labels is None:
            label_array = np.full((n,), self.num_classes or 0, np.int32)
        else:
            label_array = check_labels(labels, n, self.num_classes)
        if scale == 0.0:  # Unconditional: the "no class" id for all.
            label_array = np.full((n,), self.num_classes, np.int32)
        conditions = {
            "labels": label_array,
            "guidance_scale": np.float32(1.0 if scale is None else scale),
        }
        if attention_guidance is not None:
            if self.network is None:
                raise ValueError("attention_guidance needs the network: give SamplingAPI one.")
            attention_guidance = guidance.check_attention_guidance(attention_guidance, self.network)
        if attention_guidance is not None:
            conditions["attention_guidance"] = np.float32(attention_guidance)
        return conditions, scale not in (None, 0.0, 1.0)

    def process(self, guided, jit_compile=False, perturbed=False):
        """The `generation.ReverseProcess` of `predict_noise`, guided or not, cached.

        Its denoising function passes the run's labels (conditional models),
        when `guided` the guidance scale (two network passes a step), and when
        `perturbed` the attention-guidance scale (one pass more).

        Example:
        >>> from keras_ddpm import ddpm_schedule
        >>> api = SamplingAPI(lambda x_t, t, labels, guidance_scale: 0 * x_t, (2, 2, 1),
        ...                   ddpm_schedule(T=10))
        >>> api.process(guided=False) is api.process(guided=False)
        True
        """
        key = (guided, perturbed, jit_compile)
        if key not in self._processes:
            conditional = self.num_classes is not None

            def denoise(x_t, t, labels, guidance_scale, attention_guidance=None):
                args = (x_t, t, labels if conditional else None,
                        guidance_scale if guided else None)
                if perturbed:
                    return self.predict_noise(*args, attention_guidance=attention_guidance)
                return self.predict_noise(*args)

            self._processes[key] = generation.ReverseProcess(
                denoise, self.image_shape, self.schedule, self.variables, jit_compile,
                self.noise_offset,
            )
        return self._processes[key]


def check_count(name, value):
    """Raise `ValueError` unless `value` is a positive integer number of images.

    Example:
    >>> check_count("n", 0)
    Traceback (most recent call last):
    ...
    ValueError: n must be a positive integer number of images, got 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer number of images, got {value!r}.")


def check_guidance_scale(labels, guidance_scale):
    """The guidance scale to use: a float, or None for a single (conditional) pass.

    Labels without a scale get `DEFAULT_GUIDANCE_SCALE`; a scale needs labels.

    Example:
    >>> check_guidance_scale([0, 1], None), check_guidance_scale(None, None)
    (2.0, None)
    """
    if guidance_scale is not None:
        guidance_scale = float(guidance_scale)
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}.")
        if labels is None:
            raise ValueError(
                "guidance_scale needs labels: give the classes to guide towards "
                "(labels=...)."
            )
    elif labels is not None:
        guidance_scale = DEFAULT_GUIDANCE_SCALE
    return guidance_scale


def check_labels(labels, n, num_classes):
    """`labels` (one int, or `n` of them) as an int32 array `(n,)` of class ids, or a ValueError.

    Example:
    >>> check_labels(2, 3, num_classes=4).tolist()
    [2, 2, 2]
    """
    if num_classes is None:
        raise ValueError(
            "This model is unconditional (num_classes=None): it cannot sample "
            "given labels. Train a model with num_classes=K to use labels."
        )
    array = np.asarray(labels)
    if array.ndim == 0:
        array = np.full((n,), array)
    if array.shape != (n,) or not (
        np.issubdtype(array.dtype, np.integer)
        or (np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)))
    ):
        raise ValueError(
            f"labels must be one int or {n} ints (one class id per image), "
            f"got {labels!r}."
        )
    if np.any(array < 0) or np.any(array >= num_classes):
        raise ValueError(
            f"labels must be class ids in 0..{num_classes - 1} (this model has "
            f"num_classes={num_classes}), got {sorted(set(array.tolist()))}."
        )
    return array.astype(np.int32)


def broadcast_mask(mask, shape):
    """A float32 0/1 mask of `shape` from `mask` `(n, H, W, C)`, `(n, H, W, 1)`, `(H, W, C)` or `(H, W)`.

    Example:
    >>> broadcast_mask(np.ones((2, 2)), (3, 2, 2, 1)).shape
    (3, 2, 2, 1)
    """
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[..., None]
    try:
        mask = np.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(
            f"mask of shape {mask.shape} does not fit images of shape {shape}: give "
            "(n, H, W, C), (n, H, W, 1), (H, W, C) or (H, W)."
        ) from None
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError("mask must hold only 0 (generate) and 1 (keep) values.")
    return mask.astype(np.float32)
