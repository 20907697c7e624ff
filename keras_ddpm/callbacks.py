"""Keras callbacks for training diffusion models.

`SampleGrid` draws a grid of samples every few epochs with a fixed seed, so
the grids of successive epochs show the same trajectories getting better.
A model with `ema_decay` is sampled with its weight averages. To sample with
the optimizer's EMA weights (`use_ema=True`) instead, put Keras'
`keras.callbacks.SwapEMAWeights(swap_on_epoch=True)` before it in the list.

For long runs, `BackupAndRestore` resumes where a killed run stopped and
`StopOnDivergence` stops at a NaN loss before anything is saved:

    callbacks = [
        StopOnDivergence(),                   # First: nothing is saved after a NaN.
        BackupAndRestore("runs/checkpoints"),  # Resume where a killed run stopped.
    ]
    model.fit(dataset, epochs=100, callbacks=callbacks)
"""

import contextlib
import glob
import json
import math
import os
import pathlib
import warnings

import numpy as np
import keras

from keras_ddpm import plotting, saving


class SampleGrid(keras.callbacks.Callback):
    """Samples a fixed-seed grid of images every `every` epochs.

    The images of each sampled epoch are kept in `self.images`
    (`{epoch: array (n, H, W, C)}`, epochs counted from 1), written as
    `samples_epoch_XXXX.png` to `directory` when given, and logged as a
    TensorBoard image summary when `log_dir` is given (TensorFlow backend).
    A class-conditional model samples `labels` (default: classes 0, 1, ...
    in turn) with classifier-free guidance `guidance_scale`.

    Args:
        every: int. Sample after every `every`-th epoch (and after the last).
        n: int. Number of images in the grid.
        steps: int or None. Sampling steps (None: all T, ancestral DDPM).
        seed: int. The seed of every grid.
        directory: str, path or None. Where to write the PNG grids.
        log_dir: str, path or None. TensorBoard log folder.
        labels: sequence of n ints or None. Classes of a conditional model.
        guidance_scale: float or None. As in `DiffusionModel.sample`.
        eta: float in [0, 1]. DDIM's eta when `steps` is fewer than T, as in
            `DiffusionModel.sample` (1 adds DDPM's noise to each step).
        attention_guidance: float or None. Perturbed-attention guidance, as
            in `DiffusionModel.sample` (None: off).
        denoise_at: int or None. The final denoising's timestep, as in
            `DiffusionModel.sample` (None: off).

    Example:
    >>> grids = SampleGrid(every=2, n=16, steps=50, directory="runs/grids")
    >>> model.fit(dataset, epochs=10, callbacks=[grids])
    >>> plot_image_grid(grids.images[10])
    """

    def __init__(
        self,
        every=1,
        n=16,
        steps=None,
        seed=0,
        directory=None,
        log_dir=None,
        labels=None,
        guidance_scale=None,
        eta=0.0,
        attention_guidance=None,
        denoise_at=None,
    ):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer number of epochs, got {every!r}.")
        self.every = every
        self.n = n
        self.steps = steps
        self.seed = seed
        self.directory = pathlib.Path(directory) if directory is not None else None
        self.log_dir = log_dir
        self.labels = labels
        self.guidance_scale = guidance_scale
        self.eta = eta
        self.attention_guidance = attention_guidance
        self.denoise_at = denoise_at
        self.images = {}
        self._writer = None
        self._epochs = None

    def on_train_begin(self, logs=None):
        self._epochs = self.params.get("epochs") if self.params else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every and done != self._epochs:
            return
        labels = self.labels
        if labels is None and self.model.num_classes is not None:
            labels = np.arange(self.n) % self.model.num_classes
        average = getattr(self.model, "weight_average", None)
        with (
            average.swapped_in(self.model.network.trainable_variables)
            if average is not None
            else contextlib.nullcontext()
        ):
            images = self.model.sample(
                self.n,
                steps=self.steps,
                seed=self.seed,
                labels=labels,
                guidance_scale=self.guidance_scale,
                eta=self.eta,
                attention_guidance=self.attention_guidance,
                denoise_at=self.denoise_at,
                verbose=0,
            )
        self.images[done] = images
        if self.directory is not None:
            plotting.save_image_grid(images, self.directory / f"samples_epoch_{done:04d}.png")
        if self.log_dir is not None:
            self._log_to_tensorboard(images, done)

    def _log_to_tensorboard(self, images, step):
        if keras.backend.backend() != "tensorflow":
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        grid = plotting.image_grid(images)
        with self._writer.as_default():
            tf.summary.image("samples", grid[None], step=step)
        self._writer.flush()


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, written atomically and keeping the loss history.

    At the end of every epoch the model's weights, the optimizer's state
    (step count, moments, and the EMA weights of `use_ema=True`) and the
    number of completed epochs are written to `backup_dir`. Started again
    with the same model, `fit` restores them and continues with the next
    epoch instead of starting over, so a run killed at any moment loses at
    most the epoch in progress.

    Differences from `keras.callbacks.BackupAndRestore`:
    - each file is written to a temporary file and renamed
      (`keras_ddpm.saving.atomic_path`), so a crash or a full disk while
      saving never leaves a damaged checkpoint;
    - `history` holds the logs of every completed epoch, those of earlier
      (interrupted) runs included;
    - the learning rate is the one the model was compiled with, not the
      checkpoint's, so a run can resume with a lower rate after diverging;
    - a checkpoint written by a different model is a clear error.

    The data pipeline is not part of the checkpoint: a resumed run starts
    its next epoch with a new pass over the data.

    Args:
        backup_dir: str. Folder of the checkpoint, used only by this run.
        save_freq: `"epoch"` or int. Save after every epoch, or every that
            many steps (a resumed run then repeats the partial epoch).
        delete_checkpoint: bool. Delete `backup_dir` when `fit` completes.
            Keep it (False) when the result is saved afterwards, so that a
            crash before that save does not lose the run.

    Example:
    >>> backup = BackupAndRestore("runs/checkpoints", delete_checkpoint=False)
    >>> model.fit(dataset, epochs=10, callbacks=[backup])  # Kill it, run it again.
    >>> len(backup.history["loss"])
    10
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__(
            os.fspath(backup_dir), save_freq=save_freq, delete_checkpoint=delete_checkpoint
        )
        self.history = {}

    @property
    def completed_epochs(self):
        """Number of epochs completed in `backup_dir` (0 without a checkpoint).

        Example:
        >>> BackupAndRestore("runs/checkpoints").completed_epochs
        0
        """
        return int(self._read_metadata().get("epoch", 0))

    @property
    def weights_path(self):
        """The weights file of the last committed checkpoint (None without one).

        Example:
        >>> BackupAndRestore("runs/checkpoints").weights_path is None
        True
        """
        metadata = self._read_metadata()
        if not metadata:
            return None
        return os.path.join(self.backup_dir, metadata.get("weights", "latest.weights.h5"))

    def _read_metadata(self):
        if not os.path.exists(self._training_metadata_path):
            return {}
        try:
            with open(self._training_metadata_path) as file:
                return json.load(file)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"The checkpoint in {self.backup_dir!r} is unreadable "
                f"({type(error).__name__}: {error}): delete that folder to start over."
            ) from error

    def on_train_begin(self, logs=None):
        rate = self.model.optimizer.learning_rate  # A variable, unless a schedule.
        compiled_rate = rate.numpy() if isinstance(rate, keras.Variable) else None
        metadata = self._read_metadata()
        self._check_settings(metadata.get("settings"))
        self.history = {name: list(values) for name, values in metadata.get("history", {}).items()}
        if "weights" in metadata:  # The weights file this metadata committed.
            self._weights_path = os.path.join(self.backup_dir, metadata["weights"])
        self._remove_uncommitted_weights()
        try:
            # Keras warns about each part of a mismatched checkpoint: report it once.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                super().on_train_begin(logs)
        except (ValueError, OSError) as error:
            reason = " ".join(str(error).split())[:300]
            raise ValueError(
                f"Could not resume from the checkpoint in {self.backup_dir!r}: it does not "
                f"fit this model or is damaged ({type(error).__name__}: {reason}). Resume "
                "with the settings that wrote it, or delete that folder to start over."
            ) from error
        for warning in caught:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        if compiled_rate is not None:
            rate.assign(compiled_rate)

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        """Writes a new weights file, then commits it by renaming the metadata over the old.

        The metadata names its weights file, and weights are never overwritten
        in place: a kill at any moment leaves the previous metadata with the
        previous weights, or the new with the new, never a mix.
        """
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"weights-{self._current_epoch:06d}-{self._last_batch_seen:06d}.weights.h5"
        saving.save_weights(self.model, os.path.join(self.backup_dir, name))
        metadata = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "weights": name,
            "settings": _model_settings(self.model),
            "history": self.history,
        }
        with saving.atomic_path(self._training_metadata_path) as temp:
            temp.write_text(json.dumps(metadata))
        self._weights_path = os.path.join(self.backup_dir, name)
        self._remove_uncommitted_weights()

    def _remove_uncommitted_weights(self):
        """Deletes weights files that the metadata does not name (older, or never committed)."""
        committed = os.path.basename(self._weights_path)
        for path in glob.glob(os.path.join(glob.escape(self.backup_dir), "weights-*.weights.h5")):
            if os.path.basename(path) != committed:
                os.remove(path)

    def _check_settings(self, saved):
        """Refuses to continue a checkpoint written with other model settings."""
        current = _model_settings(self.model)
        if not saved or not current or saved == current:
            return
        differ = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        was = ", ".join(f"{key}={saved.get(key)!r}" for key in differ)
        now = ", ".join(f"{key}={current.get(key)!r}" for key in differ)
        raise ValueError(
            f"The checkpoint in {self.backup_dir!r} was written with {was}, but this run has "
            f"{now}: resume with the checkpoint's settings, or delete that folder to start over."
        )


def _model_settings(model):
    """The scalar settings of `model.get_config()` that a resumed run must share (or None)."""
    try:
        config = model.get_config()
    except NotImplementedError:
        return None
    ignored = {"name", "trainable", "dtype"}
    return {
        key: value
        for key, value in sorted(config.items())
        if key not in ignored and (value is None or isinstance(value, (bool, int, float, str)))
    }


class TrainingDivergedError(RuntimeError):
    """Raised by `StopOnDivergence` when the training loss is NaN or infinite.

    Example:
    >>> try:
    ...     model.fit(dataset, callbacks=[StopOnDivergence()])
    ... except TrainingDivergedError as error:
    ...     print(error.epoch, error.step)
    """

    def __init__(self, message, epoch, step, loss):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.loss = loss


class StopOnDivergence(keras.callbacks.Callback):
    """Stops `fit` at the first step whose loss is NaN or infinite.

    Raises `TrainingDivergedError` naming the epoch and the step (both
    counted from 1, as Keras' progress bar does). Raising, unlike
    `keras.callbacks.TerminateOnNaN`'s default, skips the end of the epoch:
    no checkpoint or model file is written with the broken weights, so the
    last good ones stay intact. Put it before `BackupAndRestore` in the list
    of callbacks.

    Example:
    >>> model.fit(dataset, epochs=10, callbacks=[StopOnDivergence()])
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        epoch, step = self._epoch + 1, batch + 1
        raise TrainingDivergedError(
            f"Training diverged: the loss is {float(loss)} at epoch {epoch}, step {step}. "
            "The model's weights are no longer usable; nothing was saved after this step. "
            "Lower the learning rate, or check the data for NaN or infinite values, and "
            "start again from the last good checkpoint or model file.",
            epoch=epoch,
            step=step,
            loss=float(loss),
        )
