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
