"""keras_ddpm against PyTorch on the same NaiveUnet, on this machine's CPU, interleaved.

A PyTorch port of the package's `NaiveUnet` (minDiffusion's network, the one the
lecture ported; same layers, widths and parameter count, NCHW float32, eager)
is written below. Both sides train with Adam on the same DDPM loss (t ~ U{1..T},
eps ~ N(0, I), MSE on eps) on random 32x32 images, and take one reverse step
(a forward pass and the update) at batch 16. The rows run in turns, round
after round (PyTorch, keras_ddpm float32, keras_ddpm `precision="auto"`), so a
busy machine slows all of them alike; each figure is the median over rounds.

1. Training images/s (after warm-up steps), ratio keras_ddpm / PyTorch.
2. Milliseconds per reverse step at batch 16 (keras_ddpm: its compiled
   `sample` loop over a small T, divided by T), ratio PyTorch / keras_ddpm
   (above 1: keras_ddpm is faster).

torch is optional: without it the PyTorch rows say so and keras_ddpm's are
measured alone. Install a CPU build for benchmarks only, e.g.
`pip install torch==2.13.0+cpu` (PyPI's default torch brings CUDA, about 3 GB).

Usage:
    python benchmarks/torch_parity.py            # n_feat 64, 32x32, batch 32, 3 rounds
    python benchmarks/torch_parity.py --quick    # smoke test: tiny network, 1 round
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

from keras_ddpm import ddpm_schedule  # noqa: E402
from keras_ddpm.layers import GROUPS  # noqa: E402
from keras_ddpm.precision import (  # noqa: E402
    bfloat16_support, read_cpu_flags, resolve_precision)

try:
    import torch
    from torch import nn
except ImportError:
    torch = None
    TORCH_MISSING = (
        "skipped: PyTorch is not installed (`pip install torch`, a CPU build, to "
        "compare; a benchmark dependency only)"
    )
else:
    TORCH_MISSING = None

T = 1000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-feat", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="training batch")
    parser.add_argument("--sample-batch", type=int, default=16, help="reverse-step batch")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--sampler-T", type=int, default=20, help="steps of the timed sample loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny network, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_feat, args.batch, args.sample_batch = 16, 8, 4
        args.steps, args.warmup_steps, args.sampler_T, args.rounds = 2, 1, 4, 1
    return args


# ------------------------------------------------------------------- PyTorch
if torch is not None:

    class TorchConv3(nn.Module):
        """`Conv3Layer`: (conv 3x3 -> GroupNorm -> ReLU) x 2, plus the first if residual."""

        def __init__(self, cin, cout, is_res=False):
            super().__init__()
            self.is_res = is_res
            self.block_1 = nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(GROUPS, cout), nn.ReLU())
            self.block_2 = nn.Sequential(
                nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(GROUPS, cout), nn.ReLU())

        def forward(self, x):
            first = self.block_1(x)
            second = self.block_2(first)
            return first + second if self.is_res else second

    class TorchUp(nn.Module):
        """`UnetUpLayer`: concatenate, ConvTranspose x2, two Conv3."""

        def __init__(self, cin, cout):
            super().__init__()
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
            self.conv_1, self.conv_2 = TorchConv3(cout, cout), TorchConv3(cout, cout)

        def forward(self, x, skip):
            return self.conv_2(self.conv_1(self.up(torch.cat([x, skip], 1))))

    class TorchNaiveUnet(nn.Module):
        """The package's `NaiveUnet(input_shape, n_feat)` in PyTorch (NCHW)."""

        def __init__(self, channels, n_feat):
            super().__init__()
            n = n_feat
            self.init_conv = TorchConv3(channels, n, is_res=True)
            self.down = nn.ModuleList([
                nn.Sequential(TorchConv3(cin, cout), nn.MaxPool2d(2))
                for cin, cout in ((n, n), (n, 2 * n), (2 * n, 2 * n))])
            self.to_vec = nn.Sequential(nn.AvgPool2d(4), nn.ReLU())
            self.time_1 = nn.Linear(1, 2 * n, bias=False)  # TimeSiren
            self.time_2 = nn.Linear(2 * n, 2 * n)
            self.up_0 = nn.Sequential(
                nn.ConvTranspose2d(2 * n, 2 * n, 4, stride=4), nn.GroupNorm(GROUPS, 2 * n),
                nn.ReLU())
            self.up = nn.ModuleList([TorchUp(4 * n, 2 * n), TorchUp(4 * n, 2 * n),
                                     TorchUp(3 * n, 2 * n)])
            self.out = nn.Conv2d(3 * n, channels, 3, padding=1)

        def forward(self, x, t):
            x = self.init_conv(x)
            d1 = self.down[0](x)
            d2 = self.down[1](d1)
            d3 = self.down[2](d2)
            t_emb = self.time_2(torch.sin(self.time_1(t.view(-1, 1))))[:, :, None, None]
            up = self.up_0(self.to_vec(d3) + t_emb)
            up = self.up[0](up, d3) + t_emb
            up = self.up[2](self.up[1](up, d2), d1)
            return self.out(torch.cat([up, x], 1))

    class TorchDDPM:
        """Adam on the DDPM loss, and the lecture's reverse step, in eager PyTorch."""

        def __init__(self, size, n_feat):
            torch.manual_seed(0)
            self.size = size
            self.network = TorchNaiveUnet(3, n_feat)
            self.optimizer = torch.optim.Adam(self.network.parameters(), lr=1e-4)
            self.tables = {k: torch.from_numpy(np.asarray(v, "float32"))
                           for k, v in ddpm_schedule(1e-4, 0.02, T).items()}

        def params(self):
            return sum(p.numel() for p in self.network.parameters())

        def train_steps(self, images, batch):
            """Seconds per step over the batches of `images` (NCHW tensor)."""
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                x_0 = images[i:i + batch]
                t = torch.randint(1, T + 1, (len(x_0),))
                noises = torch.randn_like(x_0)
                x_t = (self.tables["sqrtab"][t].view(-1, 1, 1, 1) * x_0
                       + self.tables["sqrtmab"][t].view(-1, 1, 1, 1) * noises)
                loss = nn.functional.mse_loss(self.network(x_t, t.float() / T), noises)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            return (time.perf_counter() - start) / (len(images) // batch)

        @torch.no_grad()
        def reverse_steps(self, n, steps):
            """Seconds per reverse step at batch `n`, from t = T down."""
            x_t = torch.randn(n, 3, self.size, self.size)
            start = time.perf_counter()
            for i in range(T, T - steps, -1):
                eps = self.network(x_t, torch.full((n,), i / T))
                x_t = (self.tables["oneover_sqrtalpha"][i]
                       * (x_t - self.tables["mab_over_sqrtmab"][i] * eps)
                       + self.tables["sqrt_beta_t"][i] * torch.randn_like(x_t))
            return (time.perf_counter() - start) / steps


# ---------------------------------------------------------------- keras_ddpm
class KerasDDPM:
    """keras_ddpm's `DiffusionModel` under one precision, built and traced once."""

    def __init__(self, size, n_feat, precision, sampler_T, sample_batch):
        self.model = bench_core.build_model(size, n_feat, precision)
        self.model.compile(optimizer=keras.optimizers.Adam(1e-4))
        self.sampler = bench_core.build_model(size, n_feat, precision, T=sampler_T)
        self.sample_batch = sample_batch
        self.model.fit(np.zeros((1, size, size, 3), "float32"), batch_size=1, verbose=0)
        self.sampler.sample(sample_batch, seed=0, verbose=0)  # Traces the loop.

    def params(self):
        return self.model.network.count_params()

    def train_steps(self, images, batch):
        timer = bench_core.EpochTimer()
        self.model.fit(images, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                       callbacks=[timer])
        return timer.seconds / (len(images) // batch)

    def reverse_steps(self):
        return bench_core.timed_sample(self.sampler, self.sample_batch) / self.sampler.T


# ---------------------------------------------------------------------- main
def measure(args, contestants):
    """`{name: {"train_s": [...], "step_s": [...]}}` over interleaved rounds."""
    rng = np.random.default_rng(0)
    shape = (args.batch * args.steps, args.size, args.size, 3)
    images = rng.uniform(-1, 1, shape).astype("float32")
    warmup = images[: args.batch * args.warmup_steps]
    inputs = {"keras": images, "torch": None}
    if torch is not None:
        inputs["torch"] = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    times = {name: {"train_s": [], "step_s": []} for name in contestants}
    for name, runner in contestants.items():  # Warm-up: caches, allocators, tracing.
        if isinstance(runner, KerasDDPM):
            runner.train_steps(warmup, args.batch)
        else:
            runner.train_steps(inputs["torch"][: len(warmup)], args.batch)
            runner.reverse_steps(args.sample_batch, 1)
    for round_ in range(args.rounds):
        for name, runner in contestants.items():
            bench_core.log(f"round {round_ + 1}/{args.rounds}: {name}")
            if isinstance(runner, KerasDDPM):
                times[name]["train_s"].append(runner.train_steps(inputs["keras"], args.batch))
                times[name]["step_s"].append(runner.reverse_steps())
            else:
                times[name]["train_s"].append(runner.train_steps(inputs["torch"], args.batch))
                times[name]["step_s"].append(
                    runner.reverse_steps(args.sample_batch, args.sampler_T))
    return times


def table_rows(args, rows_of, contestants, times):
    """Markdown rows, one per `(label, contestant name)` of `rows_of`, with ratios to PyTorch."""
    baseline = None
    if "PyTorch fp32" in times:
        baseline = (args.batch / statistics.median(times["PyTorch fp32"]["train_s"]),
                    1000 * statistics.median(times["PyTorch fp32"]["step_s"]))
    rows = [] if torch is not None else [
        ["PyTorch fp32", "-", "skipped", "-", "skipped", TORCH_MISSING]]
    for label, name in rows_of:
        train_rate = args.batch / statistics.median(times[name]["train_s"])
        step_ms = 1000 * statistics.median(times[name]["step_s"])
        ratios = ["n/a", "n/a"] if baseline is None else [
            f"{train_rate / baseline[0]:.2f}", f"{baseline[1] / step_ms:.2f}"]
        rows.append([label, f"{contestants[name].params():,}", f"{train_rate:.1f}", ratios[0],
                     f"{step_ms:.0f}", ratios[1]])
    return rows


def main(argv=None):
    args = parse_args(argv)
    info = bench_core.machine_info()
    start, cpu_start = time.perf_counter(), bench_core.busy_cpu_seconds()
    auto = resolve_precision("auto")
    bench_core.log(f"precision auto = {auto} ({bfloat16_support()[1]})")
    contestants = {}
    if torch is not None:
        contestants["PyTorch fp32"] = TorchDDPM(args.size, args.n_feat)
    else:
        bench_core.log(TORCH_MISSING)
    keras_args = (args.size, args.n_feat)
    contestants["keras_ddpm fp32"] = KerasDDPM(*keras_args, "float32", args.sampler_T,
                                               args.sample_batch)
    rows_of = [(name, name) for name in contestants]
    if auto == "float32":  # The same model: measured once, shown under both names.
        rows_of.append(("keras_ddpm auto (= float32)", "keras_ddpm fp32"))
    else:
        name = f"keras_ddpm auto ({auto})"
        contestants[name] = KerasDDPM(*keras_args, auto, args.sampler_T, args.sample_batch)
        rows_of.append((name, name))
    times = measure(args, contestants)
    bench_core.finish_info(info, start, cpu_start)
    if torch is not None:
        info["versions"]["torch"] = torch.__version__
    rows = table_rows(args, rows_of, contestants, times)
    flags = " ".join(sorted(f for f in read_cpu_flags() if "avx" in f or "amx" in f))
    notes = [
        f"CPU flags (avx/amx): {flags or 'none'}; auto = {auto} ({bfloat16_support()[1]})",
        f"NaiveUnet n_feat {args.n_feat}, {args.size}x{args.size}, training batch "
        f"{args.batch} ({args.steps} steps x {args.rounds} rounds, medians), reverse step "
        f"at batch {args.sample_batch}",
    ]
    columns = ("Implementation", "Parameters", "Training img/s", "vs PyTorch",
               "Reverse step ms", "PyTorch ms / this")
    bench_core.report(info, rows, columns, "lrrrrl", notes)


if __name__ == "__main__":
    main()
