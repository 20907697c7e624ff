"""Plots and image files for DDPM data, schedules, training and samples.

Every function takes images in *model space* (float in [-1, 1], NumPy or any tensor)
or already-converted uint8 images. Figures are built with matplotlib's object-oriented
`Figure` API, so no display or pyplot backend is needed: show one in a notebook by
leaving it as the cell's value, or save it with `figure.savefig(path)`.
"""

import math
import pathlib

import keras
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

# Width in pixels of the border between and around the images of a grid, and its value.
GRID_PADDING = 2
GRID_PAD_VALUE = 255

# Size in inches of one image panel in multi-panel figures.
PANEL_INCHES = 2.0


def _to_numpy(values):
    """Converts a NumPy array, list or backend tensor to a NumPy array."""
    if isinstance(values, np.ndarray):
        return values
    return np.asarray(keras.ops.convert_to_numpy(values))


def to_uint8(images):
    """Converts model-space images in [-1, 1] to uint8 images in [0, 255].

    Computes `round((clip(x, -1, 1) + 1) * 127.5)`, rounding half to even, so -1 maps
    to 0, 0 to 128 and 1 to 255. NaN maps to 0. uint8 input is returned unchanged.

    Args:
        images: float array or tensor of any shape (usually (N, H, W, C) or
            (H, W, C)), in model space.

    Returns:
        uint8 NumPy array of the same shape.

    Example:
    >>> to_uint8(np.array([-1.0, 0.0, 1.0, 2.0]))
    array([  0, 128, 255, 255], dtype=uint8)
    """
    images = _to_numpy(images)
    if images.dtype == np.uint8:
        return images
    images = np.nan_to_num(images.astype(np.float32), nan=-1.0)
    images = np.clip(images, -1.0, 1.0)
    return np.rint((images + 1.0) * 127.5).astype(np.uint8)


def image_grid(images, nrow=None, padding=GRID_PADDING, pad_value=GRID_PAD_VALUE):
    """Tiles a batch of images into one image, with a border around each.

    Args:
        images: array or tensor (N, H, W, C), in model space [-1, 1] or uint8. A
            single image (H, W, C) is treated as a batch of one.
        nrow: int or None. Images per row; None for `ceil(sqrt(N))`.
        padding: int. Border width in pixels, between and around the images.
        pad_value: int. Border value, 0 (black) to 255 (white).

    Returns:
        uint8 array `(rows * (H + padding) + padding, nrow * (W + padding) + padding,
        C)` where `rows = ceil(N / nrow)`. Unused cells are filled with `pad_value`.

    Example:
    >>> images = np.zeros((6, 32, 32, 3), dtype=np.float32)
    >>> image_grid(images, nrow=3).shape
    (70, 104, 3)
    """
    images = to_uint8(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(
            f"images must have shape (N, H, W, C) or (H, W, C), got {images.shape}."
        )
    num_images, height, width, channels = images.shape
    if num_images == 0:
        raise ValueError("images must hold at least one image.")
    if nrow is None:
        nrow = math.ceil(math.sqrt(num_images))
    if nrow <= 0:
        raise ValueError(f"nrow must be positive, got {nrow}.")
    num_rows = math.ceil(num_images / nrow)
    grid = np.full(
        (
            num_rows * (height + padding) + padding,
            nrow * (width + padding) + padding,
            channels,
        ),
        pad_value,
        dtype=np.uint8,
    )
    for image_index, image in enumerate(images):
        row, column = divmod(image_index, nrow)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def _to_pil(image):
    """Converts a uint8 (H, W, C) array with C in {1, 3, 4} to a Pillow image."""
    if image.shape[-1] == 1:
        image = image[..., 0]
    return Image.fromarray(image)


def save_image_grid(images, path, nrow=None):
    """Writes a batch of images as one PNG grid, creating parent folders.

    Args:
        images: array or tensor (N, H, W, C), model space [-1, 1] or uint8.
        path: str or path-like. Where to write the PNG.
        nrow: int or None. Images per row; None for `ceil(sqrt(N))`.

    Returns:
        `pathlib.Path` of the written file.

    Example:
    >>> images = np.zeros((4, 32, 32, 3), dtype=np.float32)
    >>> save_image_grid(images, "/tmp/grid.png")
    PosixPath('/tmp/grid.png')
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(image_grid(images, nrow=nrow)).save(path, format="PNG")
    return path


def _show_image(axes, image):
    """Draws one uint8 (H, W, C) image on `axes`, without ticks or frame."""
    if image.shape[-1] == 1:
        axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        axes.imshow(image, interpolation="nearest")
    axes.set_axis_off()


def plot_image_grid(images, nrow=None, title=None):
    """Plots a batch of images as one grid.

    Args:
        images: array or tensor (N, H, W, C), model space [-1, 1] or uint8.
        nrow: int or None. Images per row; None for `ceil(sqrt(N))`.
        title: str or None. Figure title.

    Returns:
        `matplotlib.figure.Figure` with one axes.

    Example:
    >>> images = np.zeros((16, 32, 32, 3), dtype=np.float32)
    >>> figure = plot_image_grid(images, title="samples")
    >>> figure.savefig("/tmp/samples.png")
    """
    grid = image_grid(images, nrow=nrow)
    figure = Figure(figsize=(6, 6 * grid.shape[0] / grid.shape[1]))
    axes = figure.add_subplot()
    _show_image(axes, grid)
    if title is not None:
        axes.set_title(title)
    figure.tight_layout()
    return figure


def plot_frames(frames, index=0):
    """Plots one image of each saved step of the reverse process, left to right.

    Args:
        frames: dict of timestep t (int) to a batch of images (N, H, W, C), model
            space [-1, 1] or uint8. Shown with t descending, so noise comes first.
            The frames of `DiffusionModel.sample` say in `frames.sampled` at
            which timestep each was actually recorded: the titles show that one.
        index: int. Which image of each batch to show.

    Returns:
        `matplotlib.figure.Figure` with one axes per frame, titled "t = 1000" etc.

    Example:
    >>> frames = {1000: np.random.randn(4, 32, 32, 3), 0: np.zeros((4, 32, 32, 3))}
    >>> figure = plot_frames(frames, index=2)
    """
    if not frames:
        raise ValueError("frames must hold at least one frame.")
    timesteps = sorted(frames, reverse=True)
    figure = Figure(figsize=(PANEL_INCHES * len(timesteps), PANEL_INCHES + 0.4))
    all_axes = figure.subplots(1, len(timesteps), squeeze=False)[0]
    sampled = getattr(frames, "sampled", {})
    for axes, timestep in zip(all_axes, timesteps):
        _show_image(axes, to_uint8(frames[timestep])[index])
        axes.set_title(f"t = {sampled.get(timestep, timestep)}")
    figure.tight_layout()
    return figure


def forward_diffusion_images(image, schedule, ts=(0, 100, 300, 1000), seed=0):
    """One image noised by the forward process at a few timesteps, with the same noise.

    `x_t = sqrtab[t] * x_0 + sqrtmab[t] * eps` computed by
    `keras_ddpm.sampling.add_noise`, the formula training (`q_sample`) and
    RePaint use, with one draw `eps` (NumPy's `default_rng(seed)`) for every t.

    Args:
        image: array or tensor (H, W, C), model space [-1, 1].
        schedule: dict with keys "sqrtab" (sqrt of alpha-bar) and "sqrtmab" (sqrt of
            1 - alpha-bar), arrays indexed by timestep t.
        ts: sequence of int. Timesteps.
        seed: int. Seed of the Gaussian noise.

    Returns:
        A float32 NumPy array `(len(ts), H, W, C)`.

    Example:
    >>> from keras_ddpm import ddpm_schedule
    >>> forward_diffusion_images(np.zeros((8, 8, 3)), ddpm_schedule(T=100), ts=(0, 100)).shape
    (2, 8, 8, 3)
    """
    from keras_ddpm.sampling import add_noise

    clean_image = _to_numpy(image).astype(np.float32)
    if clean_image.ndim != 3:
        raise ValueError(f"image must have shape (H, W, C), got {clean_image.shape}.")
    num_timesteps = len(_to_numpy(schedule["sqrtab"]))
    for timestep in ts:
        if not 0 <= timestep < num_timesteps:
            raise ValueError(
                f"Timestep {timestep} is outside the schedule (0 to {num_timesteps - 1})."
            )
    noise = np.random.default_rng(seed).standard_normal(clean_image.shape).astype(np.float32)
    count = len(ts)
    noisy = add_noise(
        np.repeat(clean_image[None], count, axis=0), np.asarray(ts, np.int32),
        np.repeat(noise[None], count, axis=0), schedule,
    )
    return _to_numpy(noisy).astype(np.float32)


def plot_forward_diffusion(image, schedule, ts=(0, 100, 300, 1000), seed=0):
    """Plots one image noised by the forward process at a few timesteps.

    Shows `x_t = sqrtab[t] * x_0 + sqrtmab[t] * eps` (eq. (4) of Ho et al. 2020, in
    its reparameterised form), with the same noise `eps` for every t: the images
    of `forward_diffusion_images`, noised as in training.

    Args:
        image: array or tensor (H, W, C), model space [-1, 1].
        schedule: dict with keys "sqrtab" (sqrt of alpha-bar) and "sqrtmab" (sqrt of
            1 - alpha-bar), arrays indexed by timestep t.
        ts: sequence of int. Timesteps to show, left to right.
        seed: int. Seed of the Gaussian noise.

    Returns:
        `matplotlib.figure.Figure` with one axes per timestep.

    Example:
    >>> betas = np.linspace(1e-4, 0.02, 1001)
    >>> alphabar = np.cumprod(1 - betas)
    >>> schedule = {"sqrtab": np.sqrt(alphabar), "sqrtmab": np.sqrt(1 - alphabar)}
    >>> figure = plot_forward_diffusion(np.zeros((32, 32, 3)), schedule)
    """
    noisy_images = forward_diffusion_images(image, schedule, ts, seed)
    figure = Figure(figsize=(PANEL_INCHES * len(ts), PANEL_INCHES + 0.4))
    all_axes = figure.subplots(1, len(ts), squeeze=False)[0]
    for axes, timestep, noisy_image in zip(all_axes, ts, noisy_images):
        _show_image(axes, to_uint8(noisy_image))
        axes.set_title(f"t = {timestep}")
    figure.tight_layout()
    return figure


def plot_schedules(schedules):
    """Plots alpha-bar_t and beta_t against t for one or more noise schedules.

    Args:
        schedules: dict of schedule name to a schedule dict with keys "alphabar_t"
            and "beta_t" (arrays indexed by timestep t).

    Returns:
        `matplotlib.figure.Figure` with two axes: alpha-bar_t, then beta_t.

    Example:
    >>> betas = np.linspace(1e-4, 0.02, 1001)
    >>> linear = {"beta_t": betas, "alphabar_t": np.cumprod(1 - betas)}
    >>> figure = plot_schedules({"linear": linear})
    """
    if not schedules:
        raise ValueError("schedules must hold at least one schedule.")
    figure = Figure(figsize=(10, 3.8))
    alphabar_axes, beta_axes = figure.subplots(1, 2)
    for name, schedule in schedules.items():
        alphabar = _to_numpy(schedule["alphabar_t"])
        betas = _to_numpy(schedule["beta_t"])
        alphabar_axes.plot(np.arange(len(alphabar)), alphabar, label=name)
        beta_axes.plot(np.arange(len(betas)), betas, label=name)
    alphabar_axes.set_title(r"$\bar\alpha_t$ (signal kept)")
    beta_axes.set_title(r"$\beta_t$ (noise added per step)")
    for axes in (alphabar_axes, beta_axes):
        axes.set_xlabel("t")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    return figure


def plot_loss(history):
    """Plots the training (and validation) loss per epoch.

    The y axis is logarithmic when every value is positive.

    Args:
        history: `keras.callbacks.History` (as returned by `model.fit`), or a dict
            with a "loss" list and optionally a "val_loss" list.

    Returns:
        `matplotlib.figure.Figure` with one axes.

    Example:
    >>> figure = plot_loss({"loss": [0.3, 0.1, 0.07], "val_loss": [0.2, 0.1, 0.08]})
    """
    values_by_name = getattr(history, "history", history)
    if "loss" not in values_by_name:
        raise ValueError(f"history has no 'loss', only: {sorted(values_by_name)}")
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    all_positive = True
    for name, label in (("loss", "training"), ("val_loss", "validation")):
        if name not in values_by_name:
            continue
        values = np.asarray(values_by_name[name], dtype=np.float64)
        epochs = np.arange(1, len(values) + 1)
        axes.plot(epochs, values, marker="o" if len(values) < 30 else None, label=label)
        all_positive = all_positive and bool(np.all(values > 0))
    if all_positive:
        axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def save_gif(frames_list, path, duration_ms=80):
    """Writes an animated GIF, one frame per element of `frames_list`, looping.

    Pillow merges identical consecutive frames into one that is shown for their
    combined duration, so the file may hold fewer frames than `frames_list`.

    Args:
        frames_list: sequence of images, each either a batch (N, H, W, C), tiled
            with `image_grid`, or one image or grid (H, W, C); model space [-1, 1]
            or uint8. All frames must end up the same size.
        path: str or path-like. Where to write the GIF; parent folders are created.
        duration_ms: int. How long each frame is shown, in milliseconds.

    Returns:
        `pathlib.Path` of the written file.

    Example:
    >>> frames = [np.full((4, 32, 32, 3), value) for value in (-1.0, 0.0, 1.0)]
    >>> save_gif(frames, "/tmp/denoising.gif")
    PosixPath('/tmp/denoising.gif')
    """
    if len(frames_list) == 0:
        raise ValueError("frames_list must hold at least one frame.")
    pictures = []
    for frame in frames_list:
        frame = to_uint8(frame)
        if frame.ndim == 4:
            frame = image_grid(frame)
        if frame.ndim != 3:
            raise ValueError(
                f"Each frame must have shape (N, H, W, C) or (H, W, C), got {frame.shape}."
            )
        if pictures and frame.shape[:2] != pictures[0].size[::-1]:
            raise ValueError(
                f"All frames must be the same size: got {frame.shape[:2]} after "
                f"{pictures[0].size[::-1]}."
            )
        pictures.append(_to_pil(frame))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=duration_ms,
        loop=0,
    )
    return path
