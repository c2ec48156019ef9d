"""TensorBoard writing for keras_vi's callbacks: writers, one per run, and NumPy summaries.

Event files are written through `tf.summary` on every Keras backend, as
`keras.callbacks.TensorBoard` does; this is the one module outside `keras_vi.backend` that
uses TensorFlow, imported lazily inside the functions. Everything here takes NumPy values
(or Python numbers), so the callbacks convert with `keras.ops.convert_to_numpy` first.
"""

from __future__ import annotations

import os
from typing import Any

from keras import ops

TRAIN = "train"
VALIDATION = "validation"


def check_log_dir(log_dir, owner: str) -> str:
    if log_dir is None or not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
        raise ValueError(f"{owner}: `log_dir` must be a non-empty path, got {log_dir!r}.")
    return os.fspath(log_dir)


class Writers:
    """Summary writers for the runs under `log_dir`, created on first use.

    Runs are subdirectories, laid out like `keras.callbacks.TensorBoard` (`train/`,
    `validation/`), so both callbacks can share one log directory: each writer appends its
    own event file and TensorBoard merges the files of a run.
    """

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self._writers: dict[str, Any] = {}

    def __getitem__(self, run: str) -> Any:
        if run not in self._writers:
            import tensorflow as tf

            self._writers[run] = tf.summary.create_file_writer(os.path.join(self.log_dir, run))
        return self._writers[run]

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def scalar(writer, name: str, value, step: int) -> None:
    """Writes one scalar (a number or a NumPy scalar) at `step`."""
    import tensorflow as tf

    with writer.as_default(step=step):
        tf.summary.scalar(name, value)


def scalars(writer, values: dict, step: int) -> None:
    """Writes every `name: value` of a dict of scalars at `step`."""
    import tensorflow as tf

    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(name, value)


def image(writer, name: str, data, step: int, max_outputs: int = 1) -> None:
    """Writes images, a NumPy array [n, height, width, channels] with values in [0, 1]."""
    import tensorflow as tf

    with writer.as_default(step=step):
        tf.summary.image(name, data, max_outputs=max_outputs)


def histogram(writer, name: str, values, step: int) -> None:
    """Writes a histogram of a NumPy array's values at `step`."""
    import tensorflow as tf

    with writer.as_default(step=step):
        tf.summary.histogram(name, values)


def global_step(model) -> int:
    """The optimizer's iteration count: the step axis shared with keras.callbacks.TensorBoard."""
    return int(ops.convert_to_numpy(model.optimizer.iterations))
