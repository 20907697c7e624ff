"""Datasets for training DDPMs: a procedural "shapes" set, CIFAR-10, cats at 64x64
(both through TensorFlow Datasets) and folders of images, all served by one `tf.data`
loader, `load_dataset`.

The shapes dataset is small and easy on purpose: one upright shape (disc, square or
triangle) in a bright colour on a dark plain background, so that a small U-Net can learn
it on a laptop CPU in a few minutes and its samples are easy to judge by eye.

Images leave `load_dataset` in *model space*: float32 in [-1, 1], the range the
diffusion model is trained on. `to_model_range` is the one conversion from uint8.
"""

import dataclasses
import functools
import os
import socket
import warnings
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


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is not on disk and cannot be downloaded.

    Either `download=False` was asked for, or there is no internet connection. The
    message says where the dataset was looked for and how to copy it there by hand.

    Example:
    >>> try:
    ...     load_dataset("cifar10", data_dir="/tmp/empty", download=False)
    ... except DatasetNotFoundError as error:
    ...     print(error)  # says where it looked and which folder to copy there
    """


# Examples kept in the shuffle buffer: the whole of every built-in training split.
SHUFFLE_BUFFER_SIZE = 10_000

# Seconds to wait for the download host before deciding there is no internet.
CONNECTION_TIMEOUT = 5.0

# Image files read from folders (by extension, any case) and the formats they must hold.
IMAGE_FILE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGE_FILE_FORMATS = ("JPEG", "PNG")

# Default height and width of images read from a folder.
FOLDER_IMAGE_SIZE = 64

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

CATS_CLASSES = ("cat",)

# Label of the cats in TFDS `cats_vs_dogs` (1 is dog).
TFDS_CAT_LABEL = 0


def _center_crop_and_resize(image, image_size):
    """Crops the central square of a uint8 image and resizes it, still uint8.

    Images stay uint8 until after the cache: a quarter of the memory of float32.

    Args:
        image: uint8 tensor (H, W, C) of any height and width.
        image_size: int. Output height and width.

    Returns:
        uint8 tensor (image_size, image_size, C).
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    # Antialiasing matters when shrinking (big photos to 64x64); bilinear weights are
    # convex, so the values stay in [0, 255].
    resized = tf.image.resize(square, (image_size, image_size), antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def _to_image_size(image, image_size):
    """Centre-crops and resizes a uint8 image, unless it already has the size."""
    static_shape = image.shape
    if static_shape[0] == image_size and static_shape[1] == image_size:
        return image
    return _center_crop_and_resize(image, image_size)


def _build_shapes(split, image_size, class_ids, num_examples, data_dir, download):
    """The shapes dataset, generated in memory (`data_dir`, `download` unused).

    `num_examples` images are generated, then filtered by class.
    """
    del data_dir, download  # generated, nothing to read or fetch
    images, labels = make_shapes(
        num_examples, image_size=image_size, seed=SHAPE_SPLIT_SEEDS[split]
    )
    if class_ids is not None:
        keep = np.isin(labels, class_ids)
        images, labels = images[keep], labels[keep]
    return tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))


def _manual_download_hint(tfds_name, data_root):
    """The instructions, for a DatasetNotFoundError, to put a TFDS dataset in place."""
    return (
        f"To get it there, run once on a machine with internet:\n"
        f"    python -c \"import tensorflow_datasets as tfds; "
        f"tfds.load('{tfds_name}', data_dir='data')\"\n"
        f"then copy the folder data/{tfds_name} to {os.path.join(data_root, tfds_name)} "
        f"on this machine (see data/README.md)."
    )


def _check_connection(host, timeout=CONNECTION_TIMEOUT):
    """Raises OSError if a TCP connection to `host` port 443 fails within `timeout` s."""
    with socket.create_connection((host, 443), timeout=timeout):
        pass


def _download_is_mocked(tfds):
    """True inside `tfds.testing.mock_data`, which replaces TFDS' download with a no-op."""
    method = tfds.core.DatasetBuilder.download_and_prepare
    return getattr(method, "__module__", "").startswith("tensorflow_datasets.testing")


def _remove_new_paths(paths_before, candidates):
    """Removes each path of `candidates` that exists now but not in `paths_before`."""
    for path in candidates:
        if path not in paths_before and tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)


def _prepare_tfds(tfds_name, download_host, data_dir, download):
    """Returns the TFDS builder of `tfds_name`, prepared in `data_dir`.

    A prepared dataset is used as it is, without any network access. A missing one
    raises `DatasetNotFoundError` at once when `download` is False or when
    `download_host` cannot be reached (instead of TFDS retrying for minutes and
    leaving a half-written folder); otherwise it is downloaded and prepared. If that
    fails, the folders this call created are removed again.
    """
    import tensorflow_datasets as tfds  # slow to import: only when needed

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    data_root = os.fspath(builder._data_dir_root)
    where = f"Dataset {tfds_name!r} is not in data_dir {data_root}"
    if not download:
        raise DatasetNotFoundError(
            f"{where}, and download=False. {_manual_download_hint(tfds_name, data_root)}"
        )
    if _download_is_mocked(tfds):
        # `tfds.testing.mock_data`: nothing is downloaded, so no connection is needed.
        builder.download_and_prepare()
        return builder
    try:
        _check_connection(download_host)
    except OSError as error:
        raise DatasetNotFoundError(
            f"{where}, and there is no internet connection to download it "
            f"({download_host}: {error}). {_manual_download_hint(tfds_name, data_root)}"
        ) from error

    # Folders TFDS may create while downloading and preparing. When the dataset folder
    # already exists, the new `incomplete.*` folders inside it are removed instead.
    dataset_folder = os.path.join(data_root, tfds_name)
    candidates = [data_root, os.path.join(data_root, "downloads"), dataset_folder]
    paths_before = {path for path in candidates if tf.io.gfile.exists(path)}
    if dataset_folder in paths_before:
        paths_before.update(
            os.path.join(dataset_folder, entry) for entry in tf.io.gfile.listdir(dataset_folder)
        )
    try:
        builder.download_and_prepare()
    except BaseException:
        if tf.io.gfile.exists(dataset_folder):
            candidates = [
                os.path.join(dataset_folder, entry.rstrip("/"))
                for entry in tf.io.gfile.listdir(dataset_folder)
                if "incomplete." in entry
            ] + candidates
        _remove_new_paths(paths_before, reversed(candidates))
        raise
    return builder


def _build_tfds(
    tfds_name,
    download_host,
    tfds_splits,
    label_filter,
    split,
    image_size,
    class_ids,
    num_examples,
    data_dir,
    download,
):
    """A TFDS image classification dataset as (uint8 image, int32 label) pairs.

    Args:
        tfds_name: str. TFDS name of the dataset.
        download_host: str. Host the dataset is downloaded from (connectivity check).
        tfds_splits: dict of our split name to the TFDS split string.
        label_filter: None, or a function of a TFDS label (int64 tensor) returning a
            bool tensor, True for examples that belong to this dataset.
        split, image_size, class_ids, num_examples, data_dir, download: as given to
            the builders of `_DatasetInfo`; `num_examples` counts after filtering.
    """
    builder = _prepare_tfds(tfds_name, download_host, data_dir, download)
    dataset = builder.as_dataset(split=tfds_splits[split], shuffle_files=False)
    if label_filter is not None:
        dataset = dataset.filter(lambda example: label_filter(example["label"]))
    if class_ids is not None:
        wanted = tf.constant(class_ids, dtype=tf.int64)
        dataset = dataset.filter(
            lambda example: tf.reduce_any(tf.equal(example["label"], wanted))
        )
    if num_examples is not None:
        dataset = dataset.take(num_examples)
    return dataset.map(
        lambda example: (
            _to_image_size(example["image"], image_size),
            tf.cast(example["label"], tf.int32),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _is_cat(tfds_label):
    """True for the cats of TFDS `cats_vs_dogs`."""
    return tf.equal(tfds_label, TFDS_CAT_LABEL)


_build_cifar10 = functools.partial(
    _build_tfds,
    "cifar10",
    "www.cs.toronto.edu",
    {"train": "train", "test": "test"},
    None,
)

# cats_vs_dogs has only a train split: the last 5% of it is our test split.
_build_cats64 = functools.partial(
    _build_tfds,
    "cats_vs_dogs",
    "download.microsoft.com",
    {"train": "train[:95%]", "test": "train[95%:]"},
    _is_cat,
)


@dataclasses.dataclass(frozen=True)
class _DatasetInfo:
    """What `load_dataset` needs to know about one named dataset.

    Args:
        builder: callable `(split, image_size, class_ids, num_examples, data_dir,
            download)` returning a `tf.data.Dataset` of `(image, label)`: uint8
            (image_size, image_size, channels) and int32. `class_ids` is
            None (all classes) or a sorted list of label ids to keep.
        class_names: tuple of str. Name of each label id.
        image_size: int. Default height and width.
        channels: int. Number of channels.
        num_examples: dict of split name to the default number of examples, or None
            when the default is all of them.
        cache: bool. Whether to cache the prepared images in memory (pointless for
            data already in memory).
    """

    builder: Callable
    class_names: tuple
    image_size: int
    channels: int
    num_examples: dict = None
    cache: bool = True


_DATASET_INFOS = {
    "shapes": _DatasetInfo(
        builder=_build_shapes,
        class_names=SHAPE_CLASSES,
        image_size=32,
        channels=3,
        num_examples={"train": 8192, "test": 1024},
        cache=False,
    ),
    "cifar10": _DatasetInfo(
        builder=_build_cifar10,
        class_names=CIFAR10_CLASSES,
        image_size=32,
        channels=3,
    ),
    "cats64": _DatasetInfo(
        builder=_build_cats64,
        class_names=CATS_CLASSES,
        image_size=64,
        channels=3,
    ),
}

DATASETS = tuple(_DATASET_INFOS)


def _image_folder_files(folder):
    """Lists the image files of a folder and the class names.

    Images lie either directly in `folder` (one class, named after the folder) or in
    one sub-folder per class (classes are the sorted sub-folder names; images directly
    in `folder` are then ignored). Files that Pillow cannot verify as JPEG or PNG are
    left out with one warning that counts them (each file is decoded once to know).

    Returns:
        `(paths, labels, class_names)`: sorted list of str, list of int, tuple of str.
    """
    from PIL import Image  # only needed for folders

    def image_files(directory):
        return sorted(
            os.path.join(directory, entry)
            for entry in os.listdir(directory)
            if entry.lower().endswith(IMAGE_FILE_EXTENSIONS)
            and os.path.isfile(os.path.join(directory, entry))
        )

    sub_folders = sorted(
        entry for entry in os.listdir(folder) if os.path.isdir(os.path.join(folder, entry))
    )
    if sub_folders:
        class_names = tuple(sub_folders)
        candidates = [
            (path, label)
            for label, sub_folder in enumerate(sub_folders)
            for path in image_files(os.path.join(folder, sub_folder))
        ]
    else:
        class_names = (os.path.basename(os.path.normpath(folder)),)
        candidates = [(path, 0) for path in image_files(folder)]

    paths, labels, num_skipped = [], [], 0
    for path, label in candidates:
        try:
            with Image.open(path) as image:
                image_format = image.format
                # Decode it all (at reduced size for JPEG): `verify()` passes truncated files.
                image.draft("RGB", (image.width // 8 + 1, image.height // 8 + 1))
                image.load()
        except Exception:  # Pillow raises many kinds for broken files
            num_skipped += 1
            continue
        if image_format not in IMAGE_FILE_FORMATS:
            num_skipped += 1
            continue
        paths.append(path)
        labels.append(label)
    if num_skipped:
        warnings.warn(f"Skipped {num_skipped} unreadable image file(s) in {folder}")
    if not paths:
        extensions = ", ".join(IMAGE_FILE_EXTENSIONS)
        raise ValueError(
            f"No readable images ({extensions}) in {folder} or in its sub-folders."
        )
    return paths, labels, class_names


def _decode_image_file(path, image_size):
    """Reads one JPEG or PNG file as uint8 (image_size, image_size, 3)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return _center_crop_and_resize(image, image_size)


def _load_image_folder(folder, image_size, classes, num_examples):
    """Images of a folder as a `tf.data.Dataset` of (uint8 image, int32 label)."""
    paths, labels, class_names = _image_folder_files(folder)
    if classes is not None:
        class_ids = _class_ids(classes, class_names)
        kept = [(path, label) for path, label in zip(paths, labels) if label in class_ids]
        if not kept:
            raise ValueError(f"No readable images of classes {classes!r} in {folder}.")
        paths, labels = zip(*kept)
    if num_examples is not None:
        paths, labels = paths[:num_examples], labels[:num_examples]
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(paths)), tf.constant(list(labels), dtype=tf.int32))
    )
    dataset = dataset.map(
        lambda path, label: (_decode_image_file(path, image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # Every file was decoded once by Pillow; one that TensorFlow still cannot decode is
    # dropped, and the known count then fails the epoch with a clear error instead of
    # training on fewer images unnoticed. The known count also tells Keras the epoch's
    # length (no false "ran out of data" warning).
    return dataset.ignore_errors().apply(tf.data.experimental.assert_cardinality(len(paths)))


def _is_image_folder(name):
    """Whether `name` is not a dataset name but a folder of images."""
    if isinstance(name, str) and name in _DATASET_INFOS:
        return False
    return isinstance(name, (str, os.PathLike)) and os.path.isdir(name)


def _dataset_info(name):
    """Returns the `_DatasetInfo` of `name`, or raises a ValueError naming the choices."""
    if name not in _DATASET_INFOS:
        choices = ", ".join(repr(known) for known in _DATASET_INFOS)
        raise ValueError(
            f"Unknown dataset {name!r}. Choose one of: {choices}, "
            f"or give the path of an existing folder of images."
        )
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


def dataset_class_names(name):
    """Returns the class names of a dataset, indexed by label id.

    Labels keep these ids when `load_dataset(..., classes=...)` keeps only some
    classes, so a class-conditional model needs `len(dataset_class_names(name))`
    classes.

    Args:
        name: str. Dataset name, one of `DATASETS`, or the path of a folder of
            images (one class per sub-folder, or one class for the folder).

    Returns:
        Tuple of str.

    Example:
    >>> dataset_class_names("shapes")
    ('disc', 'square', 'triangle')
    """
    if _is_image_folder(name):
        sub_folders = sorted(
            entry for entry in os.listdir(name) if os.path.isdir(os.path.join(name, entry))
        )
        return tuple(sub_folders) or (os.path.basename(os.path.normpath(name)),)
    return _dataset_info(name).class_names


def dataset_image_shape(name, image_size=None):
    """Returns the `(height, width, channels)` of the images `load_dataset` gives.

    Args:
        name: str. Dataset name, one of `DATASETS`, or the path of a folder of
            images (3 channels, 64x64 by default).
        image_size: int or None. Requested size, a positive multiple of 32, or None
            for the dataset's default.

    Returns:
        Tuple of 3 ints.

    Example:
    >>> dataset_image_shape("shapes")
    (32, 32, 3)
    >>> dataset_image_shape("cats64")
    (64, 64, 3)
    >>> dataset_image_shape("shapes", image_size=64)
    (64, 64, 3)
    """
    if _is_image_folder(name):
        return (_checked_image_size(image_size, FOLDER_IMAGE_SIZE),) * 2 + (3,)
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
    first_epoch=None,
):
    """Loads a dataset as batches of float32 images in model space [-1, 1].

    Datasets: "shapes" (generated, 32x32), "cifar10" (TFDS `cifar10`, 32x32, 10
    classes) and "cats64" (the cats of TFDS `cats_vs_dogs`, centre-cropped to a square
    and resized to 64x64), or the path of a folder of JPEG/PNG images, either all in
    the folder or in one sub-folder per class (labels are the sorted sub-folder
    names); unreadable files are skipped with one warning.

    TFDS datasets are read from `data_dir` when they are there; otherwise they are
    downloaded if `download` is True and the download host answers, else
    `DatasetNotFoundError` is raised at once, saying how to copy them in by hand.

    The images are decoded, cropped and resized in parallel and cached in memory as
    uint8, then shuffled (reshuffled every epoch), converted to [-1, 1], batched and
    prefetched. The last batch
    may be smaller than `batch_size`.

    Args:
        name: str. Dataset name, one of `DATASETS`, or the path of a folder of images.
        split: str. "train" or "test". The shapes test split is generated from a
            different seed than the train split; the cats64 test split is the last 5%
            of TFDS `cats_vs_dogs` (train is the first 95%). Folders have only "train".
        batch_size: int. Images per batch, > 0.
        image_size: int or None. Height and width, a positive multiple of 32; None
            for the dataset's default (32 for "shapes" and "cifar10", 64 for "cats64"
            and folders).
        with_labels: bool. If True, elements are `(images, labels)` with int32 labels.
        classes: None, or a list of class names or ids (e.g. `["ship"]` or `[8]` for
            "cifar10", sub-folder names for a folder) to keep only those classes.
        data_dir: str or None. The TFDS data folder (None: TFDS's default,
            ~/tensorflow_datasets). Unused by "shapes" and folders.
        download: bool. Whether a missing TFDS dataset may be downloaded.
        shuffle: bool. Whether to shuffle the examples.
        seed: int or None. Shuffle seed; the same seed gives the same order of
            batches. Does not change which images a split holds.
        num_examples: int or None. For "shapes": examples to generate, before class
            filtering (default 8192 train, 1024 test). Otherwise: keep only the first
            `num_examples` after class filtering (default all), for quick runs.
        first_epoch: None, or int >= 0. None: a finite dataset, reshuffled on every
            pass. An int: an endless stream of epochs `first_epoch`, `first_epoch + 1`,
            ..., each shuffled by `(seed, epoch)` alone and batched on its own, whose
            `steps_per_epoch` attribute is the number of batches of one epoch; train
            with `fit(stream, steps_per_epoch=stream.steps_per_epoch)`. A run resumed
            after k epochs with `first_epoch=k` then sees exactly the batches of an
            uninterrupted run, whatever iterators Keras makes.

    Returns:
        A `tf.data.Dataset` of float32 image batches (B, H, W, C), or of
        `(images, labels)` tuples when `with_labels` is True.

    Raises:
        DatasetNotFoundError: a TFDS dataset is not in `data_dir` and cannot be
            downloaded.
        ValueError: unknown dataset, split or class, bad sizes, or an image folder
            without readable images.

    Example:
    >>> dataset = load_dataset("shapes", batch_size=16, seed=0)
    >>> images = next(iter(dataset))
    >>> images.shape, images.dtype
    (TensorShape([16, 32, 32, 3]), tf.float32)
    """
    is_folder = _is_image_folder(name)
    info = None if is_folder else _dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Choose one of: {', '.join(SPLITS)}")
    if is_folder and split != "train":
        raise ValueError(f"Image folders have only a 'train' split, got {split!r}.")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    size = _checked_image_size(image_size, FOLDER_IMAGE_SIZE if is_folder else info.image_size)
    if num_examples is None:
        num_examples = None if is_folder or info.num_examples is None else (
            info.num_examples[split]
        )
    elif num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}.")
    if first_epoch is not None and (
        isinstance(first_epoch, bool) or not isinstance(first_epoch, int) or first_epoch < 0
    ):
        raise ValueError(f"first_epoch must be None or an integer >= 0, got {first_epoch!r}.")

    if is_folder:
        dataset = _load_image_folder(os.fspath(name), size, classes, num_examples).cache()
    else:
        class_ids = None if classes is None else _class_ids(classes, info.class_names)
        dataset = info.builder(split, size, class_ids, num_examples, data_dir, download)
        if info.cache:
            dataset = dataset.cache()
    if first_epoch is not None:
        return _epoch_stream(dataset, batch_size, with_labels, shuffle, seed, first_epoch)
    if shuffle:
        dataset = dataset.shuffle(
            SHUFFLE_BUFFER_SIZE, seed=seed, reshuffle_each_iteration=True
        )
    dataset = _to_model_range_batches(dataset, batch_size, with_labels)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _to_model_range_batches(dataset, batch_size, with_labels):
    """(uint8 image, label) examples -> batches of [-1, 1] images (with labels if asked)."""
    if with_labels:
        dataset = dataset.map(
            lambda image, label: (to_model_range(image), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = dataset.map(
            lambda image, label: to_model_range(image), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.batch(batch_size, drop_remainder=False)


def _epoch_stream(examples, batch_size, with_labels, shuffle, seed, first_epoch):
    """Endless batches of epochs first_epoch, first_epoch + 1, ...; see `load_dataset`."""
    count = int(examples.cardinality())
    if count < 0:  # Unknown after filtering: one pass counts (and fills the cache).
        count = int(examples.reduce(0, lambda total, _: total + 1))
    if count == 0:
        raise ValueError("The dataset holds no images (after class filtering): nothing to train on.")
    base_seed = 0 if seed is None else int(seed)

    def epoch_batches(epoch):
        # The order of an epoch is a stateless function of (seed, epoch) alone, not of
        # any iterator: the whole (cached) epoch is permuted in one step.
        epoch_examples = examples
        if shuffle:
            order_seed = tf.stack([tf.constant(base_seed, tf.int64), epoch])

            def permute(images, labels):
                order = tf.random.experimental.stateless_shuffle(tf.range(count), order_seed)
                return tf.gather(images, order), tf.gather(labels, order)

            epoch_examples = examples.batch(count).map(permute).unbatch()
        return _to_model_range_batches(epoch_examples, batch_size, with_labels)

    stream = tf.data.Dataset.counter(first_epoch).flat_map(epoch_batches)
    stream = stream.prefetch(tf.data.AUTOTUNE)
    stream.steps_per_epoch = -(-count // batch_size)
    return stream
