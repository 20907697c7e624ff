"""An exponential moving average (EMA) of the weights, with a warm-up of the decay.

Sampling with averaged weights gives cleaner images than the last weights of a
run, whose noise follows the last few batches. A fixed decay such as 0.999
averages over about 1000 steps and, in a run of a few hundred steps, mostly
remembers the random initial weights; the warm-up (Ho et al.'s TensorFlow code,
diffusers' `EMAModel`) starts with a short memory and lengthens it:

    decay_n = min(decay, (1 + n) / (10 + n)),   n = updates done before this one
    average <- decay_n * average + (1 - decay_n) * weights

`DiffusionModel(..., ema_decay=0.999)` keeps one (`weight_average`), updates it
after every optimizer step and puts the averages into the network at the end of
`fit`, so that the saved `.keras` file samples with them.

References:
    Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models",
    arXiv:2006.11239 (2020), appendix B.
"""

import contextlib

import keras
from keras import ops


def warmup_decay(decay, updates):
    """The decay of update number `updates` (0 for the first): min(decay, (1 + n) / (10 + n)).

    Args:
        decay: float in [0, 1). The decay once warmed up.
        updates: scalar tensor or number. Updates done before this one.

    Returns:
        A float32 scalar tensor.

    Example:
    >>> float(warmup_decay(0.999, 0))  # The first update keeps 90% of the weights.
    0.10000000149011612
    """
    updates = ops.cast(updates, "float32")
    return ops.minimum(ops.cast(decay, "float32"), (1.0 + updates) / (10.0 + updates))


def _check_decay(decay):
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"The EMA decay must be a number in [0, 1), got {decay!r}.")


@keras.saving.register_keras_serializable(package="keras_ddpm")
class WeightAverage(keras.layers.Layer):
    """Holds the moving averages of some variables as non-trainable weights.

    `track(variables)` creates one average per variable, starting at its
    value, plus the update count and a flag saying whether the averages are
    currently swapped into the tracked variables. Being weights of a layer,
    they are saved with the model (`.keras` files and checkpoints).

    Args:
        decay: float in [0, 1). The decay once warmed up (see `warmup_decay`).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> weights = [keras.Variable([0.0, 0.0])]
    >>> average = WeightAverage(0.9)
    >>> average.track(weights)
    >>> weights[0].assign([1.0, 1.0]); average.update(weights)
    >>> keras.ops.convert_to_numpy(average.averages[0])  # 0.1 * 0 + 0.9 * 1
    array([0.9, 0.9], dtype=float32)
    """

    def __init__(self, decay=0.999, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        _check_decay(decay)
        self.decay = float(decay)
        self.averages = []
        self.updates = None
        self.swapped = None

    def track(self, variables):
        """Create an average of each of `variables`, starting at its value."""
        for index, variable in enumerate(variables):
            average = self.add_weight(
                shape=variable.shape,
                dtype=variable.dtype,
                initializer="zeros",
                trainable=False,
                aggregation="only_first_replica",
                name=f"average_{index}",
            )
            # A copy: on JAX, two variables sharing a buffer break buffer donation.
            average.assign(ops.copy(variable.value))
            self.averages.append(average)
        self.updates = self.add_weight(
            shape=(), initializer="zeros", trainable=False,
            aggregation="only_first_replica", name="updates",
        )
        self.swapped = self.add_weight(
            shape=(), initializer="zeros", trainable=False,
            aggregation="only_first_replica", name="swapped",
        )
        self.built = True

    def stateless_update(self, averages, updates, values):
        """`(new_averages, updates + 1)` from the current values (no assignment).

        Args:
            averages: list of tensors. The averages' current values.
            updates: scalar tensor. The update count's current value.
            values: list of tensors. The tracked variables' new values.
        """
        decay = warmup_decay(self.decay, updates)
        new_averages = [
            decay * average + (1.0 - decay) * ops.cast(value, average.dtype)
            for average, value in zip(averages, values)
        ]
        return new_averages, updates + 1.0

    def update(self, variables):
        """Move each average towards its variable's current value; count the update."""
        averages, updates = self.stateless_update(
            [average.value for average in self.averages], self.updates.value, variables
        )
        for average, value in zip(self.averages, averages):
            average.assign(value)
        self.updates.assign(updates)

    def _swap(self, variables):
        for average, variable in zip(self.averages, variables):
            value = ops.copy(variable.value)
            variable.assign(average.value)
            average.assign(value)
        self.swapped.assign(1.0 - self.swapped.value)

    def swap_in(self, variables):
        """Put the averages into `variables` (keeping their values aside), once."""
        if not float(ops.convert_to_numpy(self.swapped)):
            self._swap(variables)

    def swap_out(self, variables):
        """Undo `swap_in`: `variables` get their training values back."""
        if float(ops.convert_to_numpy(self.swapped)):
            self._swap(variables)

    @contextlib.contextmanager
    def swapped_in(self, variables):
        """Inside the block `variables` hold the averages; their values come back after."""
        was_swapped = float(ops.convert_to_numpy(self.swapped))
        self.swap_in(variables)
        try:
            yield
        finally:
            if not was_swapped:
                self.swap_out(variables)

    def get_config(self):
        config = super().get_config()
        config.update({"decay": self.decay})
        return config
