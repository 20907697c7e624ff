"""Tests for the real datasets of keras_ddpm.data: TFDS (mocked, offline) and folders."""

import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from helpers import all_batches
from keras_ddpm import data

# Mocked TFDS datasets hold this many random examples per split.
NUM_MOCK_EXAMPLES = 40


@pytest.fixture
def online(monkeypatch):
    """Pretends the download host answers (TFDS downloads are mocked anyway)."""
    monkeypatch.setattr(data, "_check_connection", lambda host, timeout=None: None)


@pytest.fixture
def offline(monkeypatch):
    """Makes the connectivity check fail, as on a machine without internet."""

    def refuse(host, timeout=None):
        raise OSError(f"cannot reach {host} (test)")

    monkeypatch.setattr(data, "_check_connection", refuse)


@pytest.fixture
def mock_tfds():
    """Runs the real TFDS code path on random examples, offline, with TFDS' own mock alone."""
    with tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES):
        yield


def _check_images(images, size):
    assert images.shape[1:] == (size, size, 3)
    assert images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.std() > 0.1  # not blank


# --- TFDS datasets (mocked) --------------------------------------------------------


def test_cifar10_shapes_labels_and_range(mock_tfds, tmp_path):
    dataset = data.load_dataset(
        "cifar10", batch_size=16, with_labels=True, seed=0, data_dir=tmp_path
    )
    images, labels = all_batches(dataset)
    assert len(images) == NUM_MOCK_EXAMPLES
    _check_images(images, 32)
    assert labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < len(data.CIFAR10_CLASSES)
    assert data.dataset_image_shape("cifar10") == (32, 32, 3)
    assert "cifar10" in data.DATASETS and "cats64" in data.DATASETS


def test_cifar10_class_filter_num_examples_and_resize(mock_tfds):
    dataset = data.load_dataset(
        "cifar10", with_labels=True, classes=["ship", 9], num_examples=3, image_size=64
    )
    images, labels = all_batches(dataset)
    assert len(images) == 3
    _check_images(images, 64)
    assert set(labels.tolist()) <= {8, 9}
    ships = all_batches(data.load_dataset("cifar10", with_labels=True, classes=["ship"]))[1]
    assert len(ships) > 0 and (ships == 8).all()


def test_cifar10_same_seed_same_batches(mock_tfds):
    def first_epoch(seed):
        return all_batches(data.load_dataset("cifar10", batch_size=8, seed=seed))

    np.testing.assert_array_equal(first_epoch(1), first_epoch(1))
    assert not np.array_equal(first_epoch(1), first_epoch(2))
    # Without labels the elements are image batches only.
    assert isinstance(next(iter(data.load_dataset("cifar10"))), tf.Tensor)


def test_cifar10_unknown_class_lists_names(mock_tfds):
    with pytest.raises(ValueError, match="Unknown class") as error:
        data.load_dataset("cifar10", classes=["ship", "spaceship"])
    for name in data.CIFAR10_CLASSES:
        assert repr(name) in str(error.value)


@pytest.mark.filterwarnings("ignore:Your input ran out of data")  # unknown cardinality (filter)
def test_cats64_pipeline_trains_a_diffusion_model(mock_tfds):
    import keras
    from keras_ddpm import DiffusionModel, NaiveUnet

    dataset = data.load_dataset("cats64", batch_size=8, seed=0)
    model = DiffusionModel(NaiveUnet(data.dataset_image_shape("cats64"), n_feat=8), T=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)  # A few steps.
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_cats64_are_cats_at_64(mock_tfds):
    # Mock cats_vs_dogs images come in random small sizes: all must be cropped and
    # resized to 64x64; only label 0 (cat) survives.
    images, labels = all_batches(data.load_dataset("cats64", batch_size=7, with_labels=True))
    assert 0 < len(images) < NUM_MOCK_EXAMPLES
    _check_images(images, 64)
    assert (labels == 0).all()
    assert data.dataset_image_shape("cats64") == (64, 64, 3)
    cats = all_batches(data.load_dataset("cats64", classes=["cat"], image_size=32))
    _check_images(cats, 32)


def test_center_crop_and_resize_keeps_the_middle():
    image = np.zeros((30, 90, 3), dtype=np.uint8)
    image[:, 30:60] = 255  # the central square is white, the sides black
    resized = data._center_crop_and_resize(tf.constant(image), 32).numpy()
    assert resized.shape == (32, 32, 3) and resized.dtype == np.uint8
    assert (resized == 255).all()


# --- offline behaviour ---------------------------------------------------------------


def test_missing_dataset_without_download_raises_with_instructions(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load_dataset("cifar10", data_dir=tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "copy" in message and "tfds.load('cifar10'" in message
    assert isinstance(error.value, FileNotFoundError)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["cifar10", "cats64"])
def test_missing_dataset_offline_raises_and_leaves_nothing(offline, tmp_path, name):
    data_dir = tmp_path / "data"
    with pytest.raises(data.DatasetNotFoundError, match="no internet") as error:
        data.load_dataset(name, data_dir=data_dir)
    assert str(data_dir) in str(error.value)
    leftovers = [os.path.join(root, entry) for root, dirs, files in os.walk(tmp_path)
                 for entry in dirs + files]
    assert not any("incomplete" in path for path in leftovers)
    assert leftovers == []


def test_failed_download_removes_what_it_created(online, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    (data_dir / "cifar10").mkdir(parents=True)
    (data_dir / "cifar10" / "keep.txt").write_text("not ours")

    def broken_download(builder, *args, **kwargs):
        # TFDS writes into data_dir/cifar10/incomplete.<random>_3.0.2 while preparing.
        os.makedirs(data_dir / "cifar10" / "incomplete.0a1b_3.0.2" / "x")
        os.makedirs(data_dir / "downloads" / "partial")
        raise ConnectionError("connection dropped (test)")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", broken_download)
    with pytest.raises(ConnectionError):
        data.load_dataset("cifar10", data_dir=data_dir)
    assert sorted(os.listdir(data_dir)) == ["cifar10"]
    assert os.listdir(data_dir / "cifar10") == ["keep.txt"]


def test_prepared_dataset_is_read_without_network(offline, monkeypatch):
    # A prepared dataset is read even with download=False, and offline (the failing
    # connectivity check is never reached).
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda builder: True)
    with tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES):
        images = all_batches(data.load_dataset("cifar10", download=False))
    _check_images(images, 32)


# --- image folders -------------------------------------------------------------------


def _write_image(path, size, colour):
    image = np.zeros(size + (3,), dtype=np.uint8)
    image[...] = colour
    image[: size[0] // 2] //= 2  # not uniform, so the images have some contrast
    Image.fromarray(image).save(path)


@pytest.fixture
def class_folder(tmp_path):
    """Two class folders of PNG and JPEG images of varied sizes, plus one corrupt file."""
    folder = tmp_path / "pets"
    for class_name, colour in [("cats", (250, 40, 40)), ("dogs", (40, 40, 250))]:
        (folder / class_name).mkdir(parents=True)
        _write_image(folder / class_name / "a.png", (40, 70), colour)
        _write_image(folder / class_name / "b.jpg", (90, 50), colour)
        _write_image(folder / class_name / "c.JPEG", (64, 64), colour)
    (folder / "dogs" / "broken.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (folder / "dogs" / "notes.txt").write_text("not an image")
    return folder


def test_image_folder_with_classes(class_folder):
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image file\(s\)"):
        dataset = data.load_dataset(class_folder, batch_size=4, with_labels=True, seed=0)
    images, labels = all_batches(dataset)
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    # Label 0 is "cats" (red), label 1 is "dogs" (blue).
    red_minus_blue = images[..., 0].mean(axis=(1, 2)) - images[..., 2].mean(axis=(1, 2))
    assert ((red_minus_blue > 0) == (labels == 0)).all()
    assert data.dataset_image_shape(str(class_folder)) == (64, 64, 3)


def test_image_folder_class_filter_and_size(class_folder):
    with pytest.warns(UserWarning):
        dataset = data.load_dataset(
            str(class_folder), with_labels=True, classes=["dogs"], image_size=32
        )
    images, labels = all_batches(dataset)
    assert images.shape == (3, 32, 32, 3)
    assert (labels == 1).all()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="'cats'"):
        data.load_dataset(str(class_folder), classes=["birds"])


def test_flat_image_folder(tmp_path):
    for index in range(5):
        _write_image(tmp_path / f"{index}.png", (33 + index, 48), (index * 50, 100, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to skip: no warning
        images = all_batches(data.load_dataset(tmp_path, batch_size=2, num_examples=4))
    assert images.shape == (4, 64, 64, 3)


def test_truncated_jpegs_are_skipped_and_a_folder_of_them_is_an_error(tmp_path):
    """Pillow's `verify()` passes a truncated JPEG that no decoder can read."""
    for index in range(3):
        _write_image(tmp_path / f"{index}.jpg", (64, 64), (200, 30 * index, 90))
    whole = (tmp_path / "0.jpg").read_bytes()
    (tmp_path / "0.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image file\(s\)"):
        images = all_batches(data.load_dataset(tmp_path, batch_size=2))
    assert images.shape == (2, 64, 64, 3)
    for index in (1, 2):
        (tmp_path / f"{index}.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="No readable images"):
        data.load_dataset(tmp_path)


def test_empty_image_folder_raises(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No readable images"):
        data.load_dataset(tmp_path)


def test_unknown_name_lists_datasets_and_folders(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset") as error:
        data.load_dataset(str(tmp_path / "missing"))
    message = str(error.value)
    for name in data.DATASETS:
        assert repr(name) in message
    assert "folder" in message

