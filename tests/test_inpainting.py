"""Inpainting (RePaint): known pixels kept bit for bit, the rest generated in context."""
import numpy as np
import pytest

from helpers import analytic_model, tiny_network, two_colour_data
from keras_ddpm import DiffusionModel

SHAPE = (32, 32, 3)


def tiny_model():
    """The mask handling is the property, not the network: `tiny_network`'s sampling
    loops trace in a fraction of NaiveUnet's time."""
    return DiffusionModel(tiny_network(SHAPE), T=20, seed=0)


def centre_mask():
    mask = np.ones((32, 32))
    mask[8:24, 8:24] = 0
    return mask


@pytest.mark.parametrize("steps,resample", [(None, 1), (5, 3)])
def test_known_pixels_are_kept_bit_exactly(steps, resample):
    images = np.random.default_rng(0).uniform(-1, 1, (3,) + SHAPE).astype("float32")
    mask = centre_mask()
    out = tiny_model().inpaint(images, mask, steps=steps, seed=1, resample=resample)
    assert out.shape == images.shape and out.dtype == np.float32
    keep = np.broadcast_to(mask[None, :, :, None] == 1, images.shape)
    np.testing.assert_array_equal(out[keep], images[keep])
    # The hole was regenerated (0.79-1.41 with tiny_network, 3 seeds of its weights).
    assert np.abs(out[~keep] - images[~keep]).mean() > 0.1


def test_mask_shapes_and_extremes():
    model = tiny_model()
    images = np.random.default_rng(1).uniform(-1, 1, (2,) + SHAPE).astype("float32")
    per_image = np.broadcast_to(centre_mask()[None, :, :, None], (2, 32, 32, 1)).copy()
    np.testing.assert_array_equal(
        model.inpaint(images, per_image, steps=4, seed=2),
        model.inpaint(images, centre_mask().astype(bool), steps=4, seed=2),
    )
    # Nothing to generate: the input comes back; everything to generate: plain sampling.
    np.testing.assert_array_equal(model.inpaint(images, np.ones(SHAPE), steps=4, seed=2), images)
    np.testing.assert_array_equal(
        model.inpaint(images, np.zeros((32, 32)), steps=4, seed=2),
        model.sample(2, steps=4, seed=2),
    )


def test_bad_inpainting_arguments():
    model = tiny_model()
    images = np.zeros((2,) + SHAPE, "float32")
    with pytest.raises(ValueError, match="does not fit images"):
        model.inpaint(images, np.ones((16, 16)))
    with pytest.raises(ValueError, match="only 0 .generate. and 1 .keep."):
        model.inpaint(images, np.full((32, 32), 0.5))
    with pytest.raises(ValueError, match=r"images must have shape \(n, 32, 32, 3\)"):
        model.inpaint(np.zeros((2, 64, 64, 3)), np.ones((64, 64)))
    with pytest.raises(ValueError, match="resample must be an integer >= 1"):
        model.inpaint(images, centre_mask(), resample=0)


@pytest.mark.parametrize("steps,resample", [(None, 1), (10, 1), (25, 2)])
def test_the_hole_takes_the_colour_of_its_surroundings(steps, resample):
    """With the exact denoiser of "flat dark or flat light" data, a hole is filled to match.

    The network is the analytic posterior-mean denoiser of the two-point data
    (no training, so no CPU-dependent verdict): only the known pixels can tell
    the colour, and RePaint must carry it into the hole, exactly.
    """
    model = analytic_model([-0.8, 0.8], [0.0, 0.0], SHAPE, T=50)
    images, labels = two_colour_data(8, seed=4)
    hole = centre_mask() == 0
    out = model.inpaint(images, centre_mask(), steps=steps, seed=3, resample=resample)
    filled = out[:, hole]
    expected = np.where(labels == 1, 0.8, -0.8)[:, None, None]
    np.testing.assert_allclose(filled, np.broadcast_to(expected, filled.shape), atol=1e-3)
