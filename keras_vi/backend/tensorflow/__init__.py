"""keras_vi's TensorFlow backend: the only modules of keras_vi that import TensorFlow."""

import tensorflow_probability as _tfp

distributions = _tfp.distributions
bijectors = _tfp.bijectors


def untracked_variables(distribution) -> list:
    """TensorFlow variables a distribution holds (its own, its bijectors', their networks').

    TFP's distributions are `tf.Module`s, which list the `tf.Variable`s they reach. Keras 3
    variables are not `tf.Variable`s, so everything listed here is a variable Keras does not
    track: a bare `tf.Variable`, or the weights of a Keras 2 (tf_keras) layer such as
    `tfb.AutoregressiveNetwork`. `fit` would never update them.
    """
    return list(distribution.variables)
