"""Keras conventions honoured or refused loudly: regularizers and add_loss, sample_weight and
class_weight, likelihood shape and support checks, compile(loss=...) next to a likelihood,
metric directions for monitoring callbacks, estimator/objective mismatches at compile().

Each test here failed on keras_vi 0.1.0 (a silent wrong number or a late, unclear error).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf  # tf.data only: datasets feed Keras on every backend

import keras_vi as kvi

from backend_utils import gradients
from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions

JIT = [False, True]


def _np(x):
    return keras.ops.convert_to_numpy(x)


# ----------------------------------------------------------------- the conjugate model
def conjugate_model(jit_compile=False, delta=0.0):
    """p(z) = N(0, 1), p(x|z) = N(z, 1), q(z|x) = N(x/2 + delta, 1/2), Monte Carlo KL.

    At delta = 0 q is the exact posterior, so every example's ELBO estimate is log p(x)
    exactly (log p(x, z) - log q(z) does not depend on z).
    """

    def posterior(x):
        return tfd.Independent(tfd.Normal(x / 2.0 + delta, math.sqrt(0.5)), 1)

    inputs = keras.Input((1,))
    z = kvi.layers.Latent(posterior, prior="standard_normal", kl="mc", name="z")(inputs)
    model = kvi.VariationalModel(inputs, z, likelihood="normal")
    model.compile(optimizer="sgd", jit_compile=jit_compile)
    return model


X = np.linspace(-2.0, 2.0, 50, dtype="float32")[:, None]
# log p(x) = log N(x; 0, 2), in float64.
LOG_PX = -(X[:, 0].astype("float64") ** 2) / 4.0 - 0.5 * math.log(4.0 * math.pi)
# Heavier in the tails, where log p(x) is lower, so the weighted mean differs from the mean.
WEIGHTS = (np.abs(X[:, 0]) + np.random.default_rng(3).uniform(0.0, 0.5, size=50)).astype("float32")


# ----------------------------------------------------------------- 1. regularizers, add_loss
def _regularized_vae(regularizer=None, activity=None, extra_layer=None, **model_kwargs):
    inputs = keras.Input((20,))
    h = keras.layers.Dense(
        16,
        activation="relu",
        kernel_regularizer=regularizer,
        activity_regularizer=activity,
        name="encoder",
    )(inputs)
    if extra_layer is not None:
        h = extra_layer(h)
    z = kvi.layers.NormalLatent(3, name="z")(keras.layers.Dense(6)(h))
    logits = keras.layers.Dense(20)(z)
    return kvi.VariationalModel(inputs, logits, likelihood="bernoulli", **model_kwargs)


class AddsConstantLoss(keras.layers.Layer):
    def call(self, inputs):
        self.add_loss(keras.ops.convert_to_tensor(1000.0))
        return inputs


@pytest.mark.parametrize("jit_compile", JIT)
def test_kernel_regularizer_joins_the_loss_not_the_elbo(binary_data, jit_compile):
    model = _regularized_vae(keras.regularizers.L2(1.0))
    model.compile(optimizer="adam", jit_compile=jit_compile)
    logs = model.evaluate(binary_data, batch_size=256, verbose=0, return_dict=True)
    kernel = _np(model.get_layer("encoder").kernel)
    penalty = float(np.sum(kernel.astype("float64") ** 2))
    assert logs["regularization"] == pytest.approx(penalty, rel=1e-5)
    assert logs["loss"] == pytest.approx(-logs["elbo"] + penalty, rel=1e-5)


def test_kernel_regularizer_shrinks_the_weights(binary_data):
    norms = {}
    for strength in (0.0, 1.0):
        keras.utils.set_random_seed(7)
        model = _regularized_vae(keras.regularizers.L2(strength))
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        model.fit(binary_data, epochs=3, batch_size=32, verbose=0)
        norms[strength] = float(np.linalg.norm(_np(model.get_layer("encoder").kernel)))
    # Measured here: 4.25 unregularised against 1.31 with L2(1.0).
    assert norms[1.0] < 0.5 * norms[0.0]


@pytest.mark.parametrize("jit_compile", JIT)
def test_activity_regularizer_and_add_loss_join_the_loss(binary_data, jit_compile):
    model = _regularized_vae(
        activity=keras.regularizers.L1(0.01), extra_layer=AddsConstantLoss(), tile_at="input"
    )
    model.compile(optimizer="adam", jit_compile=jit_compile)
    logs = model.evaluate(binary_data, batch_size=256, verbose=0, return_dict=True)
    encoder = keras.Model(model.inputs, model.get_layer("encoder").output)
    activity = encoder(binary_data)
    # The penalty as this Keras computes it (3.14 and later divide it by the batch size).
    penalty = float(sum(encoder.losses))
    l1 = 0.01 * float(np.abs(_np(activity).astype("float64")).sum())
    assert penalty == pytest.approx(l1, rel=1e-5) or penalty == pytest.approx(l1 / 256, rel=1e-5)
    expected = 1000.0 + penalty
    assert logs["regularization"] == pytest.approx(expected, rel=1e-5)
    assert logs["loss"] == pytest.approx(-logs["elbo"] + expected, rel=1e-5)


def test_no_regularization_column_without_losses(binary_data):
    model = small_vae()
    model.compile(optimizer="adam")
    history = model.fit(binary_data, epochs=1, verbose=0).history
    assert "regularization" not in history
    assert history["loss"][0] == pytest.approx(-history["elbo"][0], rel=1e-6)


# ----------------------------------------------------------------- 2. sample_weight
@pytest.mark.parametrize("jit_compile", JIT)
def test_evaluate_sample_weight_gives_weighted_means(jit_compile):
    model = conjugate_model(jit_compile)
    logs = model.evaluate(X, sample_weight=WEIGHTS, batch_size=20, verbose=0, return_dict=True)
    weighted_mean = float(np.sum(WEIGHTS * LOG_PX) / np.sum(WEIGHTS))
    assert logs["elbo"] == pytest.approx(weighted_mean, abs=1e-5)
    # The loss is reduced as Keras reduces a weighted loss: sum(w * l) / batch size.
    assert logs["loss"] == pytest.approx(-float(np.sum(WEIGHTS * LOG_PX)) / len(X), abs=1e-5)
    unweighted = model.evaluate(X, batch_size=20, verbose=0, return_dict=True)
    assert unweighted["elbo"] == pytest.approx(LOG_PX.mean(), abs=1e-5)
    assert abs(weighted_mean - LOG_PX.mean()) > 0.05  # the weights matter here


def test_sample_weight_passed_by_position_is_honoured():
    model = conjugate_model()
    # evaluate(x, y, batch_size, verbose, sample_weight): weights in fifth place.
    logs = model.evaluate(X, None, 20, 0, WEIGHTS, return_dict=True)
    assert logs["elbo"] == pytest.approx(np.sum(WEIGHTS * LOG_PX) / np.sum(WEIGHTS), abs=1e-5)


def test_evaluate_sample_weight_from_a_dataset():
    model = conjugate_model()
    dataset = tf.data.Dataset.from_tensor_slices((X, X, WEIGHTS)).batch(16)
    logs = model.evaluate(dataset, verbose=0, return_dict=True)
    assert logs["elbo"] == pytest.approx(np.sum(WEIGHTS * LOG_PX) / np.sum(WEIGHTS), abs=1e-5)
    assert logs["loss"] == pytest.approx(-float(np.sum(WEIGHTS * LOG_PX)) / len(X), abs=1e-5)


def _gradients(model, x, sample_weight):
    """Loss gradients of one training step, drawing the same noise on every call."""
    layer = model.get_layer("z")
    state = keras.ops.convert_to_numpy(layer.seed_generator.state)

    def objective():
        return model.compute_objective(x, x, training=True, sample_weight=sample_weight)

    with keras.StatelessScope():  # leaves the seed generator as it was
        out = objective()
    grads = gradients(lambda: objective()["loss"], model.trainable_variables)
    layer.seed_generator.state.assign(state)
    return out, grads


def _assert_all_close(got, want):
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("estimator", ["reparameterization", "score_function"])
def test_sample_weight_weights_each_examples_gradient(binary_data, estimator):
    if estimator == "reparameterization":
        latent, width = kvi.layers.NormalLatent(4, name="z"), 8
    else:
        latent, width = kvi.layers.BernoulliLatent(6, name="z", estimator=estimator), 6
    model = small_vae(latent=latent, params_width=width)
    model.compile(optimizer="sgd")
    x, b = binary_data[:16], 16
    rng = np.random.default_rng(1)
    w1, w2 = rng.uniform(0, 2, b).astype("float32"), rng.uniform(0, 2, b).astype("float32")
    unweighted, plain = _gradients(model, x, None)
    _assert_all_close(_gradients(model, x, np.ones(b, "float32"))[1], plain)
    out1, g1 = _gradients(model, x, w1)
    _, g2 = _gradients(model, x, w2)
    _assert_all_close(_gradients(model, x, w1 + w2)[1], [a + c for a, c in zip(g1, g2)])
    assert all(not np.any(g) for g in _gradients(model, x, np.zeros(b, "float32"))[1])
    # Example j's weight scales example j's terms only: other rows do not reach its gradient.
    only_first = np.eye(b, dtype="float32")[0]
    changed = x.copy()
    changed[1:] = 1.0 - changed[1:]
    _, first = _gradients(model, x, only_first)
    _assert_all_close(_gradients(model, changed, only_first)[1], first)
    assert any(np.any(g) for g in first)
    # The weighted means reported, by hand from the per-example bounds.
    bound = _np(unweighted["bound"])
    assert float(out1["elbo"]) == pytest.approx(np.sum(w1 * bound) / np.sum(w1), rel=1e-5)
    assert float(out1["loss_value"]) == pytest.approx(-np.sum(w1 * bound) / b, rel=1e-5)


@pytest.mark.parametrize("jit_compile", JIT)
def test_fit_sample_weight_scales_the_gradient(binary_data, jit_compile):
    def trained(lr, weights):
        keras.utils.set_random_seed(11)
        model = small_vae()
        model.compile(optimizer=keras.optimizers.SGD(lr), jit_compile=jit_compile)
        kwargs = {} if weights is None else {"sample_weight": weights}
        model.fit(binary_data, epochs=1, batch_size=64, shuffle=False, verbose=0, **kwargs)
        return [_np(v) for v in model.trainable_variables]

    ones = np.ones(len(binary_data), "float32")
    doubled, double_lr = trained(0.05, 2.0 * ones), trained(0.1, None)
    for a, b in zip(doubled, double_lr):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    initial = trained(0.05, None)
    zero = trained(0.05, 0.0 * ones)
    keras.utils.set_random_seed(11)
    untouched = [_np(v) for v in small_vae().trainable_variables]
    for a, b in zip(zero, untouched):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(initial, untouched))


def test_fit_sample_weight_supervised_dataset(binary_data):
    x, y = binary_data, binary_data[:, ::-1].copy()
    w = np.where(np.arange(len(x)) % 2 == 0, 1.0, 0.0).astype("float32")
    model = small_vae()
    model.compile(optimizer="adam")
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(32)
    history = model.fit(dataset, epochs=1, verbose=0).history
    assert np.isfinite(history["elbo"][0])
    logs = model.evaluate(dataset, verbose=0, return_dict=True)
    even = model.evaluate(x[::2], y[::2], batch_size=16, verbose=0, return_dict=True)
    # Zero-weighted rows drop out of the weighted means (up to the sampling noise of z).
    assert logs["nll"] == pytest.approx(even["nll"], rel=0.05)


@pytest.mark.parametrize(
    "weights,match",
    [
        (-np.ones(256), r"`sample_weight` must be finite and >= 0; got -1.0 at example 0"),
        (np.ones((256, 20)), r"one weight per example .*\(256, 20\)"),
        (np.ones(100), r"100 entries, expected one per example \(256\)"),
    ],
)
def test_bad_sample_weight(binary_data, weights, match):
    model = small_vae()
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=match):
        model.fit(binary_data, sample_weight=weights, epochs=1, verbose=0)


def test_class_weight_needs_a_categorical_target(binary_data):
    model = small_vae()
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"`class_weight` .* no `y`"):
        model.fit(binary_data, class_weight={0: 1.0, 1: 2.0}, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`class_weight` needs a categorical target"):
        model.fit(binary_data, binary_data, class_weight={0: 1.0}, epochs=1, verbose=0)


def test_class_weight_on_a_categorical_target_weights_the_examples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 5)).astype("float32")
    labels = (x[:, 0] > 0).astype("int32")

    def classifier():
        keras.utils.set_random_seed(5)
        inputs = keras.Input((5,))
        z = kvi.layers.NormalLatent(2, name="z")(keras.layers.Dense(4)(inputs))
        logits = keras.layers.Dense(2)(z)
        model = kvi.VariationalModel(inputs, logits, likelihood="categorical")
        model.compile(optimizer="sgd")
        return model

    by_class = classifier().evaluate(x, labels, batch_size=96, verbose=0, return_dict=True)
    weights = np.where(labels == 1, 3.0, 1.0).astype("float32")
    by_hand = classifier().evaluate(
        x, labels, sample_weight=weights, batch_size=96, verbose=0, return_dict=True
    )
    fit_weighted = classifier()
    fit_weighted.fit(x, labels, class_weight={0: 1.0, 1: 3.0}, batch_size=96, verbose=0)
    fit_by_hand = classifier()
    fit_by_hand.fit(x, labels, sample_weight=weights, batch_size=96, verbose=0)
    for a, b in zip(fit_weighted.trainable_variables, fit_by_hand.trainable_variables):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-7)
    assert by_class["nll"] != pytest.approx(by_hand["nll"], rel=1e-3)


# ----------------------------------------------------------------- 3. one value per example
def _regression_model(likelihood):
    inputs = keras.Input((1,))
    z = kvi.layers.NormalLatent(1, name="z")(keras.layers.Dense(2)(inputs))
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([inputs, z]))
    return kvi.VariationalModel(inputs, out, likelihood=likelihood, tile_at="input")


@pytest.mark.parametrize("jit_compile", JIT)
def test_callable_likelihood_refuses_a_broadcast_target(jit_compile):
    x = np.linspace(-1, 1, 150).astype("float32")[:, None]
    y = (2 * x[:, 0] + 1).astype("float32")  # shape (150,), output (150, 1)
    model = _regression_model(lambda out: tfd.Normal(out, 1.0))
    model.compile(optimizer="adam", jit_compile=jit_compile)
    with pytest.raises(ValueError, match=r"shape \(150,\).*broadcast.*\(None, 1\)|\(150, 1\)"):
        model.fit(x, y, batch_size=150, epochs=1, verbose=0)
    model.fit(x, y[:, None], batch_size=150, epochs=1, verbose=0)  # the right shape trains


def test_callable_likelihood_refuses_one_value_for_the_batch():
    x = np.linspace(-1, 1, 32).astype("float32")[:, None]
    model = _regression_model(lambda out: tfd.Independent(tfd.Normal(out, 1.0), 2))
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"single number, expected one value per example"):
        model.fit(x, x, batch_size=32, epochs=1, verbose=0)


# ----------------------------------------------------------------- 4. the likelihood's support
@pytest.mark.parametrize(
    "make_target,likelihood,match",
    [
        (
            lambda x: (x * 255).astype("uint8"),
            "bernoulli",
            r"`x` has values outside the support of likelihood='bernoulli' at example \d+ "
            r"\(batch \d+ with batch_size=32\): found values \[0, 255\].*"
            r"expected values in \[0, 1\]",
        ),
        (lambda x: x * 3.0, "poisson", None),
        (lambda x: -x, "poisson", r"expected non-negative integer counts"),
        (lambda x: x + 0.5, "poisson", r"expected non-negative integer counts"),
    ],
)
def test_targets_outside_the_support_are_refused(binary_data, make_target, likelihood, match):
    model = small_vae(likelihood=likelihood)
    model.compile(optimizer="adam")
    target = make_target(binary_data)
    if match is None:  # inside the support: trains
        model.fit(binary_data, target, epochs=1, verbose=0)
        return
    x = target if likelihood == "bernoulli" else binary_data
    y = None if likelihood == "bernoulli" else target
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, epochs=1, verbose=0)


def test_the_support_check_runs_in_chunks_and_names_the_row(binary_data, monkeypatch):
    """The fit-time check goes through the data a chunk of rows at a time (a whole dataset
    copied to an accelerator at once could exhaust its memory) and still names the row."""
    from keras_vi import likelihoods, validation

    chunks = []
    support = likelihoods.support

    def counted(likelihood, y_pred_shape, y):
        if isinstance(y, np.ndarray):  # the fit-time check (the step calls it on tensors)
            chunks.append(len(y))
        return support(likelihood, y_pred_shape, y)

    monkeypatch.setattr(validation, "SUPPORT_CHECK_ROWS", 48)
    monkeypatch.setattr(likelihoods, "support", counted)
    model = small_vae()
    model.compile(optimizer="adam")
    x = binary_data.copy()
    x[203, 5] = 2.0  # in the fifth chunk of 48 rows
    with pytest.raises(ValueError, match=r"at example 203 \(batch 6 with batch_size=32\)"):
        model.fit(x, epochs=1, verbose=0)
    assert chunks == [48] * 5
    model.fit(binary_data, epochs=1, verbose=0)  # every chunk inside the support: trains


def _one_latent_model(output_width, likelihood):
    inputs = keras.Input((20,))
    z = kvi.layers.NormalLatent(2, name="z")(keras.layers.Dense(4)(inputs))
    outputs = keras.layers.Dense(output_width)(z)
    model = kvi.VariationalModel(inputs, outputs, likelihood=likelihood)
    model.compile(optimizer="adam")
    return model


@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson", "categorical"])
def test_the_steps_whole_batch_check_agrees_with_the_row_check(likelihood):
    """A training step checks the batch as a whole (for "bernoulli" by its minimum and
    maximum): on finite targets it flags a batch exactly when a row is outside the support."""
    from keras_vi import likelihoods

    rng = np.random.default_rng(0)
    shape = (8, 3)
    for trial in range(40):
        y = rng.choice([0.0, 0.3, 1.0, 2.0, -0.5], size=shape, p=[0.4, 0.3, 0.28, 0.01, 0.01])
        if likelihood == "categorical":
            y = rng.choice([0.0, 1.0, 2.0, 3.0], size=(8,), p=[0.4, 0.3, 0.28, 0.02])
        y = y.astype("float32")
        rows, expected = likelihoods.support(likelihood, shape, y)
        whole, text = likelihoods.batch_in_support(likelihood, shape, y)
        assert bool(whole) == bool(np.all(keras.ops.convert_to_numpy(rows))), (trial, y)
        assert text == expected
    nan_only = np.array([[0.0, np.nan, 1.0]], "float32")
    inf_only = np.array([[np.inf, 0.5, 0.0]], "float32")
    for y in (nan_only, inf_only, np.zeros((0, 3), "float32")):
        # Non-finite targets are the non-finite checks' business (the step is skipped as
        # non-finite); a batch with no rows is inside the support.
        assert bool(likelihoods.batch_in_support("bernoulli", (len(y), 3), y)[0])


def test_integer_labels_against_a_bernoulli_output(binary_data):
    model = _one_latent_model(1, "bernoulli")
    labels = (np.arange(256) % 10).astype("int64")[:, None]
    with pytest.raises(ValueError, match=r"`y` has values outside .* expected values in \[0, 1\]"):
        model.fit(binary_data, labels, epochs=1, verbose=0)


def test_categorical_class_ids_out_of_range(binary_data):
    model = _one_latent_model(3, "categorical")
    with pytest.raises(ValueError, match=r"expected integer class ids in \[0, 2\]"):
        model.fit(binary_data, np.arange(256) % 4, epochs=1, verbose=0)
    one_hot = np.eye(3, dtype="float32")[np.arange(256) % 3]
    model.fit(binary_data, one_hot, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"expected one-hot rows"):
        model.fit(binary_data, 2.0 * one_hot, epochs=1, verbose=0)


@pytest.mark.parametrize("jit_compile", JIT)
def test_dataset_targets_outside_the_support_fail_in_the_step(binary_data, jit_compile):
    images = tf.data.Dataset.from_tensor_slices((binary_data * 255).astype("uint8")).batch(32)
    model = small_vae()
    model.compile(optimizer="adam", jit_compile=jit_compile)
    before = [_np(v) for v in model.trainable_variables]
    with pytest.raises(
        (ValueError, kvi.NonFiniteError),
        match=r"support of likelihood='bernoulli'.*values in \[0, 1\]",
    ):
        model.fit(images.map(lambda b: tf.cast(b, "float32")), epochs=2, verbose=0)
    for a, b in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(a, _np(b))  # every such step was skipped
    with pytest.raises(ValueError, match=r"evaluate\(\): 8 batch\(es\) had target values"):
        model.evaluate(images.map(lambda b: tf.cast(b, "float32")), verbose=0)


# ----------------------------------------------------------------- 5. compile(loss=...)
def test_compile_loss_next_to_a_likelihood_is_an_error():
    model = small_vae()
    with pytest.raises(ValueError, match=r"compile\(\) got loss='mse'.*likelihood='bernoulli'"):
        model.compile(optimizer="adam", loss="mse")


# ----------------------------------------------------------------- 7. metric directions
def test_monitoring_callbacks_know_which_way_is_better(binary_data, tmp_path):
    model = small_vae()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    stop = keras.callbacks.EarlyStopping(monitor="val_elbo", patience=50)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_elbo", save_best_only=True
    )
    if not hasattr(checkpoint, "mode"):  # Keras before 3.11: fixed in the constructor
        with pytest.raises(ValueError, match=r"pass mode='max'"):
            model.fit(binary_data, epochs=1, verbose=0, callbacks=[checkpoint])
        checkpoint = keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.keras"), monitor="val_elbo", save_best_only=True, mode="max"
        )
        checkpoint.mode = "max"
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_kl/z", patience=50)
    loss_stop = keras.callbacks.EarlyStopping(monitor="val_nll", patience=50)
    history = model.fit(
        binary_data,
        validation_split=0.25,
        epochs=4,
        verbose=0,
        callbacks=[stop, checkpoint, plateau, loss_stop],
    ).history
    assert (stop.mode, checkpoint.mode, plateau.mode, loss_stop.mode) == (
        "max",
        "max",
        "min",
        "min",
    )
    assert stop.best == pytest.approx(max(history["val_elbo"]))
    assert checkpoint.best == pytest.approx(max(history["val_elbo"]))
    assert loss_stop.best == pytest.approx(min(history["val_nll"]))


# ----------------------------------------------------------------- estimator vs objective
@pytest.mark.parametrize(
    "make_latent,width,match",
    [
        (
            lambda: kvi.layers.BernoulliLatent(4, name="z", estimator="vimco"),
            4,
            r"^Latent 'z': estimator=VIMCO\(\) needs objective='iwae', but the model has "
            r"objective='elbo'",
        ),
        (
            lambda: kvi.layers.NormalLatent(2, name="z", estimator="dreg"),
            4,
            r"estimator=DoublyReparameterized\(\) needs objective='iwae'",
        ),
    ],
)
def test_estimator_objective_mismatch_is_caught_at_compile(make_latent, width, match):
    model = small_vae(latent=make_latent(), params_width=width)
    with pytest.raises(ValueError, match=match) as error:
        model.compile(optimizer="adam")
    assert "\x1b[" not in str(error.value)  # no ANSI codes from a wrapped layer-call error
