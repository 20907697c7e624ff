"""Sample quality on `shapes`: train each configuration, sample, and let a judge score it.

    python benchmarks/quality.py                          # every row, 500 samples each
    python benchmarks/quality.py --rows naive --samplers ddim:50
    python benchmarks/quality.py --model runs/shapes/model.keras --samplers ddim:50
    python benchmarks/quality.py --samples sweep/*.npz     # score samples made elsewhere
    python benchmarks/quality.py --quick                  # smoke test (tests/test_quality.py)

A row is (training configuration, sampler). Each training configuration is a
`keras-ddpm train` command line on `shapes` (`--rows`, or your own with
`--row NAME="ARGS"`), run once for its budget (`--epochs`; by default the CLI's
own, i.e. the README's main command); every sampler of `--samplers` then draws
`--n` images from the saved model. `--model FILE.keras` scores a model you
trained yourself, without training; `--samples FILE.npz` scores every image
array in the file (`keras-ddpm sample --npz`, `recipe_sweep.py`), without sampling.

Each row reports, from the judge of `shapes_judge.py` (trained once and cached,
with the real features and floors, in `--cache-dir`):

- the valid-sample rate (judge confidence >= 0.9 for a combination that occurs
  in the data; the "real data" row shows what real held-out images score);
- the worst relative deviation of an attribute value's frequency among the
  valid samples from the data's, flagged when beyond +-50%;
- the Fréchet distance in the judge's features to held-out real images, divided
  by that of another real set of the same n (the floor): compare only at equal n;
- the wall time of training (the whole CLI run) and of sampling.

It writes a PNG per row (samples beside real images, 4x nearest-neighbour) and
`results.json` to `--out-dir`, and prints one Markdown table last.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

# bench_core sets TF_CPP_MIN_LOG_LEVEL and KERAS_BACKEND before importing TensorFlow.
import bench_core  # noqa: E402
from bench_core import busy_cpu_seconds, finish_info, log, machine_info  # noqa: E402
import numpy as np  # noqa: E402
import keras  # noqa: E402
from PIL import Image  # noqa: E402

import keras_ddpm  # noqa: E402
from keras_ddpm import diffusion, plotting  # noqa: E402
import shapes_judge  # noqa: E402
from sampler_spec import (  # noqa: E402
    parse_sampler, sampler_label, sampler_text_error, sampling_conditions,
)

# Training configurations: `keras-ddpm train` arguments on top of the CLI defaults.
ROWS = {
    # The lecture's NaiveUnet, unconditional as in the lecture, without and with the EMA.
    "naive": ["--network", "naive", "--ema", "none", "--unconditional"],
    "naive-ema": ["--network", "naive", "--unconditional"],
    # The CLI default: keras_ddpm.Unet with the recipe (EMA included), conditional on
    # the shapes' classes, sampled with classifier-free guidance (--guidance-scales).
    "unet": [],
    "unet-uncond": ["--unconditional"],
    "unet-noema": ["--ema", "none"],
}
# Rows that need `keras_ddpm.Unet` (issue 12); skipped with a message without it.
UNET_ROWS = ("unet", "unet-uncond", "unet-noema")

# Keep the CLI's own outputs (grids during training, the final samples.png) cheap.
CLI_OUTPUT_ARGS = ["--n-samples", "4", "--sample-steps", "10", "--grid-steps", "5"]

QUICK = dict(
    n=32,
    rows=["naive"],
    samplers=["ddpm", "ddim:5:1"],  # DDIM at eta 1: the NAME:STEPS:ETA path, end to end
    train_args=["--epochs", "1", "--num-examples", "16", "--T", "20", "--n-feat", "8",  # one step
                "--calibration-samples", "8"],
    # 5 epochs, not 3: at 3 the judge's seed decided whether it accepted 11% or 61% of real
    # images (an Intel Xeon, 2026-11-26); at 5, seven seeds gave 0.875-0.97, in 12-16 s.
    judge=shapes_judge.JudgeSettings(num_images=1500, epochs=5, batch_size=32, reference_size=400),
)

# Images per sampling chunk: on 2 CPU cores a step costs about 10 ms per image at
# 50-125 images and 15-20 ms at 500 (measured with NaiveUnet, n_feat 16).
SAMPLE_BATCH = 100

SCALE = 4  # Enlargement of the PNG grids (nearest neighbour).
GRID_IMAGES = 64


# Fast solvers sampled by default where `model.sample` knows them (issue 13); any
# other sampler name runs when asked for with --samplers NAME:STEPS[:ETA].
FAST_SAMPLERS = ("dpm++:20",)
# DDIM-50 with DDPM's noise (eta 1), the README's `sample --steps 50 --eta 1`: on the
# CLI's default model it had no two-coloured shapes, where eta 0 had one in five.
STOCHASTIC_DDIM = "ddim:50:1"


def known_samplers():
    """Sampler names `model.sample(sampler=...)` accepts in this version of the package."""
    return tuple(getattr(diffusion, "SAMPLERS", ("ddpm", "ddim")))


def default_samplers():
    """DDPM over all T, DDIM-50 at eta 0 and 1, and DPM-Solver++ at 20 steps where it exists."""
    fast = [text for text in FAST_SAMPLERS if text.partition(":")[0] in known_samplers()]
    return ["ddpm", "ddim:50", STOCHASTIC_DDIM] + fast


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", nargs="+", default=None, choices=list(ROWS),
                        help=f"training configurations to run (default: all of {list(ROWS)})")
    parser.add_argument("--row", action="append", default=[], metavar='NAME="ARGS"',
                        help="an extra training configuration: a name and keras-ddpm train "
                        "arguments, e.g. --row 'wide=--n-feat 32' (repeatable)")
    parser.add_argument("--model", action="append", default=[], metavar="FILE.keras",
                        help="score this saved model too, without training (repeatable)")
    parser.add_argument("--samples", nargs="+", default=[], metavar="FILE.npz",
                        help="score the image arrays (N, H, W, 3; uint8, or floats in [-1, 1]) "
                        "of these .npz files, at most --n of each, without training or sampling")
    parser.add_argument("--samplers", nargs="+", default=None, metavar="NAME[:STEPS[:ETA]]",
                        help="samplers per row: ddpm (all T), ddim:50, ddim:50:1 (DDIM's eta 1), "
                        f"dpm++:20, ... (default: {' '.join(default_samplers())})")
    parser.add_argument("--guidance-scales", nargs="+", type=float,
                        default=[diffusion.DEFAULT_GUIDANCE_SCALE], metavar="W",
                        help="a class-conditional model samples every class in equal numbers "
                        "with each of these classifier-free guidance scales (default: the "
                        f"library's {diffusion.DEFAULT_GUIDANCE_SCALE:g}; 1 is plain conditional)")
    parser.add_argument("--attention-guidance", nargs="+", type=float, default=[0.0],
                        metavar="S", help="perturbed-attention guidance scales of Unet rows "
                        "(keras_ddpm.guidance), each with each guidance scale (default: 0, off)")
    parser.add_argument("--denoise-at", nargs="+", type=int, default=[0], metavar="T",
                        help="final denoising timesteps (DiffusionModel.sample's denoise_at; "
                        "`keras-ddpm sample` uses 0.07 T), each with each guidance scale "
                        "(default: 0, off)")
    parser.add_argument("--n", type=int, default=500, help="samples per row (and real images)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training budget of every row (default: keras-ddpm train's)")
    parser.add_argument("--sample-batch", type=int, default=SAMPLE_BATCH,
                        help="images per compiled sampling chunk")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and samples")
    parser.add_argument("--cache-dir", default=str(shapes_judge.DEFAULT_CACHE_DIR),
                        help="where the judge, real features and floors are cached")
    parser.add_argument("--out-dir", default="runs/quality",
                        help="trained models, sample grids (PNG) and results.json")
    parser.add_argument("--quick", action="store_true",
                        help="tiny judge, training, n and T, and training in this process "
                        "with tf.functions run eagerly (a step costs less than a TensorFlow "
                        "start and a trace): a smoke test of the script, not figures")
    args = parser.parse_args(argv)
    args.judge = QUICK["judge"] if args.quick else shapes_judge.JudgeSettings()
    args.train_args = QUICK["train_args"] if args.quick else []
    if args.quick:
        args.n = QUICK["n"]
        args.rows = args.rows or ([] if args.model or args.samples else QUICK["rows"])
        args.samplers = args.samplers or QUICK["samplers"]
    scoring_only = args.model or args.samples
    args.rows = args.rows if args.rows is not None else ([] if scoring_only else list(ROWS))
    args.samplers = args.samplers or default_samplers()
    for error in filter(None, map(sampler_text_error, args.samplers)):
        parser.error(error)
    if min(args.denoise_at) < 0:
        parser.error(f"--denoise-at takes timesteps >= 0 (0: off), got {args.denoise_at}")
    return args


# ------------------------------------------------------------------ training
@dataclasses.dataclass
class Trained:
    """A model to sample from: its name, the `train` arguments and the training time."""

    name: str
    description: str
    model_path: pathlib.Path = None
    train_seconds: float = None
    skipped: str = None


def training_configs(args):
    """`(name, keras-ddpm train arguments)` of every training row asked for."""
    configs = [(name, ROWS[name]) for name in args.rows]
    for text in args.row:
        name, _, row_args = text.partition("=")
        configs.append((name.strip(), shlex.split(row_args)))
    return configs


def train_row(name, row_args, args):
    """Runs `keras-ddpm train` for one configuration in a subprocess; returns `Trained`."""
    description = " ".join(["keras-ddpm train", *row_args]) if row_args else "keras-ddpm train"
    if name in UNET_ROWS and not hasattr(keras_ddpm, "Unet"):
        return Trained(name, description, skipped="keras_ddpm.Unet is absent (issue 12's network)")
    out = pathlib.Path(args.out_dir) / name
    budget = ["--epochs", str(args.epochs)] if args.epochs else []
    argv = ["train", *CLI_OUTPUT_ARGS, *args.train_args, *budget, "--seed", str(args.seed),
            *row_args, "--out", str(out)]
    log(f"{name}: keras-ddpm {' '.join(argv)}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "train.log", "w") as train_log:
        returncode = (train_quick if args.quick else train_in_subprocess)(argv, train_log)
    seconds = time.perf_counter() - start
    if returncode != 0:
        tail = (out / "train.log").read_text().strip().splitlines()[-1:]
        return Trained(name, description, skipped=f"training failed: {' '.join(tail)}")
    return Trained(name, " ".join([description, *budget]), out / "model.keras", seconds)


def train_in_subprocess(argv, train_log):
    """`keras-ddpm ARGV` in a fresh process (as a user runs it); returns its exit status."""
    code = "import sys; from keras_ddpm.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], stdout=train_log,
                          stderr=subprocess.STDOUT).returncode


def train_quick(argv, train_log):
    """`keras-ddpm ARGV` in this process with its tf.functions run eagerly (--quick: a
    step or two cost less than a TensorFlow start and a trace); returns its exit status."""
    import tensorflow as tf

    from keras_ddpm.cli import main

    eager = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        with contextlib.redirect_stdout(train_log), contextlib.redirect_stderr(train_log):
            return main(argv)
    except SystemExit as error:  # The CLI's one-line errors.
        return error.code
    finally:
        tf.config.run_functions_eagerly(eager)


# ------------------------------------------------------------------ sampling
def reverse_step_seconds(model, batch, seed=0):
    """Seconds of one compiled reverse step at `batch` images (DDIM, after a warm-up)."""
    steps = 3
    model.sample(batch, steps=steps, sampler="ddim", seed=seed, verbose=0)
    start = time.perf_counter()
    model.sample(batch, steps=steps, sampler="ddim", seed=seed, verbose=0)
    return (time.perf_counter() - start) / steps


def save_comparison(samples, real, path):
    """PNG of up to 64 samples (left) beside as many real images, enlarged 4x."""
    left = plotting.image_grid(samples[:GRID_IMAGES], nrow=8)
    right = plotting.image_grid(real[:GRID_IMAGES], nrow=8)
    gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
    both = np.concatenate([left, gap, right], axis=1)
    both = np.repeat(np.repeat(both, SCALE, axis=0), SCALE, axis=1)
    Image.fromarray(both).save(path)


def score_model(trained, args, judge, reference, real):
    """Samples `trained`'s model with every sampler; returns one result dict per sampler."""
    model = keras.models.load_model(trained.model_path)
    batch = min(args.sample_batch, args.n)
    step = reverse_step_seconds(model, batch, seed=args.seed)
    results = []
    for text in args.samplers:
        name, steps, eta = parse_sampler(text, model.T)
        if name not in known_samplers():
            results.append({"row": trained.name, "training": trained.description,
                            "sampler": sampler_label(name, steps, eta), "n": args.n,
                            "skipped": f"model.sample has no sampler {name!r}"})
            continue
        for suffix, options in sampling_conditions(
                model.num_classes, args.n, args.seed, args.guidance_scales,
                args.attention_guidance, sep=" ", denoise_at=args.denoise_at):
            label = sampler_label(name, steps, eta) + suffix
            row = {"row": trained.name, "training": trained.description, "sampler": label,
                   "n": args.n, "train_seconds": trained.train_seconds}
            log(f"{trained.name} {label}: estimated {step * steps * -(-args.n // batch):.0f} s "
                f"({step * 1000:.0f} ms per reverse step at batch {batch}, unguided)")
            start = time.perf_counter()
            samples = model.sample(args.n, steps=steps, sampler=name, eta=eta, seed=args.seed + 1,
                                   batch_size=batch, verbose=0, **options)
            row["sample_seconds"] = time.perf_counter() - start
            row.update(judge.score(samples, **reference))
            png = pathlib.Path(args.out_dir) / f"{trained.name}_{label.replace(' ', '_')}.png"
            save_comparison(samples, real, png)
            row["grid"] = str(png)
            results.append(row)
            log(f"{trained.name} {label}: valid {row['valid_rate']:.3f}, Fréchet ratio "
                f"{row['frechet_ratio']:.2f}, {row['sample_seconds']:.0f} s; grid {png}")
    return results


def score_samples(path, args, judge, reference, real):
    """One result dict per image array of the .npz file `path` (its first `--n` images)."""
    results = []
    with np.load(path) as arrays:
        for key in arrays.files:
            images = arrays[key]
            if images.ndim != 4 or images.shape[-1] != 3:
                continue
            if len(images) < args.n:
                log(f"{path}:{key}: {len(images)} images, fewer than --n {args.n}; skipped")
                continue
            images = images[: args.n]
            if images.dtype == np.uint8:
                images = images.astype("float32") / 127.5 - 1.0
            name = pathlib.Path(path).stem
            row = {"row": name, "training": f"--samples {path}", "sampler": key, "n": args.n}
            row.update(judge.score(images, **reference))
            png = pathlib.Path(args.out_dir) / f"{name}_{key}.png"
            save_comparison(images, real, png)
            results.append({**row, "grid": str(png)})
            log(f"{name} {key}: valid {row['valid_rate']:.3f}, Fréchet ratio "
                f"{row['frechet_ratio']:.2f}; grid {png}")
    return results


# -------------------------------------------------------------------- report
def table_row(result):
    """One Markdown table row of a result dict."""
    def seconds(key):
        return f"{result[key]:.0f}" if result.get(key) is not None else "-"

    head = [result["row"], result["sampler"], str(result["n"])]
    if "skipped" in result:
        return head + ["-", "-", "-", "-", "-", "-", f"skipped: {result['skipped']}"]
    name, value, deviation = result["worst"]
    within = abs(deviation) <= shapes_judge.MAX_RELATIVE_DEVIATION
    return head + [
        f"{result['valid_rate']:.3f}",
        f"{deviation:+.0%} ({value})",
        "yes" if within else "**NO**",
        f"{result['frechet_ratio']:.2f}",
        seconds("train_seconds"),
        seconds("sample_seconds"),
        result["training"],
    ]


def report(info, results):
    """Prints the header and the one Markdown table, last."""
    columns = ["Row", "Sampler", "n", "Valid rate", "Worst attribute deviation",
               "All within ±50%", "Fréchet / floor", "Train s", "Sample s", "Training"]
    bench_core.report(info, [table_row(result) for result in results], columns, "llrrllrrrl")


def to_json(results):
    """Results with NumPy values as lists, for results.json."""
    def convert(value):
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, (np.ndarray, np.generic)):
            return value.tolist()
        return value

    return json.dumps([convert(result) for result in results], indent=1, default=str)


def real_row(args, judge, reference, real):
    """The "real data" row: held-out real images scored like samples."""
    row = {"row": "real data", "training": "held-out real shapes", "sampler": "-", "n": args.n}
    return {**row, **judge.score(real, **reference)}


def main(argv=None):
    args = parse_args(argv)
    info = machine_info()
    start, cpu_start = time.perf_counter(), busy_cpu_seconds()
    pathlib.Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    judge = shapes_judge.load_judge(args.judge, args.cache_dir, log=log)
    reference = shapes_judge.reference_features(judge, args.judge, args.n, args.cache_dir)
    real = shapes_judge.real_images(args.judge, args.n)
    results = [real_row(args, judge, reference, real)]
    models = [Trained(pathlib.Path(path).stem, f"--model {path}", pathlib.Path(path))
              for path in args.model]
    for path in args.samples:
        results += score_samples(path, args, judge, reference, real)
    for name, row_args in training_configs(args):
        models.append(train_row(name, row_args, args))
    for trained in models:
        if trained.skipped:
            log(f"{trained.name}: skipped: {trained.skipped}")
            results.append({"row": trained.name, "sampler": "-", "n": args.n,
                            "training": trained.description, "skipped": trained.skipped})
            continue
        results += score_model(trained, args, judge, reference, real)
    (pathlib.Path(args.out_dir) / "results.json").write_text(to_json(results) + "\n")
    finish_info(info, start, cpu_start)
    report(info, results)


if __name__ == "__main__":
    main()
