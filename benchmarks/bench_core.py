"""keras_ddpm's speed benchmark: one command, one table of ratios measured side by side.

Everything is measured in one process, in one run, on the current machine and
Keras backend, and printed last as one Markdown table of comparisons (each
row: what is measured, against what, the ratio, the issue's target):

1. Training images/s of `DiffusionModel(NaiveUnet((size, size, 3), n_feat))`
   with Adam through `model.fit` on in-memory random images, for each
   precision (Keras dtype policy; default float32 and mixed_bfloat16) and each
   (size, n_feat, batch); a first short `fit` call traces or compiles the
   train step (warm-up), a second one is timed (epoch wall time / steps).
   On the TensorFlow backend also XLA (`jit_compile=True`) against the plain
   `tf.function` (the JAX backend always compiles with XLA).
2. FLOPs: the network's forward FLOPs per image, counted analytically from the
   layer shapes of one forward pass (Conv2D and Dense: 2*kh*kw*cin*cout*out_h*
   out_w, Dense 2*cin*cout; Conv2DTranspose: the same with the input's h*w;
   normalisation, activations and pooling not counted, a few % at most);
   training is taken as 3x forward. Achieved FLOP/s is compared with a matrix
   multiply ceiling measured in the same run (median of one compiled n x n
   `ops.matmul`, in float32 and bfloat16, at the start and the end of the run;
   the higher is used).
3. Sampler time per reverse step at batch 16 and 64: the package's compiled
   `DiffusionModel.sample` (one compiled loop over all T steps of a small-T
   model, after a warm-up call that traces it) against the lecture's loop
   (seed 004, `reverse_diffusion.py`: one `network.predict([x_t, t])` per step
   and the update with the `ddpm_schedule` tables, eagerly). Also the compiled
   sampler in bfloat16 and, on TensorFlow, with XLA.
4. Time to a grid of 16 images: DDIM with 50 steps (measured) against the
   ancestral DDPM sampler over T=1000 steps (measured when the estimate is
   under `--full-ddpm-limit` seconds, else extrapolated from the measured
   compiled time per step; the table says which).
5. Input pipeline (`keras_ddpm.data.load_dataset`, via bench_data.py) images/s
   against the training consumption measured in 1.; needs TensorFlow (for
   tf.data) and is skipped, with a note, where it is not installed.

Usage:
    python benchmarks/bench_core.py                   # CPU defaults, a few minutes on 2 cores
    python benchmarks/bench_core.py --quick           # smoke test (tests/test_benchmarks.py)
    KERAS_BACKEND=jax python benchmarks/bench_core.py --gpu   # the GPU settings
    python benchmarks/bench_core.py --help            # every option

`--gpu` measures training at 32x32 and 64x64, n_feat 64 and 128, batch 64 and
256, float32 and bfloat16, a 8192 x 8192 matmul ceiling, and the sampler at
batch 16 and 64. All figures are measured when the script runs; nothing is
hard-coded.
"""

import argparse
import contextlib
import datetime
import itertools
import os
import platform
import statistics
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import ops  # noqa: E402

from keras_ddpm import DiffusionModel, NaiveUnet, ddpm_schedule  # noqa: E402
from keras_ddpm.sampling import compile_function  # noqa: E402
from keras_ddpm.precision import dtype_policy  # noqa: E402

BACKEND = keras.backend.backend()
LECTURE_T = 1000
FLOAT32, BFLOAT16 = "float32", "mixed_bfloat16"


# --------------------------------------------------------------------- options
# The GPU measurement: sizes, widths and batches of real training runs.
GPU_SETTINGS = dict(
    sizes=[32, 64], n_feats=[64, 128], train_batches=[64, 256], train_steps=20,
    warmup_steps=2, sampler_T=200, predict_steps=50, matmul_size=8192, matmul_repeats=20,
)
# A smoke test: every code path on a tiny network.
QUICK_SETTINGS = dict(
    sizes=[32], n_feats=[8], train_batches=[8], train_steps=2, warmup_steps=1, batches=[4],
    predict_steps=2, sampler_T=10, ddim_steps=5, grid_T=20, matmul_size=64,
    matmul_repeats=3, xla=False,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU settings: sizes 32 64, n_feat 64 128, batch 64 256, "
                             "matmul 8192, more timed steps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32],
                        help="training image sizes (square)")
    parser.add_argument("--n-feats", type=int, nargs="+", default=[64],
                        help="NaiveUnet widths for training; the first is used for sampling")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[32],
                        help="training batch sizes")
    parser.add_argument("--precisions", nargs="+", default=[FLOAT32, BFLOAT16],
                        choices=[FLOAT32, BFLOAT16, "mixed_float16"],
                        help="Keras dtype policies to train (and sample) with; the first "
                             "two are compared")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="steps of the warm-up fit call (traces the train step)")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                        help="TensorFlow backend: also time training and sampling with XLA")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64],
                        help="sampler batches; the first is the grid's")
    parser.add_argument("--sampler-size", type=int, default=32,
                        help="image size for the sampler benchmarks")
    parser.add_argument("--predict-steps", type=int, default=20,
                        help="timed steps of the lecture's predict loop at the first batch "
                             "(scaled down for larger batches, min 10)")
    parser.add_argument("--sampler-T", type=int, default=50,
                        help="T of the model whose whole compiled DDPM run is timed at the "
                             "first batch (scaled down for larger batches, min 20)")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--grid-T", type=int, default=LECTURE_T,
                        help="T of the model for the DDPM vs DDIM grid timing")
    parser.add_argument("--full-ddpm-limit", type=float, default=60.0,
                        help="run the full DDPM grid for real when the estimate is below "
                             "this many seconds")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=20)
    parser.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True,
                        help="time the input pipeline (needs TensorFlow)")
    # --gpu and --quick change the defaults; options given explicitly still win.
    known, _ = parser.parse_known_args(argv)
    if known.gpu:
        parser.set_defaults(**GPU_SETTINGS)
    if known.quick:
        parser.set_defaults(**QUICK_SETTINGS)
    args = parser.parse_args(argv)
    return args


# ------------------------------------------------------------------- machine
def accelerators():
    """Names of the backend's GPUs (or TPUs); empty on a CPU-only machine."""
    if BACKEND == "jax":
        import jax

        return [d.device_kind for d in jax.devices() if d.platform != "cpu"]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    return []


def machine_info():
    """CPU, accelerators, library versions, date, command: the report's header."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    versions = {"keras": keras.__version__}
    for name in ("tensorflow", "jax", "torch"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    gpus = accelerators()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpus": len(gpus),
        "gpu_names": sorted(set(gpus)),
        "backend": BACKEND,
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "command": " ".join(
            [f"KERAS_BACKEND={BACKEND}", "python"] + [os.path.relpath(sys.argv[0])] + sys.argv[1:]
        ),
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


def finish_info(info, start, cpu_start):
    """Adds the run time, the end load and other processes' CPU seconds to `info`."""
    info["seconds"] = time.perf_counter() - start
    cpu_end = busy_cpu_seconds()
    info["others_cpu"] = (
        None if cpu_start is None or cpu_end is None
        else (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1])
    )
    info["load_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None


def log(message):
    """Print a progress line with the time and the 1-minute load average."""
    load = f", load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"[{time.strftime('%H:%M:%S')}{load}] {message}", flush=True)


def build_model(size, n_feat, precision=FLOAT32, T=LECTURE_T):
    """`DiffusionModel(NaiveUnet((size, size, 3), n_feat), T)` under `precision`."""
    with dtype_policy(precision):
        return DiffusionModel(NaiveUnet((size, size, 3), n_feat), T=T, seed=0)


# ------------------------------------------------------------------- ceiling
def matmul_ceiling(n, repeats, dtype="float32"):
    """Median FLOP/s of one compiled n x n `ops.matmul` in `dtype`.

    The product is summed inside the compiled function so that reading back
    one number waits for it without copying the matrix to the host.
    """
    rng = np.random.default_rng(0)
    a = ops.cast(ops.convert_to_tensor(rng.standard_normal((n, n), np.float32)), dtype)
    b = ops.cast(ops.convert_to_tensor(rng.standard_normal((n, n), np.float32)), dtype)
    product_sum = compile_function(lambda a, b: ops.cast(ops.sum(ops.matmul(a, b)), "float32"))
    ops.convert_to_numpy(product_sum(a, b))  # warm-up: compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ops.convert_to_numpy(product_sum(a, b))
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
class EpochTimer(keras.callbacks.Callback):
    """Wall time of the epoch (Keras syncs the device before `on_epoch_end`).

    No per-batch hooks: they would make Keras wait for every step on a GPU.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def bench_training(size, n_feat, batch, steps, warmup_steps, precision=FLOAT32,
                   jit_compile="auto", run_eagerly=False):
    """Images/s of `fit` on in-memory random images, after a warm-up `fit` call
    (`run_eagerly`: for smoke tests, whose few steps cost less than tracing them)."""
    model = build_model(size, n_feat, precision)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit_compile,
                  run_eagerly=run_eagerly)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch * steps, size, size, 3)).astype("float32")
    start = time.perf_counter()
    model.fit(images[: batch * warmup_steps], batch_size=batch, epochs=1, shuffle=False,
              verbose=0)
    warmup = time.perf_counter() - start
    timer = EpochTimer()
    model.fit(images, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    step_time = timer.seconds / steps
    return {
        "size": size,
        "n_feat": n_feat,
        "batch": batch,
        "precision": precision,
        "jit_compile": model.jit_compile,
        "params": model.network.count_params(),
        "flops": forward_flops(model.network),
        "steps": steps,
        "warmup_s": warmup,
        "step_s": step_time,
        "images_per_s": batch / step_time,
    }


# ------------------------------------------------------------------ sampling
def lecture_loop(network, n, steps, warmup, T=LECTURE_T, beta1=1e-4, beta2=0.02):
    """Seconds per step of the lecture's `model.predict` reverse loop (seed 004).

    Runs `warmup` steps, then times the next `steps` steps, from i = T down.
    """
    sched = ddpm_schedule(beta1, beta2, T)
    shape = (n,) + tuple(network.inputs[0].shape[1:])
    x_t = keras.random.normal(shape)

    def step(i, x_t):
        z = keras.random.normal(shape) if i > 0 else 0
        t = ops.numpy.repeat(i / T, n)
        eps = network.predict([x_t, t], verbose=0)
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


def compiled_step(network, n, T, jit_compile=None):
    """`(first_call_s, per_step_s)` of the compiled DDPM sampler over all T steps.

    The first call includes tracing; `jit_compile=None` keeps Keras' auto.
    """
    model = DiffusionModel(network, T=T)
    if jit_compile is not None:
        model.jit_compile = jit_compile
    first = timed_sample(model, n)
    return first, timed_sample(model, n) / T


def bench_sampler(size, n_feat, n, T, predict_steps, precisions, xla):
    """Lecture loop and compiled sampler ms/step at batch `n` (+ bf16, XLA variants)."""
    network = build_model(size, n_feat).network
    result = {"batch": n, "T": T, "predict_steps": predict_steps,
              "flops": forward_flops(network)}
    result["predict_step_s"] = lecture_loop(network, n, predict_steps, warmup=2)
    result["compiled_first_s"], result["compiled_step_s"] = compiled_step(network, n, T)
    for precision in precisions[1:2]:
        other = build_model(size, n_feat, precision).network
        other.set_weights(network.get_weights())
        result["precision"] = precision
        _, result["precision_step_s"] = compiled_step(other, n, T)
    if xla:
        _, result["xla_step_s"] = compiled_step(network, n, T, jit_compile=True)
    return result


def bench_grid(size, n_feat, n, T, ddim_steps, ddpm_step_s, full_limit):
    """Seconds to n images: DDPM over T steps vs DDIM over `ddim_steps`."""
    model = build_model(size, n_feat, T=T)
    ddim_first = timed_sample(model, n, steps=ddim_steps, sampler="ddim")
    ddim = timed_sample(model, n, steps=ddim_steps, sampler="ddim")
    estimate = ddpm_step_s * T
    if estimate <= full_limit:
        timed_sample(model, n)  # warm-up: traces the DDPM loop
        ddpm, ddpm_measured = timed_sample(model, n), True
    else:
        ddpm, ddpm_measured = estimate, False
    return {"n": n, "T": T, "ddim_steps": ddim_steps, "ddim_first_s": ddim_first,
            "ddim_s": ddim, "ddpm_s": ddpm, "ddpm_measured": ddpm_measured}


# ------------------------------------------------------------------ pipeline
def bench_pipelines(quick):
    """bench_data.py's `load_dataset` timings, or the reason they were skipped."""
    try:
        import tensorflow  # noqa: F401
        import tensorflow_datasets  # noqa: F401
    except ImportError as error:
        return None, f"skipped: {error} (the tf.data pipeline needs TensorFlow)"
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_data

    settings = types.SimpleNamespace(
        batch=64, mock_examples=512 if quick else 4096, folder_images=64 if quick else 512,
        cached_seconds=1.0 if quick else 5.0,
    )
    with tempfile.TemporaryDirectory(prefix="bench_core_") as workdir:
        return bench_data.bench_pipelines(settings, workdir), None


# -------------------------------------------------------------------- report
def fmt_rate(value, unit):
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def verdict(value, target):
    """'>= 1.3x: met' style text, or '' without a target."""
    if target is None:
        return ""
    return f">= {target:g}x: " + ("met" if value >= target else "NOT met")


def short(precision):
    return {FLOAT32: "fp32", BFLOAT16: "bf16", "mixed_float16": "fp16"}[precision]


def ceiling_rows(args, ceilings):
    rows = []
    for dtype, values in ceilings.items():
        rows.append((f"Matmul ceiling {args.matmul_size}x{args.matmul_size} {dtype}",
                     fmt_rate(max(values), "FLOP/s"), "", "", "",
                     "median of compiled `ops.matmul`; start / end of run: "
                     + " / ".join(fmt_rate(v, "FLOP/s") for v in values)))
    return rows


def training_rows(args, training, ceilings, gpu):
    rows = []
    configs = sorted({(r["size"], r["n_feat"], r["batch"]) for r in training})
    for size, n_feat, batch in configs:
        runs = {r["precision"]: r for r in training
                if (r["size"], r["n_feat"], r["batch"]) == (size, n_feat, batch)
                and r.get("xla") is None}
        base = runs[args.precisions[0]]
        what = f"{size}x{size}, n_feat {n_feat}, batch {batch}"
        fractions = []
        for precision, r in runs.items():
            dtype = "bfloat16" if precision == BFLOAT16 else "float32"
            if dtype in ceilings and precision != "mixed_float16":
                rate = 3 * r["flops"] * r["images_per_s"]
                fractions.append(f"{short(precision)} {fmt_rate(rate, 'FLOP/s')} = "
                                 f"{rate / max(ceilings[dtype]):.0%} of the {dtype} matmul "
                                 "ceiling")
        note = (f"{fmt_rate(base['flops'], 'FLOP')} forward/image, "
                f"{base['params'] / 1e6:.2f} M params; " + "; ".join(fractions))
        if gpu and (size, batch) == (64, 256) and BFLOAT16 in runs:
            rate = 3 * runs[BFLOAT16]["flops"] * runs[BFLOAT16]["images_per_s"]
            fraction = rate / max(ceilings["bfloat16"])
            note += f"; target >= 30% of the bf16 peak: {'met' if fraction >= 0.3 else 'NOT met'}"
        if len(args.precisions) > 1:
            other = runs[args.precisions[1]]
            ratio = other["images_per_s"] / base["images_per_s"]
            rows.append((f"Training images/s, {what}: {short(other['precision'])} vs "
                         f"{short(base['precision'])}",
                         f"{other['images_per_s']:.1f}", f"{base['images_per_s']:.1f}",
                         f"{ratio:.2f}x", verdict(ratio, 2.0 if gpu else 1.3), note))
        else:
            rows.append((f"Training images/s, {what}: {short(base['precision'])}",
                         f"{base['images_per_s']:.1f}", "", "", "", note))
        for precision in args.precisions[2:]:
            r = runs[precision]
            rows.append((f"Training images/s, {what}: {short(precision)} vs "
                         f"{short(base['precision'])}", f"{r['images_per_s']:.1f}",
                         f"{base['images_per_s']:.1f}",
                         f"{r['images_per_s'] / base['images_per_s']:.2f}x", "", ""))
    for r in training:
        if r.get("xla"):
            base = next(b for b in training if b.get("xla") is None
                        and (b["size"], b["n_feat"], b["batch"], b["precision"])
                        == (r["size"], r["n_feat"], r["batch"], r["precision"]))
            rows.append((f"Training images/s, {r['size']}x{r['size']}, n_feat {r['n_feat']}, "
                         f"batch {r['batch']}, {short(r['precision'])}: XLA vs no XLA",
                         f"{r['images_per_s']:.1f}", f"{base['images_per_s']:.1f}",
                         f"{r['images_per_s'] / base['images_per_s']:.2f}x", "",
                         f"`compile(jit_compile=True)`; Keras' auto chose "
                         f"{'XLA' if base['jit_compile'] else 'no XLA'} here"))
    return rows


def sampler_rows(args, samplers, ceilings, gpu):
    rows = []
    for i, r in enumerate(samplers):
        b, sz, n_feat = r["batch"], args.sampler_size, args.n_feats[0]
        ratio = r["predict_step_s"] / r["compiled_step_s"]
        rate = r["flops"] * b / r["compiled_step_s"]
        target = (10.0 if i == 0 else None) if gpu else 1.3
        rows.append((
            f"Sampler ms/step, {sz}x{sz}, n_feat {n_feat}, batch {b}: compiled "
            "`sample` vs the lecture's `predict` loop",
            f"{r['compiled_step_s'] * 1e3:.1f}", f"{r['predict_step_s'] * 1e3:.1f}",
            f"{ratio:.2f}x", verdict(ratio, target),
            f"compiled: all T={r['T']} steps after a warm-up call (first call "
            f"{r['compiled_first_s']:.1f} s); predict: {r['predict_steps']} steps after 2; "
            f"compiled fp32 {fmt_rate(rate, 'FLOP/s')} = "
            f"{rate / max(ceilings['float32']):.0%} of the float32 matmul ceiling"))
        if "precision_step_s" in r:
            ratio = r["compiled_step_s"] / r["precision_step_s"]
            rows.append((f"Sampler ms/step, batch {b}: compiled {short(r['precision'])} vs "
                         "fp32", f"{r['precision_step_s'] * 1e3:.1f}",
                         f"{r['compiled_step_s'] * 1e3:.1f}", f"{ratio:.2f}x", "",
                         "same weights; the network under the dtype policy"))
        if "xla_step_s" in r:
            ratio = r["compiled_step_s"] / r["xla_step_s"]
            rows.append((f"Sampler ms/step, batch {b}: compiled with XLA vs without",
                         f"{r['xla_step_s'] * 1e3:.1f}", f"{r['compiled_step_s'] * 1e3:.1f}",
                         f"{ratio:.2f}x", "", "`tf.function(jit_compile=True)`"))
    return rows


def grid_rows(samplers, grid):
    n, T, k = grid["n"], grid["T"], grid["ddim_steps"]
    lecture = samplers[0]["predict_step_s"] * (T + 1)
    ddpm_note = ("measured" if grid["ddpm_measured"] else
                 f"extrapolated: compiled {samplers[0]['compiled_step_s'] * 1e3:.1f} ms/step "
                 f"(measured above) x {T}")
    return [
        (f"Grid of {n} images: DDIM {k} steps vs compiled DDPM {T} steps",
         f"{grid['ddim_s']:.2f} s", f"{grid['ddpm_s']:.1f} s",
         f"{grid['ddpm_s'] / grid['ddim_s']:.1f}x",
         # The target is for DDIM-50 against DDPM-1000.
         verdict(grid["ddpm_s"] / grid["ddim_s"], 15 if (k, T) == (50, 1000) else None),
         f"DDIM measured after a warm-up call (first call {grid['ddim_first_s']:.1f} s); "
         f"DDPM {ddpm_note}"),
        (f"Grid of {n} images: DDIM {k} steps vs the lecture's `predict` loop, DDPM {T} steps",
         f"{grid['ddim_s']:.2f} s", f"{lecture:.1f} s", f"{lecture / grid['ddim_s']:.1f}x", "",
         f"lecture loop extrapolated: {samplers[0]['predict_step_s'] * 1e3:.1f} ms/step "
         f"(measured above) x {T + 1} calls"),
    ]


def pipeline_rows(pipelines, skipped, training):
    if pipelines is None:
        return [("Input pipeline vs training consumption", "", "", "", "", skipped)]
    rows = []
    fp32 = [r for r in training if r["precision"] == FLOAT32 and r.get("xla") is None]
    for p in pipelines:
        same_size = [r for r in fp32 if r["size"] == p["size"]] or fp32
        fastest = max(same_size, key=lambda r: r["images_per_s"])
        ratio = p["first_rate"] / fastest["images_per_s"]
        rows.append((
            f"Input pipeline {p['source']} {p['size']}x{p['size']} (first, uncached pass) "
            "vs training consumption",
            f"{p['first_rate']:,.0f} img/s", f"{fastest['images_per_s']:.1f} img/s",
            f"{ratio:,.0f}x", verdict(ratio, 10),
            f"{p['note']}; cached passes {p['cached_rate']:,.0f} img/s; training: the fastest "
            f"fp32 run at {fastest['size']}x{fastest['size']} (batch {fastest['batch']})"))
    return rows


def header_lines(info):
    def fmt_load(avg):
        return ", ".join(f"{v:.2f}" for v in avg) if avg else "n/a"

    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    gpus = f"{info['gpus']} ({', '.join(info['gpu_names'])})" if info["gpus"] else "0"
    return [
        f"Command: `{info['command']}`",
        f"Machine: {info['cpu']}, {info['cores']} cores, GPUs: {gpus}; backend "
        f"{info['backend']}; Python {info['python']}, {versions}",
        f"Date: {info['date']}; run time {info['seconds']:.0f} s; load average "
        f"(1, 5, 15 min) at start {fmt_load(info['load'])}, at end "
        f"{fmt_load(info['load_end'])} (the end includes this run)",
        "Contention: other processes used "
        + ("n/a" if info["others_cpu"] is None else
           f"{info['others_cpu']:.0f} CPU-s during the run, "
           f"{info['others_cpu'] / (info['seconds'] * info['cores']):.0%} of the machine"),
    ]


COMPARISON_COLUMNS = ("Comparison", "Measured", "Against", "Ratio", "Target", "Note")


def report(info, rows, columns=COMPARISON_COLUMNS, aligns="lrrrll", notes=()):
    """Print the header, `notes` (lines) and the one Markdown table of `rows`.

    `columns` names the table's columns; `aligns` says per column "l" (left) or
    "r" (right, for numbers).
    """
    rule = ["---:" if align == "r" else "---" for align in aligns]
    lines = [""] + header_lines(info) + list(notes) + [""] + [
        "| " + " | ".join(cells) + " |" for cells in (columns, rule, *rows)
    ]
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    info = machine_info()
    gpu = info["gpus"] > 0
    if args.gpu and not gpu:
        log(f"--gpu: no GPU is visible to the {BACKEND} backend; running the GPU settings "
            "on the CPU")
    xla = args.xla and BACKEND == "tensorflow"
    start, cpu_start = time.perf_counter(), busy_cpu_seconds()
    keras.utils.set_random_seed(0)

    def ceiling_pass(ceilings):
        for dtype in ("float32", "bfloat16"):
            log(f"matmul ceiling {args.matmul_size}x{args.matmul_size} {dtype}")
            ceilings.setdefault(dtype, []).append(
                matmul_ceiling(args.matmul_size, args.matmul_repeats, dtype))

    ceilings = {}
    ceiling_pass(ceilings)

    training = []
    for size, n_feat, batch in itertools.product(args.sizes, args.n_feats, args.train_batches):
        for precision in args.precisions:
            log(f"training {size}x{size}, n_feat {n_feat}, batch {batch}, {precision}, "
                f"{args.train_steps} timed steps")
            training.append(bench_training(size, n_feat, batch, args.train_steps,
                                           args.warmup_steps, precision))
    if xla:
        size, n_feat, batch = args.sizes[0], args.n_feats[0], args.train_batches[0]
        log(f"training {size}x{size}, n_feat {n_feat}, batch {batch}, {FLOAT32}, XLA")
        run = bench_training(size, n_feat, batch, args.train_steps, args.warmup_steps,
                             jit_compile=True)
        training.append(dict(run, xla=True))

    samplers, grid = [], None
    for n in args.batches:
        T, predict_steps = args.sampler_T, args.predict_steps
        if n != args.batches[0]:  # Fewer steps at a larger batch: about the same work.
            T = max(20, T * args.batches[0] // n)
            predict_steps = max(10, predict_steps * args.batches[0] // n)
        log(f"sampler batch {n}: predict loop ({predict_steps} steps) and compiled "
            f"sampler (T={T})")
        samplers.append(bench_sampler(args.sampler_size, args.n_feats[0], n, T,
                                      predict_steps, args.precisions, xla and n == args.batches[0]))
        if grid is None:  # Right after the per-step time it may extrapolate from.
            log(f"grid of {n}: DDIM {args.ddim_steps} vs DDPM {args.grid_T}")
            grid = bench_grid(args.sampler_size, args.n_feats[0], n, args.grid_T,
                              args.ddim_steps, samplers[0]["compiled_step_s"],
                              args.full_ddpm_limit)

    pipelines, skipped = None, "skipped: --no-pipeline"
    if args.pipeline:
        log("input pipeline (bench_data.py)")
        pipelines, skipped = bench_pipelines(args.quick)

    ceiling_pass(ceilings)
    finish_info(info, start, cpu_start)
    log(f"done in {info['seconds']:.0f} s")
    rows = (training_rows(args, training, ceilings, gpu)
            + sampler_rows(args, samplers, ceilings, gpu)
            + grid_rows(samplers, grid)
            + pipeline_rows(pipelines, skipped, training)
            + ceiling_rows(args, ceilings))
    report(info, rows)


if __name__ == "__main__":
    main()
