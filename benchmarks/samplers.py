"""Seconds per image of each sampler at 10, 20 and 50 steps (issue 13).

Untrained network (speed does not depend on the weights): NaiveUnet 32x32x3,
batch 16, T = 1000, TensorFlow, float32. Each row is the median of 3 timed calls
after one warm-up call (tracing). Usage: `python benchmarks/samplers.py [--n-feat 64]`.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_ddpm import DiffusionModel, NaiveUnet  # noqa: E402

SAMPLERS = ("ddim", "dpm++", "dpm++3m", "euler", "heun")


def seconds_per_image(model, n, sampler, steps, repeats=3):
    """Median wall time of `model.sample` divided by `n`, after a warm-up call."""
    model.sample(n, steps=steps, sampler=sampler, seed=0, verbose=0)
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        model.sample(n, steps=steps, sampler=sampler, seed=seed, verbose=0)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-feat", type=int, default=32)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = DiffusionModel(NaiveUnet((32, 32, 3), n_feat=args.n_feat), T=1000)
    print("| sampler | steps | network calls | ms / image |")
    print("| --- | ---: | ---: | ---: |")
    for sampler in SAMPLERS:
        for steps in args.steps:
            calls = 2 * steps - 1 if sampler == "heun" else steps
            ms = 1000 * seconds_per_image(model, args.n, sampler, steps)
            print(f"| {sampler} | {steps} | {calls} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
