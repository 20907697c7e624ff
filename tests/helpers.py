"""One helper that does the heavy lifting for layer tests (keras-hub style)."""
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


def train_two_colour_model(epochs=20, **kwargs):
    """A tiny conditional cosine-schedule v-prediction model trained on `two_colour_data`.

    With noise prediction the label would barely be learned here: the colour shows
    through the noise at all but the last few timesteps, where predicting the noise
    is easy without it. Predicting v (about -x0 at high noise) needs the label there.
    """
    from keras_ddpm import DiffusionModel, NaiveUnet

    kwargs.setdefault("num_classes", 2)
    kwargs.setdefault("prediction", "v")
    network = NaiveUnet((32, 32, 3), n_feat=8, num_classes=kwargs["num_classes"])
    model = DiffusionModel(network, T=50, schedule="cosine", seed=0, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    images, labels = two_colour_data()
    model.fit(images, labels, batch_size=32, epochs=epochs, verbose=0)
    return model
