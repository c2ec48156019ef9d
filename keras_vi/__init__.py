"""keras_vi: variational inference as a first-class citizen of Keras 3 on TensorFlow."""

from keras_vi import divergences, estimators, layers, priors, schedules
from keras_vi.expectation import expectation
from keras_vi.inference import log_likelihood
from keras_vi.model import VariationalModel

__version__ = "0.1.0"

from keras_vi import callbacks  # noqa: E402  (imports the model; keep last)

__all__ = [
    "VariationalModel",
    "callbacks",
    "divergences",
    "estimators",
    "expectation",
    "layers",
    "log_likelihood",
    "priors",
    "schedules",
    "__version__",
]
