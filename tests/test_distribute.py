"""Training under tf.distribute: MirroredStrategy on 2 logical CPUs, MultiWorker on loopback.

Each check runs in a fresh Python process: logical devices and multi-worker
strategies must be set up before TensorFlow runs its first operation.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from keras_ddpm import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains one step on one global batch of 8 images, on 2 replicas and on one device,
# from the same weights and with the same draws for each image; prints the results.
# The network is tests/helpers.py's tiny one: the property is how the strategy splits
# the batch and sums the gradients, and the lecture's network took 4x as long to trace.
MIRRORED_SCRIPT = r"""
import json
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np
from keras import ops
from keras_ddpm import DiffusionModel

sys.path.insert(0, "tests")
from helpers import tiny_network

T = 10
images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
pattern = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype("float32")


def same_draws_for_every_image(shape, step=None):
    # t and eps depend only on the image's position in its own batch: with 8 images
    # split 4 + 4, or not split, each image gets the same t = 1 + index % 4 * 3 and eps.
    t = 1 + (ops.arange(shape[0], dtype="int32") % 4) * 3
    return t, ops.broadcast_to(pattern, shape) * ops.cast(ops.reshape(t, (-1, 1, 1, 1)), "float32") / T


class FixedDraws(DiffusionModel):
    # Trains on same_draws_for_every_image: the public training_draws, overridden.

    def training_draws(self, image_shape, step=None):
        return same_draws_for_every_image(image_shape, step)


def one_step(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = FixedDraws(tiny_network((32, 32, 3)), T=T, seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [v.numpy() for v in model.network.trainable_variables]
    loss = model.fit(images, batch_size=8, epochs=1, shuffle=False, verbose=0).history["loss"][0]
    after = [v.numpy() for v in model.network.trainable_variables]
    return loss, [b - a for a, b in zip(before, after)]


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
loss_2, updates_2 = one_step(mirrored)
loss_1, updates_1 = one_step(tf.distribute.get_strategy())
update_1, update_2 = (np.concatenate([u.ravel() for u in updates]) for updates in (updates_1, updates_2))

# The model's own draws, on each replica (no training step needed).
with mirrored.scope():
    model = DiffusionModel(tiny_network((32, 32, 3)), T=T, seed=0)
draw = tf.function(lambda: mirrored.run(model.training_draws, args=((4, 32, 32, 3),)))
(t_a, t_b), (noise_a, noise_b) = [mirrored.experimental_local_results(v) for v in draw()]
later_noise_a = mirrored.experimental_local_results(draw()[1])[0]
print(json.dumps({
    "replicas": mirrored.num_replicas_in_sync,
    "losses": [loss_1, loss_2],
    "update_norm_ratio": float(np.linalg.norm(update_2) / np.linalg.norm(update_1)),
    "update_error": float(np.max(np.abs(update_2 - update_1)) / np.max(np.abs(update_1))),
    "t": [t_a.numpy().tolist(), t_b.numpy().tolist()],
    "same_noise_on_replicas": bool(np.array_equal(noise_a, noise_b)),
    "same_noise_next_step": bool(np.array_equal(noise_a, later_noise_a)),
    "noise_std": [float(np.std(noise_a)), float(np.std(noise_b))],
}))
"""


def _run_python(script, env=None, timeout=400):
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_mirrored_update_equals_single_device_update_and_replicas_draw_differently():
    results = json.loads(_run_python(MIRRORED_SCRIPT).strip().splitlines()[-1])
    assert results["replicas"] == 2
    # The same global batch gives the same loss and the same SGD step on 2 replicas as on
    # one device: each replica's gradient is divided by 2 before Keras sums them.
    loss_1, loss_2 = results["losses"]
    assert loss_2 == pytest.approx(loss_1, rel=1e-5)
    assert results["update_norm_ratio"] == pytest.approx(1.0, abs=1e-4)  # 2.0 if summed
    assert results["update_error"] < 1e-4
    # The model's own draws differ between replicas (and from one step to the next).
    t_a, t_b = results["t"]
    assert all(1 <= t <= 10 for t in t_a + t_b) and len(t_a) == len(t_b) == 4
    assert not results["same_noise_on_replicas"]
    assert not results["same_noise_next_step"]
    assert results["noise_std"] == pytest.approx([1.0, 1.0], abs=0.05)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


# `keras-ddpm train` with tf.functions run eagerly: the two processes set up the cluster
# from TF_CONFIG and all-reduce their gradients (eager collectives) in seconds, where
# tracing the step under the strategy took both cores for half a minute. The traced
# step under a tf.distribute strategy is the mirrored test's.
EAGER_CLI = ("import sys, tensorflow as tf; tf.config.run_functions_eagerly(True); "
             "from keras_ddpm import cli; sys.exit(cli.main(sys.argv[1:]))")


@pytest.mark.slow
def test_multiworker_cli_trains_one_epoch_on_two_processes(tmp_path):
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    argv = [
        sys.executable, "-c", EAGER_CLI, "train", "--strategy", "multiworker",
        "--num-examples", "16", "--batch-size", "16", "--epochs", "1", "--n-feat", "8",
        "--T", "10", "--n-samples", "1", "--sample-steps", "1", "--grid-steps", "1",
        "--network", "naive", "--calibration-samples", "0",
    ]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": ROOT, "TF_CONFIG": json.dumps(tf_config)}
        processes.append(subprocess.Popen(
            argv + ["--out", str(tmp_path / f"out{index}")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
        ))
    try:
        outputs = [process.communicate(timeout=500)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
        assert "on 2 replicas (multiworker strategy)" in output
        assert "conditional" not in output  # The default on shapes, but not here (below).
    # The chief (worker 0) writes the outputs; worker 1 writes nothing.
    history = json.loads((tmp_path / "out0" / "history.json").read_text())
    assert len(history["loss"]) == 1 and 0 < history["loss"][0] < 10
    assert (tmp_path / "out0" / "model.keras").is_file()
    assert not (tmp_path / "out1").exists()  # The worker writes nothing there.
    assert "the chief writes the outputs" in outputs[1]


@pytest.mark.parametrize(
    "tf_config, words",
    [
        (None, ["TF_CONFIG", "not set"]),
        ("{not json", ["TF_CONFIG must be JSON"]),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
         ["task index 3", "1 workers"]),
    ],
    ids=["unset", "not-json", "index"],
)
def test_multiworker_needs_a_valid_tf_config(monkeypatch, tf_config, words):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError) as error:
        distribute.make_strategy("multiworker")
    for word in words:
        assert word in str(error.value)


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(ValueError, match="default, mirrored, multiworker"):
        distribute.make_strategy("tpu")


@pytest.mark.parametrize(
    "tf_config, chief, name",
    [
        (None, True, ""),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True, "worker-0"),
        ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False, "worker-1"),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
         False, "worker-0"),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
         True, "chief-0"),
    ],
)
def test_chief_and_worker_names_follow_tf_config(monkeypatch, tf_config, chief, name):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert distribute.is_chief() is chief
    assert distribute.worker_id() == name


def test_a_global_batch_must_split_evenly_over_the_devices():
    import types

    # What num_replicas reads of a tf.distribute strategy (two devices need a process of
    # their own, see above).
    two_devices = types.SimpleNamespace(num_replicas_in_sync=2)
    distribute.check_global_batch(8, two_devices)
    with pytest.raises(ValueError, match="--batch-size 7 does not split evenly over 2 devices: "
                       "use a multiple of 2"):
        distribute.check_global_batch(7, two_devices, option="--batch-size")


def test_a_conditional_model_under_tensorflows_multiworker_strategy_is_refused_at_once(
    tmp_path, capsys
):
    """Keras' multi-worker `fit` fails on (images, labels) batches: the default turns
    unconditional there (the test above), and --conditional is a one-line error before
    any cluster is set up (no TF_CONFIG needed)."""
    from keras_ddpm import cli

    argv = ["train", "--strategy", "multiworker", "--conditional", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "--conditional cannot train under --strategy multiworker" in line
    assert "--unconditional" in line and "\n" not in line
