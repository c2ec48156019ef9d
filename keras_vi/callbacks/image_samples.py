"""Writes reconstructions and prior samples as TensorBoard images."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops, tree

from keras_vi import _scope, diagnostics
from keras_vi.backend import random as backend_random
from keras_vi.callbacks import _summary


def _image_shape(example_shape: tuple, image_shape: tuple | None) -> tuple[int, int, int]:
    """(height, width, channels) of one output row."""
    size = int(np.prod(example_shape))
    if image_shape is not None:
        shape = tuple(int(d) for d in image_shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if int(np.prod(shape)) != size:
            raise ValueError(
                f"ImageSamples: `image_shape` {tuple(image_shape)} does not hold the model's "
                f"output of shape {tuple(example_shape)} ({size} values)."
            )
    elif len(example_shape) == 3:
        shape = tuple(example_shape)
    elif len(example_shape) == 2:
        shape = (*example_shape, 1)
    elif len(example_shape) == 1 and math.isqrt(size) ** 2 == size:
        shape = (math.isqrt(size), math.isqrt(size), 1)
    else:
        raise ValueError(
            f"ImageSamples: cannot read the model's output of shape {tuple(example_shape)} as "
            "an image; pass `image_shape=(height, width)` or `(height, width, channels)`."
        )
    if shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"ImageSamples: images need 1, 3 or 4 channels, got shape {shape}; pass `image_shape`."
        )
    return shape


def _grid(rows: list[np.ndarray], pad: int = 1) -> np.ndarray:
    """Tiles rows of images [n, h, w, c] into one [1, H, W, c] image with white gutters."""
    n, h, w, c = rows[0].shape
    grid = np.ones((len(rows) * (h + pad) - pad, n * (w + pad) - pad, c), dtype=np.float32)
    for r, row in enumerate(rows):
        for i, image in enumerate(row):
            grid[r * (h + pad) : r * (h + pad) + h, i * (w + pad) : i * (w + pad) + w] = image
    return grid[np.newaxis]


class ImageSamples(keras.callbacks.Callback):
    """Reconstructions and prior samples of an image model, as TensorBoard images.

    Every `every_n_epochs` epochs it writes to the `log_dir/validation` run (step: the
    optimizer's iteration count):

    * `images/reconstructions`: the first `num_images` targets of `data` (top row) above the
      model's reconstructions (bottom row): the mean of the likelihood, e.g. the Bernoulli
      probabilities, for one z ~ q(z|x);
    * `images/prior_samples`: the likelihood mean decoded from z ~ p(z), in a square grid.

    Prior samples need the decoder: for a functional model with one latent layer it is the
    part of the graph after that layer, found automatically; otherwise pass `decoder`. Pixel
    values are clipped to [0, 1]. Training is not disturbed (own noise, model state restored).
    The callback holds the data, so it has no `get_config`.

    Args:
        log_dir: the TensorBoard log directory (share it with `keras.callbacks.TensorBoard`).
        data: images (array), an `(x, y)` tuple, or a batched `tf.data.Dataset`; the first
            `num_images` examples are used.
        every_n_epochs: write every this many epochs (>= 1).
        num_images: how many reconstructions and prior samples.
        image_shape: `(height, width[, channels])` of one output; by default taken from the
            output's shape (a flat output of square size n*n is read as n x n).
        decoder: None (found automatically), a callable `z -> model output` for the latent's
            prior samples, or False to write reconstructions only.
        seed: int for reproducible samples; None draws a fresh one.

    Example:
        >>> history = vae.fit(x_train, epochs=1, verbose=0, callbacks=[
        ...     kvi.callbacks.ImageSamples("logs", x_test, image_shape=(28, 28))])
        >>> sorted(tf.io.gfile.listdir("logs"))  # the images of x_test
        ['validation']
    """

    def __init__(
        self,
        log_dir,
        data: Any = None,
        every_n_epochs: int = 1,
        num_images: int = 8,
        image_shape: tuple | None = None,
        decoder: Any = None,
        seed: int | None = None,
    ):
        super().__init__()
        owner = "ImageSamples"
        self.log_dir = _summary.check_log_dir(log_dir, owner)
        if data is None:
            raise ValueError(f"{owner}: `data` is required (images to reconstruct).")
        self.every_n_epochs = diagnostics.check_int(every_n_epochs, "every_n_epochs", owner)
        self.num_images = diagnostics.check_int(num_images, "num_images", owner)
        if decoder is not None and decoder is not False and not callable(decoder):
            raise ValueError(f"{owner}: `decoder` must be None, False or a callable z -> output.")
        self.decoder = decoder
        self.image_shape = image_shape
        self.seed = diagnostics.check_seed(seed, owner)
        x, y = next(diagnostics.iterate_batches(data, self.num_images, owner), (None, None))
        if x is None:
            raise ValueError(f"{owner}: `data` is empty.")
        take = lambda a: ops.convert_to_tensor(a)[: self.num_images]  # noqa: E731
        self._x, self._y = tree.map_structure(take, x), tree.map_structure(take, y)
        self._writers = _summary.Writers(self.log_dir)
        self._decoder = None

    def on_train_begin(self, logs=None):
        if self.decoder is False:
            self._decoder = None
        elif self.decoder is not None:
            self._decoder = self.decoder
        else:
            self._decoder = self._find_decoder()

    def _find_decoder(self):
        layers = [layer for layer in diagnostics.latent_layers(self.model) if layer.prior]
        if len(layers) != 1:
            raise ValueError(
                f"ImageSamples: found {len(layers)} latent layers with a prior; pass "
                "`decoder=` (a callable z -> output) for prior samples, or decoder=False."
            )
        try:
            outputs = self.model.outputs
            return keras.Model(layers[0].output, outputs[0] if len(outputs) == 1 else outputs)
        except (AttributeError, ValueError) as err:
            raise ValueError(
                "ImageSamples: could not take the decoder out of the model (it is not a "
                "functional model, or its latent is used more than once); pass `decoder=` (a "
                "callable z -> output) for prior samples, or decoder=False."
            ) from err

    def _images(self, values) -> np.ndarray:
        values = np.asarray(ops.convert_to_numpy(values), dtype=np.float32)
        shape = _image_shape(values.shape[1:], self.image_shape)
        return np.clip(values.reshape((-1, *shape)), 0.0, 1.0)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        model = self.model
        step = _summary.global_step(model)
        seed = backend_random.fold_in(ops.convert_to_tensor([self.seed, 2], "int32"), step)
        scope = _scope.StepScope(
            objective=getattr(model, "objective", "elbo"),
            num_samples=getattr(model, "num_samples", 1),
        )
        with diagnostics.isolated_noise(model, seed):
            with _scope.recording(scope):
                y_pred = model(self._x, training=False)
            reconstructions = diagnostics.output_mean(model, y_pred, self._y)
            prior_samples = None
            if self._decoder is not None:
                prior = next(r.prior for r in scope.latents if r.prior is not None)
                rows = ops.shape(reconstructions)[0]
                z = prior.sample(
                    [] if len(prior.batch_shape) else [rows],
                    seed=backend_random.fold_in(seed, 1),
                )
                inputs = getattr(self._decoder, "inputs", None)
                if inputs:  # a Keras decoder: match its input (e.g. flattened categoricals)
                    z = ops.reshape(z, (rows, *inputs[0].shape[1:]))
                decoded = self._decoder(z)
                prior_samples = diagnostics.output_mean(model, decoded, self._y)
        targets = self._images(self._y)
        writer = self._writers[_summary.VALIDATION]
        _summary.image(
            writer,
            "images/reconstructions",
            _grid([targets, self._images(reconstructions)]),
            step,
            max_outputs=1,
        )
        if prior_samples is not None:
            samples = self._images(prior_samples)
            columns = math.ceil(math.sqrt(len(samples)))
            padded = np.ones((-(-len(samples) // columns) * columns, *samples.shape[1:]))
            padded[: len(samples)] = samples
            rows = list(padded.reshape((-1, columns, *samples.shape[1:])))
            _summary.image(writer, "images/prior_samples", _grid(rows), step, max_outputs=1)
        self._writers.flush()

    def on_train_end(self, logs=None):
        self._writers.close()
