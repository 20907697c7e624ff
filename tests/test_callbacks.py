"""Sample grids during training, and EMA weights in the grids and the saved model."""
import numpy as np
import pytest
import keras
from keras import ops

from helpers import tiny_network, two_colour_data
from keras_ddpm import DiffusionModel
from keras_ddpm.callbacks import SampleGrid

SHAPE = (32, 32, 3)


def fit_with_grids(tmp_path, epochs, optimizer, extra_callbacks=(), **grid_kwargs):
    # The callbacks are the property: a tiny network traces and trains in a fraction
    # of NaiveUnet's time.
    network = tiny_network(SHAPE, num_classes=2)
    model = DiffusionModel(network, T=20, num_classes=2, seed=0)
    model.compile(optimizer=optimizer)
    images, labels = two_colour_data(32)
    grids = SampleGrid(n=4, steps=5, seed=7, directory=tmp_path / "grids", **grid_kwargs)
    model.fit(images, labels, batch_size=16, epochs=epochs, verbose=0,
              callbacks=list(extra_callbacks) + [grids])
    return model, grids


def test_grids_every_n_epochs_with_a_fixed_seed(tmp_path):
    # SGD: the property is the grids, not the optimizer.
    model, grids = fit_with_grids(tmp_path, 5, keras.optimizers.SGD(0.05), every=2,
                                  log_dir=tmp_path / "logs")
    assert sorted(grids.images) == [2, 4, 5]  # Every 2nd epoch, and the last.
    written = sorted(p.name for p in (tmp_path / "grids").glob("*.png"))
    assert written == ["samples_epoch_0002.png", "samples_epoch_0004.png", "samples_epoch_0005.png"]
    # The last grid is what the final model samples with that seed (classes 0, 1, 0, 1).
    np.testing.assert_array_equal(
        grids.images[5], model.sample(4, steps=5, seed=7, labels=[0, 1, 0, 1])
    )
    assert not np.array_equal(grids.images[2], grids.images[4])  # The model changed.
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


def test_grids_sample_at_the_given_eta(tmp_path):
    model, grids = fit_with_grids(tmp_path, 1, keras.optimizers.SGD(0.05), eta=1.0)
    labels = [0, 1, 0, 1]
    np.testing.assert_array_equal(
        grids.images[1], model.sample(4, steps=5, seed=7, labels=labels, eta=1.0)
    )
    # DDPM's noise in each step: not the deterministic DDIM's images.
    assert not np.allclose(grids.images[1], model.sample(4, steps=5, seed=7, labels=labels))


def test_bad_every_is_a_clear_error():
    with pytest.raises(ValueError, match="every must be a positive integer"):
        SampleGrid(every=0)


def test_ema_weights_are_sampled_and_saved(tmp_path):
    optimizer = keras.optimizers.SGD(0.05, use_ema=True, ema_momentum=0.9)
    model, grids = fit_with_grids(
        tmp_path, 3, optimizer, [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]
    )
    # After fit the model holds the EMA weights, which the grids sampled from.
    averages = [ops.convert_to_numpy(v) for v in optimizer._model_variables_moving_average]
    weights = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert len(averages) == len(weights) > 0
    for average, weight in zip(averages, weights):
        np.testing.assert_array_equal(average, weight)
    np.testing.assert_array_equal(grids.images[3], model.sample(4, steps=5, seed=7, labels=[0, 1, 0, 1]))
    model.save(tmp_path / "ema.keras")
    loaded = keras.models.load_model(tmp_path / "ema.keras")
    for restored, weight in zip(loaded.trainable_variables, weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(restored), weight)
    assert loaded.optimizer.use_ema and loaded.optimizer.ema_momentum == pytest.approx(0.9)
