"""Datasets for training DDPMs: a procedural "shapes" set and a `tf.data` loader.

The shapes dataset is small and easy on purpose: one upright shape (disc, square or
triangle) in a bright colour on a dark plain background, so that a small U-Net can learn
it on a laptop CPU in a few minutes and its samples are easy to judge by eye.

Images leave `load_dataset` in *model space*: float32 in [-1, 1], the range the
diffusion model is trained on. `to_model_range` is the one conversion from uint8.
"""

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

SHAPE_CLASSES = ("disc", "square", "triangle")

# Plain dark backgrounds (RGB). Few colours on purpose: a small U-Net should learn
# the shapes on 2 CPU cores within minutes, so the variety is in shape, size,
# position and colour of the shape, not in the background.
SHAPE_BACKGROUND_COLORS = np.array(
    [
        [22, 26, 40],  # midnight blue
        [44, 44, 48],  # charcoal
    ],
    dtype=np.float32,
)

# Bright, saturated shape colours, all far from every background colour (RGB).
SHAPE_FOREGROUND_COLORS = np.array(
    [
        [235, 60, 60],  # red
        [245, 225, 50],  # yellow
        [50, 190, 240],  # sky blue
        [225, 80, 215],  # magenta
    ],
    dtype=np.float32,
)

# Shape size (disc diameter, square side, triangle base and height) as a fraction of
# the image width, and the largest shift of the shape's centre from the image centre.
SHAPE_MIN_SIZE = 0.45
SHAPE_MAX_SIZE = 0.70
SHAPE_MAX_CENTER_SHIFT = 0.08

# Shapes are drawn at this many times the output resolution, then box-averaged down.
SHAPE_SUPERSAMPLING = 4

# Images rendered per chunk, to bound the memory of the supersampled masks.
SHAPE_RENDER_CHUNK = 1024

# Seeds of the shapes splits: fixed, so "train" and "test" are each the same every run.
SHAPE_SPLIT_SEEDS = {"train": 20_200_611, "test": 20_200_612}

SPLITS = ("train", "test")

# All image sizes must be multiples of this (the U-Net downsamples by powers of two).
IMAGE_SIZE_MULTIPLE = 32


def to_model_range(images):
    """Converts uint8 images in [0, 255] to float32 model space [-1, 1].

    Computes `images / 127.5 - 1`, so 0 maps to -1 and 255 maps to 1. NumPy input
    (arrays, lists) gives a NumPy array; anything else (a `tf.Tensor`, including the
    symbolic tensors inside `tf.data.Dataset.map`) gives a `tf.Tensor`.

    Args:
        images: uint8 array or tensor of any shape, values in [0, 255].

    Returns:
        float32 array or tensor of the same shape, values in [-1, 1].

    Example:
    >>> to_model_range(np.array([0, 255], dtype=np.uint8))
    array([-1.,  1.], dtype=float32)
    """
    if isinstance(images, (np.ndarray, np.generic, list, tuple)):
        return np.asarray(images, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def _shape_coverage(labels, sizes, centers, image_size):
    """Anti-aliased coverage in [0, 1] of each image's shape, shape (N, H, W).

    Each shape is drawn as a boolean mask at `SHAPE_SUPERSAMPLING` times the output
    resolution, and the mask is box-averaged down to `image_size`.

    Args:
        labels: int array (N,). Index into `SHAPE_CLASSES`.
        sizes: float array (N,). Shape size in output pixels.
        centers: float array (N, 2). Shape centre (x, y) in output pixels.
        image_size: int. Output height and width.
    """
    num_images = len(labels)
    factor = SHAPE_SUPERSAMPLING
    fine_size = image_size * factor
    # Centres of the fine pixels, in output-pixel units.
    fine_positions = (np.arange(fine_size, dtype=np.float32) + 0.5) / factor
    half_sizes = (sizes / 2.0).astype(np.float32)
    # Offsets from the shape centre in units of the half size: the shape's bounding
    # box is [-1, 1] x [-1, 1]. Shapes (N, 1, S) for x and (N, S, 1) for y.
    offsets_x = (fine_positions[None, :] - centers[:, 0:1]) / half_sizes[:, None]
    offsets_y = (fine_positions[None, :] - centers[:, 1:2]) / half_sizes[:, None]
    offsets_x = offsets_x[:, None, :]
    offsets_y = offsets_y[:, :, None]

    coverage = np.empty((num_images, image_size, image_size), dtype=np.float32)
    for class_id, class_name in enumerate(SHAPE_CLASSES):
        chosen = labels == class_id
        if not np.any(chosen):
            continue
        dx, dy = offsets_x[chosen], offsets_y[chosen]
        if class_name == "disc":
            masks = dx * dx + dy * dy <= 1.0
        elif class_name == "square":
            masks = (np.abs(dx) <= 1.0) & (np.abs(dy) <= 1.0)
        else:  # upright isosceles triangle: apex at dy = -1, base on dy = 1
            half_width_at_row = (dy + 1.0) / 2.0
            masks = (np.abs(dx) <= half_width_at_row) & (dy <= 1.0)
        # Box-average factor x factor blocks of fine pixels into one output pixel
        # (factor**2 strided adds are much faster than one sum over two axes).
        fine_pixels = masks.view(np.uint8).reshape(-1, image_size, factor, image_size, factor)
        counts = np.zeros(fine_pixels.shape[:2] + fine_pixels.shape[3:4], dtype=np.uint8)
        for row_offset in range(factor):
            for column_offset in range(factor):
                counts += fine_pixels[:, :, row_offset, :, column_offset]
        coverage[chosen] = counts.astype(np.float32) / np.float32(factor * factor)
    return coverage


def make_shapes(num_examples, image_size=32, seed=0):
    """Procedurally generates images of one coloured shape on a plain background.

    Each image holds a single disc, square (axis-aligned) or triangle (upright
    isosceles) of size 45-70% of the image width, its centre shifted a few pixels from
    the image centre, in one of 6 bright colours on one of 4 dark background colours.
    Edges are anti-aliased (drawn at 4x resolution, then box-averaged). Labels are
    exactly balanced up to one example and come in random order. The same `seed`
    always gives the same images.

    Args:
        num_examples: int. Number of images to generate.
        image_size: int. Height and width of the images in pixels.
        seed: int or None. Seed of the NumPy random generator; None gives fresh images.

    Returns:
        A tuple `(images, labels)`: uint8 array (N, image_size, image_size, 3) and
        int32 array (N,) of indices into `SHAPE_CLASSES`.

    Example:
    >>> images, labels = make_shapes(6, image_size=32, seed=0)
    >>> images.shape, images.dtype, labels.shape
    ((6, 32, 32, 3), dtype('uint8'), (6,))
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}.")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}.")
    rng = np.random.default_rng(seed)
    num_classes = len(SHAPE_CLASSES)
    labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
    sizes = rng.uniform(SHAPE_MIN_SIZE, SHAPE_MAX_SIZE, num_examples) * image_size
    max_shift = SHAPE_MAX_CENTER_SHIFT * image_size
    centers = image_size / 2.0 + rng.uniform(-max_shift, max_shift, (num_examples, 2))
    background_ids = rng.integers(0, len(SHAPE_BACKGROUND_COLORS), num_examples)
    foreground_ids = rng.integers(0, len(SHAPE_FOREGROUND_COLORS), num_examples)

    images = np.empty((num_examples, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, num_examples, SHAPE_RENDER_CHUNK):
        chunk = slice(start, start + SHAPE_RENDER_CHUNK)
        coverage = _shape_coverage(
            labels[chunk], sizes[chunk], centers[chunk].astype(np.float32), image_size
        )[..., None]
        background = SHAPE_BACKGROUND_COLORS[background_ids[chunk]][:, None, None, :]
        foreground = SHAPE_FOREGROUND_COLORS[foreground_ids[chunk]][:, None, None, :]
        blended = background + coverage * (foreground - background)
        images[chunk] = np.rint(blended).astype(np.uint8)
    return images, labels


def _build_shapes(split, image_size, num_examples, data_dir, download):
    """Builds a split of the shapes dataset in memory (`data_dir`, `download` unused)."""
    del data_dir, download  # generated, nothing to read or fetch
    return make_shapes(num_examples, image_size=image_size, seed=SHAPE_SPLIT_SEEDS[split])


@dataclasses.dataclass(frozen=True)
class _DatasetInfo:
    """What `load_dataset` needs to know about one named dataset.

    Args:
        builder: callable `(split, image_size, num_examples, data_dir, download)`
            returning `(uint8 images (N, H, W, C), int32 labels (N,))`.
        class_names: tuple of str. Name of each label id.
        image_size: int. Default height and width.
        channels: int. Number of channels.
        num_examples: dict of split name to the default number of examples, or None
            for datasets of fixed size.
    """

    builder: Callable
    class_names: tuple
    image_size: int
    channels: int
    num_examples: dict


_DATASET_INFOS = {
    "shapes": _DatasetInfo(
        builder=_build_shapes,
        class_names=SHAPE_CLASSES,
        image_size=32,
        channels=3,
        num_examples={"train": 8192, "test": 1024},
    ),
}

DATASETS = tuple(_DATASET_INFOS)


def _dataset_info(name):
    """Returns the `_DatasetInfo` of `name`, or raises a ValueError naming the choices."""
    if name not in _DATASET_INFOS:
        choices = ", ".join(repr(known) for known in _DATASET_INFOS)
        raise ValueError(f"Unknown dataset {name!r}. Choose one of: {choices}")
    return _DATASET_INFOS[name]


def _checked_image_size(image_size, default):
    """Returns `image_size` (or `default` when None) after checking it is valid."""
    if image_size is None:
        return default
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size <= 0
        or image_size % IMAGE_SIZE_MULTIPLE != 0
    ):
        raise ValueError(
            f"image_size must be a positive multiple of {IMAGE_SIZE_MULTIPLE}, "
            f"got {image_size!r}."
        )
    return int(image_size)


def _class_ids(classes, class_names):
    """Converts a list of class names or ids to a sorted list of unique int ids."""
    if isinstance(classes, (str, int, np.integer)):
        classes = [classes]
    class_ids = set()
    for class_ref in classes:
        if isinstance(class_ref, str) and class_ref in class_names:
            class_ids.add(class_names.index(class_ref))
        elif (
            isinstance(class_ref, (int, np.integer))
            and not isinstance(class_ref, bool)
            and 0 <= class_ref < len(class_names)
        ):
            class_ids.add(int(class_ref))
        else:
            valid = ", ".join(
                f"{class_id} {class_name!r}" for class_id, class_name in enumerate(class_names)
            )
            raise ValueError(f"Unknown class {class_ref!r}. Valid classes (id name): {valid}")
    if not class_ids:
        raise ValueError("classes must name at least one class.")
    return sorted(class_ids)


def dataset_image_shape(name, image_size=None):
    """Returns the `(height, width, channels)` of the images `load_dataset` gives.

    Args:
        name: str. Dataset name, one of `DATASETS`.
        image_size: int or None. Requested size, a positive multiple of 32, or None
            for the dataset's default.

    Returns:
        Tuple of 3 ints.

    Example:
    >>> dataset_image_shape("shapes")
    (32, 32, 3)
    >>> dataset_image_shape("shapes", image_size=64)
    (64, 64, 3)
    """
    info = _dataset_info(name)
    size = _checked_image_size(image_size, info.image_size)
    return (size, size, info.channels)


def load_dataset(
    name,
    *,
    split="train",
    batch_size=64,
    image_size=None,
    with_labels=False,
    classes=None,
    data_dir=None,
    download=True,
    shuffle=True,
    seed=None,
    num_examples=None,
):
    """Loads a dataset as batches of float32 images in model space [-1, 1].

    The dataset is built in memory once, then served by a `tf.data` pipeline:
    shuffle (reshuffled every epoch), convert to [-1, 1], batch, prefetch. The last
    batch may be smaller than `batch_size`.

    Args:
        name: str. Dataset name, one of `DATASETS` (for now only "shapes").
        split: str. "train" or "test". The shapes test split is generated from a
            different seed than the train split.
        batch_size: int. Images per batch, > 0.
        image_size: int or None. Height and width, a positive multiple of 32; None
            for the dataset's default (32 for "shapes").
        with_labels: bool. If True, elements are `(images, labels)` with int32 labels.
        classes: None, or a list of class names or ids (e.g. `["disc"]` or `[0]`) to
            keep only those classes.
        data_dir: str or None. Where downloaded datasets are stored (unused by
            "shapes").
        download: bool. Whether a missing dataset may be downloaded (unused by
            "shapes").
        shuffle: bool. Whether to shuffle the examples.
        seed: int or None. Shuffle seed; the same seed gives the same order of
            batches. Does not change which images a split holds.
        num_examples: int or None. Examples to build, before class filtering; None
            for the default (for "shapes": 8192 train, 1024 test).

    Returns:
        A `tf.data.Dataset` of float32 image batches (B, H, W, C), or of
        `(images, labels)` tuples when `with_labels` is True.

    Example:
    >>> dataset = load_dataset("shapes", batch_size=16, seed=0)
    >>> images = next(iter(dataset))
    >>> images.shape, images.dtype
    (TensorShape([16, 32, 32, 3]), tf.float32)
    """
    info = _dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Choose one of: {', '.join(SPLITS)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    size = _checked_image_size(image_size, info.image_size)
    if num_examples is None:
        num_examples = info.num_examples[split]
    elif num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}.")

    images, labels = info.builder(split, size, num_examples, data_dir, download)
    if classes is not None:
        keep = np.isin(labels, _class_ids(classes, info.class_names))
        images, labels = images[keep], labels[keep]

    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if with_labels:
        dataset = dataset.map(
            lambda image, label: (to_model_range(image), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = dataset.map(
            lambda image, label: to_model_range(image),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = dataset.batch(batch_size, drop_remainder=False)
    return dataset.prefetch(tf.data.AUTOTUNE)
