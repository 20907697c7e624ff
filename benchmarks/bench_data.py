"""Input-pipeline benchmark of keras_ddpm: `load_dataset` throughput against training.

One command measures, side by side in one process, and prints a Markdown table
at the end:

1. Pipeline images/s of `keras_ddpm.data.load_dataset` alone (batches of 64,
   shuffled, images converted to [-1, 1], nothing else consuming them):
   - the first pass over the data (one full epoch: read, decode, crop, resize,
     and fill the in-memory `.cache()`), timed as a whole;
   - cached passes: further epochs over the same dataset object, timed over
     whole epochs for at least `--cached-seconds` seconds.
   Sources, all generated on this machine, offline:
   - "cifar10" (32x32) and "cats64" (64x64) through the real TFDS code path of
     `load_dataset`, with `tensorflow_datasets.testing.mock_data` serving random
     examples (the connectivity check is monkeypatched, as in
     tests/test_data_real.py). Mock cifar10 images are 32x32 already (no
     resize); mock cats_vs_dogs images have random sizes 5-49 px per side, so
     the pipeline crops and resizes them up to 64x64. Mock examples come from a
     Python generator, not from TFRecord files, and are not JPEG-encoded: the
     first pass measures that generator plus our map, not real file reading
     and decoding.
   - a folder of generated JPEG files (random 96x128 images written with
     Pillow), read, decoded, centre-cropped and resized to 64x64: the real
     decode path.
2. Training images/s of `DiffusionModel(NaiveUnet((H, W, 3), n_feat))` with
   Adam through `fit` on in-memory random images at the same sizes, via
   `bench_core.bench_training` (a warm-up `fit` call, then a timed one).
3. Ratio pipeline / training: how many times faster the loader produces images
   than training consumes them (target >= 10x). Pipeline and training are timed
   separately, each with the whole machine; in real training they share it.

Usage:
    python benchmarks/bench_data.py            # default, a few minutes on 2 cores
    python benchmarks/bench_data.py --quick    # smoke test, < 60 s

All figures are measured when the script runs; nothing is hard-coded.
"""

import argparse
import os
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

# bench_core sets TF_CPP_MIN_LOG_LEVEL and KERAS_BACKEND before importing TensorFlow.
from bench_core import (  # noqa: E402
    bench_training,
    busy_cpu_seconds,
    finish_info,
    header_lines,
    log,
    machine_info,
)

import numpy as np  # noqa: E402
import keras  # noqa: E402

from keras_ddpm import data  # noqa: E402


# --------------------------------------------------------------------- options
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings and eager training (a smoke test; not figures)")
    parser.add_argument("--batch", type=int, default=64,
                        help="batch of the pipeline and of training")
    parser.add_argument("--n-feat", type=int, default=64, help="NaiveUnet width")
    parser.add_argument("--mock-examples", type=int, default=4096,
                        help="mock TFDS examples per split (cats: about half are cats)")
    parser.add_argument("--folder-images", type=int, default=512,
                        help="generated JPEG files in the image folder")
    parser.add_argument("--cached-seconds", type=float, default=5.0,
                        help="minimum time of the cached passes per source")
    parser.add_argument("--train-steps", type=int, nargs="+", default=[4, 2],
                        help="timed training steps per size, 32 then 64 (last repeats)")
    parser.add_argument("--warmup-steps", type=int, default=1,
                        help="steps of the warm-up fit call (traces the function)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_feat = 8
        args.batch = 8
        args.mock_examples = 128
        args.folder_images = 16
        args.cached_seconds = 0.2
        args.train_steps = [1]
        args.warmup_steps = 1
    return args


# -------------------------------------------------------------------- sources
def write_jpeg_folder(folder, count, height=96, width=128, seed=0):
    """Writes `count` random RGB JPEG files of height x width into `folder`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        # Smooth-ish random images (noise upsampled), closer to photos than pure noise.
        small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
        image.save(os.path.join(folder, f"img_{i:05d}.jpg"), quality=90)


def time_pipeline(dataset, cached_seconds):
    """Images/s of the first pass over `dataset` and of later (cached) passes.

    Returns `(first_images, first_s, cached_images, cached_s, cached_epochs)`.
    """
    def one_epoch():
        images = 0
        for batch in dataset:
            images += int(batch.shape[0])
        return images

    start = time.perf_counter()
    first_images = one_epoch()
    first_s = time.perf_counter() - start

    cached_images, epochs = 0, 0
    start = time.perf_counter()
    while True:
        cached_images += one_epoch()
        epochs += 1
        cached_s = time.perf_counter() - start
        if cached_s >= cached_seconds:
            break
    return {
        "first_images": first_images,
        "first_s": first_s,
        "first_rate": first_images / first_s,
        "cached_images": cached_images,
        "cached_s": cached_s,
        "cached_rate": cached_images / cached_s,
        "epochs": epochs,
    }


def bench_pipelines(args, workdir):
    """Times `load_dataset` on mock cifar10, mock cats64 and a JPEG folder."""
    import tensorflow_datasets as tfds

    results = []
    original_check = data._check_connection
    data._check_connection = lambda host, timeout=None: None  # TFDS is mocked anyway
    try:
        with tfds.testing.mock_data(num_examples=args.mock_examples):
            for name, size, note in (
                ("cifar10", 32, f"mock TFDS, {args.mock_examples} random 32x32 images"),
                ("cats64", 64, f"mock TFDS, cats of {args.mock_examples} random "
                               f"5-49 px images, resized to 64x64"),
            ):
                log(f"pipeline {name} ({size}x{size}), batch {args.batch}")
                dataset = data.load_dataset(name, batch_size=args.batch, seed=0,
                                            data_dir=os.path.join(workdir, "tfds"))
                results.append({"source": f"`{name}`", "size": size, "note": note,
                                **time_pipeline(dataset, args.cached_seconds)})
    finally:
        data._check_connection = original_check

    folder = os.path.join(workdir, "jpegs")
    os.makedirs(folder)
    log(f"writing {args.folder_images} random 96x128 JPEG files")
    write_jpeg_folder(folder, args.folder_images)
    log(f"pipeline image folder (64x64), batch {args.batch}")
    dataset = data.load_dataset(folder, batch_size=args.batch, seed=0)
    results.append({"source": "image folder", "size": 64,
                    "note": f"{args.folder_images} JPEGs 96x128, decoded, cropped, resized",
                    **time_pipeline(dataset, args.cached_seconds)})
    return results


# -------------------------------------------------------------------- report
def report(info, args, pipelines, training):
    rows = []
    for p in pipelines:
        t = training[p["size"]]
        rows.append(
            f"| {p['source']} {p['size']}x{p['size']} | {p['first_rate']:,.0f} "
            f"| {p['cached_rate']:,.0f} | {t['images_per_s']:.1f} "
            f"| {p['first_rate'] / t['images_per_s']:,.0f}x "
            f"| {p['cached_rate'] / t['images_per_s']:,.0f}x "
            f"| {p['note']}; first pass {p['first_images']} images in "
            f"{p['first_s']:.2f} s, cached {p['epochs']} epochs in {p['cached_s']:.1f} s |"
        )
    target = 10.0
    def lowest(key):
        return min(p[key] / training[p["size"]]["images_per_s"] for p in pipelines)

    worst, worst_first = lowest("cached_rate"), lowest("first_rate")
    lines = [""] + header_lines(info) + [
        f"Training: `DiffusionModel(NaiveUnet((H, W, 3), n_feat={args.n_feat}))`, Adam, "
        f"`fit`, batch {args.batch}, in-memory random data; "
        + "; ".join(f"{s}x{s}: {t['step_s'] * 1e3:.0f} ms/step over {t['steps']} steps"
                    for s, t in sorted(training.items())),
        f"Lowest ratio pipeline / training: cached (every epoch after the first) "
        f"{worst:,.0f}x, target >= {target:.0f}x: " + ("met" if worst >= target else "NOT met")
        + f"; first pass (once per run) {worst_first:,.0f}x",
        "",
        "| Source | Pipeline img/s, first pass (uncached) | Pipeline img/s, cached "
        "| Training img/s | Ratio first / training | Ratio cached / training | Note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ] + rows
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    info = machine_info()
    start, cpu_start = time.perf_counter(), busy_cpu_seconds()
    keras.utils.set_random_seed(0)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as workdir:
        pipelines = bench_pipelines(args, workdir)

    training = {}
    for i, size in enumerate(sorted({p["size"] for p in pipelines})):
        steps = args.train_steps[min(i, len(args.train_steps) - 1)]
        log(f"training {size}x{size}, n_feat {args.n_feat}, batch {args.batch}, "
            f"{steps} timed steps")
        training[size] = bench_training(size, args.n_feat, args.batch, steps,
                                        args.warmup_steps, run_eagerly=args.quick)
        training[size]["steps"] = steps

    finish_info(info, start, cpu_start)
    log(f"done in {info['seconds']:.0f} s")
    report(info, args, pipelines, training)


if __name__ == "__main__":
    main()
