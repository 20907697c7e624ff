import subprocess
import sys

import numpy as np
import pytest
import keras

from keras_ddpm import NaiveUnet, ddpm_schedule


def inputs(batch, shape, seed=0):
    rng = np.random.default_rng(seed)
    x_t = rng.normal(size=(batch,) + shape).astype("float32")
    t = rng.uniform(size=(batch, 1)).astype("float32")
    return x_t, t


@pytest.mark.parametrize("shape", [(32, 32, 3), (64, 64, 3), (32, 32, 1), (32, 64, 3)])
def test_output_shaped_like_input(shape):
    net = NaiveUnet(shape, n_feat=8)
    x_t, t = inputs(2, shape)
    out = keras.ops.convert_to_numpy(net([x_t, t]))
    assert out.shape == x_t.shape
    assert np.all(np.isfinite(out))


def test_time_changes_the_prediction():
    net = NaiveUnet((32, 32, 3), n_feat=8)
    x_t, _ = inputs(1, (32, 32, 3))
    early = net([x_t, np.array([[0.01]], "float32")])
    late = net([x_t, np.array([[0.99]], "float32")])
    assert np.abs(keras.ops.convert_to_numpy(early - late)).max() > 1e-4


def test_lecture_width_parameter_count():
    """Every level's channel count follows the lecture: n, 2n, 2n, then 2n up."""
    net = NaiveUnet((32, 32, 3), n_feat=16)
    widths = {layer.name: layer.compute_output_shape((1, 32, 32, 3))[-1]
              for layer in net.layers if layer.name.startswith("down")}
    assert widths == {"down_1": 16, "down_2": 32, "down_3": 32}
    assert [net.get_layer(f"up_{i}").num_chan for i in (1, 2, 3)] == [32, 32, 32]


@pytest.mark.parametrize(
    "shape,match",
    [
        ((48, 48, 3), "multiples of 32"),
        ((32, 40, 3), "multiples of 32"),
        ((0, 32, 3), "multiples of 32"),
        ((32, 32), "height, width, channels"),
        ((32, 32, 0), "at least one channel"),
    ],
)
def test_bad_image_shape(shape, match):
    with pytest.raises(ValueError, match=match):
        NaiveUnet(shape, n_feat=8)


def test_bad_n_feat():
    with pytest.raises(ValueError, match="n_feat must be a positive multiple of 8"):
        NaiveUnet((32, 32, 3), n_feat=12)


RELOAD_SCRIPT = """
import sys
import numpy as np
import keras
import keras_ddpm  # registers the layers; no custom_objects needed
data = np.load(sys.argv[1])
for model_path, out_path in zip(sys.argv[2::2], sys.argv[3::2]):
    model = keras.models.load_model(model_path)  # safe_mode=True by default
    # A plain call: predict would trace a function for each model (~1 s each).
    np.save(out_path, keras.ops.convert_to_numpy(model([data["x_t"], data["t"]], training=False)))
"""
TIME_EMBEDDINGS = ["learned", "sinusoidal"]


@pytest.fixture(scope="module")
def reloaded_in_fresh_process(tmp_path_factory):
    """Saves a network per time embedding; one fresh process loads each and predicts.

    Returns {time_embedding: (outputs before saving, outputs of the fresh process)}.
    """
    folder = tmp_path_factory.mktemp("round_trip")
    x_t, t = inputs(3, (32, 32, 3), seed=1)
    np.savez(folder / "inputs.npz", x_t=x_t, t=t)
    expected, paths = {}, []
    for name in TIME_EMBEDDINGS:
        net = NaiveUnet((32, 32, 3), n_feat=8, time_embedding=name)
        expected[name] = keras.ops.convert_to_numpy(net([x_t, t], training=False))
        net.save(folder / f"{name}.keras")
        paths += [str(folder / f"{name}.keras"), str(folder / f"{name}.npy")]
    script = folder / "reload.py"
    script.write_text(RELOAD_SCRIPT)
    subprocess.run([sys.executable, str(script), str(folder / "inputs.npz"), *paths],
                   check=True, capture_output=True)
    return {name: (expected[name], np.load(folder / f"{name}.npy")) for name in TIME_EMBEDDINGS}


@pytest.mark.parametrize("time_embedding", TIME_EMBEDDINGS)
def test_keras_round_trip_in_fresh_process(reloaded_in_fresh_process, time_embedding):
    expected, reloaded = reloaded_in_fresh_process[time_embedding]
    np.testing.assert_allclose(reloaded, expected, atol=1e-5)


def test_lecture_client_code_runs_unchanged(tmp_path):
    """The lecture's reverse_diffusion.py (syntax typos fixed), against a saved net."""
    import keras.models as km
    import keras.ops as ko
    import keras.random as kr

    NaiveUnet((32, 32, 3), n_feat=8).save(tmp_path / "model.keras")

    def my_sample(image_shape=[32, 32, 3], n_sample=2):
        beta1, beta2, T = 1e-4, 0.02, 5  # the lecture uses T = 1000
        sched = ddpm_schedule(beta1, beta2, T)
        this_size = list(image_shape)
        this_size.insert(0, n_sample)
        model = km.load_model(tmp_path / "model.keras")
        x_t = kr.normal(this_size)
        for i in range(T, -1, -1):
            z = kr.normal(this_size) if i > 0 else 0
            t = ko.numpy.repeat((i / T), n_sample)
            eps = model.predict([x_t, t], verbose=0)
            x_t = sched["oneover_sqrtalpha"][i] * (
                x_t - sched["mab_over_sqrtmab"][i] * eps
            ) + sched["sqrt_beta_t"][i] * z
        return np.array(x_t * 255).astype("int16")

    images = my_sample()
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.int16
    assert np.abs(images).max() > 0
