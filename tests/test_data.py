"""Tests for keras_ddpm.data: the procedural shapes set and the tf.data loader."""

import re

import numpy as np
import pytest
import tensorflow as tf

from helpers import all_batches
from keras_ddpm import data

# Small splits keep every test fast.
NUM_EXAMPLES = 96


# --- make_shapes ---------------------------------------------------------------------


def test_make_shapes_shapes_dtypes_and_balanced_labels():
    images, labels = data.make_shapes(300, image_size=32, seed=0)
    assert images.shape == (300, 32, 32, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (300,)
    assert labels.dtype == np.int32
    assert np.bincount(labels, minlength=3).tolist() == [100, 100, 100]
    # Random order, not a plain cycle.
    assert not np.array_equal(labels, np.arange(300) % 3)


def test_make_shapes_is_deterministic_for_a_seed():
    images_a, labels_a = data.make_shapes(20, seed=3)
    images_b, labels_b = data.make_shapes(20, seed=3)
    images_c, _ = data.make_shapes(20, seed=4)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(images_a, images_c)


def test_make_shapes_have_two_dominant_colours():
    images, _ = data.make_shapes(60, seed=1)
    for image in images:
        pixels = image.reshape(-1, 3)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        order = np.argsort(counts)[::-1]
        background, shape = colours[order[0]], colours[order[1]]
        assert background.tolist() in data.SHAPE_BACKGROUND_COLORS.astype(int).tolist()
        assert shape.tolist() in data.SHAPE_FOREGROUND_COLORS.astype(int).tolist()
        # Everything but the anti-aliased edge is one of the two colours.
        assert counts[order[0]] + counts[order[1]] > 0.8 * len(pixels)
        # The shape is clearly visible: it covers a sizeable part of the image...
        shape_fraction = counts[order[1]] / len(pixels)
        assert 0.05 < shape_fraction < 0.6
        # ...and stands out from the background.
        assert np.abs(shape.astype(int) - background.astype(int)).max() > 100
        # The border row of pixels is background (the shape stays inside the frame).
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        assert (border == background).all()


def test_make_shapes_with_attributes_gives_the_same_images_and_what_drew_them():
    images, attributes = data.make_shapes_with_attributes(60, seed=1)
    expected_images, expected_labels = data.make_shapes(60, seed=1)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(attributes["shape"], expected_labels)
    for image, color, background in zip(images, attributes["color"], attributes["background"]):
        # The corner is background; the centre is inside every shape.
        np.testing.assert_array_equal(image[0, 0], data.SHAPE_BACKGROUND_COLORS[background])
        np.testing.assert_array_equal(image[19, 16], data.SHAPE_FOREGROUND_COLORS[color])
    assert len(data.SHAPE_COLOR_NAMES) == len(data.SHAPE_FOREGROUND_COLORS)
    assert len(data.SHAPE_BACKGROUND_NAMES) == len(data.SHAPE_BACKGROUND_COLORS)


def test_make_shapes_classes_have_expected_area_and_symmetry():
    images, labels = data.make_shapes(90, seed=2)
    for image, label in zip(images, labels):
        background = image[0, 0].astype(int)
        is_shape = np.abs(image.astype(int) - background).sum(axis=-1) > 60
        rows = np.flatnonzero(is_shape.any(axis=1))
        columns = np.flatnonzero(is_shape.any(axis=0))
        box_area = (rows[-1] - rows[0] + 1) * (columns[-1] - columns[0] + 1)
        fill = is_shape.sum() / box_area
        name = data.SHAPE_CLASSES[label]
        # Fill of the bounding box: square ~1, disc ~pi/4, triangle ~1/2.
        expected = {"square": (0.85, 1.01), "disc": (0.65, 0.9), "triangle": (0.38, 0.65)}
        low, high = expected[name]
        assert low < fill < high, (name, fill)
        if name == "triangle":  # upright: the top half holds less of the shape
            middle = (rows[0] + rows[-1]) // 2
            assert is_shape[: middle + 1].sum() < is_shape[middle + 1 :].sum()


def test_make_shapes_anti_aliased_edges():
    images, _ = data.make_shapes(30, seed=5)
    num_colours = [len(np.unique(image.reshape(-1, 3), axis=0)) for image in images]
    # Blended edge pixels give more than two colours in (nearly) every image.
    assert np.mean(np.array(num_colours) > 2) > 0.9


# --- load_dataset ----------------------------------------------------------------------


def test_load_dataset_batches_in_model_range():
    dataset = data.load_dataset("shapes", batch_size=32, num_examples=NUM_EXAMPLES, seed=0)
    assert dataset.element_spec.shape.as_list() == [None, 32, 32, 3]
    assert dataset.element_spec.dtype == tf.float32
    batches = list(dataset)
    assert [batch.shape[0] for batch in batches] == [32, 32, 32]
    images = np.concatenate([batch.numpy() for batch in batches])
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() < -0.8 and images.max() > 0.8  # dark backgrounds, bright shapes


def test_load_dataset_matches_make_shapes_via_to_model_range():
    images = all_batches(
        data.load_dataset("shapes", num_examples=NUM_EXAMPLES, shuffle=False)
    )
    expected, _ = data.make_shapes(NUM_EXAMPLES, seed=data.SHAPE_SPLIT_SEEDS["train"])
    np.testing.assert_array_equal(images, data.to_model_range(expected))


def test_load_dataset_last_batch_is_kept():
    dataset = data.load_dataset("shapes", batch_size=40, num_examples=100)
    assert [batch.shape[0] for batch in dataset] == [40, 40, 20]


def test_load_dataset_with_labels():
    dataset = data.load_dataset(
        "shapes", batch_size=50, with_labels=True, num_examples=300, seed=0
    )
    images, labels = all_batches(dataset)
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32
    assert set(labels.tolist()) <= {0, 1, 2}
    assert np.bincount(labels, minlength=3).tolist() == [100, 100, 100]


def test_load_dataset_default_sizes():
    train = data.load_dataset("shapes", batch_size=1024, shuffle=False)
    test = data.load_dataset("shapes", split="test", batch_size=1024, shuffle=False)
    assert sum(batch.shape[0] for batch in train) == 8192
    assert sum(batch.shape[0] for batch in test) == 1024


def test_load_dataset_shuffle_seed_determinism():
    def first_batch(seed):
        dataset = data.load_dataset(
            "shapes", batch_size=16, num_examples=NUM_EXAMPLES, seed=seed
        )
        return next(iter(dataset)).numpy()

    np.testing.assert_array_equal(first_batch(7), first_batch(7))
    assert not np.array_equal(first_batch(7), first_batch(8))


def test_load_dataset_reshuffles_each_epoch_but_keeps_the_images():
    dataset = data.load_dataset(
        "shapes", batch_size=NUM_EXAMPLES, num_examples=NUM_EXAMPLES, seed=0
    )
    epoch_1 = next(iter(dataset)).numpy()
    epoch_2 = next(iter(dataset)).numpy()
    assert not np.array_equal(epoch_1, epoch_2)
    as_set = lambda images: sorted(image.tobytes() for image in images)  # noqa: E731
    assert as_set(epoch_1) == as_set(epoch_2)


def test_load_dataset_train_and_test_differ():
    train = all_batches(
        data.load_dataset("shapes", num_examples=NUM_EXAMPLES, shuffle=False)
    )
    test = all_batches(
        data.load_dataset("shapes", split="test", num_examples=NUM_EXAMPLES, shuffle=False)
    )
    assert train.shape == test.shape
    assert not np.array_equal(train, test)
    # Not even one image in common.
    train_images = {image.tobytes() for image in train}
    assert not any(image.tobytes() in train_images for image in test)


@pytest.mark.parametrize("classes", [["disc"], [0], "disc", 0])
def test_load_dataset_filters_one_class(classes):
    dataset = data.load_dataset(
        "shapes", with_labels=True, classes=classes, num_examples=NUM_EXAMPLES
    )
    images, labels = all_batches(dataset)
    assert len(labels) == NUM_EXAMPLES // 3
    assert (labels == 0).all()
    assert len(images) == len(labels)


def test_load_dataset_filters_classes_by_mixed_name_and_id():
    dataset = data.load_dataset(
        "shapes", with_labels=True, classes=["triangle", 1], num_examples=NUM_EXAMPLES
    )
    _, labels = all_batches(dataset)
    assert sorted(set(labels.tolist())) == [1, 2]
    assert len(labels) == 2 * NUM_EXAMPLES // 3


def test_load_dataset_image_size_64():
    dataset = data.load_dataset("shapes", batch_size=8, image_size=64, num_examples=8)
    images = next(iter(dataset))
    assert images.shape == (8, 64, 64, 3)
    assert data.dataset_image_shape("shapes", image_size=64) == (64, 64, 3)


def test_dataset_image_shape_default():
    assert data.dataset_image_shape("shapes") == (32, 32, 3)
    assert data.DATASETS == ("shapes", "cifar10", "cats64")


@pytest.mark.parametrize("image_size", [0, -32, 48, 31, 33.0, True])
def test_bad_image_size_raises(image_size):
    with pytest.raises(ValueError, match="positive multiple of 32"):
        data.load_dataset("shapes", image_size=image_size, num_examples=4)
    with pytest.raises(ValueError, match="positive multiple of 32"):
        data.dataset_image_shape("shapes", image_size=image_size)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_bad_batch_size_raises(batch_size):
    with pytest.raises(ValueError, match="batch_size must be positive"):
        data.load_dataset("shapes", batch_size=batch_size, num_examples=4)


@pytest.mark.parametrize("name", ["mnist", "cifar100", "cats", "Shapes"])
def test_unknown_dataset_raises(name):
    message = re.escape(f"Unknown dataset {name!r}. Choose one of: 'shapes', 'cifar10'")
    with pytest.raises(ValueError, match=message):
        data.load_dataset(name)
    with pytest.raises(ValueError, match=message):
        data.dataset_image_shape(name)


@pytest.mark.parametrize("bad_class", ["star", 3, -1])
def test_unknown_class_raises_listing_valid_names(bad_class):
    with pytest.raises(ValueError, match="Unknown class") as error:
        data.load_dataset("shapes", classes=["disc", bad_class], num_examples=6)
    for name in data.SHAPE_CLASSES:
        assert repr(name) in str(error.value)


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="Unknown split 'validation'"):
        data.load_dataset("shapes", split="validation", num_examples=4)


def test_to_model_range_numpy_and_tensor():
    pixels = np.array([0, 51, 255], dtype=np.uint8)
    expected = np.array([-1.0, 51 / 127.5 - 1.0, 1.0], dtype=np.float32)
    from_numpy = data.to_model_range(pixels)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    np.testing.assert_allclose(from_numpy, expected, rtol=0, atol=1e-7)
    from_tensor = data.to_model_range(tf.constant(pixels))
    assert isinstance(from_tensor, tf.Tensor) and from_tensor.dtype == tf.float32
    np.testing.assert_allclose(from_tensor.numpy(), expected, rtol=0, atol=1e-7)
