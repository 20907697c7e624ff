"""`DiffusionModel`: trains a noise-prediction network with `fit`, and samples.

The lecture's training loop (`train_on_batch` in a Python loop, seed 004) is a
custom `train_step` here, so `model.fit(dataset)` trains, Keras callbacks,
distribution strategies and XLA apply, and `model.save("model.keras")` keeps
the network, the schedule settings and the optimizer state in one file.

References:
    Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models",
    arXiv:2006.11239 (2020), Algorithms 1 and 2.
"""

import dataclasses
import math

import numpy as np
import keras
from keras import ops

from keras_ddpm import sampling
from keras_ddpm.schedule import ddpm_schedule

SAMPLERS = ("ddpm", "ddim")


@keras.saving.register_keras_serializable(package="keras_ddpm")
class DiffusionModel(keras.Model):
    """A denoising diffusion model around a noise-prediction network.

    Training (`fit`) follows the lecture (Ho et al., Algorithm 1): for each
    image x0 draw t uniformly in 1..T and noise eps ~ N(0, I), form
    `x_t = sqrtab[t] * x0 + sqrtmab[t] * eps`, predict the noise from
    `[x_t, t / T]` and minimise the mean squared error. `sample` runs the
    reverse diffusion in one compiled loop.

    Args:
        network: `keras.Model`. Maps `[x_t, t]` (t in [0, 1], shape
            `(batch, 1)`) to a noise estimate shaped like `x_t`, e.g.
            `NaiveUnet`.
        beta1: float. beta_1 of the linear schedule.
        beta2: float. beta_T of the linear schedule.
        T: int. Number of diffusion steps.
        schedule: str. `"linear"` (the lecture's) or `"cosine"`.
        variance: str. Noise of the ancestral sampler: `"beta"` (the
            lecture's `sqrt_beta_t`) or `"posterior"`.
        seed: int or None. Seed of the training noise and timesteps.
        **kwargs: standard `keras.Model` arguments (`name`...).

    Example:
    >>> from keras_ddpm import NaiveUnet, DiffusionModel
    >>> model = DiffusionModel(NaiveUnet((32, 32, 3), n_feat=16), T=100)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> images = keras.random.uniform((8, 32, 32, 3), -1, 1)
    >>> history = model.fit(images, batch_size=4, epochs=1, verbose=0)
    >>> model.sample(2, steps=10, seed=0, verbose=0).shape
    (2, 32, 32, 3)
    """

    def __init__(
        self,
        network,
        beta1=1e-4,
        beta2=0.02,
        T=1000,
        schedule="linear",
        variance="beta",
        seed=None,
        **kwargs,
    ):
        # Mixed precision: the model follows its network's dtype policy (the
        # global one when it was built), so compile adds loss scaling for
        # mixed_float16; the policy is saved with the model.
        if isinstance(network, keras.Model):
            kwargs.setdefault("dtype", network.dtype_policy)
        super().__init__(**kwargs)
        tables = ddpm_schedule(beta1, beta2, T, kind=schedule)  # Validates the scalars.
        if variance not in sampling.VARIANCES:
            raise ValueError(
                f"variance must be one of {sampling.VARIANCES}, got {variance!r}."
            )
        if not isinstance(network, keras.Model):
            raise ValueError(
                "network must be a keras.Model mapping [x_t, t] to the predicted "
                f"noise (e.g. keras_ddpm.NaiveUnet), got {type(network).__name__}."
            )
        self.network = network
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.T = int(T)
        self.schedule = schedule
        self.variance = variance
        self.seed = seed
        self.image_shape = tuple(network.inputs[0].shape[1:])
        # Derived from the scalars once; the config stores only the scalars.
        self._tables = tables
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._reverse_segment = None
        # The network is built; fit never calls this model, so say so here or
        # saving drops the optimizer state.
        self.built = True

    # ------------------------------------------------------------------ tables
    @property
    def tables(self):
        """The schedule tables (`ddpm_schedule`) as float32 NumPy arrays."""
        return self._tables

    # ---------------------------------------------------------------- training
    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, inputs, training=False):
        """Predicted noise for `[x_t, t]`, t in [0, 1]: the network's output."""
        return self.network(inputs, training=training)

    def q_sample(self, images, t, noises):
        """Forward diffusion in one jump: x_t = sqrtab[t] x0 + sqrtmab[t] eps.

        Args:
            images: tensor `(batch, H, W, C)`. Clean images x0 in [-1, 1].
            t: int tensor `(batch,)`. Timesteps in 0..T.
            noises: tensor like `images`. Standard normal noise eps.

        Returns:
            The noisy images x_t.

        Example:
        >>> x0 = keras.ops.zeros((2, 32, 32, 3))
        >>> model.q_sample(x0, keras.ops.array([1, 1000]), keras.ops.ones_like(x0))
        """
        tables = self.tables
        signal_rates = sampling.gather(tables["sqrtab"], t)
        noise_rates = sampling.gather(tables["sqrtmab"], t)
        return signal_rates * images + noise_rates * noises

    def _check_images(self, images):
        shape = tuple(images.shape[1:])
        if len(shape) != 3 or any(
            got is not None and got != want for got, want in zip(shape, self.image_shape)
        ):
            raise ValueError(
                f"The data's images have shape {shape} (height, width, channels) "
                f"but the network expects {self.image_shape}. Build the network "
                "with the data's image shape, or resize the data."
            )

    def diffusion_loss(self, images, labels=None, training=False):
        """The lecture's loss on a batch of clean images: MSE(eps, eps_theta).

        Draws t uniformly in 1..T and eps ~ N(0, I) for every image
        (`_training_draws`), noises the images with `q_sample` and compares
        the network's prediction with its target.

        Args:
            images: tensor `(batch, H, W, C)` in [-1, 1].
            labels: int tensor `(batch,)` or None. Class labels (conditional
                models only).
            training: bool. Passed to the network.

        Returns:
            A float32 scalar.

        Example:
        >>> loss = model.diffusion_loss(keras.ops.zeros((4, 32, 32, 3)))
        """
        self._check_images(images)
        images = ops.cast(images, "float32")
        t, noises = self._training_draws(ops.shape(images))
        noisy_images = self.q_sample(images, t, noises)
        pred_noises = ops.cast(self.predict_noise(noisy_images, t, training), "float32")
        return ops.mean(ops.square(noises - pred_noises))

    def _training_draws(self, image_shape):
        """Timesteps t ~ U{1..T} `(batch,)` and noise eps ~ N(0, I) for a batch."""
        t = keras.random.randint(
            image_shape[:1], 1, self.T + 1, dtype="int32", seed=self.seed_generator
        )
        noises = keras.random.normal(image_shape, seed=self.seed_generator)
        return t, noises

    @staticmethod
    def _unpack(data):
        """`(images, labels)` from a batch: images alone, or `(images, labels)`."""
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        return images, labels

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`; a `tf.data.Dataset` is not reshuffled by Keras.

        Datasets from `keras_ddpm.data.load_dataset` shuffle themselves, so
        `shuffle` defaults to False for them (Keras would ignore it and warn).

        Example:
        >>> model.fit(load_dataset("shapes", batch_size=32), epochs=1)
        """
        if type(x).__module__.startswith("tensorflow") and len(args) < 7:
            kwargs.setdefault("shuffle", False)
        return super().fit(x, *args, **kwargs)

    def train_step(self, *args):
        """One optimisation step; called by `fit`.

        TensorFlow: `train_step(data)` with a gradient tape. JAX:
        `train_step(state, data) -> (logs, state)`, Keras' stateless pattern
        (`_stateless_train_step`). Both minimise `diffusion_loss` and scale it
        with `optimizer.scale_loss` (a `LossScaleOptimizer` under
        `mixed_float16`; the identity otherwise).
        """
        if keras.backend.backend() == "jax":
            return self._stateless_train_step(*args)
        import tensorflow as tf

        (data,) = args
        images, labels = self._unpack(data)
        with tf.GradientTape() as tape:
            loss = self.diffusion_loss(images, labels, training=True)
            # Keras sums gradients over replicas: average the loss over them.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        variables = self.network.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, *args):
        """The same loss without a gradient step; called by `evaluate`.

        TensorFlow: `test_step(data)`; JAX: `test_step(state, data) -> (logs, state)`.
        """
        if keras.backend.backend() == "jax":
            return self._stateless_test_step(*args)
        (data,) = args
        images, labels = self._unpack(data)
        loss = self.diffusion_loss(images, labels, training=False)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    # JAX: the train and test steps are pure functions of the model's state
    # (Keras' stateless pattern): `diffusion_loss` runs inside a
    # `keras.StatelessScope` that maps every variable to the value passed in,
    # and the new values (the seed generator's, the optimizer's) come back out.
    def _stateless_loss(self, trainable, non_trainable, optimizer_variables, data, training):
        """`(scaled_loss, (loss, non_trainable))` from `diffusion_loss` at these values."""
        images, labels = self._unpack(data)
        mapping = list(zip(self.trainable_variables, trainable))
        mapping += list(zip(self.non_trainable_variables, non_trainable))
        if optimizer_variables is not None:
            mapping += list(zip(self.optimizer.variables, optimizer_variables))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            loss = self.diffusion_loss(images, labels, training=training)
            scaled_loss = self.optimizer.scale_loss(loss) if training else loss
        non_trainable = [scope.get_current_value(v) for v in self.non_trainable_variables]
        return scaled_loss, (loss, non_trainable)

    def _stateless_metrics(self, metrics_variables, loss):
        """`(logs, metrics_variables)` after recording `loss` in the loss tracker."""
        metrics_variables = self.loss_tracker.stateless_update_state(metrics_variables, loss)
        return {"loss": self.loss_tracker.stateless_result(metrics_variables)}, metrics_variables

    def _stateless_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_variables, metrics_variables = state
        gradient_fn = jax.value_and_grad(self._stateless_loss, has_aux=True)
        (_, (loss, non_trainable)), gradients = gradient_fn(
            trainable, non_trainable, optimizer_variables, data, True
        )
        # Unscales the gradients and skips non-finite steps under mixed_float16.
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, gradients, trainable
        )
        logs, metrics_variables = self._stateless_metrics(metrics_variables, loss)
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

    def _stateless_test_step(self, state, data):
        trainable, non_trainable, metrics_variables = state
        _, (loss, non_trainable) = self._stateless_loss(
            trainable, non_trainable, None, data, False
        )
        logs, metrics_variables = self._stateless_metrics(metrics_variables, loss)
        return logs, (trainable, non_trainable, metrics_variables)

    # ---------------------------------------------------------------- sampling
    def predict_noise(self, x_t, t, training=False):
        """The network's noise estimate at integer timesteps `t` (shape `(batch,)`).

        The network sees `t / T`, as in the lecture, for training and sampling alike.

        Example:
        >>> x_t = keras.random.normal((2, 32, 32, 3))
        >>> model.predict_noise(x_t, keras.ops.array([10, 10])).shape
        (2, 32, 32, 3)
        """
        t_input = ops.reshape(ops.cast(t, "float32") / self.T, (-1, 1))
        return self.network([x_t, t_input], training=training)

    def _segment_function(self):
        """The compiled loop over a range of steps, traced once per sampler."""
        if self._reverse_segment is None:
            tables = {k: ops.convert_to_tensor(v) for k, v in self.tables.items()}

            def segment(x, timesteps, prev_timesteps, seed, start, stop, eta, options):
                sampler, clip_x0, variance = options
                return sampling.run_reverse_loop(
                    self.predict_noise,
                    x,
                    timesteps,
                    prev_timesteps,
                    seed,
                    tables,
                    start,
                    stop,
                    sampler=sampler,
                    eta=eta,
                    clip_x0=clip_x0,
                    variance=variance,
                )

            jit = self.jit_compile if isinstance(self.jit_compile, bool) else False
            self._reverse_segment = sampling.compile_function(
                segment, jit, static_argnums=(7,), variables=self.network.variables
            )
        return self._reverse_segment

    def sample(
        self,
        n,
        steps=None,
        eta=0.0,
        seed=None,
        sampler=None,
        clip_x0=None,
        frames=None,
        batch_size=None,
        verbose="auto",
    ):
        """Generate `n` images by reverse diffusion from pure noise.

        With `steps=None` (or `steps=T`) this is the lecture's ancestral DDPM
        sampler over all T steps; with fewer steps it is strided DDIM
        (Song et al. 2020). The whole loop is compiled (no host round trip per
        step). Returns raw float32 images in model space (about [-1, 1]); use
        `keras_ddpm.plotting.to_uint8` to display them.

        Args:
            n: int. Number of images, > 0.
            steps: int or None. Number of reverse steps, in 1..T.
            eta: float. DDIM stochasticity (0 is deterministic DDIM).
            seed: int or None. The same seed gives the same images, also
                after saving and reloading the model.
            sampler: str or None. `"ddpm"` or `"ddim"`; by default DDPM for
                T steps and DDIM for fewer.
            clip_x0: bool or None. Clip the predicted clean image to [-1, 1]
                inside each step. Default: off for DDPM (the lecture's exact
                formula), on for DDIM.
            frames: iterable of int or None. Timesteps at which to keep the
                intermediate images (the lecture shows 1000, 200, 50, 0);
                each is recorded at the first sampled timestep <= it.
            batch_size: int or None. Generate in chunks of this many images.
                Chunks draw from different seeds, so results depend on it.
            verbose: "auto", 0 or 1. Progress bar (auto: on for > 100 steps).

        Returns:
            A float32 NumPy array `(n, H, W, C)`, or `(images, frames_dict)`
            when `frames` is given, `frames_dict` mapping each requested t to
            an array `(n, H, W, C)`.

        Example:
        >>> images = model.sample(4, steps=50, seed=0, verbose=0)
        >>> images, frames = model.sample(1, seed=0, frames=[1000, 200, 50, 0])
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"n must be a positive integer number of images, got {n!r}.")
        if steps is None:
            steps = self.T
        sampling.check_steps(steps, self.T)
        if sampler is None:
            sampler = "ddpm" if steps == self.T else "ddim"
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
        if sampler == "ddpm" and steps != self.T:
            raise ValueError(
                f"The ancestral DDPM sampler runs all T={self.T} steps; got "
                f"steps={steps}. Use sampler='ddim' (eta=1.0 is the stochastic "
                "strided equivalent)."
            )
        if clip_x0 is None:
            clip_x0 = sampler == "ddim"
        if batch_size is None:
            batch_size = n
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        frame_times = sorted({int(t) for t in frames}, reverse=True) if frames else []
        if any(not 0 <= t <= self.T for t in frame_times):
            raise ValueError(f"frames must be timesteps in 0..{self.T}, got {frames!r}.")
        if verbose == "auto":
            verbose = 1 if steps > 100 else 0

        if sampler == "ddpm":
            timesteps, prev_timesteps = sampling.ddpm_timesteps(self.T)
        else:
            timesteps, prev_timesteps = sampling.strided_timesteps(self.T, steps)
        plan = _SamplingPlan(
            timesteps=timesteps,
            prev_timesteps=prev_timesteps,
            boundaries=_segment_boundaries(prev_timesteps, frame_times, verbose),
            frame_times=frame_times,
            eta=float(eta),
            options=(sampler, bool(clip_x0), self.variance),
        )

        chunks, frame_chunks = [], {t: [] for t in frame_times}
        progbar = keras.utils.Progbar(math.ceil(n / batch_size) * steps) if verbose else None
        for chunk_index, chunk_start in enumerate(range(0, n, batch_size)):
            chunk_size = min(batch_size, n - chunk_start)
            # Chunk k draws from seeds (seed, k * (steps + 1) + 0..steps).
            base_seed = np.array([seed % (2**31 - 1), chunk_index * (steps + 1)], np.int32)
            images, chunk_frames = self._sample_chunk(chunk_size, base_seed, plan, progbar)
            chunks.append(images)
            for t in frame_times:
                frame_chunks[t].append(chunk_frames[t])
        images = np.concatenate(chunks, axis=0)
        if frames is None:
            return images
        return images, {t: np.concatenate(frame_chunks[t], axis=0) for t in frame_times}

    def _sample_chunk(self, n, base_seed, plan, progbar):
        """Sample `n` images: x_T from `base_seed`, step i's noise from base + (0, 1 + i)."""
        x = sampling.stateless_normal((n,) + self.image_shape, ops.convert_to_tensor(base_seed))
        segment = self._segment_function()
        recorded = {t: ops.convert_to_numpy(x) for t in plan.frame_times if t >= plan.timesteps[0]}
        start = 0
        for stop in plan.boundaries:
            x = segment(
                x,
                ops.convert_to_tensor(plan.timesteps),
                ops.convert_to_tensor(plan.prev_timesteps),
                ops.convert_to_tensor(base_seed + np.array([0, 1], np.int32)),
                ops.convert_to_tensor(start, "int32"),
                ops.convert_to_tensor(stop, "int32"),
                ops.convert_to_tensor(plan.eta, "float32"),
                plan.options,
            )
            landed = int(plan.prev_timesteps[stop - 1])
            for t in plan.frame_times:
                if t not in recorded and landed <= t:
                    recorded[t] = ops.convert_to_numpy(x)
            if progbar is not None:
                progbar.add(stop - start)
            start = stop
        return ops.convert_to_numpy(x).astype(np.float32), recorded

    # ----------------------------------------------------------- serialization
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "network": keras.saving.serialize_keras_object(self.network),
            "beta1": self.beta1,
            "beta2": self.beta2,
            "T": self.T,
            "schedule": self.schedule,
            "variance": self.variance,
            "seed": self.seed,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class _SamplingPlan:
    """What one `sample` call runs: the timesteps, where to stop, the options."""

    timesteps: np.ndarray  # Current timestep of each step.
    prev_timesteps: np.ndarray  # Timestep each step lands on.
    boundaries: list  # End index of each compiled segment.
    frame_times: list  # Requested frame timesteps, descending.
    eta: float
    options: tuple  # (sampler, clip_x0, variance): fixed at trace time.


def _segment_boundaries(prev_timesteps, frame_times, verbose, progress_segments=20):
    """End indices of the compiled loop's segments.

    The loop returns to Python only to record a requested frame or to update
    the progress bar (about `progress_segments` times per run).
    """
    steps = len(prev_timesteps)
    boundaries = {steps}
    for t in frame_times:
        reached = np.nonzero(prev_timesteps <= t)[0]
        if len(reached):
            boundaries.add(int(reached[0]) + 1)
    if verbose:
        stride = max(1, math.ceil(steps / progress_segments))
        boundaries.update(range(stride, steps, stride))
    return sorted(boundaries)
