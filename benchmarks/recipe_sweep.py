"""Train `keras-ddpm train` recipes on `shapes` in memory and keep their samples: a sweep.

    python benchmarks/recipe_sweep.py --write-data shapes.npz      # where TensorFlow is
    KERAS_BACKEND=jax python benchmarks/recipe_sweep.py --data shapes.npz --out-dir sweep \\
        --row 'default=' --row 'wide=--widths 32,64,128' --samplers ddim:50:1 dpm++:20 ddpm
    python benchmarks/quality.py --samples sweep/*.npz              # score them (judge)
    python benchmarks/recipe_sweep.py --time-steps 200 --row ...    # img/s of each row here

Each row is a list of `keras-ddpm train` arguments, read by the CLI's own parser
and built by the CLI's own recipe (`keras_ddpm.cli.recipe.new_model`: network,
diffusion settings, EMA, loss weighting; the optimizer with warm-up and decay
over the row's steps), then trained with `DiffusionModel.fit` on the images of
`load_dataset("shapes")` held in memory and shuffled each epoch: the same
training as `keras-ddpm train ARGS`, without tf.data, so that it runs where
only Keras and JAX are installed (a GPU machine without TensorFlow). As in
`train`, a row is class-conditional on the shapes' labels unless it says
`--unconditional` (or the data file holds no labels), and then samples every
class in equal numbers with classifier-free guidance (--guidance-scales). Each
row writes `OUT/<row>.npz`, holding the samples of every sampler as uint8
images (one array per sampler and guidance scale, named like `ddim-50`,
`ddim-50-w2`, `ddim-50-eta1-w2` or, with --attention-guidance,
`ddim-50-eta1-w2-pag0.5`; then the same from the same draws after the
calibration `train` makes, with `-cal` added, unless the row says
`--calibration-samples 0`), which `quality.py --samples` scores with
the judge; the table printed last gives the training and sampling times.
`--time-steps N` trains N steps of each row (after a warm-up) and prints its
images/s instead: what a budget of steps costs on this machine (200 steps or
more on a CPU, whose first tens of steps can run 1.5x slow).
"""
import argparse
import os
import pathlib
import shlex
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import keras  # noqa: E402

from keras_ddpm import cli, diffusion, plotting  # noqa: E402
from keras_ddpm.cli import recipe  # noqa: E402
from sampler_spec import (  # noqa: E402
    parse_sampler, sampler_label, sampler_text_error, sampling_conditions,
)

# The recipe's arguments shared by every row: float32 everywhere, so that a row
# trained on a GPU behaves as the CLI's default run on a CPU without bf16.
COMMON_ARGS = ["--precision", "float32"]
IMAGE_SHAPE = (32, 32, 3)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--row", action="append", default=[], metavar='NAME="ARGS"',
                        help="a row: a name and keras-ddpm train arguments (repeatable); "
                        "'default=' is the CLI's default recipe")
    parser.add_argument("--data", metavar="FILE.npz",
                        help="the shapes training images ('images', uint8) and their classes "
                        "('labels', optional), from --write-data; default: generated here "
                        "(needs TensorFlow for keras_ddpm.data)")
    parser.add_argument("--write-data", metavar="FILE.npz",
                        help="write the shapes training images and labels to FILE.npz and stop")
    parser.add_argument("--samplers", nargs="+", default=["ddim:50"],
                        metavar="NAME[:STEPS[:ETA]]",
                        help="samplers of every row: ddpm (all T), ddim:50, ddim:50:1 (DDIM at "
                        "eta 1), dpm++:20, heun:20 ...")
    parser.add_argument("--n", type=int, default=500, help="samples per sampler")
    parser.add_argument("--guidance-scales", nargs="+", type=float,
                        default=[diffusion.DEFAULT_GUIDANCE_SCALE], metavar="W",
                        help="a conditional row samples each class in equal numbers with each "
                        "of these classifier-free guidance scales (default: the library's "
                        f"{diffusion.DEFAULT_GUIDANCE_SCALE:g})")
    parser.add_argument("--attention-guidance", nargs="+", type=float, default=[0.0],
                        metavar="S", help="perturbed-attention guidance scales of Unet rows "
                        "(keras_ddpm.guidance), each with each guidance scale (default: 0, off)")
    parser.add_argument("--sample-batch", type=int, default=500,
                        help="images per compiled sampling chunk")
    parser.add_argument("--save-models", nargs="*", default=[], metavar="ROW",
                        help="also save these rows' trained models as OUT/<row>.keras")
    parser.add_argument("--time-steps", type=int, default=None, metavar="N",
                        help="only time N training steps per row (images/s) and stop; 200 or "
                        "more on a CPU")
    parser.add_argument("--steps-per-execution", type=int, default=1, metavar="N",
                        help="training steps per compiled call: on a GPU 16 saves dispatch "
                        "time and trains the same model (BENCHMARKS.md)")
    parser.add_argument("--out-dir", default="runs/sweep", help="where the .npz files go")
    parser.add_argument("--quick", action="store_true",
                        help="train with tf.functions run eagerly: a smoke test, whose few "
                        "steps cost less than tracing them")
    options = parser.parse_args(argv)
    for error in filter(None, map(sampler_text_error, options.samplers)):
        parser.error(error)
    if any(options.attention_guidance):  # Refused before any row's minutes of training.
        for text in options.row:
            name, args = row_arguments(text)
            if args.network == "naive":
                parser.error(f"--attention-guidance needs a Unet; row {name!r} is --network "
                             "naive, which has no self-attention")
    return options


def shapes_training_data(path=None):
    """`(images, labels)` of `load_dataset("shapes")`'s training split: uint8
    (8192, 32, 32, 3) and int32 (8192,); labels None when the file `path` has none."""
    if path is not None:
        with np.load(path) as arrays:
            return arrays["images"], arrays["labels"] if "labels" in arrays.files else None
    from keras_ddpm import data

    whole = data.load_dataset("shapes", batch_size=1 << 20, shuffle=False, with_labels=True)
    images, labels = next(iter(whole))
    return plotting.to_uint8(images.numpy()), labels.numpy().astype("int32")


def row_arguments(text):
    """`'wide=--widths 32,64,128'` -> `('wide', the parsed keras-ddpm train arguments)`."""
    name, _, row_args = text.partition("=")
    argv = ["train", *COMMON_ARGS, *shlex.split(row_args), "--out", "unused"]
    return name.strip(), cli.build_parser().parse_args(argv)


def row_classes(args, labels):
    """The row's number of classes, as `train` decides it: conditional on the labels
    unless --unconditional; None without labels."""
    if args.conditional and labels is None:
        sys.exit("recipe_sweep.py: a --conditional row needs labels; write the data file "
                 "again with --write-data")
    return None if labels is None or args.conditional is False else int(labels.max()) + 1


def trained_model(args, data, steps=None, eager=False, steps_per_execution=1):
    """The row's model, compiled with its optimizer (run eagerly with `eager`,
    `steps_per_execution` steps per call) and fitted on `data = (images, labels)`
    (`steps` steps, or --epochs)."""
    keras.utils.set_random_seed(args.seed)
    images, labels = data
    num_classes = row_classes(args, labels)
    images = images[: args.num_examples]  # --num-examples: the first N, as load_dataset
    model = recipe.new_model(args, IMAGE_SHAPE, num_classes)
    steps_per_epoch = len(images) // args.batch_size
    model.compile(optimizer=recipe.make_optimizer(args, steps_per_epoch), run_eagerly=eager,
                  steps_per_execution=steps_per_execution)
    # Whole batches only: as `load_dataset`'s stream.
    used = (steps or steps_per_epoch) * args.batch_size
    x = images[:used].astype("float32") / 127.5 - 1.0
    y = labels[:used] if num_classes else None
    if steps is not None:
        return model, model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False,
                                verbose=0)
    # A new order each epoch, as `load_dataset`'s stream.
    return model, model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
                            verbose=0)


def time_row(name, args, data, steps):
    """Images/s of the row's training over `steps` steps, after a 5-step warm-up."""
    model, _ = trained_model(args, data, steps=5)
    images, labels = data
    x = images[: steps * args.batch_size].astype("float32") / 127.5 - 1.0
    y = labels[: steps * args.batch_size] if model.num_classes else None
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
    images_per_s = steps * args.batch_size / (time.perf_counter() - start)
    return {"row": name, "params": model.network.count_params(),
            "images_per_s": images_per_s, "epoch_s": len(images) / images_per_s}


def sample_row(model, options):
    """`{sampler label: uint8 samples}` and `{label: seconds}` for every --samplers entry."""
    samples, seconds = {}, {}
    for text in options.samplers:
        name, steps, eta = parse_sampler(text, model.T)
        for suffix, conditions in sampling_conditions(
                model.num_classes, options.n, 0, options.guidance_scales,
                options.attention_guidance):
            label = sampler_label(name, steps, eta) + suffix
            start = time.perf_counter()
            images = model.sample(options.n, steps=steps, sampler=name, eta=eta, seed=1,
                                  batch_size=min(options.sample_batch, options.n), verbose=0,
                                  **conditions)
            seconds[label] = time.perf_counter() - start
            if not np.all(np.isfinite(images)):
                raise FloatingPointError(f"{label} samples are not finite")
            samples[label] = plotting.to_uint8(images)
    return samples, seconds


def calibrate_row(model, args, data):
    """Calibrates the row's model as `train` does: --calibration-samples draws per timestep
    and class from `train.CALIBRATION_IMAGES` of its training images, drawn at random."""
    from keras_ddpm.cli import train

    images, labels = data
    images = images[: args.num_examples]
    chosen = np.random.default_rng(args.seed).permutation(len(images))[: train.CALIBRATION_IMAGES]
    model.calibrate(images[chosen].astype("float32") / 127.5 - 1.0,
                    None if model.num_classes is None else labels[chosen],
                    samples_per_step=args.calibration_samples, seed=args.seed)


def sweep(options, data, out_dir):
    """Trains and samples every row; returns the table rows."""
    rows = []
    for text in options.row:
        name, args = row_arguments(text)
        start = time.perf_counter()
        model, history = trained_model(args, data, eager=options.quick,
                                       steps_per_execution=options.steps_per_execution)
        train_s = time.perf_counter() - start
        samples, sample_s = sample_row(model, options)
        if args.calibration_samples:  # As `train` does; both samples kept, paired.
            start = time.perf_counter()
            calibrate_row(model, args, data)
            sample_s["calibration"] = time.perf_counter() - start
            calibrated, calibrated_s = sample_row(model, options)
            samples.update({f"{label}-cal": images for label, images in calibrated.items()})
            sample_s.update({f"{label}-cal": s for label, s in calibrated_s.items()})
        np.savez_compressed(out_dir / f"{name}.npz", **samples)
        if name in options.save_models:
            model.save(out_dir / f"{name}.keras")
        loss = history.history["loss"][-1]
        rows.append([name, " ".join(shlex.split(text.partition("=")[2])) or "(defaults)",
                     f"{loss:.4f}", f"{train_s:.0f}",
                     ", ".join(f"{k} {v:.1f}" for k, v in sample_s.items())])
        print(f"{name}: loss {loss:.4f}, train {train_s:.0f} s, sampling {sample_s}", flush=True)
    return ["Row", "Arguments", "Last loss", "Train s", "Sampling s"], rows


def main(argv=None):
    options = parse_args(argv)
    if options.write_data:
        images, labels = shapes_training_data()
        np.savez_compressed(options.write_data, images=images, labels=labels)
        print(f"Wrote {options.write_data}")
        return
    if not options.row:
        sys.exit("recipe_sweep.py: give at least one --row NAME=ARGS ('default=' for the defaults)")
    data = shapes_training_data(options.data)
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}; "
          f"{len(data[0])} training images"
          f"{'' if data[1] is None else ' with labels'}", flush=True)
    if options.time_steps:
        columns = ["Row", "Parameters", "Images/s", "Seconds per epoch"]
        rows = []
        for text in options.row:
            name, args = row_arguments(text)
            result = time_row(name, args, data, options.time_steps)
            rows.append([name, f"{result['params']:,}", f"{result['images_per_s']:.1f}",
                         f"{result['epoch_s']:.0f}"])
            print(rows[-1], flush=True)
    else:
        out_dir = pathlib.Path(options.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        columns, rows = sweep(options, data, out_dir)
    print("\n| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
