"""JAX: `DiffusionModel`'s train and test steps as pure functions of the model's state.

On the JAX backend Keras compiles `train_step(state, data) -> (logs, state)`
with `jax.jit`, so a step may not change variables in place (Keras' stateless
pattern, as in its own `JAXTrainer`): `DiffusionModel.diffusion_loss` runs
inside a `keras.StatelessScope` that maps every variable to the value passed
in, and the new values (the seed generator's, the optimizer's, the weight
averages') come back out. `DiffusionModel.train_step` and `test_step` call
these on JAX and do the same with a gradient tape on TensorFlow.

Under JAX's `keras.distribution.DataParallel` the step is one program over
the global batch that XLA splits across the devices: the loss is already the
mean over the whole batch, so nothing here depends on the device count.
"""

import keras


def train_step(model, state, data):
    """One optimisation step of `model` on `data`: `(logs, state)`.

    Args:
        model: `DiffusionModel`, compiled.
        state: `(trainable, non_trainable, optimizer_variables,
            metrics_variables)`, lists of values, as Keras' JAX trainer gives.
        data: a batch, `images` or `(images, labels)`.

    Returns:
        `(logs, state)` with the new values.

    Example:
    >>> # KERAS_BACKEND=jax: model.fit calls model.train_step(state, data),
    >>> # which returns jax_steps.train_step(model, state, data).
    """
    import jax

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    gradient_fn = jax.value_and_grad(_loss, argnums=1, has_aux=True)
    (_, (loss, non_trainable)), gradients = gradient_fn(
        model, trainable, non_trainable, optimizer_variables, data, True
    )
    # Unscales the gradients and skips non-finite steps under mixed_float16.
    trainable, optimizer_variables = model.optimizer.stateless_apply(
        optimizer_variables, gradients, trainable
    )
    if model.weight_average is not None:
        non_trainable = _average(model, trainable, non_trainable)
    logs, metrics_variables = _metrics(model, metrics_variables, loss)
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def test_step(model, state, data):
    """`model`'s loss on `data` without a gradient step: `(logs, state)`.

    Args:
        model: `DiffusionModel`.
        state: `(trainable, non_trainable, metrics_variables)`.
        data: a batch, `images` or `(images, labels)`.

    Example:
    >>> # KERAS_BACKEND=jax: model.evaluate calls model.test_step(state, data),
    >>> # which returns jax_steps.test_step(model, state, data).
    """
    trainable, non_trainable, metrics_variables = state
    _, (loss, non_trainable) = _loss(model, trainable, non_trainable, None, data, False)
    logs, metrics_variables = _metrics(model, metrics_variables, loss)
    return logs, (trainable, non_trainable, metrics_variables)


def _loss(model, trainable, non_trainable, optimizer_variables, data, training):
    """`(scaled_loss, (loss, non_trainable))` from `diffusion_loss` at these values."""
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(model.non_trainable_variables, non_trainable))
    if optimizer_variables is not None:
        mapping += list(zip(model.optimizer.variables, optimizer_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        loss = model.diffusion_loss(images, labels, training=training)
        scaled_loss = model.optimizer.scale_loss(loss) if training else loss
    non_trainable = [scope.get_current_value(v) for v in model.non_trainable_variables]
    return scaled_loss, (loss, non_trainable)


def _metrics(model, metrics_variables, loss):
    """`(logs, metrics_variables)` after recording `loss` in the loss tracker."""
    tracker = model.loss_tracker
    metrics_variables = tracker.stateless_update_state(metrics_variables, loss)
    return {"loss": tracker.stateless_result(metrics_variables)}, metrics_variables


def _average(model, trainable, non_trainable):
    """`non_trainable` with the weight averages moved towards `trainable`."""
    average = model.weight_average
    position = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    values = dict(zip(map(id, model.trainable_variables), trainable))
    averages, updates = average.stateless_update(
        [non_trainable[position[id(v)]] for v in average.averages],
        non_trainable[position[id(average.updates)]],
        [values[id(v)] for v in model.network.trainable_variables],
    )
    non_trainable = list(non_trainable)
    for variable, value in zip(average.averages + [average.updates], averages + [updates]):
        non_trainable[position[id(variable)]] = value
    return non_trainable
