"""`DiffusionModel`: trains a noise-prediction network with `fit`, and samples.

The lecture's training loop (`train_on_batch` in a Python loop, seed 004) is a
custom `train_step` here, so `model.fit(dataset)` trains, Keras callbacks,
distribution strategies and XLA apply, and `model.save("model.keras")` keeps
the network, the schedule settings and the optimizer state in one file.

References:
    Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models",
    arXiv:2006.11239 (2020), Algorithms 1 and 2.
"""

import os
import warnings

import numpy as np
import keras
from keras import ops

from keras_ddpm import calibration as calibration_module
from keras_ddpm import gaussian_start, guidance, jax_steps, sampling, sampling_api, targets
from keras_ddpm import tf_steps
from keras_ddpm.ema import WeightAverage
from keras_ddpm.schedule import ddpm_schedule, min_snr_weights

SAMPLERS = sampling.SAMPLERS
PREDICTIONS = targets.PREDICTIONS
LOSS_WEIGHTINGS = (None, "min_snr")

# Classifier-free guidance scale used when labels are given without a scale.
DEFAULT_GUIDANCE_SCALE = sampling_api.DEFAULT_GUIDANCE_SCALE

# The settings that `get_config` saves as they are (besides name, network, dtype).
_CONFIG_SCALARS = (
    "beta1", "beta2", "T", "schedule", "variance", "prediction", "num_classes",
    "cond_drop_prob", "seed", "loss_weighting", "min_snr_gamma", "ema_decay", "noise_offset",
)

# The calibration's file among a saved model's assets.
_CALIBRATION_FILE = "calibration.npz"

# Seeds are 0..MAX_SEED (TensorFlow's stateless seeds are int32).
MAX_SEED = 2**31 - 2


@keras.saving.register_keras_serializable(package="keras_ddpm")
class DiffusionModel(keras.Model):
    """A denoising diffusion model around a noise-prediction network.

    Training (`fit`) follows the lecture (Ho et al., Algorithm 1): for each
    image x0 draw t uniformly in 1..T and noise eps ~ N(0, I), form
    `x_t = sqrtab[t] * x0 + sqrtmab[t] * eps`, predict the noise from
    `[x_t, t / T]` and minimise the mean squared error. `sample` runs the
    reverse diffusion in one compiled loop; `inpaint` fills in masked pixels.

    Beyond the lecture: the network may predict `"v"` (Salimans and Ho 2022)
    or `"x0"` instead of the noise (the sampler converts either to a noise
    estimate), and with `num_classes` the model is class-conditional, trained
    on `(images, labels)` batches with each label replaced by "no class" with
    probability `cond_drop_prob`, so that `sample(labels=...,
    guidance_scale=w)` can use classifier-free guidance (Ho and Salimans 2021).

    Args:
        network: `keras.Model`. Maps `[x_t, t]` (t in [0, 1], shape
            `(batch, 1)`), plus `label` `(batch, 1)` when conditional, to a
            prediction shaped like `x_t`, e.g. `NaiveUnet`.
        beta1: float. beta_1 of the linear schedule.
        beta2: float. beta_T of the linear schedule.
        T: int. Number of diffusion steps.
        schedule: str. `"linear"` (the lecture's) or `"cosine"`.
        variance: str. Noise of the ancestral sampler: `"beta"` (the
            lecture's `sqrt_beta_t`) or `"posterior"`.
        prediction: str. What the network predicts: `"epsilon"` (the noise,
            the lecture's), `"v"` (sqrtab * eps - sqrtmab * x0) or `"x0"`.
        num_classes: int or None. Number of classes of a class-conditional
            network (built with the same `num_classes`); label K means
            "no class".
        cond_drop_prob: float in [0, 1). Probability of training a
            conditional model without its label (classifier-free guidance).
        seed: int or None. Seed of the training noise and timesteps.
        loss_weighting: str or None. None: the plain mean squared error
            (the lecture's); `"min_snr"`: each timestep's error weighted by
            Min-SNR-gamma (Hang et al. 2023, `schedule.min_snr_weights`).
        min_snr_gamma: float > 0. The SNR cap of `"min_snr"`.
        ema_decay: float in [0, 1) or None. Keep an exponential moving
            average of the network's weights with this decay and a warm-up
            (`keras_ddpm.ema`); `fit` ends with the averages in the network,
            so sampling and the saved model use them, and starts by putting
            the training weights back. None: no average (the lecture's).
        noise_offset: float >= 0. "Offset noise" (Guttenberg 2023): the
            training noise of each image gets a constant per channel,
            `noise_offset` times a standard normal draw, so the network learns
            to correct an image whose colours are off as a whole. Sampling
            and `calibrate` draw their noise the same way: the forward
            process is then a Gaussian diffusion whose noise has this
            covariance, and the reverse process adds noise of the same kind
            (`keras_ddpm.generation.offset_normal`). 0: plain Gaussian noise
            (the lecture's).
        **kwargs: standard `keras.Model` arguments (`name`...).

    Example:
    >>> from keras_ddpm import NaiveUnet, DiffusionModel
    >>> model = DiffusionModel(NaiveUnet((32, 32, 3), n_feat=16), T=100)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> images = keras.random.uniform((8, 32, 32, 3), -1, 1)
    >>> history = model.fit(images, batch_size=4, epochs=1, verbose=0)
    >>> model.sample(2, steps=10, seed=0, verbose=0).shape
    (2, 32, 32, 3)
    >>> cond = DiffusionModel(NaiveUnet((32, 32, 3), 16, num_classes=3), T=100,
    ...                       num_classes=3)
    >>> cond.sample(3, steps=10, labels=[0, 1, 2], guidance_scale=2.0).shape
    (3, 32, 32, 3)
    """

    def __init__(self, network, beta1=1e-4, beta2=0.02, T=1000, schedule="linear",
                 variance="beta", prediction="epsilon", num_classes=None, cond_drop_prob=0.1,
                 seed=None, loss_weighting=None, min_snr_gamma=5.0, ema_decay=None,
                 noise_offset=0.0, **kwargs):
        # Mixed precision: the model follows its network's dtype policy (the
        # global one when it was built), so compile adds loss scaling for
        # mixed_float16; the policy is saved with the model.
        if isinstance(network, keras.Model):
            kwargs.setdefault("dtype", network.dtype_policy)
        super().__init__(**kwargs)
        tables = ddpm_schedule(beta1, beta2, T, kind=schedule)  # Validates the scalars.
        _check_settings(network, variance, prediction, num_classes, cond_drop_prob, loss_weighting,
                        seed)
        # Validates gamma for every model, so a bad value fails where it is given.
        self._loss_weights = min_snr_weights(tables["alphabar_t"], min_snr_gamma, prediction)
        self.network = network
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.T = int(T)
        self.schedule = schedule
        self.variance = variance
        self.prediction = prediction
        self.num_classes = num_classes
        self.cond_drop_prob = float(cond_drop_prob)
        self.seed = seed
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.noise_offset = _check_noise_offset(noise_offset)
        self.weight_average = None
        if ema_decay is not None:
            self.weight_average = WeightAverage(ema_decay, name="weight_average")
            self.weight_average.track(network.trainable_variables)
        self.image_shape = tuple(network.inputs[0].shape[1:])
        # Derived from the scalars once; the config stores only the scalars.
        self._tables = tables
        self.seed_generator = keras.random.SeedGenerator(seed)
        # The fixed seed of the training draws, folded with the step count.
        self._step_seed = [int(seed if seed is not None else np.random.randint(2**31 - 1)), 1]
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # The reverse process (plan, chunks, compiled loop) behind sample and inpaint.
        self._sampling = sampling_api.SamplingAPI(
            self.predict_noise, self.image_shape, tables, network.variables, num_classes, variance,
            network, self.noise_offset,
        )
        # Mean errors taken out of the noise estimate when sampling (`calibrate`).
        self._calibration = None
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
        self._check_time_input(inputs)
        return self.network(inputs, training=training)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict` on `[x_t, t]`, checking that t is in [0, 1].

        Example:
        >>> model.predict([x_t, keras.ops.ones((2, 1)) * 0.5]).shape
        (2, 32, 32, 3)
        """
        self._check_time_input(x)
        return super().predict(x, *args, **kwargs)

    def _check_time_input(self, inputs):
        if isinstance(inputs, (list, tuple)) and len(inputs) == 2:
            _check_known_values(
                inputs[1], 0.0, 1.0,
                f"t must be the diffusion time in [0, 1], a timestep divided by T={self.T}",
                "Pass t / model.T, or call model.predict_noise(x_t, timesteps) with "
                "integer timesteps",
            )

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
        _check_known_values(
            t, 0, self.T, f"t must hold integer timesteps in 0..T=0..{self.T}",
            "For t in [0, 1] multiply by model.T and round",
        )
        return sampling.add_noise(images, t, noises, self.tables)

    def diffusion_loss(self, images, labels=None, training=False, draws=None):
        """The lecture's loss on a batch of clean images: MSE(eps, eps_theta).

        Draws t uniformly in 1..T and eps ~ N(0, I) for every image
        (`training_draws`), noises the images with `q_sample` and compares
        the network's prediction with its target: eps (the lecture's), v or
        x0 as `prediction` says, each image's error weighted by its
        timestep's weight when `loss_weighting="min_snr"`. A conditional model replaces each label by
        "no class" with probability `cond_drop_prob`.

        Args:
            images: tensor `(batch, H, W, C)` in [-1, 1].
            labels: int tensor `(batch,)` or None. Class labels in
                0..num_classes-1 (required by conditional models, ignored by
                unconditional ones).
            training: bool. Passed to the network.
            draws: `(t, noises)` or None. The timesteps and noise to use
                instead of the model's own draws (e.g. to check the loss).

        Returns:
            A float32 scalar.

        Example:
        >>> loss = model.diffusion_loss(keras.ops.zeros((4, 32, 32, 3)))
        """
        _check_images(images, self.image_shape)
        images = ops.cast(images, "float32")
        # Training draws follow the optimizer's step count, so a resumed run
        # draws exactly what an uninterrupted one would have.
        step = self.optimizer.iterations if training and getattr(self, "optimizer", None) else None
        t, noises = draws if draws is not None else self.training_draws(ops.shape(images), step)
        noisy_images = self.q_sample(images, t, noises)
        if self.num_classes is None:
            labels = None
        else:
            labels = self._drop_labels(_check_training_labels(labels, self.num_classes), step)
        outputs = ops.cast(self.network_output(noisy_images, t, labels, training), "float32")
        errors = ops.square(self.prediction_target(images, noises, t) - outputs)
        if self.loss_weighting is None:
            return ops.mean(errors)
        return ops.mean(sampling.gather(self._loss_weights, t) * errors)

    def prediction_target(self, images, noises, t):
        """What the network learns to output for `x_t = q_sample(images, t, noises)`.

        `"epsilon"`: the noise; `"v"`: sqrtab[t] * eps - sqrtmab[t] * x0;
        `"x0"`: the clean images.

        Example:
        >>> x0, eps = keras.ops.zeros((2, 32, 32, 3)), keras.ops.ones((2, 32, 32, 3))
        >>> model.prediction_target(x0, eps, keras.ops.array([1, 1000])).shape
        (2, 32, 32, 3)
        """
        return targets.prediction_target(self.prediction, images, noises, t, self.tables)

    def _drop_labels(self, labels, step=None):
        """Replace each label by "no class" (num_classes) with prob. cond_drop_prob."""
        if self.cond_drop_prob == 0:
            return labels
        if keras.backend.backend() == "tensorflow":  # Each replica drops its own labels.
            draws = tf_steps.label_draws(self, ops.shape(labels), step)
        else:
            draws = keras.random.uniform(ops.shape(labels), seed=self.seed_generator)
        return ops.where(draws < self.cond_drop_prob, self.num_classes, labels)

    def training_draws(self, image_shape, step=None):
        """Timesteps t ~ U{1..T} `(batch,)` and noise eps ~ N(0, I) for a batch.

        `diffusion_loss` calls this for every batch: a subclass may override it
        to train on draws of its own.

        On TensorFlow the draws are stateless (`keras_ddpm.tf_steps.training_draws`):
        each replica draws its own, and in training (`step`, the optimizer's
        step count, given) the draws of step k are the same whether or not the
        run was resumed from a checkpoint. With `noise_offset`, each image's
        noise gets `noise_offset` times a standard normal constant per channel.

        Example:
        >>> t, noises = model.training_draws((4, 32, 32, 3))
        >>> tuple(t.shape), tuple(noises.shape)
        ((4,), (4, 32, 32, 3))
        """
        tensorflow = keras.backend.backend() == "tensorflow"
        if tensorflow:
            t, noises = tf_steps.training_draws(self, image_shape, step)
        else:
            t = keras.random.randint(
                image_shape[:1], 1, self.T + 1, dtype="int32", seed=self.seed_generator
            )
            noises = keras.random.normal(image_shape, seed=self.seed_generator)
        if not self.noise_offset:
            return t, noises
        offsets_shape = (image_shape[0], 1, 1, image_shape[-1])  # One per image and channel.
        offsets = (tf_steps.offset_draws(self, offsets_shape, step) if tensorflow
                   else keras.random.normal(offsets_shape, seed=self.seed_generator))
        return t, noises + self.noise_offset * offsets

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`; a `tf.data.Dataset` is not reshuffled by Keras.

        Datasets from `keras_ddpm.data.load_dataset` shuffle themselves, so
        `shuffle` defaults to False for them (Keras would ignore it and warn).
        With `ema_decay`, the network holds the weight averages after `fit`
        (see `keras_ddpm.ema`). A `calibration` belongs to the weights it was
        estimated for: `fit` drops it (`calibrate` again afterwards).

        Example:
        >>> model.fit(load_dataset("shapes", batch_size=32), epochs=1)
        """
        if self._calibration is not None:
            self.calibration = None
        if type(x).__module__.startswith("tensorflow") and len(args) < 7:
            kwargs.setdefault("shuffle", False)
        _warn_if_not_model_range(_first_images(x))
        if keras.backend.backend() == "tensorflow" and not getattr(self.optimizer, "built", True):
            # The optimizer's variables, made now as Keras does under a strategy: made in
            # the first step, they would make TensorFlow trace the train step twice.
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        if self.weight_average is not None:
            # Train the training weights; end with the averages in the network.
            self.weight_average.swap_out(self.network.trainable_variables)
        try:
            return super().fit(x, *args, **kwargs)
        except BaseException:
            # A step that failed while being traced may have created variables (the
            # optimizer's): trace afresh next time, so that the model can fit again.
            self.train_function = None
            raise
        finally:
            if self.weight_average is not None:
                self.weight_average.swap_in(self.network.trainable_variables)

    def train_step(self, *args):
        """One optimisation step; called by `fit`.

        TensorFlow: `train_step(data)` with a gradient tape
        (`keras_ddpm.tf_steps`). JAX: `train_step(state, data) -> (logs,
        state)`, Keras' stateless pattern (`keras_ddpm.jax_steps`). Both
        minimise `diffusion_loss` (scaled by `optimizer.scale_loss`) and give
        the one-device update of the global batch on several devices.
        """
        steps = jax_steps if keras.backend.backend() == "jax" else tf_steps
        return steps.train_step(self, *args)

    def test_step(self, *args):
        """The same loss without a gradient step; called by `evaluate`."""
        steps = jax_steps if keras.backend.backend() == "jax" else tf_steps
        return steps.test_step(self, *args)

    # ---------------------------------------------------------------- sampling
    def network_output(self, x_t, t, labels=None, training=False, network=None):
        """The network's raw prediction (eps, v or x0) at integer timesteps `t`.

        The network sees `t / T`, as in the lecture, for training and sampling
        alike; a conditional network also gets `labels` (None means "no
        class" for all). `network` (default: the model's) can be another with
        the same inputs, e.g. `guidance.perturbed_attention_network(...)`.

        Example:
        >>> x_t = keras.random.normal((2, 32, 32, 3))
        >>> model.network_output(x_t, keras.ops.array([10, 10])).shape
        (2, 32, 32, 3)
        """
        network = self.network if network is None else network
        x_t = ops.convert_to_tensor(x_t)
        t_input = ops.reshape(ops.cast(t, "float32") / self.T, (-1, 1))
        if self.num_classes is None:
            return network([x_t, t_input], training=training)
        if labels is None:
            labels = ops.full((ops.shape(x_t)[0],), self.num_classes, "int32")
        labels = ops.reshape(ops.cast(labels, "int32"), (-1, 1))
        return network([x_t, t_input, labels], training=training)

    def predict_noise(self, x_t, t, labels=None, guidance_scale=None, training=False,
                      attention_guidance=None):
        """The model's noise estimate eps_theta(x_t, t) at integer timesteps `t`.

        Converts a v or x0 prediction to the noise it implies:
        eps = sqrtmab[t] x_t + sqrtab[t] v, or (x_t - sqrtab[t] x0) / sqrtmab[t].
        With `guidance_scale=w` (conditional models) this is the classifier-
        free guidance mix eps(no class) + w (eps(labels) - eps(no class)),
        computed in one batched network call: w = 0 is unconditional, w = 1
        plainly conditional, w > 1 pushes further towards the class.

        Args:
            x_t: tensor `(batch, H, W, C)`. Noisy images.
            t: int tensor `(batch,)`. Timesteps in 1..T.
            labels: int tensor `(batch,)` or None. Class ids (conditional
                models); None is "no class".
            guidance_scale: float (or scalar tensor) or None. None: one pass
                with `labels` as given.
            training: bool. Passed to the network.
            attention_guidance: float (or scalar tensor) or None. Perturbed-
                attention guidance scale s (`keras_ddpm.guidance`): adds
                s (eps(labels) - eps without attention), one more pass.

        Example:
        >>> x_t = keras.random.normal((2, 32, 32, 3))
        >>> model.predict_noise(x_t, keras.ops.array([10, 10])).shape
        (2, 32, 32, 3)
        """
        x_t, t = ops.convert_to_tensor(x_t), ops.convert_to_tensor(t)
        if guidance_scale is None:
            cond = guided = self._noise(self.network, x_t, t, labels, training)
        elif labels is None or self.num_classes is None:
            raise ValueError(
                "guidance_scale needs labels and a class-conditional model."
            )
        else:
            labels = ops.cast(labels, "int32")
            both = self.predict_noise(
                ops.concatenate([x_t, x_t], axis=0),
                ops.concatenate([t, t], axis=0),
                ops.concatenate([labels, ops.full_like(labels, self.num_classes)], axis=0),
                training=training,
            )
            cond, uncond = ops.split(both, 2, axis=0)
            guided = uncond + ops.cast(guidance_scale, uncond.dtype) * (cond - uncond)
        if attention_guidance is None:
            return guided
        network = guidance.perturbed_attention_network(self.network)
        perturbed = self._noise(network, x_t, t, labels, training)
        return guided + ops.cast(attention_guidance, cond.dtype) * (cond - perturbed)

    def _noise(self, network, x_t, t, labels, training):
        """The noise implied by `network`'s prediction (the model's network or its perturbed copy)."""
        outputs = ops.cast(self.network_output(x_t, t, labels, training, network), x_t.dtype)
        noise = targets.noise_from_prediction(self.prediction, outputs, x_t, t, self.tables)
        if self._calibration is None or training:
            return noise
        offset = self._calibration.offset(t, labels, perturbed=network is not self.network)
        return noise if offset is None else noise - ops.cast(offset, noise.dtype)

    # ------------------------------------------------------------- calibration
    @property
    def calibration(self):
        """The `keras_ddpm.calibration.Calibration` subtracted when sampling, or None.

        Set by `calibrate`, saved with the model; set it to None to sample
        without it.
        """
        return self._calibration

    @calibration.setter
    def calibration(self, value):
        if value is not None:
            _check_calibration(value, self)
        self._calibration = value
        self._sampling.forget_compiled()  # Compiled loops hold the old tables.

    def calibrate(self, images, labels=None,
                  samples_per_step=calibration_module.DEFAULT_SAMPLES_PER_STEP, timesteps=None,
                  seed=0, verbose=0, start="auto",
                  start_clusters=gaussian_start.DEFAULT_CLUSTERS):
        """Estimate the noise estimate's mean error (Pang et al. 2023) and sample without it.

        Sets and returns `calibration` (`keras_ddpm.calibration.estimate`: the
        mean of eps_theta(x_t, t) - eps over `samples_per_step` draws per
        timestep of a grid and per class, from training `images` and their
        `labels`). Sampling, guidance and `score` then subtract it; training
        does not. About 50 x (classes + 1) x `samples_per_step` network calls,
        twice that for a network with self-attention. With a `start` (int
        in 1..T; "auto": 0.76 T; None: none) `sample` starts there from a
        mixture of `start_clusters` Gaussians per class fitted to the images
        (`keras_ddpm.gaussian_start`), not from pure noise.

        Example:
        >>> calibration = model.calibrate(np.zeros((8, 32, 32, 3)), samples_per_step=2,
        ...                               timesteps=[1, 500, 1000])
        >>> model.calibration is calibration
        True
        >>> model.calibration = None
        """
        self.calibration = calibration_module.estimate(
            self, images, labels, samples_per_step, timesteps, seed, verbose, start,
            start_clusters,
        )
        return self.calibration

    def save_assets(self, dir_path):
        """Keras saving hook: writes the calibration, if any, beside the weights."""
        if self._calibration is not None:
            with open(os.path.join(dir_path, _CALIBRATION_FILE), "wb") as file:
                file.write(self._calibration.to_bytes())

    def load_assets(self, dir_path):
        """Keras loading hook: reads the calibration of a saved model (older files have none)."""
        path = None if dir_path is None else os.path.join(dir_path, _CALIBRATION_FILE)
        if path is not None and os.path.exists(path):
            with open(path, "rb") as file:
                self.calibration = calibration_module.Calibration.from_bytes(file.read())

    def score(self, x_t, t, labels=None, guidance_scale=None):
        """The score grad_x log p_t(x_t) = -eps_theta(x_t, t) / sqrt(1 - alphabar_t).

        Noise prediction is score matching in disguise (Song and Ermon 2019;
        Ho et al. 2020, section 3.2): the noise estimate, scaled, is the
        gradient of the log-density of the noised data.

        Args:
            x_t: tensor `(batch, H, W, C)`. Noisy images.
            t: int tensor `(batch,)`. Timesteps in 1..T.
            labels, guidance_scale: as in `predict_noise`.

        Returns:
            A float32 tensor shaped like `x_t`.

        Example:
        >>> x_t = keras.random.normal((2, 32, 32, 3))
        >>> model.score(x_t, keras.ops.array([500, 500])).shape
        (2, 32, 32, 3)
        """
        pred_noises = self.predict_noise(x_t, t, labels, guidance_scale)
        return -pred_noises / ops.cast(
            sampling.gather(self.tables["sqrtmab"], t), pred_noises.dtype
        )

    def _sampling_jit(self):
        """The model's `jit_compile` setting for the sampling loop (XLA on TensorFlow when True)."""
        return self.jit_compile if isinstance(self.jit_compile, bool) else False

    def sample(self, n, steps=None, eta=0.0, seed=None, sampler=None, clip_x0=None, frames=None,
               batch_size=None, verbose="auto", labels=None, guidance_scale=None, spacing=None,
               attention_guidance=None, denoise_at=None):
        """Generate `n` images by reverse diffusion from pure noise.

        With `steps=None` (or `steps=T`) this is the lecture's ancestral DDPM
        sampler over all T steps; with fewer steps it is strided DDIM
        (Song et al. 2020) unless `sampler` names another: DPM-Solver++
        (`"dpm++"`, `"dpm++3m"`), Heun or Euler on Karras noise levels
        (`"heun"`, `"euler"`), or a sampler object of `keras_ddpm.sampling`.
        The whole loop is compiled (no host round trip per step). Returns raw
        float32 images in model space (about [-1, 1]); use
        `keras_ddpm.plotting.to_uint8` to display them. A model calibrated
        with a start (`calibrate`) starts from the data's Gaussian mixture at
        its start timestep and leaves out the steps above it.

        Args:
            n: int. Number of images, > 0.
            frames: iterable of int or None. Timesteps at which to keep the
                intermediate images (the lecture shows 1000, 200, 50, 0);
                each is recorded at the first sampled timestep <= it.
            steps, eta, seed, sampler, clip_x0, batch_size, verbose, labels,
                guidance_scale, spacing, attention_guidance, denoise_at: the
                sampling options, documented with their defaults in
                `keras_ddpm.sampling_api.SampleOptions` (`steps`: 1..T;
                `seed`: the same seed gives the same images, also after
                reloading; `batch_size`: chunks of at most this many images;
                `labels`, `guidance_scale`: classes and classifier-free
                guidance of a conditional model; `attention_guidance`:
                perturbed-attention guidance of a `Unet`, `keras_ddpm.guidance`;
                `denoise_at`: one more denoising of the finished images at
                that timestep).

        Returns:
            A float32 NumPy array `(n, H, W, C)`, or `(images, frames_dict)`
            when `frames` is given, `frames_dict` mapping each requested t to
            an array `(n, H, W, C)`; its `sampled` attribute maps each
            requested t to the timestep actually sampled.

        Example:
        >>> images = model.sample(4, steps=50, seed=0, verbose=0)
        >>> images = model.sample(4, steps=20, sampler="dpm++", seed=0)
        >>> images, frames = model.sample(1, seed=0, frames=[1000, 200, 50, 0])
        >>> images = model.sample(4, steps=50, eta=1.0, seed=0, denoise_at=50)
        """
        options = sampling_api.SampleOptions(
            steps=steps, eta=eta, seed=seed, sampler=sampler, clip_x0=clip_x0,
            batch_size=batch_size, verbose=verbose, labels=labels,
            guidance_scale=guidance_scale, spacing=spacing, attention_guidance=attention_guidance,
            denoise_at=denoise_at,
        )
        start = None if self._calibration is None else self._calibration.start
        return self._sampling.sample(n, options, frames, self._sampling_jit(), start)

    def inpaint(self, images, mask, steps=None, seed=None, resample=1, eta=0.0, sampler=None,
                clip_x0=None, batch_size=None, verbose="auto", labels=None, guidance_scale=None,
                spacing=None, attention_guidance=None, denoise_at=None):
        """Regenerate the pixels of `images` where `mask` is 0; keep the rest.

        RePaint (Lugmayr et al. 2022): run the reverse diffusion from noise,
        and after every step replace the known pixels (mask 1) by the input
        noised to the same timestep, so the new pixels are generated in their
        context. `resample > 1` repeats each step that many times, going back
        one step by forward diffusion in between, which harmonises the two
        regions at the cost of `resample` times the network calls. The known
        pixels of the result are exactly those of `images`. Works with any
        sampler (`generation.repaint` wraps its step).

        Args:
            images: array `(n, H, W, C)` in [-1, 1]. The images to complete.
            mask: array `(n, H, W, C)`, `(n, H, W, 1)`, `(H, W, C)` or `(H, W)`
                of 0/1 (or bool): 1 where `images` is known and kept.
            steps: int or None. Reverse steps (None: all T, ancestral DDPM).
            seed: int or None. Same seed, same result.
            resample: int >= 1. RePaint's number of resamplings per step.
            eta, sampler, clip_x0, batch_size, verbose, labels,
                guidance_scale, spacing, attention_guidance, denoise_at: as in
                `sample` (`denoise_at` changes the generated pixels only).

        Returns:
            A float32 NumPy array `(n, H, W, C)`.

        Example:
        >>> images = model.sample(2, steps=20, seed=0)
        >>> mask = np.ones((32, 32)); mask[8:24, 8:24] = 0  # Regenerate a square.
        >>> completed = model.inpaint(images, mask, steps=20, seed=1, resample=2)
        """
        options = sampling_api.SampleOptions(
            steps=steps, eta=eta, seed=seed, sampler=sampler, clip_x0=clip_x0,
            batch_size=batch_size, verbose=verbose, labels=labels,
            guidance_scale=guidance_scale, spacing=spacing, attention_guidance=attention_guidance,
            denoise_at=denoise_at,
        )
        return self._sampling.inpaint(images, mask, resample, options, self._sampling_jit())

    # ----------------------------------------------------------- serialization
    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "network": keras.saving.serialize_keras_object(self.network),
        }
        config.update({key: getattr(self, key) for key in _CONFIG_SCALARS})
        config["dtype"] = keras.dtype_policies.serialize(self.dtype_policy)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def _check_calibration(value, model):
    """Raise `ValueError` unless `value` is a `Calibration` that fits `model`."""
    if not isinstance(value, calibration_module.Calibration):
        raise ValueError(
            f"calibration must be a keras_ddpm.calibration.Calibration (model.calibrate "
            f"makes one) or None, got {type(value).__name__}."
        )
    conditions = 1 if model.num_classes is None else model.num_classes + 1
    if (value.T, value.image_shape, value.num_conditions) != (
        model.T, tuple(model.image_shape), conditions
    ):
        raise ValueError(
            f"this calibration is for T={value.T}, images {value.image_shape} and "
            f"{value.num_conditions} condition(s); the model has T={model.T}, images "
            f"{tuple(model.image_shape)} and {conditions}: calibrate this model instead."
        )


def _check_noise_offset(noise_offset):
    if isinstance(noise_offset, bool) or not isinstance(noise_offset, (int, float)) or not (
        0.0 <= noise_offset < float("inf")
    ):
        raise ValueError(
            f"noise_offset must be a number >= 0 (0: no offset noise), got {noise_offset!r}."
        )
    return float(noise_offset)


def _first_images(x):
    """The images of the first batch of `fit`'s `x` (array or tf.data), or None."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("tensorflow") and hasattr(x, "take"):
        for batch in x.take(1):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            return np.asarray(images)
    return None


def _warn_if_not_model_range(images):
    """Warns when training images are not in [-1, 1], the range the model assumes."""
    if images is None or images.size == 0 or not np.issubdtype(images.dtype, np.number):
        return
    low, high = float(np.min(images)), float(np.max(images))
    if low < -1.001 or high > 1.001:
        fix = "divide uint8 images by 127.5 and subtract 1" if high > 2 else "rescale them"
        message = f"lie in [{low:g}, {high:g}], outside [-1, 1]: {fix}"
    elif low >= 0 and high <= 1 and images.dtype.kind == "f" and high > 0:
        message = f"lie in [{low:g}, {high:g}], which looks like [0, 1]: use images * 2 - 1"
    else:
        return
    warnings.warn(
        f"The first training batch's images {message} (keras_ddpm.data.to_model_range "
        "converts uint8). DiffusionModel assumes images in [-1, 1].",
        stacklevel=3,
    )


def _check_known_values(values, low, high, what, fix):
    """Raise a ValueError if `values` are known now (eager) and outside [low, high].

    Symbolic and traced tensors pass: their values are unknown until run.
    """
    try:
        array = ops.convert_to_numpy(values)
    except Exception:  # Symbolic (graph, JAX trace, KerasTensor): nothing to check.
        return
    if array.size and not (array.min() >= low and array.max() <= high):
        raise ValueError(f"{what}; got values from {array.min():g} to {array.max():g}. {fix}.")


def _check_images(images, image_shape):
    """Raise a ValueError unless the images' shape is `(batch,) + image_shape`."""
    shape = tuple(images.shape[1:])
    if len(shape) != 3 or any(
        got is not None and got != want for got, want in zip(shape, image_shape)
    ):
        raise ValueError(
            f"The data's images have shape {shape} (height, width, channels) "
            f"but the network expects {image_shape}. Build the network "
            "with the data's image shape, or resize the data."
        )


def _check_training_labels(labels, num_classes):
    """A training batch's labels as int32 `(batch,)`, checked against `num_classes`."""
    if labels is None:
        raise ValueError(
            f"This model is class-conditional (num_classes={num_classes}): "
            "train it on (images, labels) batches, e.g. "
            "load_dataset(..., with_labels=True)."
        )
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        message = (
            f"labels must be class ids in 0..{num_classes - 1} "
            f"(num_classes={num_classes})"
        )
        checks = [
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(labels, num_classes, message=message),
        ]
        with tf.control_dependencies(checks):
            labels = tf.identity(labels)
    return labels


def _check_settings(network, variance, prediction, num_classes, cond_drop_prob, loss_weighting,
                    seed):
    """Check `DiffusionModel`'s settings, and that the network's inputs match `num_classes`."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
        or not 0 <= seed <= MAX_SEED
    ):
        raise ValueError(f"seed must be None or an integer in 0..{MAX_SEED}, got {seed!r}.")
    if variance not in sampling.VARIANCES:
        raise ValueError(f"variance must be one of {sampling.VARIANCES}, got {variance!r}.")
    if not isinstance(network, keras.Model):
        raise ValueError(
            "network must be a keras.Model mapping [x_t, t] to the predicted "
            f"noise (e.g. keras_ddpm.NaiveUnet), got {type(network).__name__}."
        )
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}.")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}.")
    expected = 2 if num_classes is None else 3
    if len(network.inputs) != expected:
        kind = "unconditional" if num_classes is None else "class-conditional"
        raise ValueError(
            f"A {kind} DiffusionModel (num_classes={num_classes}) needs a network with "
            f"{expected} inputs ([x_t, t]{'' if expected == 2 else ', label'}), got one with "
            f"{len(network.inputs)}. Build it with NaiveUnet(..., num_classes="
            f"{num_classes}) or pass the network's num_classes."
        )
    if not 0.0 <= float(cond_drop_prob) < 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob!r}.")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(
            f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}."
        )
