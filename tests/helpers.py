"""One helper that does the heavy lifting for layer tests (keras-hub style)."""
import pathlib
import sys

import numpy as np
import keras


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_weights,
    tmp_path,
):
    """Config round trip, symbolic and eager calls, weights, `.keras` round trip.

    `input_data` is one array or a list of arrays (for layers called on a list).
    """
    layer = layer_cls(**init_kwargs)

    # 1. Config round trip rebuilds an equivalent layer.
    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert config[key] == value, key
    rebuilt = layer_cls.from_config(config)
    assert rebuilt.get_config() == config

    # 2. Symbolic call gives the expected shape (batch left unknown).
    is_list = isinstance(input_data, (list, tuple))
    arrays = list(input_data) if is_list else [input_data]
    symbolic = [keras.Input(shape=a.shape[1:]) for a in arrays]
    symbolic_out = layer(symbolic if is_list else symbolic[0])
    assert tuple(symbolic_out.shape) == (None,) + tuple(expected_output_shape[1:])

    # 3. Eager call and weight count.
    output = keras.ops.convert_to_numpy(layer(arrays if is_list else arrays[0]))
    assert output.shape == tuple(expected_output_shape)
    assert np.all(np.isfinite(output))
    assert len(layer.weights) == expected_num_weights

    # 4. A .keras file with the layer reloads and reproduces the output.
    model = keras.Model(symbolic if is_list else symbolic[0], symbolic_out)
    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)  # safe mode, no custom_objects
    reloaded_output = keras.ops.convert_to_numpy(
        reloaded(arrays if is_list else arrays[0])
    )
    np.testing.assert_allclose(reloaded_output, output, rtol=1e-5, atol=1e-5)
    return layer


def all_batches(dataset):
    """Concatenates every batch of a dataset into NumPy arrays."""
    batches = list(dataset.as_numpy_iterator())
    if isinstance(batches[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*batches))
    return np.concatenate(batches)


def two_colour_data(n=256, seed=0, size=32):
    """Flat images of one of two colours: class 0 is dark (-0.8), class 1 light (+0.8).

    The simplest data where a class label fully determines the image, so a tiny
    model learns it in seconds: conditioning, guidance and inpainting tests use it.
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype("int32")
    rng.shuffle(labels)
    images = np.where(labels == 1, 0.8, -0.8)[:, None, None, None]
    images = images + rng.normal(0, 0.02, (n, size, size, 3))
    return images.astype("float32"), labels


class GaussianMixtureDenoiser(keras.layers.Layer):
    """The exact noise predictor for data from an isotropic Gaussian mixture.

    Data: x0 ~ sum_k w_k N(means[k], stds[k]^2 I) (a std of 0 is a point mass).
    At timestep t, x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, so given component k,
    x_t ~ N(sqrt(ab) mu_k, v_k I) with v_k = ab s_k^2 + 1 - ab, and

        E[x0 | x_t, k] = mu_k + sqrt(ab) s_k^2 / v_k (x_t - sqrt(ab) mu_k),
        p(k | x_t) = softmax_k(log w_k - D/2 log v_k - |x_t - sqrt(ab) mu_k|^2 / (2 v_k)),
        eps*(x_t, t) = (x_t - sqrt(ab) E[x0 | x_t]) / sqrt(1 - ab).

    No training, no CPU-dependent kernels: an oracle whose answer is known, for
    sampler, guidance and inpainting tests. Called as a network on `[x_t, t / T]`,
    or on `[x_t, t / T, label]`: label k < K is component k alone (the class), label
    K ("no class") the whole mixture.
    """

    def __init__(self, alphabar, means, stds, weights=None, **kwargs):
        super().__init__(**kwargs)
        self.alphabar = np.asarray(alphabar, "float64")
        self.means = np.asarray(means, "float64")  # (K,) + image shape
        self.stds = np.asarray(stds, "float64").reshape(-1)  # (K,)
        k = len(self.means)
        weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, "float64")
        # Row k < K: class k alone; row K: the prior (no class).
        self.log_weights = np.concatenate([np.where(np.eye(k) > 0, 0.0, -1e30),
                                           np.log(weights)[None]])

    def call(self, inputs):
        x_t, t = inputs[:2]
        ops = keras.ops
        k = len(self.means)
        label = inputs[2][:, 0] if len(inputs) == 3 else ops.full((ops.shape(x_t)[0],), k, "int32")
        log_weights = ops.take(ops.convert_to_tensor(self.log_weights), ops.cast(label, "int32"), axis=0)
        x_t = ops.cast(x_t, "float64")
        steps = ops.cast(ops.round(ops.cast(t, "float64")[:, 0] * (len(self.alphabar) - 1)), "int32")
        ab = ops.take(ops.convert_to_tensor(self.alphabar), steps)[:, None]  # (B, 1)
        flat = ops.reshape(x_t, (ops.shape(x_t)[0], -1))  # (B, D)
        mus = ops.convert_to_tensor(self.means.reshape(len(self.means), -1))  # (K, D)
        var0 = ops.convert_to_tensor(self.stds**2)[None, :]  # (1, K)
        v = ab * var0 + 1.0 - ab  # (B, K)
        centred = flat[:, None, :] - ops.sqrt(ab)[:, :, None] * mus[None]  # (B, K, D)
        dims = float(mus.shape[-1])
        logits = (
            log_weights
            - 0.5 * dims * ops.log(v)
            - ops.sum(centred**2, axis=-1) / (2.0 * v)
        )
        posterior = ops.softmax(logits, axis=-1)  # (B, K)
        x0_k = mus[None] + (ops.sqrt(ab) * var0 / v)[:, :, None] * centred  # (B, K, D)
        x0 = ops.sum(posterior[:, :, None] * x0_k, axis=1)
        eps = (flat - ops.sqrt(ab) * x0) / ops.sqrt(1.0 - ab)
        return ops.cast(ops.reshape(eps, ops.shape(x_t)), "float32")


def analytic_model(means, stds, image_shape, T=50, **model_kwargs):
    """A `DiffusionModel` whose network is the exact `GaussianMixtureDenoiser`.

    `means` has shape `(K,) + image_shape` (or `(K,)`: constant images). With
    `num_classes=K` the network takes labels: class k is component k.
    """
    from keras_ddpm import DiffusionModel, ddpm_schedule

    schedule = model_kwargs.get("schedule", "linear")
    tables = ddpm_schedule(model_kwargs.get("beta1", 1e-4), model_kwargs.get("beta2", 0.02), T,
                           kind=schedule)
    means = np.asarray(means, "float64")
    if means.ndim == 1:
        means = means.reshape(-1, 1, 1, 1) * np.ones((1,) + tuple(image_shape))
    inputs = [keras.Input(image_shape), keras.Input((1,))]
    if model_kwargs.get("num_classes") is not None:
        inputs.append(keras.Input((1,), dtype="int32"))
    eps = GaussianMixtureDenoiser(tables["alphabar_t"], means, stds)(inputs)
    return DiffusionModel(keras.Model(inputs, eps), T=T, **model_kwargs)


# `eager_functions()`: tf.functions run eagerly inside the block, for tests of what a
# command does with a few training steps (tracing the train step and the sampling loops
# would cost more than running them; the traced path is tested where it matters: the
# SIGKILL resume, the fits on shapes, the XLA sampler). One copy, the kill benchmark's.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from kills import eager_functions  # noqa: E402,F401


def tiny_network(image_shape=(32, 32, 3), num_classes=None):
    """A two-layer noise predictor on `[x_t, t / T]`: a 3x3 convolution plus a term in t.

    With `num_classes`, it also takes a label (`[x_t, t / T, label]`, label K being
    "no class") and adds an embedding of it. For tests of `DiffusionModel`'s plumbing
    (fit, labels, guidance, callbacks, checkpoints, failure handling) whose property
    does not depend on the network: it builds, traces and trains in a fraction of
    `NaiveUnet`'s time.
    """
    channels = image_shape[-1]
    inputs = [keras.Input(image_shape), keras.Input((1,))]
    terms = [keras.layers.Reshape((1, 1, channels))(keras.layers.Dense(channels)(inputs[1]))]
    if num_classes is not None:
        inputs.append(keras.Input((1,), dtype="int32"))
        terms.append(keras.layers.Reshape((1, 1, channels))(
            keras.layers.Embedding(num_classes + 1, channels)(inputs[2])
        ))
    convolution = keras.layers.Conv2D(channels, 3, padding="same")(inputs[0])
    return keras.Model(inputs, keras.layers.Add()([convolution] + terms))
