"""What keras_vi reads from TensorFlow's dataset type."""

from __future__ import annotations

import tensorflow as tf


def is_dataset(x) -> bool:
    return isinstance(x, tf.data.Dataset)


def dataset_size(dataset) -> int | None:
    """Examples in a batched `tf.data.Dataset`, or None when unknown.

    The cardinality times the batch size; the batch size comes from the element spec, or for
    a dataset batched with `drop_remainder=False` (whose spec has no static batch size) from
    `_batch_size`, a private attribute of `tf.data`'s batch datasets: no public API gives it.
    `tests/test_architecture.py::test_private_tensorflow_apis_in_place` fails if TensorFlow
    renames it.
    """
    cardinality = int(dataset.cardinality())
    batch_dim = tf.nest.flatten(dataset.element_spec)[0].shape
    batch = batch_dim[0] if batch_dim.rank else None
    if batch is None:
        batch = getattr(dataset, "_batch_size", None)
        batch = None if batch is None else int(batch)
    if cardinality > 0 and batch:
        return cardinality * batch
    return None
