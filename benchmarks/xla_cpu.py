"""Does XLA pay for `keras-ddpm train`'s networks on this machine? One table of ratios.

For each network that `keras-ddpm train` builds (the default `Unet`, and the
lecture's `NaiveUnet` through `--network naive`, each with its command-line
defaults), two copies are compiled, one with `jit_compile=True` and one without,
and trained in turns on the command line's own input pipeline
(`keras_ddpm.data.load_dataset("shapes", batch_size=16)`): round after round,
each copy fits the same `--steps` batches, so that the machine's swings fall on
both alike. The first fit of each copy (tracing, and XLA's compilation) is timed
apart. Then each copy draws `--n` images with the command line's sampler
(DDIM-50 at eta 1, with its default guidance), in turns again.

The table gives the median images/s of training and seconds of sampling, and
their ratios (XLA / no XLA; above 1 is faster with XLA for training). With
several `--precisions` (e.g. `auto float32` on a CPU with AVX-512 BF16, where
`auto` is mixed bfloat16), every copy of a network takes its turn in the same
rounds, and a note names the fastest training of each network. On the
TensorFlow backend only: the JAX backend always compiles with XLA.

Usage:
    python benchmarks/xla_cpu.py                 # the defaults: 6 rounds of 64 steps
    python benchmarks/xla_cpu.py --networks unet --precisions auto float32
    python benchmarks/xla_cpu.py --quick         # smoke test: tiny networks, 1 round
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_core  # noqa: E402  (sets the backend and TensorFlow's logging first)
import numpy as np  # noqa: E402
import keras  # noqa: E402

from keras_ddpm import cli, data  # noqa: E402
from keras_ddpm.cli import recipe, sampling_options  # noqa: E402

IMAGE_SHAPE = (32, 32, 3)
NETWORKS = {"unet": [], "naive": ["--network", "naive"]}
QUICK_NETWORKS = {"unet": ["--widths", "8,16", "--patch-size", "1"],
                  "naive": ["--network", "naive", "--n-feat", "8"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", choices=tuple(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--precisions", nargs="+", choices=cli.common.PRECISIONS,
                        default=["auto"], help="--precision of each copy (default: auto)")
    parser.add_argument("--steps", type=int, default=64, help="training steps per copy and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n", type=int, default=16, help="images sampled per copy and round")
    parser.add_argument("--sample-rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.n, args.sample_rounds = 2, 1, 2, 1
    return args


def train_args(network, quick, precision="auto"):
    """`keras-ddpm train`'s parsed arguments for one network row."""
    argv = ["train", "--out", "unused", "--precision", precision,
            *(QUICK_NETWORKS if quick else NETWORKS)[network]]
    return cli.build_parser().parse_args(argv)


def compiled_copy(args, jit_compile, steps_per_epoch):
    """The row's model, as `train` builds and compiles it, with XLA on or off."""
    keras.utils.set_random_seed(args.seed)
    model = recipe.new_model(args, IMAGE_SHAPE, num_classes=3)
    model.compile(optimizer=recipe.make_optimizer(args, steps_per_epoch), jit_compile=jit_compile)
    return model


def time_call(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(network, options):
    """`{(precision, jit): {"first_s", "images_per_s": [...], "sample_s": [...]}}`.

    Every copy of `network` (each of `options.precisions`, XLA off and on) fits
    and samples in turn, round after round.
    """
    results, models = {}, {}
    for precision in options.precisions:
        args = train_args(network, options.quick, precision)
        batches = data.load_dataset("shapes", batch_size=args.batch_size, with_labels=True,
                                    seed=0).take(options.steps)
        for jit in (False, True):
            model = compiled_copy(args, jit, options.steps)
            first = time_call(lambda m=model: m.fit(batches, epochs=1, verbose=0))
            models[precision, jit] = model, batches
            results[precision, jit] = {"first_s": first, "images_per_s": [], "sample_s": []}
            bench_core.log(f"{network} {model.dtype_policy.name}, XLA {'on' if jit else 'off'}: "
                           f"first fit {first:.1f} s")
    images = options.steps * args.batch_size
    for round_index in range(options.rounds):
        for key, (model, batches) in models.items():
            seconds = time_call(lambda m=model, b=batches: m.fit(b, epochs=1, verbose=0))
            results[key]["images_per_s"].append(images / seconds)
        bench_core.log(f"{network} round {round_index}: " + ", ".join(
            f"{p} XLA {'on' if jit else 'off'} {r['images_per_s'][-1]:.1f} img/s"
            for (p, jit), r in results.items()))
    labels = np.arange(options.n) % 3
    for round_index in range(options.sample_rounds + 1):  # round 0 traces: not counted
        for (precision, jit), (model, _) in models.items():
            model.jit_compile = jit
            guidance = sampling_options.guidance_options(model, labels)
            seconds = time_call(lambda m=model, g=guidance: m.sample(
                options.n, steps=50, sampler="ddim", eta=1.0, labels=labels, seed=1,
                verbose=0, **g))
            if round_index:
                results[precision, jit]["sample_s"].append(seconds)
            bench_core.log(f"{network} {precision} sampling {options.n}, "
                           f"XLA {'on' if jit else 'off'}: {seconds:.1f} s")
    return results, {p: models[p, False][0].dtype_policy.name for p in options.precisions}


def fastest_training(network, results, policies):
    """A note naming the fastest copy's training and its speed over each other copy's.

    Example:
    >>> r = {("auto", False): {"images_per_s": [300.0]}, ("auto", True): {"images_per_s": [400.0]}}
    >>> fastest_training("unet", r, {"auto": "mixed_bfloat16"})
    'unet: fastest training mixed_bfloat16 XLA on (400.0 img/s): 1.33x mixed_bfloat16 XLA off'
    """
    speeds = {f"{policies[p]} XLA {'on' if jit else 'off'}": statistics.median(r["images_per_s"])
              for (p, jit), r in results.items()}
    best = max(speeds, key=speeds.get)
    others = ", ".join(f"{speeds[best] / v:.2f}x {name}" for name, v in speeds.items()
                       if name != best)
    return f"{network}: fastest training {best} ({speeds[best]:.1f} img/s): {others}"


def table_rows(network, results):
    off, on = results[False], results[True]
    train_off = statistics.median(off["images_per_s"])
    train_on = statistics.median(on["images_per_s"])
    sample_off, sample_on = statistics.median(off["sample_s"]), statistics.median(on["sample_s"])
    return [
        [network, "training images/s (median)", f"{train_on:.1f}", f"{train_off:.1f}",
         f"{train_on / train_off:.2f}x",
         "rounds: " + " / ".join(f"{a:.0f}:{b:.0f}" for a, b in
                                 zip(on["images_per_s"], off["images_per_s"]))],
        [network, "first fit s (tracing, compiling)", f"{on['first_s']:.1f}",
         f"{off['first_s']:.1f}", f"{on['first_s'] / off['first_s']:.2f}x", ""],
        [network, "sampling s, DDIM-50 (median)", f"{sample_on:.2f}", f"{sample_off:.2f}",
         f"{sample_off / sample_on:.2f}x", "ratio: no XLA / XLA (above 1: XLA faster)"],
    ]


def main(argv=None):
    options = parse_args(argv)
    if bench_core.BACKEND != "tensorflow":
        sys.exit("xla_cpu.py: run it on the TensorFlow backend (JAX always compiles with XLA)")
    info = bench_core.machine_info()
    start, cpu_start = time.perf_counter(), bench_core.busy_cpu_seconds()
    rows, fastest = [], []
    for network in options.networks:
        results, policies = measure(network, options)
        for precision, policy in policies.items():
            label = network if options.precisions == ["auto"] else f"{network} {policy}"
            rows += table_rows(label, {jit: results[precision, jit] for jit in (False, True)})
        fastest.append(fastest_training(network, results, policies))
    bench_core.finish_info(info, start, cpu_start)
    notes = [f"{options.rounds} rounds of {options.steps} steps at batch 16, turn by turn; "
             f"sampling {options.n} images, {options.sample_rounds} rounds", *fastest]
    bench_core.report(info, rows, ("Network", "Measure", "XLA", "No XLA", "Ratio", "Note"),
                      "llrrrl", notes)


if __name__ == "__main__":
    main()
