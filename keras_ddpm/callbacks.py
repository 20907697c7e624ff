"""Keras callbacks for training diffusion models.

`SampleGrid` draws a grid of samples every few epochs with a fixed seed, so
the grids of successive epochs show the same trajectories getting better.
To sample with the optimizer's EMA weights during training, put Keras'
`keras.callbacks.SwapEMAWeights(swap_on_epoch=True)` before it in the list.
"""

import pathlib

import numpy as np
import keras

from keras_ddpm import plotting


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
        images = self.model.sample(
            self.n,
            steps=self.steps,
            seed=self.seed,
            labels=labels,
            guidance_scale=self.guidance_scale,
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
