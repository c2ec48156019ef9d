"""Latent layers outside a VariationalModel, and distributions built with string dtypes.

A latent with a prior in a plain `keras.Model` adds its KL through `add_loss` (the batch mean
of the per-example KL), so the plain model minimises the negative per-example ELBO; inside a
`VariationalModel` step it adds nothing (the model builds the KL itself).
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_vi as kvi

from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions

WIDTH, UNITS = 20, 4


def summed_binary_cross_entropy(y_true, logits):
    """Per-example BCE summed over the features (Keras then takes the batch mean)."""
    y_true = ops.cast(y_true, logits.dtype)
    return ops.sum(ops.binary_crossentropy(y_true, logits, from_logits=True), axis=-1)


def normal_scale(raw):
    """NormalLatent's standard deviation, softplus(raw) + 1e-5, in float64."""
    return np.log1p(np.exp(np.asarray(raw, np.float64))) + 1e-5


def normal_kl(params):
    """KL(N(loc, softplus(raw) + 1e-5) || N(0, 1)) per row, summed over units, in float64."""
    params = np.asarray(params, np.float64)
    loc, scale = params[:, :UNITS], normal_scale(params[:, UNITS:])
    return np.sum(0.5 * (scale**2 + loc**2 - 1.0) - np.log(scale), axis=1)


def plain_vae(decoder_kernel="glorot_uniform", decoder_trainable=True):
    """A plain keras.Model VAE; returns it and the model mapping x to the latent's input."""
    inputs = keras.Input((WIDTH,))
    hidden = keras.layers.Dense(16, activation="tanh")(inputs)
    params = keras.layers.Dense(2 * UNITS, name="params")(hidden)
    z = kvi.layers.NormalLatent(UNITS, name="z", seed=5)(params)
    decoder = keras.layers.Dense(
        WIDTH,
        kernel_initializer=decoder_kernel,
        bias_initializer=keras.initializers.RandomNormal(0.0, 1.0, seed=2),
        trainable=decoder_trainable,
        name="decoder",
    )
    model = keras.Model(inputs, decoder(z))
    return model, keras.Model(inputs, params)


def test_plain_model_losses_hold_the_batch_mean_kl(binary_data):
    model, encoder = plain_vae()
    x = binary_data[:32]
    model(x)
    assert len(model.losses) == 1
    expected = normal_kl(encoder(x)).mean()
    assert expected > 0.1  # a KL that is there to be missed
    np.testing.assert_allclose(ops.convert_to_numpy(model.losses[0]), expected, rtol=1e-5)


def test_plain_model_loss_is_mean_bce_sum_plus_kl(binary_data):
    # A decoder kernel of zeros makes the logits its bias, whatever z is, so the NLL of a
    # fixed batch is known exactly and the loss checks the KL term and its scaling.
    model, encoder = plain_vae(decoder_kernel="zeros", decoder_trainable=False)
    model.compile(optimizer="sgd", loss=summed_binary_cross_entropy)
    x = binary_data[:64]
    bias = ops.convert_to_numpy(model.get_layer("decoder").bias).astype(np.float64)
    bce = np.logaddexp(0.0, bias) - x * bias  # BCE with logits, elementwise
    expected = bce.sum(axis=1).mean() + normal_kl(encoder(x)).mean()

    evaluated = model.evaluate(x, x, batch_size=64, verbose=0)
    np.testing.assert_allclose(evaluated, expected, rtol=1e-5)
    # train_on_batch reports the loss before its update: the same number, now differentiated.
    trained = model.train_on_batch(x, x)
    np.testing.assert_allclose(trained, expected, rtol=1e-5)


def test_plain_model_training_pulls_q_to_the_prior(binary_data):
    # With a decoder that ignores z, the KL is the only gradient the encoder receives: fit
    # must shrink it (before the fix it received none and the KL stayed where it was).
    model, encoder = plain_vae(decoder_kernel="zeros", decoder_trainable=False)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=summed_binary_cross_entropy)
    before = normal_kl(encoder(binary_data)).mean()
    model.fit(binary_data, binary_data, epochs=5, batch_size=32, verbose=0)
    after = normal_kl(encoder(binary_data)).mean()
    assert after < 0.2 * before, (before, after)


def test_sequential_model_trains_under_xla_with_the_kl(binary_data):
    model = keras.Sequential(
        [
            keras.Input((WIDTH,)),
            keras.layers.Dense(2 * UNITS),
            kvi.layers.NormalLatent(UNITS, name="z"),
            keras.layers.Dense(WIDTH),
        ]
    )
    model.compile(optimizer="adam", loss=summed_binary_cross_entropy, jit_compile=True)
    history = model.fit(binary_data, binary_data, epochs=2, batch_size=32, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    model(binary_data[:8])
    assert len(model.losses) == 1 and ops.convert_to_numpy(model.losses[0]) > 0.0


def test_monte_carlo_kl_loss_is_unbiased():
    # kl="mc" with one fresh draw per row: over B identical rows the loss is the mean of B
    # independent estimates of the closed form; the standard error comes from NumPy draws of
    # the same log-ratio.
    rows = 20_000
    params = np.tile(np.array([[0.5, -1.0, 0.0, 2.0, 0.3, -0.5, 1.0, 0.0]], np.float32), [rows, 1])
    latent = kvi.layers.NormalLatent(UNITS, kl="mc", seed=11)
    latent(params)
    (loss,) = latent.losses

    loc, scale = params[0, :UNITS].astype(np.float64), normal_scale(params[0, UNITS:])
    z = loc + scale * np.random.default_rng(0).standard_normal((rows, UNITS))
    log_ratio = np.sum(
        -0.5 * ((z - loc) / scale) ** 2 - np.log(scale) + 0.5 * z**2, axis=1
    )  # log q(z) - log p(z): the normalising constants cancel
    se = log_ratio.std(ddof=1) / np.sqrt(rows)
    closed_form = normal_kl(params[:1])[0]
    assert abs(ops.convert_to_numpy(loss) - closed_form) < 4 * se, (
        ops.convert_to_numpy(loss),
        closed_form,
        se,
    )


def test_no_kl_loss_inside_a_variational_model_step(binary_data):
    model = small_vae(latent_units=UNITS, width=WIDTH)
    model.compile(optimizer="adam")
    x = binary_data[:32]
    model.train_on_batch(x)
    latent = model.get_layer("z")
    assert latent.losses == [] and model.losses == []
    out = model.compute_objective(x, x, training=True)
    assert latent.losses == [] and model.losses == []
    assert ops.convert_to_numpy(out["kl"]) > 0.0  # the model has the KL in its own objective
    # Called outside a step (as a plain function), the same layer reports its KL: the check
    # above could fail.
    model(x)
    assert len(latent.losses) == 1


def test_no_kl_loss_when_kl_is_disabled_or_without_prior(binary_data):
    model, _ = plain_vae()
    x = binary_data[:8]
    with kvi.layers.bayesian.kl_disabled():
        model(x)
    assert model.losses == []
    samples = kvi.predict_samples(model, x, num_samples=3)
    assert samples.shape == (3, 8, WIDTH)

    priorless = kvi.layers.Latent(
        lambda p: tfd.Independent(tfd.Normal(p, 1.0), 1), prior=None, name="noise"
    )
    priorless(np.zeros((4, 3), "float32"))
    assert priorless.losses == []


def one_hot_with_string_dtype(params):
    return tfd.OneHotCategorical(logits=params, dtype="float32")


def test_distribution_with_a_string_dtype_trains(binary_data):
    latent = kvi.layers.Latent(one_hot_with_string_dtype, prior="uniform", name="z")
    spec = latent.compute_output_spec(keras.KerasTensor((None, 3)))
    assert tuple(spec.shape) == (None, 3) and spec.dtype == "float32"

    model = small_vae(latent=latent, params_width=3)
    model.compile(optimizer="adam")
    history = model.fit(binary_data, epochs=3, batch_size=32, verbose=0).history
    assert isinstance(latent.resolved_estimator, kvi.estimators.ScoreFunction)
    assert np.all(np.isfinite(history["loss"]))
    assert np.all(np.array(history["kl"]) > 0.0)
    z = latent(np.zeros((5, 3), "float32"))
    assert keras.backend.standardize_dtype(z.dtype) == "float32"
    np.testing.assert_array_equal(ops.convert_to_numpy(ops.sum(z, axis=-1)), np.ones(5))


def test_score_function_latent_refuses_plain_keras_training(binary_data):
    inputs = keras.Input((20,))
    bits = kvi.layers.BernoulliLatent(4, name="bits")(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(20)(bits))
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    # Inference works (checked first: on JAX, Keras's fit detaches the model's variables for
    # the epoch, and a first step that raises leaves them detached).
    assert model.predict(binary_data[:4], verbose=0).shape == (4, 20)
    with pytest.raises(
        ValueError, match=r"BernoulliLatent 'bits' uses estimator=.*kvi.Variational"
    ):
        model.fit(binary_data, binary_data, epochs=1, verbose=0)
