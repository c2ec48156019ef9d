"""keras_vi's TensorFlow backend: the only modules of keras_vi that import TensorFlow."""

import tensorflow_probability as _tfp

distributions = _tfp.distributions
bijectors = _tfp.bijectors
