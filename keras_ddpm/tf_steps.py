"""TensorFlow: `DiffusionModel`'s train and test steps, with a gradient tape.

Keras compiles `train_step(data)` into a `tf.function` (and, under a
`tf.distribute` strategy, runs it on every replica). `DiffusionModel.train_step`
and `test_step` call these on TensorFlow and `keras_ddpm.jax_steps` on JAX.

Keras sums the replicas' gradients, so each replica minimises its loss
divided by the number of replicas; its draws fold in its replica id
(`keras_ddpm.distribute.replica_seed`). The update is then the one-device
update of the same global batch.
"""

import keras

from keras_ddpm import distribute


def train_step(model, data):
    """One optimisation step of `model` on `data`: the logs.

    Args:
        model: `DiffusionModel`, compiled.
        data: a batch, `images` or `(images, labels)`.

    Returns:
        `{"loss": mean loss so far}`, in a form Keras can reduce over workers.

    Example:
    >>> # KERAS_BACKEND=tensorflow: model.fit calls model.train_step(data),
    >>> # which returns tf_steps.train_step(model, data).
    """
    import tensorflow as tf

    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        loss = model.diffusion_loss(images, labels, training=True)
        # Keras sums gradients over replicas: average the loss over them.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # A LossScaleOptimizer scales under mixed_float16; the identity otherwise.
        scaled_loss = model.optimizer.scale_loss(loss / replicas)
    variables = model.network.trainable_variables
    gradients = tape.gradient(scaled_loss, variables)
    model.optimizer.apply(gradients, variables)
    if model.weight_average is not None:
        model.weight_average.update(variables)
    model.loss_tracker.update_state(loss)
    return distribute.reducible_logs({"loss": model.loss_tracker.result()})


def test_step(model, data):
    """`model`'s loss on `data` without a gradient step: the logs.

    Example:
    >>> # KERAS_BACKEND=tensorflow: model.evaluate calls model.test_step(data),
    >>> # which returns tf_steps.test_step(model, data).
    """
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    loss = model.diffusion_loss(images, labels, training=False)
    model.loss_tracker.update_state(loss)
    return distribute.reducible_logs({"loss": model.loss_tracker.result()})


def training_draws(model, image_shape, step=None):
    """Stateless timesteps t ~ U{1..T} `(batch,)` and noise eps ~ N(0, I) for a batch.

    A seed (the same on every replica) is folded with the replica's id in
    its `tf.distribute` strategy, so each replica draws its own t and eps. In
    training (`step`, the optimizer's step count, given) that seed is the
    model's seed folded with `step`, so the draws of step k are the same
    whether or not the run was resumed from a checkpoint; otherwise the seed
    generator's next seed (`keras_ddpm.distribute.step_seed`).

    Example:
    >>> t, noises = training_draws(model, (4, 32, 32, 3), step=0)
    >>> tuple(t.shape), tuple(noises.shape)
    ((4,), (4, 32, 32, 3))
    """
    import tensorflow as tf

    seed = _step_seed(model, step)
    t_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    t = tf.random.stateless_uniform(
        image_shape[:1], t_seed, minval=1, maxval=model.T + 1, dtype="int32"
    )
    return t, tf.random.stateless_normal(image_shape, noise_seed)


def label_draws(model, shape, step=None):
    """Stateless uniform draws in [0, 1) that decide which labels a step drops.

    Seeded as `training_draws` (with another stream), so each replica drops
    its own labels and a resumed run drops the same ones.

    Example:
    >>> label_draws(model, (4,), step=0).shape
    TensorShape([4])
    """
    import tensorflow as tf

    seed = tf.random.experimental.stateless_fold_in(_step_seed(model, step), 7)
    return tf.random.stateless_uniform(shape, seed)


def offset_draws(model, shape, step=None):
    """Stateless standard normal draws for `noise_offset`, shape `(batch, 1, 1, C)`.

    Seeded as `training_draws` (with another stream), so each replica draws its
    own and a resumed run draws the same.

    Example:
    >>> offset_draws(model, (4, 1, 1, 3), step=0).shape
    TensorShape([4, 1, 1, 3])
    """
    import tensorflow as tf

    seed = tf.random.experimental.stateless_fold_in(_step_seed(model, step), 11)
    return tf.random.stateless_normal(shape, seed)


def _step_seed(model, step):
    return distribute.step_seed(model._step_seed, step, model.seed_generator)
