"""Mixed precision (Keras dtype policies) and XLA compilation, on the TensorFlow backend."""
import numpy as np
import pytest
import keras
from keras import ops

from helpers import eager_functions, tiny_network
from keras_ddpm import DiffusionModel, NaiveUnet, precision
from keras_ddpm.cli import build_parser, common, main

SHAPE = (32, 32, 3)


def random_images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + SHAPE).astype("float32")


def model_under(policy, T=20, seed=0, n_feat=8, tiny=False):
    """A small DiffusionModel built under the global dtype `policy` (restored after).

    `tiny`: on `helpers.tiny_network` instead of NaiveUnet, where the network is not
    the property.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        network = tiny_network(SHAPE) if tiny else NaiveUnet(SHAPE, n_feat=n_feat)
        return DiffusionModel(network, T=T, seed=seed)
    finally:
        keras.config.set_dtype_policy(previous)


def test_bfloat16_computes_in_bfloat16_with_float32_weights_output_and_loss():
    model = model_under("mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert model.dtype_policy.name == "mixed_bfloat16"
    conv = model.network.get_layer("init_conv")
    assert conv.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in model.network.weights)
    assert model.network.get_layer("out").compute_dtype == "float32"
    noise = model.predict_noise(ops.convert_to_tensor(random_images(2)), ops.array([5, 20]))
    assert noise.dtype == "float32"
    assert model.diffusion_loss(ops.convert_to_tensor(random_images(2))).dtype == "float32"


def test_bfloat16_network_tells_neighbouring_timesteps_apart():
    """t / T reaches the time embedding in float32: 500/1000 and 501/1000 differ."""
    model = model_under("mixed_bfloat16", T=1000)
    images = ops.convert_to_tensor(np.repeat(random_images(1), 2, axis=0))
    noise = ops.convert_to_numpy(model.predict_noise(images, ops.array([500, 501])))
    assert np.abs(noise[0] - noise[1]).max() > 1e-3  # 0 when t was cast to bfloat16


def test_group_normalization_normalises_in_float32_under_bfloat16():
    """Keras' GroupNormalization upcasts: big, offset activations normalise exactly."""
    model = model_under("mixed_bfloat16")
    norm = model.network.get_layer("init_conv").Norm_1
    assert norm.compute_dtype == "bfloat16"
    rng = np.random.default_rng(0)
    channels = norm.gamma.shape[0]
    inputs = ops.cast(300.0 + 40.0 * rng.standard_normal((2, 8, 8, channels)), "bfloat16")
    output = ops.convert_to_numpy(ops.cast(norm(inputs), "float32")).astype(np.float64)
    # float64 reference on the same (bfloat16) inputs; gamma = 1, beta = 0.
    x = ops.convert_to_numpy(ops.cast(inputs, "float32")).astype(np.float64)
    groups = x.reshape(2, 8, 8, norm.groups, channels // norm.groups)
    mean = groups.mean(axis=(1, 2, 4), keepdims=True)
    var = groups.var(axis=(1, 2, 4), keepdims=True)
    expected = ((groups - mean) / np.sqrt(var + norm.epsilon)).reshape(x.shape)
    # bfloat16 keeps 8 significant bits: outputs in about [-3, 3] round by < 0.016.
    np.testing.assert_allclose(output, expected, atol=0.02)


@pytest.mark.slow
def test_bfloat16_fit_lowers_the_loss_and_round_trips(tmp_path):
    model = model_under("mixed_bfloat16", seed=1)
    # SGD traces faster than Adam. Measured on an AVX2 CPU, two seeds: the last epoch's
    # loss is 0.62-0.68 of the first's (Adam 2e-3: the same).
    model.compile(optimizer=keras.optimizers.SGD(0.05, global_clipnorm=1.0))
    history = model.fit(random_images(32), batch_size=8, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses

    samples = model.sample(2, seed=3, verbose=0)
    assert samples.dtype == np.float32 and samples.shape == (2,) + SHAPE
    assert np.all(np.isfinite(samples))
    model.save(tmp_path / "bf16.keras")
    reloaded = keras.models.load_model(tmp_path / "bf16.keras")  # global policy: float32
    assert reloaded.dtype_policy.name == "mixed_bfloat16"
    assert reloaded.network.get_layer("init_conv").compute_dtype == "bfloat16"
    np.testing.assert_array_equal(reloaded.sample(2, seed=3, verbose=0), samples)


def test_float16_train_step_scales_the_loss():
    """Under mixed_float16 compile wraps the optimizer in a LossScaleOptimizer and the
    train step scales the loss: one SGD step then moves the weights as float32 does
    (an unscaled loss would move them 2**15 times less). Any network shows it: the
    tiny one's float16 step differs from the float32 one by 0.1-0.3% (3 seeds;
    NaiveUnet's by 2.4-4.4%)."""
    images = random_images(4)
    deltas = {}
    reference = model_under("float32", tiny=True)
    for policy in ("float32", "mixed_float16"):
        model = model_under(policy, tiny=True)
        model.network.set_weights(reference.network.get_weights())
        # One eager step: the same train_step code as the traced one, without tracing it.
        model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        before = np.concatenate([w.ravel() for w in model.network.get_weights()])
        model.fit(images, batch_size=4, epochs=1, verbose=0)
        after = np.concatenate([w.ravel() for w in model.network.get_weights()])
        deltas[policy] = after - before
    scale = np.linalg.norm(deltas["float32"])
    assert scale > 0
    assert np.linalg.norm(deltas["mixed_float16"] - deltas["float32"]) < 0.1 * scale


@pytest.mark.slow
def test_xla_sampler_matches_the_plain_compiled_one():
    """Deterministic DDIM (eta = 0) gives the same images with and without XLA.

    (XLA draws other normal numbers from a stateless seed than TensorFlow's
    kernels, so stochastic samplers give other, equally valid, images.)
    The sampling loop is the property: a tiny network compiles in a fraction of
    NaiveUnet's time (the CLI test below compiles NaiveUnet's loop with XLA).
    """
    xla = DiffusionModel(tiny_network(SHAPE), T=10, seed=0)
    plain = xla.sample(2, steps=5, seed=0, verbose=0)
    xla.jit_compile = True  # The same model: it keeps a compiled loop per setting.
    np.testing.assert_allclose(xla.sample(2, steps=5, seed=0, verbose=0), plain, atol=1e-4)
    ddpm = xla.sample(2, seed=0, verbose=0)
    np.testing.assert_array_equal(xla.sample(2, seed=0, verbose=0), ddpm)


@pytest.mark.slow
def test_cli_trains_in_bfloat16_and_samples_with_xla(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--num-examples", "8", "--epochs", "1", "--network", "naive", "--n-feat", "8", "--T", "10",
              "--batch-size", "4", "--n-samples", "2", "--seed", "0", "--calibration-samples", "0"]
    # 2 small steps, eager (test_bfloat16_fit_lowers_the_loss... traces them); one eager
    # sampling step for the grid and for samples.png, which are not the property here.
    with eager_functions():
        assert main(["train", *common, "--grid-steps", "1", "--sample-steps", "1",
                     "--precision", "mixed_bfloat16", "--out", str(out)]) == 0
    assert "mixed_bfloat16, XLA off" in capsys.readouterr().out  # auto: off without a GPU
    assert keras.config.dtype_policy().name == "float32"  # the CLI restores it
    model = keras.models.load_model(out / "model.keras")
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert model.network.get_layer("init_conv").compute_dtype == "bfloat16"

    npz = tmp_path / "samples.npz"
    assert main(["sample", str(out / "model.keras"), "--n", "2", "--steps", "5",
                 "--jit-compile", "--out", str(tmp_path / "s.png"), "--npz", str(npz)]) == 0
    images = np.load(npz)["images"]
    assert images.shape == (2,) + SHAPE and np.all(np.isfinite(images))

    # Fine-tuning keeps the saved precision; asking for another one is an error.
    with pytest.raises(SystemExit) as error:
        main(["train", *common, "--init", str(out / "model.keras"), "--precision", "float32",
              "--out", str(tmp_path / "again")])
    assert error.value.code == 2
    assert "--precision float32 differs from the --init model's mixed_bfloat16" in (
        capsys.readouterr().err
    )


# --- precision="auto" ------------------------------------------------------------------

AMD_ZEN2_FLAGS = "fpu sse2 avx fma avx2 sha_ni"  # AVX2 only.
INTEL_ICELAKE_FLAGS = "avx2 avx512f avx512bw avx512_vnni"  # AVX-512 without bf16.


@pytest.mark.parametrize(
    "cpu_flags, gpus, expected",
    [
        (AMD_ZEN2_FLAGS, [], "float32"),
        (INTEL_ICELAKE_FLAGS, [], "float32"),
        (INTEL_ICELAKE_FLAGS + " avx512_bf16", [], "mixed_bfloat16"),  # Zen 4, Cooper Lake
        (AMD_ZEN2_FLAGS + " amx_bf16 amx_tile", [], "mixed_bfloat16"),  # Sapphire Rapids
        (AMD_ZEN2_FLAGS, [(8, 0)], "mixed_bfloat16"),  # A100
        (AMD_ZEN2_FLAGS, ["9.0", "9.0"], "mixed_bfloat16"),  # 2 H100, as JAX spells it
        (INTEL_ICELAKE_FLAGS + " avx512_bf16", [(7, 0)], "float32"),  # V100: the GPU decides
        (AMD_ZEN2_FLAGS, [(8, 6), (7, 5)], "float32"),  # one GPU without bf16 units
        (AMD_ZEN2_FLAGS, [precision.TPU], "mixed_bfloat16"),
    ],
)
def test_auto_precision_picks_bfloat16_only_on_hardware_that_computes_it(cpu_flags, gpus, expected):
    machine = dict(cpu_flags=cpu_flags.split(), gpus=gpus, backend="tensorflow")
    assert precision.auto_precision(**machine) == expected
    assert precision.resolve_precision("auto", **machine) == expected


@pytest.mark.parametrize(
    "cpu_flags, gpus, expected",
    [
        (AMD_ZEN2_FLAGS + " amx_bf16 avx512_bf16", [], "float32"),  # XLA's CPU kernels
        (AMD_ZEN2_FLAGS, [(9, 0)], "mixed_bfloat16"),  # a GPU decides on any backend
        (AMD_ZEN2_FLAGS + " amx_bf16", [(7, 0)], "float32"),
    ],
)
def test_auto_precision_leaves_the_cpu_in_float32_under_jax(cpu_flags, gpus, expected):
    machine = dict(cpu_flags=cpu_flags.split(), gpus=gpus, backend="jax")
    assert precision.auto_precision(**machine) == expected
    native, reason = precision.bfloat16_support(**machine)
    assert native == (expected == "mixed_bfloat16")
    if not gpus:
        assert reason == (
            "CPU with avx512_bf16 and amx_bf16, slower in bfloat16 than float32 under jax")


def test_cpu_flags_are_read_from_a_cpuinfo_file(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu AVX2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    assert precision.read_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.read_cpu_flags(tmp_path / "missing") == frozenset()
    flags = precision.read_cpu_flags(cpuinfo)
    assert precision.bfloat16_support(cpu_flags=flags, gpus=[], backend="tensorflow") == (
        True, "CPU with avx512_bf16"
    )


def test_explicit_precisions_pass_through_and_unknown_ones_are_refused():
    for name in precision.PRECISIONS:
        assert precision.resolve_precision(
            name, cpu_flags=["amx_bf16"], gpus=[], backend="tensorflow") == name
    with pytest.raises(ValueError, match="Unknown precision 'bfloat16'"):
        precision.resolve_precision("bfloat16")
    # The CLI offers the same choices (it does not import Keras to list them).
    assert common.PRECISIONS == (precision.AUTO,) + precision.PRECISIONS
    assert build_parser().parse_args(["train"]).precision == "auto"


def test_detection_on_this_machine_agrees_with_its_parts():
    gpus = precision.local_gpus()
    assert all(isinstance(gpu, tuple) and len(gpu) == 2 for gpu in gpus)
    native, reason = precision.bfloat16_support(cpu_flags=precision.read_cpu_flags(), gpus=gpus)
    assert precision.auto_precision() == ("mixed_bfloat16" if native else "float32")
    assert ("GPU" in reason) == bool(gpus)
