"""Writes the standard signals of posterior collapse to TensorBoard every epoch."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vi import _checks, diagnostics
from keras_vi.backend import random as backend_random
from keras_vi.callbacks import _summary


class LatentDiagnostics(keras.callbacks.Callback):
    """Per-dimension KL, active units and posterior scales of every latent, each epoch.

    At the end of every epoch the model runs in inference mode over `validation_data` and,
    for each `kvi.layers.Latent` layer `<name>`, writes to the `log_dir/validation` run (step:
    the optimizer's iteration count):

    * `latents/<name>/kl`: mean KL(q(z|x) || p(z)) per example;
    * `latents/<name>/active_units`: dimensions with Cov_x(E_q[z_d|x]) > `threshold`
      (Burda et al. 2016); collapsed dimensions drop out of this count;
    * `latent_kl/<name>/dim_<d>`: mean KL of dimension d (factorised latents);
    * `latents/<name>/posterior_scale`: histogram of the posterior standard deviations
      (collapse pushes them to the prior's scale, 1 for a standard normal prior).

    Training is not disturbed: the passes use the callback's own noise and leave the model's
    seed generators and state as they were. The callback holds the data, so it has no
    `get_config`.

    Args:
        log_dir: the TensorBoard log directory (share it with `keras.callbacks.TensorBoard`).
        validation_data: inputs as an array, an `(x, y)` tuple, or a finite batched
            `tf.data.Dataset`.
        batch_size: examples per forward pass for array data.
        threshold: activity threshold of an active unit.
        seed: int for reproducible noise; None draws a fresh one.

    Example:
        >>> history = vae.fit(x_train, epochs=1, verbose=0, callbacks=[
        ...     keras.callbacks.TensorBoard("logs"),
        ...     kvi.callbacks.LatentDiagnostics("logs", validation_data=x_test)])
        >>> sorted(tf.io.gfile.listdir("logs"))
        ['train', 'validation']
    """

    def __init__(
        self,
        log_dir,
        validation_data: Any = None,
        batch_size: int = 256,
        threshold: float = diagnostics.ACTIVITY_THRESHOLD,
        seed: int | None = None,
    ):
        super().__init__()
        owner = "LatentDiagnostics"
        self.log_dir = _summary.check_log_dir(log_dir, owner)
        if validation_data is None:
            raise ValueError(
                f"{owner}: `validation_data` is required (an array, an (x, y) tuple or a "
                "tf.data.Dataset of held-out inputs)."
            )
        self.validation_data = validation_data
        self.batch_size = diagnostics.check_int(batch_size, "batch_size", owner)
        self.threshold = _checks.finite_number(threshold, "threshold", owner, minimum=0)
        self.seed = diagnostics.check_seed(seed, owner)
        self._writers = _summary.Writers(self.log_dir)
        self._probe = None

    def on_train_begin(self, logs=None):
        if not diagnostics.latent_layers(self.model):
            raise ValueError("LatentDiagnostics: the model has no kvi.layers.Latent layer.")
        if self._probe is None or self._probe.model is not self.model:
            self._probe = diagnostics.LatentProbe(self.model)

    def on_epoch_end(self, epoch, logs=None):
        step = _summary.global_step(self.model)
        stats = self._probe(
            self.validation_data,
            batch_size=self.batch_size,
            threshold=self.threshold,
            seed=backend_random.fold_in(ops.convert_to_tensor([self.seed, 1], "int32"), step),
            owner="LatentDiagnostics",
        )
        writer = self._writers[_summary.VALIDATION]
        for name, stat in stats.items():
            values = {f"latents/{name}/active_units": stat.active_units}
            if stat.kl is not None:
                values[f"latents/{name}/kl"] = stat.kl
            if stat.kl_per_dim is not None:
                width = len(str(len(stat.kl_per_dim) - 1))
                for d, value in enumerate(stat.kl_per_dim):
                    values[f"latent_kl/{name}/dim_{d:0{width}d}"] = value
            _summary.scalars(writer, values, step)
            if stat.scales is not None:
                _summary.histogram(writer, f"latents/{name}/posterior_scale", stat.scales, step)
        self._writers.flush()

    def on_train_end(self, logs=None):
        self._writers.close()
