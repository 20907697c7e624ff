"""The teaching notebooks run top to bottom in quick mode and show what they claim.

Each notebook is executed with nbclient in a fresh temporary folder (so nothing is
written into notebooks/), with KERAS_DDPM_QUICK=1 and this checkout's keras_ddpm first
on the kernel's path, in a fresh namespace of one kernel that the notebooks share (see
`SharedKernel`). Any error in any cell fails the test. A cell appended by the test
prints some of the notebook's own results as JSON, and the test checks them.
"""
import json
import math
import os
import pathlib

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
RESULT_PREFIX = "NOTEBOOK_RESULT "
QUICK_VARIABLE = "KERAS_DDPM_QUICK"


class SharedKernel:
    """One Jupyter kernel for all the notebooks of this file, each run in a fresh namespace.

    Starting a kernel and importing TensorFlow and Keras in it takes a few seconds;
    the notebooks share them. Before each notebook a first cell moves the kernel to
    the notebook's folder, clears Keras' global state (`clear_session`: layer names,
    seeds), switches off TensorFlow's graph optimiser as conftest.py does, and deletes
    every name (`%reset -f`), so a notebook that used anything defined by another fails
    as it would alone. A kernel that failed is restarted.
    """

    def __init__(self):
        self.owner = None

    def start(self):
        """Starts the kernel: quick mode, this checkout's package first on its path."""
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env[QUICK_VARIABLE] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.owner = NotebookClient(nbformat.v4.new_notebook(), kernel_name="python3")
        self.owner.km = self.owner.create_kernel_manager()
        self.owner.start_new_kernel(env=env)
        self.owner.start_new_kernel_client()

    def shutdown(self):
        if self.owner is not None and self.owner.km is not None:
            self.owner._cleanup_kernel()
        self.owner = None

    def execute(self, notebook, folder):
        """Executes `notebook` (modified in place) in `folder`, as a fresh kernel would."""
        if self.owner is None:
            self.start()
        notebook.cells.insert(0, nbformat.v4.new_code_cell(
            f"import os as _os, keras as _keras\n_os.chdir({str(folder)!r})\n"
            "_keras.backend.clear_session()\n"
            # As in the test process (conftest.py): no graph optimiser for tiny networks.
            "import tensorflow as _tf\n"
            "_tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})\n"
            "%reset -f"
        ))
        client = NotebookClient(notebook, km=self.owner.km, timeout=600, kernel_name="python3")
        try:
            client.execute()  # Raises CellExecutionError, naming the cell, on any error.
        except BaseException:
            self.shutdown()  # The next notebook gets a new kernel.
            raise
        finally:
            if client.kc is not None:
                client.kc.stop_channels()
        del notebook.cells[0]


@pytest.fixture(scope="module")
def kernel():
    """The kernel shared by this file's notebooks (see `SharedKernel`)."""
    shared = SharedKernel()
    yield shared
    shared.shutdown()


def run_notebook(kernel, name, folder, report):
    """Executes notebooks/`name` in `folder`; returns (notebook, the dict `report` evaluates to).

    `report` is a Python expression evaluated in the notebook's kernel after its last cell.
    """
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    notebook.cells.append(
        nbformat.v4.new_code_cell(f"import json\nprint({RESULT_PREFIX!r} + json.dumps({report}))")
    )
    kernel.execute(notebook, folder)
    printed = "".join(
        output.get("text", "")
        for output in notebook.cells[-1].outputs
        if output.output_type == "stream"
    )
    line = next(line for line in printed.splitlines() if line.startswith(RESULT_PREFIX))
    return notebook, json.loads(line[len(RESULT_PREFIX):])


def count_images(notebook):
    """Number of figures (PNG or GIF outputs) the executed notebook displays."""
    return sum(
        1
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if {"image/png", "image/gif"} & set(output.get("data", {}))
    )


NOTEBOOKS = sorted(path.name for path in NOTEBOOK_DIR.glob("*.ipynb"))
TESTED = {
    "01_forward_diffusion.ipynb",
    "02_the_network.ipynb",
    "03_training.ipynb",
    "04_reverse_diffusion.ipynb",
    "05_improvements.ipynb",
    "06_exercises.ipynb",
}


def test_every_notebook_is_executed_by_a_test():
    assert set(NOTEBOOKS) == TESTED


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs_and_has_one_settings_cell(name):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells), (
        f"{name} has outputs: clear them before committing"
    )
    reads_quick = [cell for cell in code_cells if QUICK_VARIABLE in cell.source]
    assert reads_quick == [code_cells[0]], "quick mode is read in the first code cell, only there"


@pytest.mark.slow
def test_forward_diffusion_chain_matches_the_closed_form(kernel, tmp_path):
    notebook, result = run_notebook(
        kernel, "01_forward_diffusion.ipynb", tmp_path, "dict(rows=chain_check, beta1=BETA1, beta2=BETA2, T=T)"
    )
    assert count_images(notebook) >= 5
    # float64 reference, written from the formulas: alphabar_t = prod_{s<=t} (1 - beta_s).
    betas = np.linspace(result["beta1"], result["beta2"], result["T"], dtype=np.float64)
    alphabar = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
    assert [row["t"] for row in result["rows"]] == [100, 300, 1000]
    for row in result["rows"]:
        t = row["t"]
        assert 0 < row["signal_se"] < 0.01 and 0 < row["noise_se"] < 0.01
        assert abs(row["signal_chain"] - math.sqrt(alphabar[t])) < 5 * row["signal_se"]
        assert abs(row["noise_chain"] - math.sqrt(1.0 - alphabar[t])) < 5 * row["noise_se"]


@pytest.mark.slow
def test_network_notebook_walks_the_unet(kernel, tmp_path):
    notebook, result = run_notebook(
        kernel, "02_the_network.ipynb",
        tmp_path,
        "dict(n=N_FEAT, shapes={k: list(v.shape) for k, v in activations.items()}, "
        "lecture_params=lecture_params, untrained_loss=untrained_loss)",
    )
    assert count_images(notebook) >= 3
    n, shapes = result["n"], result["shapes"]
    assert shapes["init_conv"] == [4, 32, 32, n]
    assert shapes["down_3"] == [4, 4, 4, 2 * n]
    assert shapes["to_vec_relu"] == [4, 1, 1, 2 * n]
    assert shapes["time_embedding"] == [4, 2 * n]
    assert shapes["up_3"] == [4, 32, 32, 2 * n]
    assert shapes["out"] == [4, 32, 32, 3]
    # NaiveUnet's docstring: 194 million parameters at the lecture's n_feat = 512.
    assert round(result["lecture_params"] / 1e6) == 194
    assert result["untrained_loss"] > 0.5  # An untrained network is no better than zero.


@pytest.mark.slow
def test_training_notebook_trains_saves_and_shows_grids(kernel, tmp_path):
    notebook, result = run_notebook(
        kernel, "03_training.ipynb",
        tmp_path,
        "dict(loss=history.history['loss'], initial_loss=initial_loss, "
        "grid_epochs=sorted(grids.images), epochs=EPOCHS, every=GRID_EVERY, model=MODEL_PATH)",
    )
    assert count_images(notebook) >= 4
    losses = result["loss"]
    assert len(losses) == result["epochs"]
    assert losses[-1] < losses[0] < result["initial_loss"]
    every, epochs = result["every"], result["epochs"]
    expected = sorted({e for e in range(1, epochs + 1) if e % every == 0} | {epochs})
    assert result["grid_epochs"] == expected
    assert len(list((tmp_path / "outputs" / "grids").glob("samples_epoch_*.png"))) == len(expected)
    assert (tmp_path / result["model"]).stat().st_size > 0


@pytest.mark.slow
def test_reverse_diffusion_notebook_runs_alone(kernel, tmp_path):
    # No model.keras in the folder: the notebook trains its own small model first.
    notebook, result = run_notebook(
        kernel, "04_reverse_diffusion.ipynb",
        tmp_path,
        "dict(trained_here=trained_here, T=T, frames=sorted(t for t in FRAME_TIMES if t in frames), "
        "difference=max_difference, scale=float(np.abs(compiled_images).max()), "
        "gif=str(GIF_PATH), results=sorted(results), solver_steps=list(SOLVER_STEPS), "
        "solvers=sorted(f'{label}/{steps}' for label, steps in solver_images), "
        "solvers_finite=all(bool(np.isfinite(v).all()) for v in solver_images.values()), "
        "solver_gaps=solver_gaps)",
    )
    assert result["trained_here"] is True
    assert (tmp_path / "outputs" / "model.keras").exists()
    T = result["T"]
    assert result["frames"] == sorted([T, T // 5, T // 20, 0])
    # The lecture's predict loop and model.sample compute the same images.
    assert result["difference"] <= 1e-3 * max(1.0, result["scale"])
    with Image.open(tmp_path / result["gif"]) as gif:
        assert gif.n_frames > 2
    assert len(result["results"]) >= 3  # DDPM and at least two DDIM step counts
    # The sampler comparison: DDIM, DPM-Solver++ and Heun from one seed at each step count.
    steps = result["solver_steps"]
    labels = ("DDIM", "DPM-Solver++ 2M", "Heun")
    assert result["solvers"] == sorted(f"{label}/{s}" for label in labels for s in steps)
    assert result["solvers_finite"]
    for label in labels:
        assert set(result["solver_gaps"][label]) == {str(s) for s in steps[:-1]}
    assert count_images(notebook) >= 5


@pytest.mark.slow
def test_improvements_notebook_guides_inpaints_and_averages(kernel, tmp_path):
    notebook, result = run_notebook(
        kernel, "05_improvements.ipynb",
        tmp_path,
        "dict(schedule=model.schedule, classes=model.num_classes, loss=history.history['loss'], "
        "scales=sorted(guided), shapes=[list(guided[w].shape) for w in sorted(guided)], "
        "n=len(labels), inpainted=list(completed.shape), weight_change=weight_change, "
        "raw_differs=bool(np.any(raw_images != ema_images)), "
        "attention_scales=sorted(attention_guided), "
        "attention_changes=bool(np.any(attention_guided[0.3] != attention_guided[0.0])), "
        "calibration=repr(model.calibration), "
        "calibration_changes=bool(np.any(calibrated_images != plain_images)), "
        "denoising_changes=bool(np.any(denoised_images != calibrated_images)))",
    )
    assert result["schedule"] == "cosine" and result["classes"] == 3
    # Two steps, one per epoch, in quick mode: too few for the loss to fall reliably (it
    # rose at 1 of 8 seeds with 4 steps); test_conditioning checks that it falls.
    assert len(result["loss"]) == 2 and np.all(np.isfinite(result["loss"]))
    assert result["scales"] == [0.0, 1.0, 2.0, 4.0]
    assert all(shape == [result["n"], 32, 32, 3] for shape in result["shapes"])
    assert result["inpainted"] == [4, 32, 32, 3]
    assert result["attention_scales"] == [0.0, 0.3, 1.0] and result["attention_changes"]
    # fit left the averaged weights in the model, and they differ from the last ones.
    assert result["weight_change"] > 0 and result["raw_differs"]
    assert (tmp_path / "outputs" / "conditional.keras").exists()
    # Calibrated per class and "no class", with its start at 0.76 T (T = 20 in quick mode).
    assert "4 condition(s)" in result["calibration"] and "starting at t=15" in result["calibration"]
    assert result["calibration_changes"] and result["denoising_changes"]
    assert count_images(notebook) >= 6


@pytest.mark.slow
def test_exercises_notebook_solutions_check_out(kernel, tmp_path):
    notebook, result = run_notebook(
        kernel, "06_exercises.ipynb",
        tmp_path,
        "dict(fractions=fractions.tolist(), spreads=spreads.tolist(), "
        "quiz=check_answers(solution), questions=len(QUIZ), losses=losses)",
    )
    assert count_images(notebook) >= 4
    # Exercise 1.4: the DDPM sampler with the exact noise predictor reproduces the data.
    np.testing.assert_allclose(result["fractions"], [1 / 3] * 3, atol=0.05)
    np.testing.assert_allclose(result["spreads"], [0.25] * 3, atol=0.03)
    assert result["quiz"] == result["questions"] == 10
    assert all(np.isfinite(result["losses"]))
