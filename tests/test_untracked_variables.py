"""A q holding variables Keras 3 does not track is refused, not trained without them.

TensorFlow-only by nature: tf.Variable and Keras 2 (tf_keras) layers do not exist on JAX.
"""

import keras
import numpy as np
import pytest

import keras_vi as kvi

pytestmark = pytest.mark.backends("tensorflow")


def test_a_bare_tf_variable_is_refused_at_build():
    import tensorflow as tf

    tfd = kvi.distributions
    scale = tf.Variable(1.0, name="hidden_scale")

    def q_fn(params):
        return tfd.Independent(tfd.Normal(params, scale), 1)

    inputs = keras.Input((3,))
    with pytest.raises(ValueError, match=r"does not track \('hidden_scale:0'\).*kvi\.flows"):
        kvi.layers.Latent(q_fn, prior="standard_normal", name="z")(inputs)


def test_a_tf_keras_autoregressive_network_is_refused_at_the_first_step():
    """TFP's documented MAF recipe: its network is a tf_keras layer, built at the first draw."""
    tfd, tfb = kvi.distributions, kvi.bijectors
    network = tfb.AutoregressiveNetwork(params=2, hidden_units=[8])

    def q_fn(params):
        base = tfd.Independent(tfd.Normal(params, 1.0), 1)
        return tfd.TransformedDistribution(base, tfb.MaskedAutoregressiveFlow(network))

    inputs = keras.Input((3,))
    z = kvi.layers.Latent(q_fn, prior="standard_normal", kl="mc", name="z")(inputs)
    model = kvi.VariationalModel(inputs, keras.layers.Dense(3)(z), likelihood="normal")
    model.compile(optimizer="adam")
    x = np.zeros((4, 3), "float32")
    with pytest.raises(ValueError, match=r"Latent 'z'.*tf_keras.*kvi\.layers\.FlowLatent"):
        model.fit(x, x, epochs=1, verbose=0)


def test_keras_3_variables_inside_q_are_accepted():
    tfd = kvi.distributions

    class ScaledNormal(kvi.layers.Latent):
        def build(self, input_shape):
            self.log_scale = self.add_weight(shape=(), initializer="zeros", name="log_scale")
            super().build(input_shape)

        def make_distribution(self, inputs):
            return tfd.Independent(tfd.Normal(inputs, keras.ops.exp(self.log_scale.value)), 1)

    inputs = keras.Input((3,))
    z = ScaledNormal(prior="standard_normal", name="z")(inputs)
    model = kvi.VariationalModel(inputs, keras.layers.Dense(3)(z), likelihood="normal")
    model.compile(optimizer="adam")
    x = np.ones((8, 3), "float32")
    model.fit(x, x, epochs=2, verbose=0)
    assert float(model.get_layer("z").log_scale.numpy()) != 0.0  # trained
