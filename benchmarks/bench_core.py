"""Core benchmark of keras_ddpm: training throughput and sampler speed, on this machine.

One command measures, side by side in one process, and prints a Markdown table
of figures and ratios at the end:

1. Training: images/s and ms/step of `DiffusionModel(NaiveUnet(size, n_feat))`
   with Adam, through `model.fit` on an in-memory `tf.data` dataset of random
   images. A first short `fit` call traces the train function (warm-up); a
   second `fit` call is timed (wall time of its epoch / steps; the median of
   the per-batch times from a callback is printed too).
   The network's forward FLOPs per image are counted analytically from the
   shapes seen in one forward pass: for each Conv2D and Dense,
   2 * kh * kw * cin * cout * out_h * out_w (Dense: 2 * cin * cout); for each
   Conv2DTranspose, 2 * kh * kw * cin * cout * in_h * in_w (every input pixel
   scatters one kernel; with stride s this is the "out_h * out_w" formula
   divided by s^2). Normalisation, activations, pooling and additions are not
   counted (a few % at most). Training is taken as 3x the forward FLOPs, and
   the resulting FLOP/s is compared with a ceiling measured in the same run:
   the median time of `tf.matmul` on two 2048x2048 float32 matrices.
2. Sampling, per reverse step at a given batch:
   (a) the lecture's loop (seed 004, `reverse_diffusion.py`): one
       `network.predict([x_t, t], verbose=0)` per step and the update with the
       `ddpm_schedule` tables, eagerly, timed over a few steps after warm-up;
   (a') the same loop with `predict` replaced by an eager `network([x_t, t])`
       call (shows what dropping `predict` alone gives);
   (b) the package's compiled sampler `DiffusionModel.sample(n, seed=0,
       verbose=0)` over all T steps of a model with a small T (time per
       step = total / T), after one warm-up call that traces the loop.
   Then the time to a grid of images with the ancestral sampler over T=1000
   steps (run for real when the estimate is under `--full-ddpm-limit`
   seconds, else estimated as ms/step x 1000, which the table says) against
   DDIM with 50 steps on a T=1000 model (measured after a warm-up call).

Usage:
    python benchmarks/bench_core.py            # default, a few minutes on 2 cores
    python benchmarks/bench_core.py --quick    # smoke test, < 60 s
    python benchmarks/bench_core.py --n-feat 64 --batch 16 --sizes 32 64

All figures are measured when the script runs; nothing is hard-coded.
"""

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from keras import ops  # noqa: E402

from keras_ddpm import DiffusionModel, NaiveUnet, ddpm_schedule  # noqa: E402

LECTURE_T = 1000


# --------------------------------------------------------------------- options
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings, < 60 s")
    parser.add_argument("--n-feat", type=int, default=64, help="NaiveUnet width")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64],
                        help="image sizes (square) for the training benchmark")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, nargs="+", default=[10, 6],
                        help="timed training steps per size (last value repeats)")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="steps of the warm-up fit call (traces the function)")
    parser.add_argument("--batch", type=int, default=16, help="sampler batch")
    parser.add_argument("--extra-batch", type=int, default=64,
                        help="second sampler batch (0: skip); its predict-loop "
                             "steps and T are scaled down by batch / extra-batch")
    parser.add_argument("--sampler-size", type=int, default=32,
                        help="image size for the sampler benchmarks")
    parser.add_argument("--predict-steps", type=int, default=20,
                        help="timed steps of the lecture's predict loop at --batch "
                             "(scaled down for --extra-batch, min 10)")
    parser.add_argument("--sampler-T", type=int, default=50,
                        help="T of the model whose full compiled DDPM run is timed "
                             "at --batch (scaled down for --extra-batch, min 20)")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--grid-T", type=int, default=LECTURE_T,
                        help="T of the model for the DDPM vs DDIM grid timing")
    parser.add_argument("--full-ddpm-limit", type=float, default=60.0,
                        help="run the full DDPM grid for real when the estimate "
                             "is below this many seconds")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_feat = 16
        args.sizes = [32]
        args.train_batch = 8
        args.train_steps = [3]
        args.warmup_steps = 1
        args.batch = 4
        args.extra_batch = 0
        args.predict_steps = 5
        args.sampler_T = 10
        args.ddim_steps = 10
        args.grid_T = 100
        args.matmul_size = 512
        args.matmul_repeats = 5
    return args


# ------------------------------------------------------------------- machine
def machine_info():
    """CPU model, cores, library versions, date: the header of the report."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load": load,
        "command": "python " + " ".join(sys.argv),
    }


def busy_cpu_seconds():
    """`(all processes, this process)` CPU seconds used so far, from /proc (Linux).

    The difference over the run tells how much CPU other processes took,
    i.e. whether the timings were contended. `None` where /proc is missing.
    """
    try:
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: busy = all but idle, iowait.
        busy = sum(fields) - fields[3] - fields[4]
        with open("/proc/self/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        own = int(stat[11]) + int(stat[12])  # utime, stime
        return busy / tick, own / tick
    except (OSError, ValueError, IndexError):
        return None


def log(message):
    """Print a progress line with the time and the 1-minute load average."""
    load = f", load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"[{time.strftime('%H:%M:%S')}{load}] {message}", flush=True)


# ------------------------------------------------------------------- ceiling
def matmul_ceiling(n, repeats):
    """Median FLOP/s of one float32 `tf.matmul` of two n x n matrices."""
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.matmul(a, b).numpy()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


# --------------------------------------------------------------------- FLOPs
@contextlib.contextmanager
def recorded_shapes(classes):
    """Record `(layer, input_shape, output_shape)` of every call to `classes`."""
    records = []
    originals = {cls: cls.__dict__.get("call") for cls in classes}

    def wrap(original):
        def call(self, inputs, *args, **kwargs):
            outputs = original(self, inputs, *args, **kwargs)
            records.append((self, tuple(inputs.shape), tuple(outputs.shape)))
            return outputs

        return call

    for cls in classes:
        cls.call = wrap(cls.call)
    try:
        yield records
    finally:
        for cls, original in originals.items():
            if original is None:
                del cls.call
            else:
                cls.call = original


def layer_flops(layer, in_shape, out_shape):
    """Multiply-adds x 2 of one Conv2D / Conv2DTranspose / Dense call, per image."""
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw, cout, cin = layer.kernel.shape  # (kh, kw, out, in) for transposed
        return 2 * kh * kw * cin * cout * in_shape[1] * in_shape[2]
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin, cout = layer.kernel.shape
        return 2 * kh * kw * cin * cout * out_shape[1] * out_shape[2]
    cin, cout = layer.kernel.shape  # Dense
    return 2 * cin * cout


def forward_flops(network):
    """Analytic forward FLOPs per image of `network` (one eager call, batch 1)."""
    classes = (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense)
    x = ops.zeros((1,) + tuple(network.inputs[0].shape[1:]))
    t = ops.full((1, 1), 0.5)
    with recorded_shapes(classes) as records:
        network([x, t], training=False)
    return sum(layer_flops(*record) for record in records)


# ------------------------------------------------------------------ training
class BatchTimer(keras.callbacks.Callback):
    """Wall time of each training batch and of the whole epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.batch_times, self.epoch_start = [], time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.batch_times.append(time.perf_counter() - self._start)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_time = time.perf_counter() - self.epoch_start


def random_image_dataset(size, batch, steps, channels=3, seed=0):
    """An in-memory, repeated `tf.data` dataset of random images in [-1, 1]."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch * steps, size, size, channels)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(images).batch(batch, drop_remainder=True).repeat()


def bench_training(size, n_feat, batch, steps, warmup_steps):
    """Images/s of `fit` for one image size, after a warm-up `fit` call."""
    network = NaiveUnet((size, size, 3), n_feat)
    model = DiffusionModel(network, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    dataset = random_image_dataset(size, batch, steps)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup_steps, verbose=0)
    warmup = time.perf_counter() - start
    timer = BatchTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    step_time = timer.epoch_time / steps
    return {
        "size": size,
        "params": network.count_params(),
        "flops": forward_flops(network),
        "warmup_s": warmup,
        "step_s": step_time,
        "median_batch_s": statistics.median(timer.batch_times),
        "images_per_s": batch / step_time,
    }


# ------------------------------------------------------------------ sampling
def lecture_loop(network, n, steps, warmup, use_predict=True, T=LECTURE_T,
                 beta1=1e-4, beta2=0.02):
    """Seconds per step of the lecture's `model.predict` reverse loop (seed 004).

    Runs `warmup` steps, then times the next `steps` steps, from i = T down.
    With `use_predict=False` the network is called directly (eager
    `network([x_t, t])`), which separates `predict`'s per-call overhead from
    the network's compute.
    """
    sched = ddpm_schedule(beta1, beta2, T)
    shape = (n,) + tuple(network.inputs[0].shape[1:])
    x_t = keras.random.normal(shape)

    def step(i, x_t):
        z = keras.random.normal(shape) if i > 0 else 0
        t = ops.numpy.repeat(i / T, n)
        if use_predict:
            eps = network.predict([x_t, t], verbose=0)
        else:
            eps = network([x_t, t], training=False)
        return (
            sched["oneover_sqrtalpha"][i] * (x_t - sched["mab_over_sqrtmab"][i] * eps)
            + sched["sqrt_beta_t"][i] * z
        )

    for i in range(T, T - warmup, -1):
        x_t = step(i, x_t)
    start = time.perf_counter()
    for i in range(T - warmup, T - warmup - steps, -1):
        x_t = step(i, x_t)
    ops.convert_to_numpy(x_t)
    return (time.perf_counter() - start) / steps


def timed_sample(model, n, **kwargs):
    """Wall seconds of one `model.sample(n, seed=0, verbose=0, **kwargs)`."""
    start = time.perf_counter()
    model.sample(n, seed=0, verbose=0, **kwargs)
    return time.perf_counter() - start


def compiled_sampler(network, n, T):
    """Seconds per step of the compiled DDPM sampler over all T steps.

    Returns `(first_call_s, per_step_s)`: the first call includes tracing.
    """
    model = DiffusionModel(network, T=T)
    first = timed_sample(model, n)
    return first, timed_sample(model, n) / T


def bench_sampler(size, n_feat, n, T, predict_steps):
    network = NaiveUnet((size, size, 3), n_feat)
    predict_s = lecture_loop(network, n, predict_steps, warmup=2)
    eager_s = lecture_loop(network, n, predict_steps, warmup=2, use_predict=False)
    first_s, compiled_s = compiled_sampler(network, n, T)
    return {
        "batch": n,
        "T": T,
        "predict_steps": predict_steps,
        "predict_step_s": predict_s,
        "eager_step_s": eager_s,
        "compiled_first_s": first_s,
        "compiled_step_s": compiled_s,
        "flops": forward_flops(network),
    }


def bench_grid(size, n_feat, n, T, ddim_steps, ddpm_step_s, full_limit):
    """Seconds to n images: DDPM over T steps vs DDIM over `ddim_steps`."""
    model = DiffusionModel(NaiveUnet((size, size, 3), n_feat), T=T)
    ddim_first = timed_sample(model, n, steps=ddim_steps, sampler="ddim")
    ddim = timed_sample(model, n, steps=ddim_steps, sampler="ddim")
    estimate = ddpm_step_s * T
    if estimate <= full_limit:
        timed_sample(model, n)  # warm-up: traces the DDPM loop
        ddpm, ddpm_measured = timed_sample(model, n), True
    else:
        ddpm, ddpm_measured = estimate, False
    return {"ddim_first_s": ddim_first, "ddim_s": ddim, "ddpm_s": ddpm,
            "ddpm_measured": ddpm_measured}


# -------------------------------------------------------------------- report
def fmt_rate(value, unit):
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def ceiling_rows(args, ceilings):
    ceiling = max(ceilings)
    return [(f"Matmul ceiling (tf.matmul {args.matmul_size}x{args.matmul_size} fp32, median)",
             fmt_rate(ceiling, "FLOP/s"),
             "best of start / end of run: " + " / ".join(fmt_rate(c, "FLOP/s") for c in ceilings))]


def training_rows(args, training, ceiling):
    rows = []
    for r in training:
        s, tb = r["size"], args.train_batch
        train_rate = 3 * r["flops"] * r["images_per_s"]
        rows += [
            (f"Forward FLOPs/image, {s}x{s}, n_feat={args.n_feat} ({r['params'] / 1e6:.2f} M params)",
             fmt_rate(r["flops"], "FLOP"), "analytic, Conv2D/Conv2DTranspose/Dense only"),
            (f"Training {s}x{s}, batch {tb}: ms/step", f"{r['step_s'] * 1e3:.0f}",
             f"epoch wall / steps; median batch {r['median_batch_s'] * 1e3:.0f} ms; "
             f"warm-up fit {r['warmup_s']:.0f} s"),
            (f"Training {s}x{s}, batch {tb}: images/s", f"{r['images_per_s']:.1f}", "model.fit, Adam"),
            (f"Training {s}x{s}: FLOP/s (3x forward)", fmt_rate(train_rate, "FLOP/s"),
             f"{train_rate / ceiling:.0%} of matmul ceiling"),
        ]
    return rows


def sampler_rows(args, samplers, ceiling):
    rows = []
    for r in samplers:
        b, sz = r["batch"], args.sampler_size
        ratio = r["predict_step_s"] / r["compiled_step_s"]
        rate = r["flops"] * b / r["compiled_step_s"]
        rows += [
            (f"Sampler {sz}x{sz}, batch {b}: (a) lecture predict loop, ms/step",
             f"{r['predict_step_s'] * 1e3:.0f}", f"{r['predict_steps']} steps after 2 warm-up"),
            (f"Sampler {sz}x{sz}, batch {b}: (a') same loop, eager `network(...)`, ms/step",
             f"{r['eager_step_s'] * 1e3:.0f}",
             "`predict` replaced by an eager call (op by op, no tf.function)"),
            (f"Sampler {sz}x{sz}, batch {b}: (b) compiled DiffusionModel.sample, ms/step",
             f"{r['compiled_step_s'] * 1e3:.0f}",
             f"full DDPM run, T={r['T']}, after a warm-up call "
             f"(first call {r['compiled_first_s']:.1f} s incl. tracing)"),
            (f"Sampler batch {b}: speed-up per step, (b) vs (a)", f"{ratio:.2f}x",
             "target >= 1.3x: " + ("met" if ratio >= 1.3 else "NOT met")),
            (f"Sampler batch {b}: (b) forward FLOP/s", fmt_rate(rate, "FLOP/s"),
             f"{rate / ceiling:.0%} of matmul ceiling"),
        ]
    return rows


def grid_rows(args, samplers, grid):
    n, T, k = samplers[0]["batch"], args.grid_T, args.ddim_steps
    lecture_grid = samplers[0]["predict_step_s"] * (T + 1)
    ddpm_note = "measured" if grid["ddpm_measured"] else "estimated: (b) ms/step x T"
    return [
        (f"Grid of {n}: DDPM T={T}, lecture predict loop", f"{lecture_grid:.0f} s",
         "estimated: (a) ms/step x (T+1) calls"),
        (f"Grid of {n}: DDPM T={T}, compiled", f"{grid['ddpm_s']:.0f} s", ddpm_note),
        (f"Grid of {n}: DDIM {k} steps, compiled", f"{grid['ddim_s']:.1f} s",
         f"measured after a warm-up call (first call {grid['ddim_first_s']:.1f} s)"),
        (f"Grid: DDIM {k} vs compiled DDPM {T}", f"{grid['ddpm_s'] / grid['ddim_s']:.0f}x faster", ""),
        (f"Grid: DDIM {k} vs lecture loop DDPM {T}", f"{lecture_grid / grid['ddim_s']:.0f}x faster", ""),
    ]


def header_lines(info):
    def fmt_load(avg):
        return ", ".join(f"{v:.2f}" for v in avg) if avg else "n/a"

    return [
        f"Command: `{info['command']}`",
        f"Machine: {info['cpu']}, {info['cores']} cores, GPUs: {info['gpus']}; "
        f"Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}",
        f"Date: {info['date']}; run time {info['seconds']:.0f} s; load average "
        f"(1, 5, 15 min) at start {fmt_load(info['load'])}, at end "
        f"{fmt_load(info['load_end'])} (the end includes this run)",
        "Contention: other processes used "
        + ("n/a" if info["others_cpu"] is None else
           f"{info['others_cpu']:.0f} CPU-s during the run, "
           f"{info['others_cpu'] / (info['seconds'] * info['cores']):.0%} of the machine"),
    ]


def report(info, args, ceilings, training, samplers, grid):
    """Print the header and the Markdown table of figures and ratios."""
    ceiling = max(ceilings)
    rows = (ceiling_rows(args, ceilings) + training_rows(args, training, ceiling)
            + sampler_rows(args, samplers, ceiling) + grid_rows(args, samplers, grid))
    lines = [""] + header_lines(info) + ["", "| Measurement | Value | Note |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {value} | {note} |" for name, value, note in rows]
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    info = machine_info()
    start, cpu_start = time.perf_counter(), busy_cpu_seconds()
    keras.utils.set_random_seed(0)

    log("matmul ceiling (start)")
    ceilings = [matmul_ceiling(args.matmul_size, args.matmul_repeats)]

    training = []
    for i, size in enumerate(args.sizes):
        steps = args.train_steps[min(i, len(args.train_steps) - 1)]
        log(f"training {size}x{size}, batch {args.train_batch}, {steps} timed steps")
        training.append(bench_training(size, args.n_feat, args.train_batch, steps,
                                       args.warmup_steps))

    samplers = []
    for n in [args.batch] + ([args.extra_batch] if args.extra_batch else []):
        T, predict_steps = args.sampler_T, args.predict_steps
        if n != args.batch:  # Fewer steps at the larger batch: same work.
            T = max(20, T * args.batch // n)
            predict_steps = max(10, predict_steps * args.batch // n)
        log(f"sampler batch {n}: predict loop ({predict_steps} steps) and "
            f"compiled sampler (T={T})")
        samplers.append(bench_sampler(args.sampler_size, args.n_feat, n, T,
                                      predict_steps))

    log(f"grid of {args.batch}: DDIM {args.ddim_steps} vs DDPM {args.grid_T}")
    grid = bench_grid(args.sampler_size, args.n_feat, args.batch, args.grid_T,
                      args.ddim_steps, samplers[0]["compiled_step_s"], args.full_ddpm_limit)

    log("matmul ceiling (end)")
    ceilings.append(matmul_ceiling(args.matmul_size, args.matmul_repeats))
    info["seconds"] = time.perf_counter() - start
    cpu_end = busy_cpu_seconds()
    info["others_cpu"] = (
        None if cpu_start is None or cpu_end is None
        else (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1])
    )
    info["load_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    log(f"done in {info['seconds']:.0f} s")
    report(info, args, ceilings, training, samplers, grid)


if __name__ == "__main__":
    main()
