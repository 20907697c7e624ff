"""Where keras_ddpm's float32 training step spends its time on this CPU, layer type by layer type.

The lecture's `NaiveUnet` is run once to record every leaf layer (a layer that
holds no other layer: `Conv2D`, `GroupNormalization`, `Conv2DTranspose`, ...)
with the shapes it is called on. Each leaf is then timed alone, forward and
backward (the gradients of its inputs and its weights, in one compiled
`tf.function`), and the times are summed by layer type. Beside them:

- the whole network forward and backward, compiled the same way (the sum of
  the leaves should come close to it; the difference is the glue between them);
- the whole training step of `DiffusionModel` (`fit` on the same batches): the
  network plus the draws, the noising, the loss and the Adam update.

With PyTorch installed, each convolution, normalisation, pooling and
activation is also timed in PyTorch at the same shapes (NCHW, eager, float32),
interleaved with the Keras rows, round after round; the ratio column says how
many times slower keras_ddpm's kernel is (above 1: slower). That shows which
kernels a port should change. torch is a benchmark-only dependency
(`pip install torch==2.13.0+cpu`).

Usage:
    python benchmarks/profile_step.py            # n_feat 64, 32x32, batch 32, 3 rounds
    python benchmarks/profile_step.py --quick    # smoke test: tiny network, 1 round
"""

import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_core  # noqa: E402  (sets the backend and TensorFlow's logging first)
import numpy as np  # noqa: E402
import keras  # noqa: E402

from keras_ddpm import NaiveUnet  # noqa: E402
from torch_parity import TORCH_MISSING, torch  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-feat", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="tiny network, 1 round, run eagerly (a smoke test: tracing the "
                        "50 functions would cost more than running them twice)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_feat, args.batch, args.repeats, args.rounds = 8, 4, 2, 1
    args.eager = args.quick
    return args


# The layers timed one by one; what lies between them (additions, concatenations,
# reshapes, the time embedding's sine) is the whole network's time minus theirs.
LEAF_CLASSES = (
    keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.GroupNormalization,
    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.ReLU,
    keras.layers.Dense,
)


def keras_timer(function, shapes, variables, eager=False):
    """Seconds per forward and backward (gradients of the input and `variables`) of `function`,
    compiled as one `tf.function` (run eagerly with `eager`)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def random(shape):
        return tf.constant(rng.standard_normal(shape).astype("float32"))

    inputs = random(shapes)

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x)
        return tape.gradient(y, [x, variables], output_gradients=tf.ones_like(y))

    step = step if eager else tf.function(step)
    step(inputs)  # Traces.

    def run(repeats):
        start = time.perf_counter()
        for _ in range(repeats):
            step(inputs)
        return (time.perf_counter() - start) / repeats

    return run


def torch_module(layer):
    """The PyTorch module computing `layer`, or None for a layer without a counterpart here."""
    nn = torch.nn
    name = type(layer).__name__
    config = layer.get_config()
    if name in ("Conv2D", "Conv2DTranspose"):
        channels = layer.kernel.shape[2] if name == "Conv2D" else layer.kernel.shape[3]
        kernel, strides = config["kernel_size"], config["strides"]
        if name == "Conv2D":
            padding = "same" if config["padding"] == "same" else 0
            return nn.Conv2d(channels, config["filters"], kernel, strides, padding=padding)
        return nn.ConvTranspose2d(channels, config["filters"], kernel, strides)
    if name == "GroupNormalization":
        return nn.GroupNorm(config["groups"], layer.gamma.shape[0])
    if name == "MaxPooling2D":
        return nn.MaxPool2d(config["pool_size"], config["strides"])
    if name == "AveragePooling2D":
        return nn.AvgPool2d(config["pool_size"], config["strides"])
    if name == "ReLU":
        return nn.ReLU()
    return None


def torch_timer(module, shape):
    """Seconds per forward and backward of `module` at the NHWC `shape`, in NCHW eager PyTorch."""
    nchw = (shape[0], shape[3], shape[1], shape[2])
    x = torch.randn(nchw, requires_grad=True)

    def step():
        y = module(x)
        y.backward(torch.ones_like(y))

    step()

    def run(repeats):
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        return (time.perf_counter() - start) / repeats

    return run


def build_rows(args):
    """`{row: [(keras_run, torch_run or None)]}`: the leaves by type, the network, the step."""
    network = NaiveUnet((args.size, args.size, 3), n_feat=args.n_feat)
    x = keras.ops.zeros((args.batch, args.size, args.size, 3))
    t = keras.ops.full((args.batch, 1), 0.5, "float32")
    rows = collections.defaultdict(list)
    with bench_core.recorded_shapes(LEAF_CLASSES) as records:
        network([x, t])
    for layer, shape, _ in records:
        module = torch_module(layer) if torch is not None else None
        torch_run = torch_timer(module, shape) if module is not None else None
        keras_run = keras_timer(layer, shape, layer.trainable_variables, args.eager)
        rows[type(layer).__name__].append((keras_run, torch_run))
    rows["(whole network, forward + backward)"] = [
        (keras_timer(lambda inputs: network([inputs, t]), tuple(x.shape),
                     network.trainable_variables, args.eager), None)]
    rows["(whole training step: fit)"] = [(train_step_timer(args), None)]
    return rows


def train_step_timer(args):
    """Seconds per `DiffusionModel` training step (`fit` on `--repeats` batches)."""
    model = bench_core.build_model(args.size, args.n_feat, "float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), run_eagerly=args.eager)
    images = np.random.default_rng(0).uniform(
        -1, 1, (args.batch * args.repeats, args.size, args.size, 3)).astype("float32")
    model.fit(images[: args.batch], batch_size=args.batch, verbose=0)  # Traces.

    def run(repeats):
        timer = bench_core.EpochTimer()
        model.fit(images[: args.batch * repeats], batch_size=args.batch, epochs=1,
                  shuffle=False, verbose=0, callbacks=[timer])
        return timer.seconds / repeats

    return run


def measure(rows, args):
    """`{row: (keras_seconds, torch_seconds or None)}`: medians over rounds of each row's sum."""
    times = {row: ([], []) for row in rows}
    for round_ in range(args.rounds):
        bench_core.log(f"round {round_ + 1}/{args.rounds}")
        for row, runs in rows.items():
            times[row][0].append(sum(keras_run(args.repeats) for keras_run, _ in runs))
            if all(torch_run is not None for _, torch_run in runs):
                times[row][1].append(sum(torch_run(args.repeats) for _, torch_run in runs))
    return {row: (statistics.median(k), statistics.median(p) if p else None)
            for row, (k, p) in times.items()}


def table(rows, times):
    step = times["(whole training step: fit)"][0]
    lines = ["| Layer type | Calls | keras_ddpm ms | Share of the step | PyTorch ms | keras / PyTorch |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row, (keras_s, torch_s) in sorted(times.items(), key=lambda item: -item[1][0]):
        torch_cells = ["-", "-"] if torch_s is None else [
            f"{1000 * torch_s:.1f}", f"{keras_s / torch_s:.2f}"]
        lines.append(f"| {row} | {len(rows[row])} | {1000 * keras_s:.1f} | "
                     f"{keras_s / step:.0%} | " + " | ".join(torch_cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    keras.config.set_dtype_policy("float32")
    info, started, cpu_start = bench_core.machine_info(), time.perf_counter(), bench_core.busy_cpu_seconds()
    rows = build_rows(args)
    times = measure(rows, args)
    bench_core.finish_info(info, started, cpu_start)
    print("\n" + "\n".join(bench_core.header_lines(info)))
    print(f"NaiveUnet n_feat {args.n_feat}, {args.size}x{args.size}, batch {args.batch}, float32, "
          f"{args.rounds} rounds of {args.repeats} calls per row")
    if torch is None:
        print(f"PyTorch rows {TORCH_MISSING}")
    print(table(rows, times))


if __name__ == "__main__":
    main()
