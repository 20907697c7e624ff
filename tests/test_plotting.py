"""Tests for keras_ddpm.plotting: conversions, grids, image files and figures."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure
from PIL import Image

from keras_ddpm import plotting


def _linear_schedule(num_steps=1000, beta_1=1e-4, beta_2=0.02):
    """A DDPM linear schedule, tables indexed by t = 0..num_steps."""
    betas = beta_1 + (beta_2 - beta_1) * np.arange(num_steps + 1) / num_steps
    alphabar = np.cumprod(1.0 - betas)
    return {
        "beta_t": betas,
        "alphabar_t": alphabar,
        "sqrtab": np.sqrt(alphabar),
        "sqrtmab": np.sqrt(1.0 - alphabar),
    }


def _model_space_batch(num_images, size=8, channels=3, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (num_images, size, size, channels))


# --- to_uint8 ----------------------------------------------------------------------------


def test_to_uint8_exact_values():
    values = np.array([-1.0, 0.0, 1.0, 2.0, -3.0, np.nan], dtype=np.float32)
    result = plotting.to_uint8(values)
    assert result.dtype == np.uint8
    assert result.tolist() == [0, 128, 255, 255, 0, 0]


def test_to_uint8_keeps_shape_and_accepts_tensors():
    images = _model_space_batch(2, size=4).astype(np.float32)
    from_numpy = plotting.to_uint8(images)
    from_tensor = plotting.to_uint8(tf.constant(images))
    assert from_numpy.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(from_numpy, from_tensor)
    np.testing.assert_array_equal(from_numpy, np.rint((images + 1) * 127.5))


def test_to_uint8_passes_uint8_through():
    pixels = np.array([0, 7, 255], dtype=np.uint8)
    np.testing.assert_array_equal(plotting.to_uint8(pixels), pixels)


# --- image_grid ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_images, nrow, expected_rows, expected_columns",
    [(16, None, 4, 4), (10, None, 3, 4), (1, None, 1, 1), (6, 3, 2, 3), (5, 5, 1, 5)],
)
def test_image_grid_shape(num_images, nrow, expected_rows, expected_columns):
    grid = plotting.image_grid(_model_space_batch(num_images, size=8), nrow=nrow)
    assert grid.dtype == np.uint8
    assert grid.shape == (expected_rows * 10 + 2, expected_columns * 10 + 2, 3)


def test_image_grid_places_images_and_border():
    images = np.zeros((3, 4, 5, 3), dtype=np.uint8)
    for index in range(3):
        images[index] = 10 * (index + 1)
    grid = plotting.image_grid(images, nrow=2)
    assert grid.shape == (2 * 6 + 2, 2 * 7 + 2, 3)
    assert (grid[2:6, 2:7] == 10).all()
    assert (grid[2:6, 9:14] == 20).all()
    assert (grid[8:12, 2:7] == 30).all()
    assert (grid[8:12, 9:14] == 255).all()  # empty cell
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()
    assert (grid[6:8] == 255).all()


def test_image_grid_converts_model_space_and_supports_grayscale():
    images = np.full((4, 6, 6, 1), -1.0, dtype=np.float32)
    grid = plotting.image_grid(images)
    assert grid.shape == (2 * 8 + 2, 2 * 8 + 2, 1)
    assert (grid[2:8, 2:8] == 0).all()


def test_image_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        plotting.image_grid(np.zeros((0, 4, 4, 3)))
    with pytest.raises(ValueError, match="shape"):
        plotting.image_grid(np.zeros((4, 4)))


# --- files ---------------------------------------------------------------------------------


def test_save_image_grid_writes_readable_png(tmp_path):
    path = tmp_path / "nested" / "folder" / "grid.png"
    images = _model_space_batch(6, size=8)
    returned = plotting.save_image_grid(images, path, nrow=3)
    assert returned == path and path.exists()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (3 * 10 + 2, 2 * 10 + 2)  # (width, height)
        np.testing.assert_array_equal(
            np.asarray(image), plotting.image_grid(images, nrow=3)
        )


def test_save_image_grid_grayscale(tmp_path):
    path = plotting.save_image_grid(np.zeros((4, 8, 8, 1)), tmp_path / "gray.png")
    with Image.open(path) as image:
        assert image.mode == "L"
        assert image.size == (22, 22)


def test_save_gif_frame_count(tmp_path):
    frames = [np.full((4, 8, 8, 3), value) for value in np.linspace(-1, 1, 5)]
    path = plotting.save_gif(frames, tmp_path / "out" / "anim.gif", duration_ms=50)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 5
        assert gif.size == (22, 22)
        assert gif.info["duration"] == 50


def test_save_gif_accepts_grids_and_rejects_mismatched_sizes(tmp_path):
    grids = [plotting.image_grid(_model_space_batch(4, seed=seed)) for seed in range(3)]
    path = plotting.save_gif(grids, tmp_path / "grids.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 3
    with pytest.raises(ValueError, match="same size"):
        plotting.save_gif(
            [_model_space_batch(4), _model_space_batch(9)], tmp_path / "bad.gif"
        )


# --- figures -------------------------------------------------------------------------------


def test_plot_image_grid_returns_figure():
    figure = plotting.plot_image_grid(_model_space_batch(9), title="samples")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 1
    assert figure.axes[0].get_title() == "samples"


def test_plot_frames_sorted_by_t_descending():
    frames = {t: _model_space_batch(3, seed=t) for t in (0, 1000, 500, 250)}
    figure = plotting.plot_frames(frames, index=2)
    assert isinstance(figure, Figure)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["t = 1000", "t = 500", "t = 250", "t = 0"]
    shown = figure.axes[0].images[0].get_array()
    np.testing.assert_array_equal(shown, plotting.to_uint8(frames[1000][2]))


def test_plot_forward_diffusion():
    schedule = _linear_schedule()
    image = _model_space_batch(1, size=8, seed=1)[0]
    figure = plotting.plot_forward_diffusion(image, schedule, ts=(0, 100, 300, 1000))
    assert isinstance(figure, Figure)
    assert [axes.get_title() for axes in figure.axes] == [
        "t = 0", "t = 100", "t = 300", "t = 1000",
    ]
    # t = 0 keeps (almost) the clean image; t = 1000 is (almost) pure noise.
    first = np.asarray(figure.axes[0].images[0].get_array(), dtype=int)
    assert np.abs(first - plotting.to_uint8(image).astype(int)).max() <= 4
    noise = np.random.default_rng(0).standard_normal(image.shape)
    expected_last = schedule["sqrtab"][1000] * image + schedule["sqrtmab"][1000] * noise
    shown_last = figure.axes[-1].images[0].get_array().astype(int)
    assert np.abs(shown_last - plotting.to_uint8(expected_last).astype(int)).max() <= 1


def test_forward_diffusion_plot_noises_as_training_does():
    """The plot's noisy images are q_sample's (sampling.add_noise) for the same draws."""
    from keras_ddpm import DiffusionModel, NaiveUnet

    model = DiffusionModel(NaiveUnet((32, 32, 3), n_feat=8), T=200, schedule="cosine")
    image = _model_space_batch(1, size=32, seed=3)[0]
    ts = (0, 7, 50, 199, 200)
    noise = np.random.default_rng(4).standard_normal(image.shape).astype(np.float32)
    trained_on = keras.ops.convert_to_numpy(model.q_sample(
        np.repeat(image[None], len(ts), axis=0).astype(np.float32),
        keras.ops.convert_to_tensor(np.array(ts, np.int32)),
        np.repeat(noise[None], len(ts), axis=0),
    ))
    plotted = plotting.forward_diffusion_images(image, model.tables, ts, seed=4)
    np.testing.assert_array_equal(plotted, trained_on)
    figure = plotting.plot_forward_diffusion(image, model.tables, ts, seed=4)
    for axes, expected in zip(figure.axes, trained_on):
        np.testing.assert_array_equal(axes.images[0].get_array(), plotting.to_uint8(expected))


def test_plot_forward_diffusion_rejects_timestep_outside_schedule():
    with pytest.raises(ValueError, match="outside the schedule"):
        plotting.plot_forward_diffusion(
            np.zeros((8, 8, 3)), _linear_schedule(num_steps=10), ts=(0, 11)
        )


def test_plot_schedules():
    schedules = {"linear": _linear_schedule(), "short": _linear_schedule(num_steps=100)}
    figure = plotting.plot_schedules(schedules)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 2
    for axes in figure.axes:
        assert len(axes.lines) == 2
    alphabar_line = figure.axes[0].lines[0]
    np.testing.assert_allclose(alphabar_line.get_ydata(), schedules["linear"]["alphabar_t"])


def test_plot_loss_from_dict_and_history():
    figure = plotting.plot_loss({"loss": [0.5, 0.2, 0.1], "val_loss": [0.4, 0.3, 0.2]})
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 1
    assert len(figure.axes[0].lines) == 2

    history = keras.callbacks.History()
    history.history = {"loss": [1.0, 0.5]}
    figure = plotting.plot_loss(history)
    assert len(figure.axes) == 1
    np.testing.assert_array_equal(figure.axes[0].lines[0].get_ydata(), [1.0, 0.5])


def test_plot_loss_needs_loss():
    with pytest.raises(ValueError, match="no 'loss'"):
        plotting.plot_loss({"val_loss": [0.1]})


def test_figures_render_to_png(tmp_path):
    figure = plotting.plot_frames({10: _model_space_batch(1), 0: _model_space_batch(1)})
    path = tmp_path / "frames.png"
    figure.savefig(path)
    with Image.open(path) as image:
        assert image.size[0] > image.size[1]  # frames laid out left to right
