"""The JAX backend trains, evaluates, samples and saves, with TensorFlow unavailable.

Keras picks its backend when it is first imported, so the JAX side runs in a
subprocess: this file run as a script (`KERAS_BACKEND=jax python
tests/test_backend_jax.py RESULTS_DIR`) makes `import tensorflow` fail, as on a
GPU machine that has JAX but no TensorFlow, does the work on in-memory arrays,
runs the smoke test of `benchmarks/bench_core.py` (as the GPU machine runs it),
and writes what it saw to RESULTS_DIR. One JAX process for all of it: starting
JAX and compiling are most of its time. The tests below (TensorFlow backend)
run it once and check the results; one also loads the JAX-trained `.keras`
file with TensorFlow.
"""
import contextlib
import importlib.abc
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

SHAPE = (32, 32, 3)
T = 20
ROOT = pathlib.Path(__file__).resolve().parents[1]
# The benchmark as the GPU machine runs it (`KERAS_BACKEND=jax python benchmarks/bench_core.py`),
# at its smoke-test settings, in the same JAX process.
CORE_BENCHMARK_ARGS = ["--quick", "--precisions", "float32", "--no-pipeline"]
CORE_ROWS = (
    "Training images/s, 32x32, n_feat 8, batch 8",
    "compiled `sample` vs the lecture's `predict` loop",
    "Grid of 4 images: DDIM 5 steps vs compiled DDPM 20 steps",
    "Matmul ceiling 64x64 float32",
)


# --------------------------------------------------------------- JAX process
class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """Makes `import tensorflow` fail, as where only JAX is installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


def fixed_inputs():
    """A fixed `[x_t, t]` batch to compare networks across processes."""
    rng = np.random.default_rng(5)
    x_t = rng.standard_normal((2,) + SHAPE).astype("float32")
    return x_t, np.array([[0.25], [0.9]], "float32")


def one_sgd_step(keras, images, strategy_name):
    """Loss and weight update of one SGD step on `images` (one batch) under a strategy.

    On tests/helpers.py's tiny network: the property is how the step splits the batch
    and averages the gradients, and it compiles in a fraction of NaiveUnet's time."""
    from helpers import tiny_network
    from keras_ddpm import DiffusionModel, distribute

    strategy = distribute.make_strategy(strategy_name)
    keras.utils.set_random_seed(0)
    model = DiffusionModel(tiny_network(SHAPE), T=T, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [keras.ops.convert_to_numpy(v) for v in model.network.trainable_variables]
    fitted = model.fit(images, batch_size=len(images), epochs=1, shuffle=False, verbose=0)
    after = [keras.ops.convert_to_numpy(v) for v in model.network.trainable_variables]
    kernel = model.network.trainable_variables[0].value
    keras.distribution.set_distribution(None)
    return {
        "replicas": distribute.num_replicas(strategy),
        "weight_devices": len(kernel.sharding.device_set),
        "loss": fitted.history["loss"][0],
        "update": np.concatenate([(b - a).ravel() for a, b in zip(before, after)]),
    }


def run_data_parallel_steps(keras, images):
    """One step on 1 device and one on the 2 host devices (XLA_FLAGS), same batch and seed."""
    one, two = (one_sgd_step(keras, images, name) for name in ("default", "mirrored"))
    update_1, update_2 = one.pop("update"), two.pop("update")
    return {
        "one_device": one,
        "two_devices": two,
        "update_norm_ratio": float(np.linalg.norm(update_2) / np.linalg.norm(update_1)),
        "update_error": float(np.max(np.abs(update_2 - update_1)) / np.max(np.abs(update_1))),
    }


def run_jax_session(out_dir):
    sys.meta_path.insert(0, _NoTensorFlow())
    import keras

    from keras_ddpm import DiffusionModel, NaiveUnet

    out_dir = pathlib.Path(out_dir)
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).uniform(-1, 1, (32,) + SHAPE).astype("float32")
    model = DiffusionModel(NaiveUnet(SHAPE, n_feat=8), T=T, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before_fit = model.sample(2, seed=3, verbose=0)
    history = model.fit(images, batch_size=8, epochs=4, verbose=0)
    evaluated = model.evaluate(images, batch_size=8, verbose=0)
    ddpm = model.sample(2, seed=3, verbose=0)
    ddpm_again = model.sample(2, seed=3, verbose=0)
    ddim = model.sample(2, steps=5, seed=3, verbose=0)
    ddim_other_seed = model.sample(2, steps=5, seed=4, verbose=0)
    x_t, t = fixed_inputs()
    # predict: one compiled call (an eager call compiles op by op, 3x slower).
    network_output = model.network.predict([x_t, t], verbose=0)
    model.save(out_dir / "model.keras")
    reloaded = keras.models.load_model(out_dir / "model.keras")
    reloaded_ddpm = reloaded.sample(2, seed=3, verbose=0)

    unet_results, bf16_samples = run_unet_recipe(out_dir)

    np.savez(
        out_dir / "arrays.npz",
        before_fit=before_fit,
        ddpm=ddpm,
        ddpm_again=ddpm_again,
        ddim=ddim,
        ddim_other_seed=ddim_other_seed,
        reloaded_ddpm=reloaded_ddpm,
        network_output=network_output,
        bf16_samples=bf16_samples,
    )
    results = {
        "backend": keras.backend.backend(),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "losses": history.history["loss"],
        "evaluate_loss": float(evaluated),
        **unet_results,
        # Last: it sets (and then unsets) a global distribution.
        "data_parallel": run_data_parallel_steps(keras, images[:8]),
    }
    (out_dir / "results.json").write_text(json.dumps(results))
    (out_dir / "bench_core.txt").write_text(run_core_benchmark())


def run_core_benchmark():
    """What `benchmarks/bench_core.py` prints at its smoke-test settings."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_core

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench_core.main(CORE_BENCHMARK_ARGS)
    return printed.getvalue()


def run_unet_recipe(out_dir):
    """Unet in mixed bfloat16 with Min-SNR and the weight average: three one-step fits,
    saved and reloaded. Returns (results, samples).

    Each fit trains from the training weights and ends with the averages in the
    network, the training weights kept in `weight_average`: the averages (float32
    variables under any policy) are checked against a float64 EMA with warm-up
    (decay 0.5) of those weights. One model for the recipe and mixed precision: each
    model costs a train step and sampling loops to compile.
    """
    import keras

    from keras_ddpm import DiffusionModel, Unet

    images = np.random.default_rng(1).uniform(-1, 1, (4,) + SHAPE).astype("float32")
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = DiffusionModel(
        Unet(SHAPE, widths=(8, 16)), T=T, seed=0, prediction="v", loss_weighting="min_snr",
        ema_decay=0.5,
    )
    keras.config.set_dtype_policy("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    average = [np.asarray(v, np.float64) for v in model.network.trainable_variables]
    losses = []
    for n in range(3):
        losses += model.fit(images, batch_size=4, epochs=1, verbose=0).history["loss"]
        decay = min(0.5, (1.0 + n) / (10.0 + n))
        trained = [np.asarray(v) for v in model.weight_average.averages]
        average = [decay * a + (1.0 - decay) * w for a, w in zip(average, trained)]
    error = max(
        float(np.abs(np.asarray(v) - a).max())
        for v, a in zip(model.network.trainable_variables, average)
    )
    plain = model.sample(2, steps=3, seed=0, verbose=0)
    guided = model.sample(2, steps=3, seed=0, verbose=0, attention_guidance=0.5)
    # Calibrated (with its perturbed-attention means), saved with the model.
    model.calibrate(images, samples_per_step=4, timesteps=[1, 10, T])
    samples = model.sample(2, steps=3, seed=0, verbose=0)
    model.save(out_dir / "unet.keras")
    reloaded = keras.models.load_model(out_dir / "unet.keras")
    t, labels = np.array([3, 7]), None
    reload_guided_error = float(np.abs(
        np.asarray(reloaded.predict_noise(samples, t, labels, attention_guidance=0.5), np.float32)
        - np.asarray(model.predict_noise(samples, t, labels, attention_guidance=0.5), np.float32)
    ).max())
    return {
        "bf16_losses": losses,
        "bf16_compute_dtype": model.network.get_layer("stem").compute_dtype,
        "bf16_variable_dtype": model.network.get_layer("stem").kernel.dtype,
        "unet_average_error": error,
        "unet_updates": float(np.asarray(model.weight_average.updates)),
        "unet_reload_error": float(np.abs(reloaded.sample(2, steps=3, seed=0, verbose=0) - samples).max()),
        "attention_guidance_change": float(np.abs(guided - plain).max()),
        "calibration_change": float(np.abs(samples - plain).max()),
        "calibration_reloaded": reloaded.calibration is not None,
        "attention_guidance_finite": bool(np.all(np.isfinite(guided))),
        "attention_guidance_reload_error": reload_guided_error,
    }, samples


# -------------------------------------------------------------------- tests
if __name__ != "__main__":
    import pytest

    @pytest.fixture(scope="module")
    def jax_session(tmp_path_factory):
        out_dir = tmp_path_factory.mktemp("jax")
        env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
        # Two CPU devices for the data-parallel check (the rest runs on the first);
        # conftest.py's XLA_FLAGS (cheaper compilation) are kept.
        env["XLA_FLAGS"] = " ".join(filter(None, [
            env.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=2",
        ]))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        result = subprocess.run(
            [sys.executable, __file__, str(out_dir)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        results = json.loads((out_dir / "results.json").read_text())
        return out_dir, results, dict(np.load(out_dir / "arrays.npz"))

    @pytest.mark.slow
    def test_core_benchmark_runs_on_the_jax_backend(jax_session):
        """The GPU measurement runs this way: `KERAS_BACKEND=jax python benchmarks/bench_core.py`."""
        out = (jax_session[0] / "bench_core.txt").read_text()
        assert out.rstrip().splitlines()[-1].startswith("| ")  # the table is printed last
        for row in CORE_ROWS:
            assert row in out, row
        assert "backend jax" in out

    @pytest.mark.slow
    def test_jax_runs_without_tensorflow(jax_session):
        _, results, _ = jax_session
        assert results["backend"] == "jax"
        assert not results["tensorflow_imported"]

    @pytest.mark.slow
    def test_jax_fit_lowers_the_loss_and_evaluate_runs(jax_session):
        _, results, _ = jax_session
        losses = results["losses"]
        assert losses[-1] < 0.8 * losses[0], losses
        assert results["evaluate_loss"] < losses[0]

    @pytest.mark.slow
    def test_jax_sampling_is_reproducible_for_a_seed(jax_session):
        _, _, arrays = jax_session
        for name in ("ddpm", "ddim", "bf16_samples"):
            assert arrays[name].shape == (2,) + SHAPE
            assert arrays[name].dtype == np.float32
            assert np.all(np.isfinite(arrays[name])), name
        np.testing.assert_array_equal(arrays["ddpm"], arrays["ddpm_again"])
        assert np.abs(arrays["ddim"] - arrays["ddim_other_seed"]).max() > 0.1
        # DDPM and DDIM are different compiled loops (static options) from one seed.
        assert np.abs(arrays["ddpm"] - arrays["ddim"]).max() > 0.1

    @pytest.mark.slow
    def test_jax_sampler_uses_the_weights_after_training(jax_session):
        """The compiled loop reads the current weights, not those seen when traced."""
        _, _, arrays = jax_session
        assert np.abs(arrays["before_fit"] - arrays["ddpm"]).max() > 1e-3

    @pytest.mark.slow
    def test_jax_keras_round_trip_reproduces_samples(jax_session):
        _, _, arrays = jax_session
        np.testing.assert_allclose(arrays["reloaded_ddpm"], arrays["ddpm"], rtol=1e-5, atol=1e-5)

    @pytest.mark.slow
    def test_jax_mixed_bfloat16_trains(jax_session):
        """The Unet recipe model runs in mixed bfloat16 (the loss falling in bfloat16 is
        checked on TensorFlow, tests/test_precision.py): it computes in bfloat16 with
        float32 weights, trains to finite losses, and its weights move (the weight-average
        test: three updates that follow the formula)."""
        _, results, arrays = jax_session
        assert results["bf16_compute_dtype"] == "bfloat16"
        assert results["bf16_variable_dtype"] == "float32"
        assert len(results["bf16_losses"]) == 3 and all(np.isfinite(results["bf16_losses"]))

    @pytest.mark.slow
    def test_jax_data_parallel_step_on_2_devices_equals_the_step_on_one(jax_session):
        """`--strategy mirrored` on JAX: keras.distribution.DataParallel over 2 host devices.

        One program over the global batch: the loss is its mean (not a sum over
        devices) and each device's images get their own slice of the draws, so the
        update is the one-device update up to float32 round-off.
        """
        _, results, _ = jax_session
        parallel = results["data_parallel"]
        assert parallel["one_device"]["replicas"] == 1
        assert parallel["two_devices"]["replicas"] == 2
        assert parallel["two_devices"]["weight_devices"] == 2  # replicated on both
        loss_1, loss_2 = parallel["one_device"]["loss"], parallel["two_devices"]["loss"]
        assert loss_2 == pytest.approx(loss_1, rel=1e-5)
        assert parallel["update_norm_ratio"] == pytest.approx(1.0, abs=1e-4)  # 2.0 if summed
        assert parallel["update_error"] < 1e-4

    @pytest.mark.slow
    def test_jax_unet_weight_average_and_round_trip(jax_session):
        _, results, _ = jax_session
        assert results["unet_updates"] == 3
        assert results["unet_average_error"] < 1e-5
        assert results["unet_reload_error"] < 1e-5
        # Perturbed-attention guidance runs in the compiled JAX loop and changes the samples;
        # a reloaded model's guided noise estimate is the same.
        assert results["attention_guidance_finite"] and results["attention_guidance_change"] > 1e-3
        assert results["attention_guidance_reload_error"] < 1e-5
        # A calibration changes the samples, is saved with the model and reproduces them.
        assert results["calibration_change"] > 1e-3 and results["calibration_reloaded"]

    @pytest.mark.slow
    def test_model_trained_with_jax_loads_with_tensorflow(jax_session):
        import keras

        import keras_ddpm  # noqa: F401  (registers the classes for loading)

        out_dir, _, arrays = jax_session
        model = keras.models.load_model(out_dir / "model.keras")
        x_t, t = fixed_inputs()
        output = keras.ops.convert_to_numpy(model.network([x_t, t]))
        np.testing.assert_allclose(output, arrays["network_output"], rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    run_jax_session(sys.argv[1])
