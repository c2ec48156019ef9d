"""keras_vi: variational inference as a first-class citizen of Keras 3 on TensorFlow."""

from keras_vi import (
    diagnostics,
    divergences,
    errors,
    estimators,
    flows,
    heads,
    layers,
    priors,
    schedules,
)
from keras_vi.backend import bijectors, distributions
from keras_vi.diagnostics import gradient_variance
from keras_vi.errors import NonFiniteError
from keras_vi.expectation import expectation
from keras_vi.inference import log_likelihood
from keras_vi.model import VariationalModel
from keras_vi.predictive import predict_samples, predictive_mean_std

__version__ = "0.1.0"

from keras_vi import callbacks  # noqa: E402  (imports the model; keep last)

__all__ = [
    "NonFiniteError",
    "VariationalModel",
    "bijectors",
    "callbacks",
    "diagnostics",
    "distributions",
    "divergences",
    "errors",
    "estimators",
    "expectation",
    "flows",
    "gradient_variance",
    "heads",
    "layers",
    "log_likelihood",
    "predict_samples",
    "predictive_mean_std",
    "priors",
    "schedules",
    "__version__",
]
