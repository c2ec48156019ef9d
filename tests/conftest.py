"""Shared test set-up: quiet TensorFlow, the TF backend, and a fixed seed per test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so tf.distribute strategies can be tested without accelerators.
# This must happen before TensorFlow's runtime starts, hence at conftest import.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def binary_data():
    """256 binary vectors of width 20 with structure (two prototypes plus flips)."""
    rng = np.random.default_rng(0)
    prototypes = (rng.random((2, 20)) > 0.5).astype("float32")
    labels = rng.integers(0, 2, 256)
    flips = rng.random((256, 20)) < 0.1
    return np.abs(prototypes[labels] - flips).astype("float32")


def small_vae(latent_units=4, width=20, hidden=32, latent=None, params_width=None, **model_kwargs):
    """A tiny functional Bernoulli VAE; `latent` (fed `params_width` units) overrides z."""
    import keras_vi as kvi

    inputs = keras.Input((width,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    if latent is None:
        latent = kvi.layers.NormalLatent(latent_units, name="z")
        params = keras.layers.Dense(2 * latent_units)(h)
    else:
        params = keras.layers.Dense(params_width)(h)
    z = latent(params)
    logits = keras.layers.Dense(width)(keras.layers.Dense(hidden, activation="relu")(z))
    model_kwargs.setdefault("likelihood", "bernoulli")
    return kvi.VariationalModel(inputs, logits, **model_kwargs)
