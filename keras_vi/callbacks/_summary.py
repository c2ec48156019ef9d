"""Shared plumbing of the TensorBoard callbacks: lazily created writers, one per run."""

from __future__ import annotations

import os

import tensorflow as tf

TRAIN = "train"
VALIDATION = "validation"


def check_log_dir(log_dir, owner: str) -> str:
    if log_dir is None or not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
        raise ValueError(f"{owner}: `log_dir` must be a non-empty path, got {log_dir!r}.")
    return os.fspath(log_dir)


class Writers:
    """`tf.summary` writers for the runs under `log_dir`, created on first use.

    Runs are subdirectories, laid out like `keras.callbacks.TensorBoard` (`train/`,
    `validation/`), so both callbacks can share one log directory: each writer appends its
    own event file and TensorBoard merges the files of a run.
    """

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def __getitem__(self, run: str) -> tf.summary.SummaryWriter:
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(os.path.join(self.log_dir, run))
        return self._writers[run]

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def global_step(model) -> int:
    """The optimizer's iteration count: the step axis shared with keras.callbacks.TensorBoard."""
    return int(model.optimizer.iterations.numpy())
