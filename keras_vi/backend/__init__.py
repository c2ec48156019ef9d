"""The parts of keras_vi that differ per Keras backend, chosen once at import.

Keras picks its trainer by backend (`keras.Model` inherits the backend's `Trainer`); keras_vi
does the same here. Everything else in keras_vi is written in `keras.ops`, `keras.random`
and `keras.tree`, over TFP's distributions for the active backend:

* `distributions`, `bijectors`: TFP's modules for the backend (`kvi.distributions`);
* `random`: stateless seeds and draws from tensor seeds (TFP's seed format);
* `data`: what keras_vi reads from a backend's dataset type (its size);
* `gradients`: gradients that estimators and diagnostics need beyond the training step;
* `untracked_variables`: variables a distribution holds that Keras does not track;
* `VariationalTrainer`: `train_step` / `test_step` of `kvi.VariationalModel`.
"""

from __future__ import annotations

import keras

NAME = keras.backend.backend()

if NAME == "tensorflow":
    from keras_vi.backend.tensorflow import (
        bijectors,
        data,
        distributions,
        gradients,
        random,
        trainer,
        untracked_variables,
    )
    from keras_vi.backend.tensorflow.trainer import VariationalTrainer
elif NAME == "jax":
    from keras_vi.backend.jax import (
        bijectors,
        data,
        distributions,
        gradients,
        random,
        trainer,
        untracked_variables,
    )
    from keras_vi.backend.jax.trainer import VariationalTrainer
else:
    raise ImportError(
        f"keras_vi runs on the TensorFlow and JAX backends, but Keras is set to "
        f"KERAS_BACKEND={NAME!r}. Set KERAS_BACKEND to 'tensorflow' or 'jax' (or call "
        "keras.config.set_backend) before importing keras_vi."
    )

__all__ = [
    "NAME",
    "VariationalTrainer",
    "bijectors",
    "data",
    "distributions",
    "gradients",
    "random",
    "trainer",
    "untracked_variables",
]
