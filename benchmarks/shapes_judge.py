"""A judge of `shapes` samples: a small CNN that names shape, colour and background.

The quality benchmark (`quality.py`) scores generated images with it:

- the **valid-sample rate**: the fraction of images the judge assigns, with
  confidence >= `VALID_CONFIDENCE`, to a (shape, colour, background)
  combination that occurs in the data (real held-out images score about 1.0);
- **attribute frequencies** among the valid images against the data's;
- the **Fréchet distance** in the judge's penultimate features, divided by the
  real-vs-real floor at the same n.

Each head has one class more than the attribute's values: "none", trained on
images that are not shapes images (noise, blobs, two shapes blended, off-palette
colours, grain). Without it a classifier trained on real images alone names a
blob or an olive-green background with high confidence; with it, such images
put their mass on "none" and fail the confidence test.

The judge, its reference features and the real-vs-real floors are cached under
`cache_dir`, keyed by a hash of the settings (`JudgeSettings.key`).
"""
import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import keras
import tensorflow as tf

from keras_ddpm import data, metrics

# Confidence (product of the three heads' probabilities) for a valid sample.
VALID_CONFIDENCE = 0.9

# An attribute value is flagged when its frequency among valid samples is off by more.
MAX_RELATIVE_DEVIATION = 0.5

# Attributes in the order of the judge's heads, with their value names.
ATTRIBUTES = {
    "shape": data.SHAPE_CLASSES,
    "color": data.SHAPE_COLOR_NAMES,
    "background": data.SHAPE_BACKGROUND_NAMES,
}

# Real training images get grain of up to this standard deviation (in [-1, 1] units,
# about 10 levels of 255): a sample that clean counts as real. Negatives start at 0.25.
POSITIVE_GRAIN = 0.08

# Bump when the judge's architecture, negatives or training change (new cache key).
JUDGE_VERSION = 1

# Seeds of the judge's training images, of the two held-out real sets of the Fréchet
# ratio and of the real images scored as a row; none is a seed of
# `load_dataset("shapes")`'s splits, so all are new images.
TRAIN_SEED = 1201
REFERENCE_SEED = 1202
REAL_SEED = 1203
FLOOR_SEEDS = (1210, 1211, 1212, 1213)


DEFAULT_CACHE_DIR = pathlib.Path("~/.cache/keras_ddpm/quality").expanduser()


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """How the judge is trained, and the size of its real reference set.

    `key()` names the cache folder of the judge, its reference features and floors.

    Example:
    >>> JudgeSettings(num_images=2000, epochs=2).key()[:8]
    """

    num_images: int = 8000
    epochs: int = 8
    batch_size: int = 128
    image_size: int = 32
    features: int = 64
    seed: int = TRAIN_SEED
    reference_size: int = 5000

    def key(self):
        text = json.dumps({**dataclasses.asdict(self), "version": JUDGE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------- negatives
def _blobs(images, rng):
    """Real images shrunk to a few pixels and enlarged again: soft blobs."""
    size = images.shape[1]
    small = int(rng.integers(4, 9))
    shrunk = tf.image.resize(images, (small, small), antialias=True)
    return tf.image.resize(shrunk, (size, size), method="bilinear").numpy()


def _recoloured(images, attributes, rng):
    """The shape and/or background repainted in colours outside the palette."""
    palette = np.concatenate([data.SHAPE_FOREGROUND_COLORS, data.SHAPE_BACKGROUND_COLORS])
    palette = np.asarray(data.to_model_range(palette.astype(np.uint8)))
    count = len(images)
    colours = rng.uniform(-1, 1, (8 * count, 3)).astype(np.float32)
    distances = np.linalg.norm(colours[:, None] - palette[None], axis=-1).min(axis=1)
    colours = colours[distances > 0.5][: 2 * count].reshape(count, 2, 3)
    background = palette[len(data.SHAPE_FOREGROUND_COLORS) + attributes["background"]]
    foreground = palette[attributes["color"]]
    # The shape's coverage, recovered from where each pixel lies between the two colours.
    direction = foreground - background
    coverage = np.einsum("nhwc,nc->nhw", images - background[:, None, None], direction)
    coverage = np.clip(coverage / np.sum(direction**2, axis=1)[:, None, None], 0, 1)[..., None]
    keep = rng.integers(0, 3, count)  # 0: new shape colour, 1: new background, 2: both
    new_foreground = np.where((keep == 1)[:, None], foreground, colours[:, 0])
    new_background = np.where((keep == 0)[:, None], background, colours[:, 1])
    new_background, new_foreground = new_background[:, None, None], new_foreground[:, None, None]
    return new_background + coverage * (new_foreground - new_background)


def negative_images(images, attributes, seed=0):
    """As many non-shapes images as `images`: noise, blobs, blends, recolours, grain.

    Args:
        images: float32 array (N, H, W, 3) of real shapes in [-1, 1].
        attributes: dict of int arrays (N,), as `data.make_shapes_with_attributes`.
        seed: int. Seed of the corruptions.

    Returns:
        float32 array (N, H, W, 3) in [-1, 1].

    Example:
    >>> images, attributes = data.make_shapes_with_attributes(10)
    >>> negative_images(data.to_model_range(images), attributes).shape
    (10, 32, 32, 3)
    """
    rng = np.random.default_rng(seed)
    count = len(images)
    kind = np.arange(count) % 5
    out = np.empty_like(images)
    noise = rng.normal(size=images.shape).astype(np.float32)
    means = rng.uniform(-1, 1, (count, 1, 1, 3)).astype(np.float32)
    scales = rng.uniform(0.2, 1.0, (count, 1, 1, 1)).astype(np.float32)
    out[kind == 0] = (means + scales * noise)[kind == 0]
    out[kind == 1] = _blobs(images[kind == 1], rng)
    # Two shapes of different colours, half transparent: mixed colours, two outlines.
    colors = attributes["color"]
    partners = np.zeros(count, int)
    for color in np.unique(colors):
        others = np.flatnonzero(colors != color)
        partners[colors == color] = rng.choice(others, np.sum(colors == color))
    out[kind == 2] = (0.5 * (images + images[partners]))[kind == 2]
    chosen = kind == 3
    out[chosen] = _recoloured(
        images[chosen], {name: values[chosen] for name, values in attributes.items()}, rng
    )
    grain = rng.uniform(0.25, 0.6, (count, 1, 1, 1)).astype(np.float32)
    out[kind == 4] = (images + grain * noise)[kind == 4]
    return np.clip(out, -1, 1)


# --------------------------------------------------------------------- judge
def judge_network(settings):
    """The judge: images in [-1, 1] -> [shape, colour, background probabilities, features].

    Each probability head has one class per attribute value plus a last "none".
    """
    inputs = keras.Input((settings.image_size, settings.image_size, 3), name="images")
    x = inputs
    for index, (filters, strides) in enumerate([(32, 1), (32, 2), (64, 2), (64, 2)]):
        x = keras.layers.Conv2D(
            filters, 3, strides=strides, padding="same", activation="relu", name=f"conv{index}"
        )(x)
    x = keras.layers.Flatten(name="flatten")(x)
    features = keras.layers.Dense(settings.features, activation="relu", name="features")(x)
    heads = [
        keras.layers.Dense(len(values) + 1, activation="softmax", name=name)(features)
        for name, values in ATTRIBUTES.items()
    ]
    return keras.Model(inputs, heads + [features], name="shapes_judge")


def train_judge(settings, verbose=0):
    """Trains a judge on real shapes and half as many negatives; returns the network.

    Example:
    >>> judge = train_judge(JudgeSettings(num_images=600, epochs=1))
    """
    keras.utils.set_random_seed(settings.seed)
    images, attributes = data.make_shapes_with_attributes(
        settings.num_images, image_size=settings.image_size, seed=settings.seed
    )
    images = np.asarray(data.to_model_range(images))
    half = {name: values[::2] for name, values in attributes.items()}
    negatives = negative_images(images[::2], half, seed=settings.seed)
    rng = np.random.default_rng(settings.seed)
    per_image = (len(images), 1, 1, 1)
    grain = rng.uniform(0, POSITIVE_GRAIN, per_image) * (rng.random(per_image) < 0.5)
    images = np.clip(images + grain * rng.normal(size=images.shape), -1, 1).astype(np.float32)
    inputs = np.concatenate([images, negatives])
    targets = [
        np.concatenate([attributes[name], np.full(len(negatives), len(values))])
        for name, values in ATTRIBUTES.items()
    ]
    network = judge_network(settings)
    trainer = keras.Model(network.input, network.outputs[:-1])
    trainer.compile(keras.optimizers.Adam(1e-3), loss=["sparse_categorical_crossentropy"] * 3)
    trainer.fit(
        inputs, targets, epochs=settings.epochs, batch_size=settings.batch_size,
        shuffle=True, verbose=verbose,
    )
    return network


# ------------------------------------------------------------------- metrics
def combination_confidence(probabilities):
    """The most likely (shape, colour, background) of each image and the judge's confidence.

    The confidence is the product of the three heads' probabilities of their
    most likely attribute value ("none" is never chosen, so an image the judge
    calls "none" gets a low confidence).

    Args:
        probabilities: list of three arrays (N, values + 1), last column "none".

    Returns:
        `(combinations, confidence)`: int array (N, 3) and float array (N,).

    Example:
    >>> shape, color, background = np.eye(4)[[0]], np.eye(5)[[2]], np.eye(3)[[1]]
    >>> combination_confidence([shape, color, background])
    (array([[0, 2, 1]]), array([1.]))
    """
    values = [np.asarray(p, np.float64)[:, :-1] for p in probabilities]
    combinations = np.stack([np.argmax(p, axis=1) for p in values], axis=1)
    confidence = np.prod([np.max(p, axis=1) for p in values], axis=0)
    return combinations, confidence


def valid_mask(combinations, confidence, known_combinations, threshold=VALID_CONFIDENCE):
    """True where the confidence reaches `threshold` and the combination is known.

    Example:
    >>> valid_mask(np.array([[0, 0, 0], [1, 1, 1]]), np.array([0.95, 0.99]), {(0, 0, 0)})
    array([ True, False])
    """
    known = np.array([tuple(c) in known_combinations for c in combinations.tolist()], bool)
    return known & (np.asarray(confidence) >= threshold)


def attribute_frequencies(combinations, mask):
    """Frequency of each value of each attribute among the images where `mask` is True.

    Example:
    >>> attribute_frequencies(np.array([[0, 1, 1], [2, 1, 0]]), np.array([True, True]))["shape"]
    array([0.5, 0. , 0.5])
    """
    chosen = combinations[np.asarray(mask, bool)]
    return {
        name: np.bincount(chosen[:, index], minlength=len(values)) / max(len(chosen), 1)
        for index, (name, values) in enumerate(ATTRIBUTES.items())
    }


def worst_deviation(frequencies, data_frequencies):
    """`(attribute, value name, relative deviation)` furthest from the data's frequency.

    Example:
    >>> worst_deviation({"color": np.array([0.5, 0.5])}, {"color": np.array([0.25, 0.75])})
    ('color', 'red', 1.0)
    """
    worst = None
    for name, observed in frequencies.items():
        deviations = observed / data_frequencies[name] - 1.0
        index = int(np.argmax(np.abs(deviations)))
        if worst is None or abs(deviations[index]) > abs(worst[2]):
            worst = (name, ATTRIBUTES[name][index], float(deviations[index]))
    return worst


@dataclasses.dataclass(frozen=True)
class Judge:
    """A trained judge network with what it knows of the data.

    `known_combinations` and `data_frequencies` come from the judge's training
    images.

    Example:
    >>> settings = JudgeSettings(num_images=600, epochs=1, reference_size=200)
    >>> judge = load_judge(settings, "/tmp/judge_cache")
    >>> reference = reference_features(judge, settings, 50, "/tmp/judge_cache")
    >>> judge.score(real_images(settings, 50), **reference)["valid_rate"]
    """

    network: keras.Model
    known_combinations: frozenset
    data_frequencies: dict

    def predict(self, images, batch_size=500):
        """`(probabilities, features)` of images in [-1, 1] (clipped to it first)."""
        outputs = self.network.predict(np.clip(images, -1, 1), batch_size=batch_size, verbose=0)
        return outputs[:-1], np.asarray(outputs[-1], np.float64)

    def score(self, images, reference, floor_distance):
        """The valid-sample rate, frequencies and Fréchet ratio of `images`.

        Args:
            images: float array (N, H, W, 3) in about [-1, 1].
            reference: array (M, features) of held-out real images.
            floor_distance: float. Fréchet distance of other real sets of N images
                to the reference: the ratio's denominator.

        Returns:
            dict with `valid_rate`, `frequencies`, `worst` (see `worst_deviation`),
            `frechet` and `frechet_ratio`.
        """
        probabilities, features = self.predict(images)
        combinations, confidence = combination_confidence(probabilities)
        mask = valid_mask(combinations, confidence, self.known_combinations)
        frequencies = attribute_frequencies(combinations, mask)
        frechet = metrics.frechet_distance(features, reference)
        return {
            "valid_rate": float(np.mean(mask)),
            "frequencies": frequencies,
            "worst": worst_deviation(frequencies, self.data_frequencies),
            "frechet": frechet,
            "frechet_ratio": frechet / floor_distance,
        }


def _data_statistics(settings):
    """Known combinations and value frequencies of the judge's training images."""
    _, attributes = data.make_shapes_with_attributes(
        settings.num_images, image_size=settings.image_size, seed=settings.seed
    )
    stacked = np.stack([attributes[name] for name in ATTRIBUTES], axis=1)
    known = frozenset(map(tuple, stacked.tolist()))
    frequencies = attribute_frequencies(stacked, np.ones(len(stacked), bool))
    return known, frequencies


def load_judge(settings, cache_dir=DEFAULT_CACHE_DIR, log=print):
    """The judge for `settings`, from `cache_dir/<settings.key()>` or trained and saved there.

    Example:
    >>> judge = load_judge(JudgeSettings(num_images=600, epochs=1), "/tmp/judge_cache")
    """
    folder = pathlib.Path(cache_dir).expanduser() / settings.key()
    path = folder / "judge.keras"
    if path.is_file():
        network = keras.models.load_model(path)
    else:
        log(f"training the judge ({settings.num_images} real + half as many negative images, "
            f"{settings.epochs} epochs); cached in {folder}")
        network = train_judge(settings)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps(dataclasses.asdict(settings)) + "\n")
        network.save(path)
    known, frequencies = _data_statistics(settings)
    return Judge(network, known, frequencies)


def real_images(settings, n):
    """n held-out real images in [-1, 1], to score as the "real data" row."""
    images = data.make_shapes(n, settings.image_size, seed=REAL_SEED)[0]
    return np.asarray(data.to_model_range(images))


def _features_of_real(judge, settings, n, seed):
    images = data.make_shapes(n, settings.image_size, seed=seed)[0]
    return judge.predict(np.asarray(data.to_model_range(images)))[1]


def reference_features(judge, settings, n, cache_dir=DEFAULT_CACHE_DIR):
    """Features of a large held-out real set and the real-vs-real floor at n, cached.

    The floor is the Fréchet distance of a real set of n images to the reference
    set, averaged over `FLOOR_SETS` disjoint sets (one estimate varies by tens
    of percent at n = 500). A large reference set keeps the reference side's
    share of that noise small.

    Returns:
        dict with `"reference"` (features, array (settings.reference_size, d)) and
        `"floor_distance"` (float), the Fréchet ratio's denominator at this n.
    """
    folder = pathlib.Path(cache_dir).expanduser() / settings.key()
    path = folder / "reference.npy"
    if path.is_file():
        reference = np.load(path)
    else:
        reference = _features_of_real(judge, settings, settings.reference_size, REFERENCE_SEED)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(path, reference)
    floors_path = folder / "floors.json"
    floors = json.loads(floors_path.read_text()) if floors_path.is_file() else {}
    if str(n) not in floors:
        floors[str(n)] = float(np.mean([
            metrics.frechet_distance(_features_of_real(judge, settings, n, seed), reference)
            for seed in FLOOR_SEEDS
        ]))
        floors_path.write_text(json.dumps(floors, indent=1) + "\n")
    return {"reference": reference, "floor_distance": floors[str(n)]}
