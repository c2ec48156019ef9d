"""`prediction="mean"`: deterministic predictive means from `model(x)`, `predict` and `export`."""

import keras
import numpy as np
import pytest

import keras_vi as kvi
from keras_vi import _prediction

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions
tfb = kvi.bijectors

WIDTH, UNITS = 20, 3


def _vae(likelihood="bernoulli", out_width=WIDTH, **kwargs):
    """A functional VAE with its encoder and decoder as separate models (for hand checks)."""
    encoder = keras.Sequential(
        [keras.Input((WIDTH,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(6)]
    )
    decoder = keras.Sequential(
        [
            keras.Input((UNITS,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(out_width),
        ]
    )
    inputs = keras.Input((WIDTH,))
    z = kvi.layers.NormalLatent(UNITS, name="z")(encoder(inputs))
    model = kvi.VariationalModel(inputs, decoder(z), likelihood=likelihood, **kwargs)
    return model, encoder, decoder


def _decoder_at_loc(encoder, decoder, x):
    """decoder(E_q[z | x]): the NormalLatent's loc is the first half of its parameters."""
    return _np(decoder(encoder(x)[:, :UNITS]))


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def _export(model, path, batch):
    """`model.export(path)`; on JAX for batches of `batch` rows only.

    On JAX, `export` traces with a symbolic batch size, which TFP's JAX distributions cannot
    take (they read static shapes); a static input signature exports the same function.
    """
    signature = None
    if keras.backend.backend() == "jax":
        signature = [keras.InputSpec(shape=(batch, WIDTH), dtype="float32")]
    model.export(str(path), verbose=False, input_signature=signature)


def _load_served(path):
    """The `serve` endpoint of an exported model, NumPy in and out."""
    import tensorflow as tf  # `export` writes a TensorFlow SavedModel on every backend

    loaded = tf.saved_model.load(str(path))  # kept alive: it owns the variables
    return lambda x: np.asarray(loaded.serve(tf.constant(x)))


def _train(model, data, epochs=2, **compile_kwargs):
    model.compile(optimizer=keras.optimizers.Adam(0.01), **compile_kwargs)
    return model.fit(data, epochs=epochs, batch_size=64, verbose=0).history


def test_mean_predictions_are_deterministic_probabilities(binary_data):
    model, encoder, decoder = _vae()
    _train(model, binary_data)
    x = binary_data[:50]
    sampled = model.predict(x, verbose=0)  # traces predict() in the default sample mode
    assert sampled.min() < 0.0 or sampled.max() > 1.0  # raw logits
    model.prediction = "mean"
    first = model.predict(x, verbose=0)
    second = model.predict(x, verbose=0)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (50, WIDTH)
    assert first.min() >= 0.0 and first.max() <= 1.0
    expected = _sigmoid(_decoder_at_loc(encoder, decoder, x))
    np.testing.assert_allclose(first, expected, atol=1e-6)
    np.testing.assert_allclose(_np(model(x)), expected, atol=1e-6)
    np.testing.assert_allclose(_np(model(x, training=False)), expected, atol=1e-6)


class SmallSubclassVAE(kvi.VariationalModel):
    def __init__(self, **kwargs):
        super().__init__(likelihood="bernoulli", **kwargs)
        self.encoder = keras.Sequential(
            [keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2 * UNITS)]
        )
        self.latent = kvi.layers.NormalLatent(UNITS, name="code")
        self.decoder = keras.Sequential(
            [keras.layers.Dense(16, activation="relu"), keras.layers.Dense(WIDTH)]
        )

    def call(self, x, training=None):
        return self.decoder(self.latent(self.encoder(x), training=training))


def test_subclassed_model_honours_mean(binary_data):
    model = SmallSubclassVAE(prediction="mean")
    _train(model, binary_data, epochs=1)
    x = binary_data[:32]
    expected = _sigmoid(_decoder_at_loc(model.encoder, model.decoder, x))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(_np(model(x)), expected, atol=1e-6)


def test_export_serves_the_mean(binary_data, tmp_path):
    model, encoder, decoder = _vae(prediction="mean")
    _train(model, binary_data, epochs=1)
    x = binary_data[:40]
    _export(model, tmp_path / "mean", len(x))
    served = _load_served(tmp_path / "mean")
    first, second = served(x), served(x)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, model.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(first, _sigmoid(_decoder_at_loc(encoder, decoder, x)), atol=1e-6)


def test_default_sample_stays_random(binary_data, tmp_path):
    model, _, _ = _vae()
    _train(model, binary_data, epochs=1)
    x = binary_data[:40]
    assert model.prediction == "sample"
    assert np.abs(model.predict(x, verbose=0) - model.predict(x, verbose=0)).max() > 1e-3
    assert np.abs(_np(model(x)) - _np(model(x))).max() > 1e-3
    _export(model, tmp_path / "sample", len(x))
    served = _load_served(tmp_path / "sample")
    logits = [served(x) for _ in range(2)]
    assert np.abs(logits[0] - logits[1]).max() > 1e-3
    assert logits[0].min() < 0.0 or logits[0].max() > 1.0


def test_training_with_mean_set_gives_the_same_weights(binary_data):
    results = []
    for prediction in ("sample", "mean"):
        keras.utils.set_random_seed(7)
        model, _, _ = _vae(prediction=prediction)
        history = _train(model, binary_data, epochs=1)
        evaluated = model.evaluate(binary_data, verbose=0, return_dict=True)
        results.append((model.get_weights(), history, evaluated))
    (weights_a, history_a, eval_a), (weights_b, history_b, eval_b) = results
    assert len(weights_a) == len(weights_b) > 0
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)
    assert history_a == history_b
    assert eval_a == eval_b


def test_mean_never_leaks_into_a_step(binary_data):
    model, _, _ = _vae(prediction="mean")
    x = binary_data[:16]
    first = _np(model.compute_objective(x, x, training=False)["y_pred"])
    second = _np(model.compute_objective(x, x, training=False)["y_pred"])
    assert np.abs(first - second).max() > 1e-3  # z is sampled
    assert first.min() < 0.0 or first.max() > 1.0  # logits, not probabilities


def test_save_and_load_keep_the_setting(binary_data, tmp_path):
    model, _, _ = _vae(prediction="mean")
    _train(model, binary_data, epochs=1)
    assert model.get_config()["prediction"] == "mean"
    model.save(tmp_path / "vae.keras")
    loaded = keras.models.load_model(tmp_path / "vae.keras")
    assert loaded.prediction == "mean"
    x = binary_data[:20]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_invalid_prediction_names_the_value_and_the_choices():
    message = r"`prediction` must be one of \('sample', 'mean'\), got 'median'"
    with pytest.raises(ValueError, match=message):
        _vae(prediction="median")
    model, _, _ = _vae()
    with pytest.raises(ValueError, match=message):
        model.prediction = "median"
    assert model.prediction == "sample"


def test_bayesian_layers_use_their_posterior_means():
    layers = [
        kvi.layers.DenseFlipout(8, activation="relu"),
        kvi.layers.DenseLocalReparameterization(6, activation="relu"),
        kvi.layers.DenseReparameterization(3),
    ]
    inputs = keras.Input((5,))
    h = inputs
    for layer in layers:
        h = layer(h)
    model = kvi.VariationalModel(
        inputs, h, likelihood="categorical", num_examples=100, prediction="mean"
    )
    x = np.random.default_rng(3).normal(size=(30, 5)).astype("float32")
    expected = x
    for i, layer in enumerate(layers):
        expected = expected @ _np(layer.posterior_loc("kernel"))
        expected = expected + _np(layer.posterior_loc("bias"))
        if i < 2:
            expected = np.maximum(expected, 0.0)
    expected = np.exp(expected) / np.exp(expected).sum(axis=-1, keepdims=True)
    first, second = model.predict(x, verbose=0), model.predict(x, verbose=0)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, expected, atol=1e-6)
    assert model.losses == []  # no KL is added outside a step
    # kvi.predict_samples draws whatever `prediction` is: fresh noise, raw logits.
    samples = kvi.predict_samples(model, x, num_samples=2)
    assert np.abs(samples[0] - samples[1]).max() > 1e-3
    assert np.abs(samples[0].sum(axis=-1) - 1.0).max() > 1e-2


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_discrete_latents_return_their_mode(kind):
    inputs = keras.Input((WIDTH,))
    params = keras.layers.Dense(6)(inputs)
    if kind == "bernoulli":
        latent = kvi.layers.BernoulliLatent(6, name="bits")
    else:
        latent = kvi.layers.CategoricalLatent(3, num_variables=2, name="classes")
    decoder = keras.layers.Dense(WIDTH)
    model = kvi.VariationalModel(
        inputs, decoder(latent(params)), likelihood="bernoulli", prediction="mean"
    )
    x = np.random.default_rng(4).random((25, WIDTH)).astype("float32")
    logits = _np(model.layers[1](x))
    if kind == "bernoulli":
        mode = (logits > 0).astype("float32")
    else:
        grouped = logits.reshape(25, 2, 3)
        mode = np.eye(3, dtype="float32")[grouped.argmax(-1)].reshape(25, 6)
    expected = _sigmoid(_np(decoder(mode)))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)


def test_normal_likelihood_gives_the_loc():
    x = np.random.default_rng(5).normal(size=(10, WIDTH)).astype("float32")
    # Output twice as wide as the input (the target): [loc, raw scale] -> loc.
    model, encoder, decoder = _vae("normal", out_width=2 * WIDTH, prediction="mean")
    raw = _decoder_at_loc(encoder, decoder, x)
    np.testing.assert_allclose(model.predict(x, verbose=0), raw[:, :WIDTH], atol=1e-6)
    # Output as wide as the input: the loc itself.
    model, encoder, decoder = _vae("normal", prediction="mean")
    raw = _decoder_at_loc(encoder, decoder, x)
    np.testing.assert_allclose(model.predict(x, verbose=0), raw, atol=1e-6)
    # An even width that is neither: loc or [loc, raw scale] cannot be told apart.
    model, _, _ = _vae("normal", out_width=4, prediction="mean")
    with pytest.raises(ValueError, match="output has width 4 and the input width 20"):
        model.predict(x, verbose=0)


def test_poisson_callable_and_compiled_loss_likelihoods():
    x = np.random.default_rng(6).random((12, WIDTH)).astype("float32")

    def likelihood(y_pred):
        return tfd.Independent(tfd.Normal(y_pred, 2.0), 1)

    for name, transform in [
        ("poisson", np.exp),
        (likelihood, lambda raw: raw),  # the mean of N(loc, 2) is loc
    ]:
        model, encoder, decoder = _vae(name, prediction="mean")
        expected = transform(_decoder_at_loc(encoder, decoder, x))
        np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    # With a compiled Keras loss there is no distribution: the output is left as it is.
    model, encoder, decoder = _vae(None, prediction="mean")
    model.compile(optimizer="adam", loss="mse")
    raw = _decoder_at_loc(encoder, decoder, x)
    np.testing.assert_allclose(model.predict(x, verbose=0), raw, atol=1e-6)


def test_point_estimates_of_relaxed_and_flow_latents():
    params = np.random.default_rng(7).normal(size=(4, 6)).astype("float32")
    relaxed = kvi.layers.RelaxedCategoricalLatent(3, temperature=0.5, num_variables=2)

    def flow(t):
        return tfd.Independent(tfd.TransformedDistribution(tfd.Normal(t, 1.0), tfb.Exp()), 1)

    lognormal = kvi.layers.Latent(flow, prior=None)
    with _prediction.mode("mean"):
        soft = _np(relaxed(params))
        positive = _np(lognormal(params))
    grouped = params.reshape(4, 2, 3) / 0.5
    expected = np.exp(grouped) / np.exp(grouped).sum(-1, keepdims=True)
    np.testing.assert_allclose(soft, expected.reshape(4, 6), atol=1e-6)
    np.testing.assert_allclose(positive, np.exp(params), rtol=1e-6)
    # Outside the context, the same layers draw.
    assert np.abs(_np(relaxed(params)) - soft).max() > 1e-3


def test_point_estimate_without_a_closed_form_names_the_layer():
    def mixture(t):
        return tfd.Independent(
            tfd.MixtureSameFamily(
                tfd.Categorical(logits=np.zeros(2, "float32")),
                tfd.Normal(keras.ops.stack([t, -t], -1), 1.0),
            ),
            1,
        )

    layer = kvi.layers.Latent(mixture, prior=None, name="mix")
    with _prediction.mode("mean"), pytest.raises(ValueError, match="Latent 'mix'.*mode of q"):
        layer(np.zeros((2, 3), "float32"))
