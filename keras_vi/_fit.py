"""What `VariationalModel.fit` and `evaluate` do around Keras's: checks on the data and
arguments, the dataset size N, monitoring directions, and mid-epoch resume."""

from __future__ import annotations

import inspect
import json
import os

import keras
import numpy as np

from keras_vi import _reporting, validation
from keras_vi.backend import data as backend_data


def as_keywords(method, args: tuple, kwargs: dict) -> dict:
    """Keras `fit`/`evaluate` arguments after x and y given by position, as keywords.

    So that `sample_weight`, `batch_size` or `callbacks` passed by position are seen by the
    checks that read them.
    """
    if not args:
        return kwargs
    names = list(inspect.signature(method).parameters)[2:]  # after x and y
    if len(args) > len(names):
        raise TypeError(f"{method.__name__}() got {len(args) + 2} positional arguments.")
    duplicated = sorted(set(names[: len(args)]) & set(kwargs))
    if duplicated:
        raise TypeError(f"{method.__name__}() got multiple values for {duplicated}.")
    return {**dict(zip(names, args)), **kwargs}


def validate_arrays(model, x, y, sample_weight, batch_size) -> None:
    validation.check_arrays(x, y, batch_size)
    target = x if y is None else y
    n = validation.num_examples(target)
    if sample_weight is not None:
        validation.check_sample_weight(sample_weight, n, batch_size)
    outputs = getattr(model, "outputs", None)
    if outputs and len(outputs) == 1 and validation.is_single_array(target):
        validation.check_support(
            model.likelihood,
            tuple(outputs[0].shape),
            target,
            batch_size,
            "x" if y is None else "y",
        )


def unsupervised_target(x, y, sample_weight):
    """y for fit/evaluate: x itself when unsupervised arrays come with sample weights.

    Keras packs in-memory data as (x,) when y is None and drops `sample_weight` there.
    """
    if y is None and sample_weight is not None and validation.is_in_memory(x):
        return x
    return y


def check_class_weight(model, x, y, class_weight) -> None:
    if class_weight is None:
        return
    if y is None and validation.is_in_memory(x):
        raise ValueError(
            "`class_weight` weighs examples by their class in the target `y`, but fit() got "
            "no `y` (unsupervised data). Pass per-example `sample_weight` instead."
        )
    if model.likelihood is not None and model.likelihood != "categorical":
        raise ValueError(
            f"`class_weight` needs a categorical target, but the model has likelihood="
            f"{model._likelihood_name()!r}. Use likelihood='categorical' or pass "
            "per-example `sample_weight`."
        )


def set_monitor_modes(callbacks) -> None:
    """Gives monitoring callbacks on mode="auto" the direction of keras_vi's metrics."""
    for callback in callbacks or []:
        monitor = getattr(callback, "monitor", None)
        if not isinstance(monitor, str):
            continue
        direction = _reporting.metric_mode(monitor)
        if direction is None:
            continue
        if hasattr(callback, "mode"):
            if callback.mode == "auto":
                callback.mode = direction  # read when training begins
        elif direction == "max" and getattr(callback, "monitor_op", None) is np.less:
            # Keras before 3.11's MonitorCallback fixes the comparison in the constructor
            # and keeps no `mode`: "auto" there minimises every name without "acc".
            name = monitor.removeprefix("val_")
            raise ValueError(
                f"{type(callback).__name__}(monitor={monitor!r}) would keep the lowest "
                f"{monitor}, but {name!r} is better when higher. With Keras "
                f"{keras.__version__} pass mode='max' to it."
            )


def dataset_size(x, validation_split) -> int | None:
    """N, the number of training examples, from arrays or a dataset of known size."""
    n = None
    if backend_data.is_dataset(x):
        return backend_data.dataset_size(x)
    if isinstance(x, np.ndarray) or hasattr(x, "shape"):
        try:
            n = int(x.shape[0])
        except (TypeError, IndexError):
            n = None
        if n is not None and validation_split:
            n = int(n * (1.0 - validation_split))
    return n


def check_num_examples_known(model) -> None:
    """Bayesian layers divide their weight KL by N: refuse to train when N is unknown."""
    from keras_vi.layers.bayesian import BayesianLayer

    bayesian = [
        layer.name
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, BayesianLayer)
    ]
    if bayesian:
        raise ValueError(
            f"The model has Bayesian layers ({', '.join(bayesian)}) whose weight KL is "
            "divided by the dataset size N, but N cannot be inferred from this input "
            "(a generator, a PyDataset, or a tf.data.Dataset of unknown cardinality or "
            "batch size). Pass num_examples=N to the VariationalModel."
        )


def mid_epoch_resume_steps(callbacks) -> int:
    """Batches of the interrupted epoch already trained, per a BackupAndRestore backup.

    Keras restores the weights saved mid-epoch but restarts that epoch from its first batch;
    skipping the batches already seen makes the resumed run match an uninterrupted one
    (without shuffling). The batch count is read from the backup's `training_metadata.json`,
    whose path and "batch" key Keras does not document: no public API tells where an
    interrupted epoch stopped. `tests/test_reliability.py::
    test_mid_epoch_interruption_resumes_exactly` runs on every Keras version the project pins.
    """
    for callback in callbacks or []:
        if not isinstance(callback, keras.callbacks.BackupAndRestore):
            continue
        if not isinstance(callback.save_freq, int) or callback.save_freq is False:
            return 0
        path = getattr(
            callback,
            "_training_metadata_path",
            os.path.join(callback.backup_dir, "training_metadata.json"),
        )
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            metadata = json.load(f)
        return int(metadata.get("batch", -1)) + 1
    return 0


class MidEpochResume(keras.callbacks.Callback):
    """Consumes the batches an interrupted epoch already trained on (see
    `mid_epoch_resume_steps`), installed by `VariationalModel.fit` as its last callback.

    Last, so that the train function it wraps is the one the epoch runs, after any callback
    that rebuilds it in `on_train_begin`.
    """

    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def on_train_begin(self, logs=None):
        from keras_vi.backend import trainer

        model = self.model
        if model.train_function is None:
            model.make_train_function()
        model.train_function = trainer.skip_batches(
            model,
            self.count,
            on_skip=lambda: {m.name: m.result() for m in model._trackers.values()},
        )

    def on_train_end(self, logs=None):
        self.model.train_function = None
