"""The weight average with a warm-up (`keras_ddpm.ema`) and Min-SNR loss weighting."""
import numpy as np
import pytest
import keras

from helpers import tiny_network
from keras_ddpm import DiffusionModel, Unet, ddpm_schedule
from keras_ddpm.ema import WeightAverage, warmup_decay
from keras_ddpm.schedule import min_snr_weights

SHAPE = (32, 32, 3)


def tiny_model(**kwargs):
    """The average and the settings are the property, not the network: `tiny_network`
    traces its Adam step in a second (a two-level Unet: 15-20 s)."""
    return DiffusionModel(tiny_network(SHAPE), T=20, seed=0, **kwargs)


def images(n=8, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + SHAPE).astype("float32")


def numpy_weights(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def reference_average(initial, steps, decay):
    """float64 EMA with warm-up: decay_n = min(decay, (1 + n) / (10 + n))."""
    average = [w.astype(np.float64) for w in initial]
    for n, weights in enumerate(steps):
        d = min(decay, (1.0 + n) / (10.0 + n))
        average = [d * a + (1.0 - d) * w for a, w in zip(average, weights)]
    return average


def test_warmup_decay_follows_the_formula():
    for n in [0, 1, 5, 50, 5000]:
        assert float(warmup_decay(0.999, n)) == pytest.approx(min(0.999, (1 + n) / (10 + n)))


class RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(numpy_weights(self.model.network.trainable_variables))


def test_averaged_weights_follow_the_formula_save_and_train_on(tmp_path):
    """decay 0.5 is reached at n = 8: the run covers the warm-up and the plateau."""
    model = tiny_model(ema_decay=0.5)
    # Adam, not SGD: its larger steps keep the check sharp. A decay without the warm-up
    # differs from the reference by 1.2e-4 here, 100-110 times the tolerance (3 seeds;
    # with a two-level Unet 1.1e-4; after SGD(0.05) steps, by only 2.4e-5), while the
    # averages with it differ by 0.5% of the tolerance.
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    initial = numpy_weights(model.network.trainable_variables)
    record = RecordWeights()
    model.fit(images(12), batch_size=1, epochs=1, verbose=0, callbacks=[record])
    assert len(record.steps) == 12
    expected = reference_average(initial, record.steps, 0.5)
    # After fit the network holds the averages; the training weights wait in the average.
    averaged = numpy_weights(model.network.trainable_variables)
    for got, want in zip(averaged, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for kept, last in zip(numpy_weights(model.weight_average.averages), record.steps[-1]):
        np.testing.assert_array_equal(kept, last)
    assert float(model.weight_average.updates.numpy()) == 12

    # The saved model samples with the averages, and trains on from the training weights.
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    assert reloaded.get_config()["ema_decay"] == 0.5
    for got, want in zip(numpy_weights(reloaded.network.trainable_variables), averaged):
        np.testing.assert_array_equal(got, want)

    class FirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = numpy_weights(self.model.network.trainable_variables)

    assert float(reloaded.weight_average.swapped.numpy()) == 1.0
    for kept, last in zip(numpy_weights(reloaded.weight_average.averages), record.steps[-1]):
        np.testing.assert_array_equal(kept, last)
    first = FirstWeights()  # One more step, of the batch size traced above (no retrace).
    model.fit(images(1), batch_size=1, epochs=1, verbose=0, callbacks=[first])
    for got, want in zip(first.weights, record.steps[-1]):
        np.testing.assert_array_equal(got, want)
    assert float(model.weight_average.updates.numpy()) == 13


def test_swapped_in_restores_the_weights():
    weights = [keras.Variable([1.0, 2.0])]
    average = WeightAverage(0.9)
    average.track(weights)
    weights[0].assign([3.0, 4.0])
    with average.swapped_in(weights):
        np.testing.assert_array_equal(weights[0].numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(weights[0].numpy(), [3.0, 4.0])
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(1.0)


def test_model_without_average_is_unchanged():
    model = tiny_model()
    assert model.weight_average is None
    config = model.get_config()
    assert (config["ema_decay"], config["loss_weighting"]) == (None, None)
    for key in ("ema_decay", "loss_weighting", "min_snr_gamma"):  # Configs saved before these.
        del config[key]
    assert DiffusionModel.from_config(config).loss_weighting is None


# ------------------------------------------------------------------ Min-SNR
def reference_min_snr(beta1, beta2, T, gamma, target):
    """float64, from the betas: SNR_t = alphabar / (1 - alphabar), per target."""
    alphabar = np.cumprod(1.0 - np.linspace(beta1, beta2, T))
    snr = alphabar / (1.0 - alphabar)
    x0_weight = np.minimum(snr, gamma)
    return {"x0": x0_weight, "epsilon": x0_weight / snr, "v": x0_weight / (snr + 1.0)}[target]


@pytest.mark.parametrize("target", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_match_a_float64_reference(target, gamma):
    tables = ddpm_schedule(1e-4, 0.02, 1000)
    weights = min_snr_weights(tables["alphabar_t"], gamma, target)
    assert weights.shape == (1001,) and weights.dtype == np.float32
    expected = reference_min_snr(1e-4, 0.02, 1000, gamma, target)
    np.testing.assert_allclose(weights[1:], expected, rtol=2e-4)
    assert weights[0] == (gamma if target == "x0" else 0.0)


def test_min_snr_weights_at_zero_snr_are_finite():
    tables = ddpm_schedule(T=100, kind="cosine")
    for target in ("epsilon", "v", "x0"):
        assert np.all(np.isfinite(min_snr_weights(tables["alphabar_t"], 5.0, target)))


@pytest.mark.parametrize("bad", [{"loss_weighting": "snr"}, {"min_snr_gamma": 0.0}])
def test_bad_loss_weighting(bad):
    with pytest.raises(ValueError, match="loss_weighting|min_snr_gamma"):
        tiny_model(**bad)


def test_min_snr_weights_the_loss_per_timestep():
    """T = 1: every draw is t = 1; the zero-initialised Unet predicts x0 = 0."""
    model = DiffusionModel(
        Unet(SHAPE, widths=(8,)), beta1=0.5, beta2=0.6, T=1, prediction="x0",
        loss_weighting="min_snr", min_snr_gamma=0.5,
    )
    loss = float(model.diffusion_loss(np.full((2,) + SHAPE, 0.5, "float32")))
    snr = 0.5 / (1 - 0.5)  # alphabar_1 = 1 - beta_1 = 0.5.
    assert loss == pytest.approx(min(snr, 0.5) * 0.25, rel=1e-5)
    assert model.get_config()["loss_weighting"] == "min_snr"
