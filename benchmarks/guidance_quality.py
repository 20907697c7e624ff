"""Class fidelity and SWD of a class-conditional shapes model, by guidance scale.

    keras-ddpm train --conditional --prediction v --epochs 6 --out runs/cond
    python benchmarks/guidance_quality.py runs/cond/model.keras

Trains a small CNN on fresh `shapes` images (it classifies real shapes
perfectly), samples `--per-class` images of each class at each guidance scale
with DDIM, and prints the fraction the CNN assigns to the requested class and
the sliced Wasserstein distance to real shapes (and real to real, for scale).
"""
import argparse
import time

import numpy as np
import keras

import keras_ddpm  # noqa: F401  Registers the model's classes for loading.
from keras_ddpm import metrics, plotting
from keras_ddpm.data import make_shapes, to_model_range


def shape_classifier(num_classes, seed=10):
    """A small CNN trained on 6000 generated shapes; returns (model, test accuracy)."""
    images, labels = make_shapes(6000, seed=seed)
    classifier = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(num_classes),
    ])
    classifier.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    classifier.fit(np.asarray(to_model_range(images)), labels, epochs=3, batch_size=64, verbose=0)
    test_images, test_labels = make_shapes(1000, seed=seed + 1)
    accuracy = classifier.evaluate(np.asarray(to_model_range(test_images)), test_labels, verbose=0)[1]
    return classifier, accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a conditional model.keras trained on shapes")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--grid", default=None, help="write the w = 2 samples as a PNG grid here")
    args = parser.parse_args()

    model = keras.models.load_model(args.model)
    if model.num_classes is None:
        parser.error("the model is unconditional: train it with --conditional")
    classifier, accuracy = shape_classifier(model.num_classes)
    real = np.asarray(to_model_range(make_shapes(300, seed=12)[0]))
    other_real = np.asarray(to_model_range(make_shapes(300, seed=13)[0]))
    labels = np.repeat(np.arange(model.num_classes), args.per_class)
    print(f"classifier accuracy on real shapes: {accuracy:.3f}")
    print(f"SWD real vs real: {metrics.sliced_wasserstein_distance(real, other_real):.1f}")
    print("| w | class accuracy | SWD | seconds |")
    print("| --- | --- | --- | --- |")
    for scale in args.scales:
        start = time.perf_counter()
        images = model.sample(
            len(labels), steps=args.steps, seed=1, labels=labels, guidance_scale=scale, verbose=0
        )
        seconds = time.perf_counter() - start
        predicted = np.argmax(classifier.predict(images, verbose=0), axis=1)
        swd = metrics.sliced_wasserstein_distance(real, images)
        print(f"| {scale:g} | {np.mean(predicted == labels):.3f} | {swd:.1f} | {seconds:.0f} |")
        if args.grid and scale == 2.0:
            rows = [images[labels == k][:8] for k in range(model.num_classes)]
            plotting.save_image_grid(np.concatenate(rows), args.grid, nrow=8)


if __name__ == "__main__":
    main()
