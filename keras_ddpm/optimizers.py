"""The optimizer of the training recipe: Adam with warm-up, cosine decay and clipping.

A short run gains from a learning rate that rises over the first steps (Adam's
moment estimates are poor at first), then decays to a fraction of its peak by
the last step (the end of the run averages out the noise of the updates), and
from clipping the global gradient norm (rare large gradients at small t).
"""

import keras

LR_DECAYS = ("cosine", "none")


def make_optimizer(
    learning_rate=1e-3,
    total_steps=None,
    warmup_steps=0,
    decay="cosine",
    final_fraction=0.1,
    clipnorm=None,
):
    """Adam with a linear warm-up, an optional cosine decay and gradient clipping.

    The learning rate rises linearly from 0 to `learning_rate` over
    `warmup_steps`, then follows a cosine from `learning_rate` down to
    `final_fraction * learning_rate` at `total_steps` (`decay="cosine"`) or
    stays constant (`decay="none"`, or `total_steps` None).

    Args:
        learning_rate: float. Peak learning rate.
        total_steps: int or None. Number of training steps (for the decay).
        warmup_steps: int. Steps of the linear warm-up (0: none).
        decay: str. `"cosine"` or `"none"`.
        final_fraction: float in [0, 1]. Learning rate at the end of the
            decay, as a fraction of the peak.
        clipnorm: float or None. Clip the gradients' global norm to this.

    Returns:
        A `keras.optimizers.Adam`.

    Example:
    >>> optimizer = make_optimizer(2e-3, total_steps=1000, warmup_steps=100, clipnorm=1.0)
    >>> float(optimizer.learning_rate)  # Step 0 of the warm-up.
    0.0
    """
    if decay not in LR_DECAYS:
        raise ValueError(f"decay must be one of {LR_DECAYS}, got {decay!r}.")
    if warmup_steps < 0 or (total_steps is not None and total_steps < 1):
        raise ValueError(
            f"warmup_steps must be >= 0 and total_steps >= 1, got {warmup_steps} and "
            f"{total_steps}."
        )
    schedule = learning_rate
    if decay == "cosine" and total_steps is not None:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else learning_rate,
            decay_steps=max(1, total_steps - warmup_steps),
            alpha=final_fraction,
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    elif warmup_steps:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=1, alpha=1.0,
            warmup_target=learning_rate, warmup_steps=warmup_steps,
        )
    return keras.optimizers.Adam(schedule, global_clipnorm=clipnorm)
