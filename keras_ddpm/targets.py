"""What the network predicts: the noise eps, v or the clean image x0, and back.

Pure functions of the schedule tables, shared by training
(`DiffusionModel.diffusion_loss` learns `prediction_target`) and sampling
(`DiffusionModel.predict_noise` turns the network's output into the noise
estimate every sampler takes, `noise_from_prediction`). For
`x_t = sqrtab[t] x0 + sqrtmab[t] eps` (`keras_ddpm.sampling.add_noise`):

- `"epsilon"`: eps (Ho et al. 2020, the lecture's);
- `"v"`: v = sqrtab[t] eps - sqrtmab[t] x0 (Salimans and Ho 2022, section 4),
  so eps = sqrtmab[t] x_t + sqrtab[t] v;
- `"x0"`: x0, so eps = (x_t - sqrtab[t] x0) / sqrtmab[t].

Example:
>>> from keras_ddpm import ddpm_schedule
>>> schedule, t = ddpm_schedule(T=10), np.array([3, 7])
>>> x0, eps = np.ones((2, 1, 1, 1), "float32"), np.full((2, 1, 1, 1), 0.5, "float32")
>>> x_t = schedule["sqrtab"][t][:, None, None, None] * x0 + schedule["sqrtmab"][t][:, None, None, None] * eps
>>> v = prediction_target("v", x0, eps, t, schedule)
>>> np.allclose(noise_from_prediction("v", v, x_t, t, schedule), eps, atol=1e-6)
True
"""

from keras import ops

from keras_ddpm.sampling import gather

PREDICTIONS = ("epsilon", "v", "x0")


def prediction_target(prediction, images, noises, t, schedule):
    """What the network learns to output for `x_t = add_noise(images, t, noises)`.

    Args:
        prediction: str. One of `PREDICTIONS`.
        images: tensor `(batch, H, W, C)`. Clean images x0.
        noises: tensor like `images`. The noise eps.
        t: int tensor `(batch,)`. Timesteps.
        schedule: dict of tables from `ddpm_schedule`.

    Returns:
        eps, v = sqrtab[t] eps - sqrtmab[t] x0, or x0.

    Example:
    >>> from keras_ddpm import ddpm_schedule
    >>> x0, eps = np.zeros((1, 2, 2, 1), "float32"), np.ones((1, 2, 2, 1), "float32")
    >>> float(prediction_target("v", x0, eps, np.array([10]), ddpm_schedule(T=10))[0, 0, 0, 0]) > 0
    True
    """
    if prediction == "epsilon":
        return noises
    if prediction == "x0":
        return images
    return gather(schedule["sqrtab"], t) * noises - gather(schedule["sqrtmab"], t) * images


def noise_from_prediction(prediction, outputs, x_t, t, schedule):
    """The noise estimate eps that the network's `outputs` imply at `(x_t, t)`.

    Args:
        prediction: str. One of `PREDICTIONS`.
        outputs: tensor like `x_t`. The network's prediction.
        x_t: tensor `(batch, H, W, C)`. Noisy images.
        t: int tensor `(batch,)`. Timesteps in 1..T.
        schedule: dict of tables from `ddpm_schedule`.

    Returns:
        A tensor like `x_t`, in its dtype.

    Example:
    >>> from keras_ddpm import ddpm_schedule
    >>> x_t = np.ones((1, 2, 2, 1), "float32")
    >>> noise_from_prediction("epsilon", x_t, x_t, np.array([5]), ddpm_schedule(T=10)) is x_t
    True
    """
    if prediction == "epsilon":
        return outputs
    signal_rates = ops.cast(gather(schedule["sqrtab"], t), x_t.dtype)
    noise_rates = ops.cast(gather(schedule["sqrtmab"], t), x_t.dtype)
    if prediction == "v":
        return noise_rates * x_t + signal_rates * outputs
    return (x_t - signal_rates * outputs) / noise_rates
