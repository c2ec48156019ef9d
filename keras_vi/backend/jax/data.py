"""What keras_vi reads from the dataset types Keras's JAX backend trains on.

Keras on JAX also accepts a `tf.data.Dataset` when TensorFlow is installed; keras_vi reads
its size through the TensorFlow backend's module, without importing TensorFlow itself.
"""

from __future__ import annotations

import sys


def is_dataset(x) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)


def dataset_size(dataset) -> int | None:
    """Examples in a batched `tf.data.Dataset`, or None when unknown."""
    if not is_dataset(dataset):
        return None
    from keras_vi.backend.tensorflow import data

    return data.dataset_size(dataset)
