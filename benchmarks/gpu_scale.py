"""The DDPM paper's CIFAR-10 U-Net size on a GPU: training, sampling, 50,000 samples; one table.

    KERAS_BACKEND=jax python benchmarks/gpu_scale.py              # every row, ~7 min on one H100 or H200
    KERAS_BACKEND=jax python benchmarks/gpu_scale.py --quick      # smoke test, small networks
    KERAS_BACKEND=jax python benchmarks/gpu_scale.py --networks naive --generate 0

Networks (`--networks`):
- `unet-cifar`: `Unet((32, 32, 3), widths=(128, 256, 256, 256), blocks_per_level=2,
  attention_levels=(1,), dropout=0.1)`, the layout of Ho et al.'s CIFAR-10 model
  (channels 128 x (1, 2, 2, 2), two residual blocks per level, attention at 16x16,
  dropout 0.1). It has 29.3M parameters.
- `ho-cifar`: the paper's exact network (35.9M parameters: the paper counts 35.7M with a
  128-wide sinusoid into the time MLP, the package's `TimeLayer` uses 512), built here from the
  package's own `ResidualBlock`, `AttentionBlock` and `TimeLayer` (`ho_cifar10`):
  it differs from `Unet` in keeping the stem's and the down-samplers' outputs as
  skips, so the way up has three residual blocks per level, not two.
- `naive`: the lecture's `NaiveUnet((32, 32, 3), n_feat=128)`.

Rows, each measured here in this run (nothing is hard-coded):
1. Training images/s through `DiffusionModel.fit` on random in-memory images (a
   first short `fit` compiles, a second is timed), per network, precision and
   batch; achieved FLOP/s = 3 x forward FLOPs (counted analytically from the layer
   shapes: convolutions, dense layers, attention) x images/s, against the bf16 matrix-multiply ceiling measured in
   the same run and against the card's nominal dense bf16 peak (`--peak-tflops`).
2. Sampling images/s at 20 steps (DPM-Solver++ 2M) and over all 1000 steps (DDPM),
   bf16, at `--sample-batch` images per compiled chunk (after a warm-up call).
3. Wall time of `--generate` images (default 50,000) at 20 steps, bf16, measured.
"""
import argparse
import os
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

# bench_core sets TF_CPP_MIN_LOG_LEVEL and KERAS_BACKEND before Keras is imported.
from bench_core import (  # noqa: E402
    BFLOAT16, FLOAT32, EpochTimer, busy_cpu_seconds, finish_info, log,
    layer_flops, machine_info, matmul_ceiling, recorded_shapes, report,
)
import numpy as np  # noqa: E402
import keras  # noqa: E402

from keras_ddpm import (  # noqa: E402
    AttentionBlock, DiffusionModel, NaiveUnet, ResidualBlock, TimeLayer, Unet,
)
from keras_ddpm.precision import dtype_policy  # noqa: E402

SHAPE = (32, 32, 3)


def ho_cifar10(width=128, multipliers=(1, 2, 2, 2), blocks=2, attention_level=1, dropout=0.1):
    """Ho et al.'s (2020) CIFAR-10 U-Net, layer for layer, from the package's blocks.

    Every level's residual blocks change the channels (the samplers keep them);
    the skips are the stem's output, every residual block's and every
    down-sampler's, so each level of the way up has `blocks + 1` blocks.
    """
    layers = keras.layers
    x_in, t_in = keras.Input(SHAPE, name="x_t"), keras.Input((1,), name="t")
    embedding = TimeLayer(4 * width, embedding="sinusoidal", name="time_embedding")(t_in)
    x = layers.Conv2D(width, 3, padding="same", name="stem")(x_in)
    skips = [x]
    for level, multiplier in enumerate(multipliers):
        for _ in range(blocks):
            x = ResidualBlock(width * multiplier, dropout)([x, embedding])
            x = AttentionBlock()(x) if level == attention_level else x
            skips.append(x)
        if level < len(multipliers) - 1:
            x = layers.Conv2D(x.shape[-1], 3, strides=2, padding="same")(x)
            skips.append(x)
    x = ResidualBlock(x.shape[-1], dropout)([x, embedding])
    x = ResidualBlock(x.shape[-1], dropout)([AttentionBlock()(x), embedding])
    for level in reversed(range(len(multipliers))):
        for _ in range(blocks + 1):
            x = layers.Concatenate()([x, skips.pop()])
            x = ResidualBlock(width * multipliers[level], dropout)([x, embedding])
            x = AttentionBlock()(x) if level == attention_level else x
        if level:
            x = layers.UpSampling2D(2)(x)
            x = layers.Conv2D(x.shape[-1], 3, padding="same")(x)
    x = layers.Activation("silu")(layers.GroupNormalization(32)(x))
    out = layers.Conv2D(SHAPE[-1], 3, padding="same", kernel_initializer="zeros",
                        dtype="float32")(x)
    return keras.Model([x_in, t_in], out, name="ho_cifar10")


NETWORKS = {
    "ho-cifar": ho_cifar10,
    "unet-cifar": lambda: Unet(SHAPE, widths=(128, 256, 256, 256), blocks_per_level=2,
                               attention_levels=(1,), dropout=0.1),
    "naive": lambda: NaiveUnet(SHAPE, n_feat=128),
    # --quick only: small enough for a CPU.
    "unet-tiny": lambda: Unet(SHAPE, widths=(16, 32), blocks_per_level=1),
}
TRAINING = [  # (network, precision, batch)
    ("ho-cifar", BFLOAT16, 128), ("ho-cifar", BFLOAT16, 256), ("ho-cifar", BFLOAT16, 512),
    ("ho-cifar", FLOAT32, 128),
    ("unet-cifar", BFLOAT16, 128), ("unet-cifar", BFLOAT16, 256),
    ("naive", BFLOAT16, 128), ("naive", BFLOAT16, 512),
]
H100_SXM_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's datasheet figure, without sparsity.


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--networks", nargs="+", default=["ho-cifar", "unet-cifar", "naive"],
                        choices=list(NETWORKS), help="networks of the training rows")
    parser.add_argument("--train-steps", type=int, default=40, help="timed training steps")
    parser.add_argument("--sample-batch", type=int, default=1000,
                        help="images per compiled sampling chunk")
    parser.add_argument("--generate", type=int, default=50_000,
                        help="images of the timed 20-step generation (0: skip)")
    parser.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_DENSE_TFLOPS,
                        help="the card's nominal dense bf16 TFLOP/s (default: H100 SXM)")
    parser.add_argument("--parts", nargs="+", default=["train", "sample"],
                        choices=["train", "sample"],
                        help="which rows to run (split them across calls on a timed machine)")
    parser.add_argument("--batches", nargs="+", type=int,
                        help="only the training rows at these batch sizes")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    args = parser.parse_args(argv)
    args.training = [row for row in TRAINING if row[0] in args.networks
                     and (not args.batches or row[2] in args.batches)]
    if args.quick:
        args.networks, args.train_steps, args.sample_batch = ["unet-tiny"], 3, 8
        args.generate = min(args.generate, 16)
        args.training = [("unet-tiny", FLOAT32, 8)]
    return args


def attention_flops(layer, in_shape):
    """FLOPs of one `MultiHeadAttention` self-attention call per image: projections,
    scores and the weighted sum (softmax not counted)."""
    config = layer.get_config()
    length, channels = int(np.prod(in_shape[1:-1])), in_shape[-1]
    inner = config["num_heads"] * config["key_dim"]
    return 2 * length * channels * inner * 4 + 2 * 2 * length * length * inner


def forward_flops(network):
    """Analytic forward FLOPs per image: convolutions and dense layers as bench_core
    counts them, plus self-attention. (XLA's cost analysis misses the convolutions
    that run as cuDNN calls on a GPU, so it is not used.)"""
    classes = (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense,
               keras.layers.MultiHeadAttention)
    x = keras.ops.zeros((1,) + SHAPE)
    t = keras.ops.full((1, 1), 0.5)
    with recorded_shapes(classes) as records:
        network([x, t], training=False)
    return sum(attention_flops(layer, in_shape)
               if isinstance(layer, keras.layers.MultiHeadAttention)
               else layer_flops(layer, in_shape, out_shape)
               for layer, in_shape, out_shape in records)


def build(name, precision):
    with dtype_policy(precision):
        return DiffusionModel(NETWORKS[name](), T=1000, seed=0)


def bench_training(name, precision, batch, steps):
    """Images/s and FLOPs of `fit` at `batch`, after a compiling warm-up `fit`."""
    model = build(name, precision)
    model.compile(optimizer=keras.optimizers.Adam(2e-4))
    images = np.random.default_rng(0).uniform(-1, 1, (batch * steps,) + SHAPE).astype("float32")
    start = time.perf_counter()
    model.fit(images[: batch * 2], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    compile_s = time.perf_counter() - start
    timer = EpochTimer()
    model.fit(images, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    return {"params": model.network.count_params(), "compile_s": compile_s,
            "images_per_s": batch * steps / timer.seconds,
            "train_flops": 3.0 * forward_flops(model.network)}


def images_per_second(model, n, steps, sampler, batch):
    """Images/s of `model.sample` (n images, `batch` per chunk) after a warm-up call."""
    model.sample(batch, steps=steps, sampler=sampler, seed=0, batch_size=batch, verbose=0)
    start = time.perf_counter()
    images = model.sample(n, steps=steps, sampler=sampler, seed=1, batch_size=batch, verbose=0)
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(images)):
        raise FloatingPointError(f"{sampler} samples are not finite")
    return n / seconds, seconds


def training_rows(args, ceiling):
    rows = []
    for name, precision, batch in args.training:
        log(f"training {name} {precision} batch {batch}")
        result = bench_training(name, precision, batch, args.train_steps)
        achieved = result["train_flops"] * result["images_per_s"]
        rows.append([
            f"train {name} ({result['params'] / 1e6:.1f}M), {precision}, batch {batch}",
            f"{result['images_per_s']:,.0f} img/s",
            f"{achieved / 1e12:.0f} TFLOP/s ({result['train_flops'] / 1e9:.1f} GFLOP/img)",
            f"{achieved / ceiling:.0%} of measured matmul, "
            f"{achieved / (args.peak_tflops * 1e12):.0%} of nominal peak",
            f"compile {result['compile_s']:.0f} s",
        ])
        log(" | ".join(rows[-1]))
    return rows


def sampling_rows(args):
    name = args.networks[0]
    model = build(name, BFLOAT16 if not args.quick else FLOAT32)
    batch = args.sample_batch
    rows = []
    for sampler, steps, n in (("dpm++", 20, 4 * batch), ("ddpm", None, batch)):
        steps_label = steps or model.T
        log(f"sampling {name} {sampler}-{steps_label}, {n} images")
        rate, seconds = images_per_second(model, n, steps, sampler, batch)
        rows.append([f"sample {name}, {sampler} {steps_label} steps, batch {batch}",
                     f"{rate:,.1f} img/s", f"{n} images in {seconds:.1f} s", "", ""])
        log(" | ".join(rows[-1]))
    if args.generate:
        log(f"generating {args.generate} images at 20 steps")
        start = time.perf_counter()
        images = model.sample(args.generate, steps=20, sampler="dpm++", seed=2,
                              batch_size=batch, verbose=0)
        seconds = time.perf_counter() - start
        finite = bool(np.all(np.isfinite(images)))
        rows.append([f"generate {args.generate:,} images, {name}, dpm++ 20 steps",
                     f"{seconds:.0f} s", f"{args.generate / seconds:,.0f} img/s",
                     "target <= 120 s", "all finite" if finite else "**NOT FINITE**"])
        log(" | ".join(rows[-1]))
    return rows


def main(argv=None):
    args = parse_args(argv)
    info = machine_info()
    start, cpu_start = time.perf_counter(), busy_cpu_seconds()
    size = 512 if args.quick else 8192
    ceiling = matmul_ceiling(size, 3 if args.quick else 20, "bfloat16")
    rows = [[f"matmul {size}^3, bfloat16", f"{ceiling / 1e12:.0f} TFLOP/s",
             f"nominal {args.peak_tflops:.0f}", f"{ceiling / (args.peak_tflops * 1e12):.0%}", ""]]
    if "train" in args.parts:
        rows += training_rows(args, ceiling)
    if "sample" in args.parts:
        rows += sampling_rows(args)
    finish_info(info, start, cpu_start)
    report(info, rows, ("Row", "Measured", "Also", "Against", "Note"), "lrrll")


if __name__ == "__main__":
    main()
