"""The estimator family inside VariationalModel: XLA, saving, mixed latents, clear errors,
the same value for every estimator, STL at the exact posterior, DReG/VIMCO end to end."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from test_estimators_gradients import (
    Q_LOC,
    Q_SCALE,
    X_OBS,
    assert_within_4_se,
    iwae2_quadrature_gradient,
)

import keras_vi as kvi
from keras_vi import _scope

tfd = tfp.distributions
B = kvi.estimators.baselines
ROOT = os.path.join(os.path.dirname(__file__), "..")


def nvil(width=8):
    return kvi.estimators.ScoreFunction(
        B.Learned(
            keras.Sequential(
                [keras.layers.Dense(width, activation="tanh"), keras.layers.Dense(1)], name="net"
            ),
            centering=B.MovingAverage(0.9),
            normalize=True,
        )
    )


def mixed_model(objective):
    """One model whose latents use different estimators (all of them across the two)."""
    x = keras.Input((20,))
    h = keras.layers.Dense(16, activation="tanh", name="enc")(x)
    if objective == "elbo":
        latents = [
            (kvi.layers.NormalLatent(2, estimator="stl", name="z_stl"), 4),
            (
                kvi.layers.BernoulliLatent(
                    3, estimator=kvi.estimators.ScoreFunction(B.LeaveOneOut()), name="b_loo"
                ),
                3,
            ),
            (kvi.layers.BernoulliLatent(3, estimator=nvil(), name="b_nvil"), 3),
            (
                kvi.layers.CategoricalLatent(
                    3,
                    num_variables=2,
                    estimator=kvi.estimators.GumbelSoftmax(kvi.schedules.Linear(4, 2.0, 0.5)),
                    name="c_gs",
                ),
                6,
            ),
            (kvi.layers.RelaxedCategoricalLatent(3, temperature=0.7, name="c_relaxed"), 3),
        ]
    else:
        latents = [
            (kvi.layers.NormalLatent(2, estimator="dreg", name="z_dreg"), 4),
            (kvi.layers.NormalLatent(2, estimator="dreg", name="z_dreg_2"), 4),
            (kvi.layers.BernoulliLatent(3, estimator="vimco", name="b_vimco"), 3),
            (
                kvi.layers.CategoricalLatent(
                    3,
                    num_variables=2,
                    estimator=kvi.estimators.GumbelSoftmax(0.5, straight_through=True),
                    name="c_st",
                ),
                6,
            ),
            (kvi.layers.BernoulliLatent(3, estimator="score_function", name="b_sf"), 3),
        ]
    zs = [latent(keras.layers.Dense(width)(h)) for latent, width in latents]
    out = keras.layers.Dense(20)(
        keras.layers.Dense(16, activation="tanh")(keras.layers.Concatenate()(zs))
    )
    return kvi.VariationalModel(x, out, likelihood="bernoulli", num_samples=3, objective=objective)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_mixed_estimators_train_under_xla_and_round_trip(objective, binary_data, tmp_path):
    model = mixed_model(objective)
    model.compile(optimizer=keras.optimizers.Adam(3e-2), jit_compile=True)
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(binary_data, batch_size=64, epochs=3, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    # Every trainable variable moved, the learned baseline's network included: it is trained
    # by the same optimizer step, through its auxiliary objective.
    moved = {
        v.path: not np.allclose(b, v.numpy()) for b, v in zip(before, model.trainable_variables)
    }
    assert all(moved.values()), moved
    if objective == "elbo":
        assert model.optimizer.iterations.numpy() == 12
        gs = model.get_layer("c_gs").resolved_estimator
        assert float(gs.temperature_at(model.optimizer.iterations)) == pytest.approx(0.5)

    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    for layer in model.layers:
        if isinstance(layer, kvi.layers.Latent):
            twin = loaded.get_layer(layer.name)
            assert repr(twin.resolved_estimator) == repr(layer.resolved_estimator)
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()
    # The loaded estimators build their training objective (surrogates included).
    out = loaded.compute_objective(binary_data[:8], binary_data[:8], training=True)
    assert np.isfinite(float(out["loss"]))


def test_learned_baseline_composes_with_moving_average():
    # The composed baseline equals the parts applied by hand (and trains only the network).
    network = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")
    centering = B.MovingAverage(0.5)
    learned = B.Learned(network, centering=centering)
    signal = tf.constant([[1.0, 2.0], [3.0, 6.0]])  # [K=2, B=2]
    inputs = tf.constant([[0.5], [1.0], [1.5], [2.0]])  # rows k * B + b
    centering.build()
    centering.average.assign(2.0)
    centering.initialized.assign(1.0)
    baseline, auxiliary = learned.compute(signal, inputs, training=True)
    by_hand = 2.0 + tf.reshape(inputs, [2, 2])
    np.testing.assert_allclose(baseline, by_hand)
    expected_aux = -np.mean((signal.numpy() - 2.0 - tf.reshape(inputs, [2, 2]).numpy()) ** 2)
    assert float(auxiliary) == pytest.approx(expected_aux)
    assert float(centering.average) == pytest.approx(0.5 * 2.0 + 0.5 * 3.0)  # updated
    # apply() removes the whole composed baseline (the updated average 2.5 + the network).
    centred, _ = learned.apply(signal, inputs, training=False)
    np.testing.assert_allclose(centred, signal - (2.5 + tf.reshape(inputs, [2, 2])))


def test_leave_one_out_baseline_by_hand():
    signal = tf.constant([[1.0, 10.0], [2.0, 20.0], [6.0, 0.0]])
    baseline, aux = B.LeaveOneOut().compute(signal, None, True)
    expected = np.array([[4.0, 10.0], [3.5, 5.0], [1.5, 15.0]])
    np.testing.assert_allclose(baseline, expected)
    assert aux is None


def test_vimco_leave_one_out_bounds_by_hand_and_stable():
    lw = np.array([[0.1, -2.0], [1.5, -1.0], [-0.7, 0.3]], "float64")
    k = lw.shape[0]
    expected = np.empty_like(lw)
    for i in range(k):
        others = np.delete(lw, i, axis=0)
        swapped = np.concatenate([others, others.mean(0, keepdims=True)], 0)
        expected[i] = np.log(np.exp(swapped).sum(0) / k)
    np.testing.assert_allclose(kvi.estimators.leave_one_out_bounds(lw), expected, rtol=1e-10)
    # Log-weights of -1e4 nats (a long way below float range) stay finite.
    huge = tf.constant([[-1e4], [-1e4 + 5.0], [-1e4 - 3.0]])
    assert np.all(np.isfinite(kvi.estimators.leave_one_out_bounds(huge).numpy()))


def _conjugate_model(estimator, *, objective="elbo", num_samples=1, rows=None):
    """p(z) = N(0,1), p(x|z) = N(z,1): q(z|x) = N(a x + c, softplus(raw)) from a Dense layer
    (or per-row parameters from an Embedding when `rows` is given)."""
    if rows is None:
        x = keras.Input((1,))
        params = keras.layers.Dense(2, name="encoder")(x)
    else:
        x = keras.Input((), dtype="int32")
        params = keras.layers.Embedding(rows, 2, name="encoder")(x)
    z = kvi.layers.NormalLatent(1, min_scale=0.0, estimator=estimator, name="z")(params)
    return kvi.VariationalModel(
        x, z, likelihood="normal", objective=objective, num_samples=num_samples
    )


def _softplus_inverse(y):
    return float(np.log(np.expm1(y)))


def test_stl_gradient_is_zero_at_the_exact_posterior():
    x = np.linspace(-2.0, 2.0, 64).astype("float32")[:, None]
    grads = {}
    for estimator in ["stl", "reparameterization"]:
        model = _conjugate_model(estimator)
        encoder = model.get_layer("encoder")
        # q(z|x) = N(x/2, 1/2): the exact posterior.
        encoder.kernel.assign([[0.5, 0.0]])
        encoder.bias.assign([0.0, _softplus_inverse(np.sqrt(0.5))])
        with tf.GradientTape() as tape:
            out = model.compute_objective(x, x, training=True)
        grads[estimator] = [g.numpy() for g in tape.gradient(out["loss"], encoder.weights)]
        # The value is the evidence, log N(x; 0, 2), for every x (the bound is tight).
        if estimator == "stl":
            log_evidence = tfd.Normal(0.0, np.sqrt(2.0)).log_prob(x[:, 0]).numpy()
            np.testing.assert_allclose(out["bound"].numpy(), log_evidence, atol=1e-5)
    stl_max = max(np.abs(g).max() for g in grads["stl"])
    reparam_max = max(np.abs(g).max() for g in grads["reparameterization"])
    assert stl_max < 1e-5, grads["stl"]
    assert reparam_max > 1e-2, grads["reparameterization"]


@pytest.mark.parametrize("estimator", ["dreg", "vimco", "reparameterization"])
def test_model_level_iwae_gradients_match_quadrature(estimator):
    # Per-row encoder parameters (an Embedding) give one independent gradient estimate per
    # row from a single training-mode objective; compare with the K = 2 quadrature.
    rows = 30_000
    model = _conjugate_model(estimator, objective="iwae", num_samples=2, rows=rows)
    encoder = model.get_layer("encoder")
    raw = _softplus_inverse(Q_SCALE)
    encoder.embeddings.assign(tf.tile([[Q_LOC, raw]], [rows, 1]))
    ids = tf.range(rows)
    y = tf.fill([rows, 1], X_OBS)

    @tf.function
    def gradient():
        with tf.GradientTape() as tape:
            loss = model.compute_objective(ids, y, training=True)["loss"]
        return tf.convert_to_tensor(tape.gradient(loss, encoder.embeddings))

    g = -gradient().numpy() * rows  # d bound / d (loc, raw scale), one row per example
    d_loc, d_log_scale = iwae2_quadrature_gradient(Q_LOC, Q_SCALE)
    sigmoid = 1 / (1 + np.exp(-raw))
    assert_within_4_se(g[:, 0], d_loc, f"{estimator} in the model, d/dloc")
    assert_within_4_se(g[:, 1], d_log_scale / Q_SCALE * sigmoid, f"{estimator} d/draw_scale")


def test_loss_value_is_the_same_whatever_the_estimator(binary_data):
    data = binary_data[:16]

    def build(estimator, objective, k):
        keras.utils.set_random_seed(5)
        x = keras.Input((20,))
        h = keras.layers.Dense(16, activation="tanh", name="enc")(x)
        params = keras.layers.Dense(8, name="params")(h)
        z = kvi.layers.NormalLatent(4, estimator=estimator, kl="mc", seed=3, name="z")(params)
        out = keras.layers.Dense(20, name="dec")(z)
        return kvi.VariationalModel(
            x, out, likelihood="bernoulli", objective=objective, num_samples=k
        )

    def values(model, reference):
        for name in ("enc", "params", "dec"):
            model.get_layer(name).set_weights(reference.get_layer(name).get_weights())
        out = model.compute_objective(data, data, training=True)
        return float(out["loss"]), float(out["loss_value"])

    families = {
        ("elbo", 3): [
            "reparameterization",
            "stl",
            "score_function",
            kvi.estimators.ScoreFunction(B.MovingAverage()),
            kvi.estimators.ScoreFunction(B.LeaveOneOut()),
            nvil(),
        ],
        ("iwae", 3): [
            "reparameterization",
            "dreg",
            "vimco",
            "score_function",
            "stl",
            kvi.estimators.ScoreFunction(B.MovingAverage()),
            nvil(),
        ],
    }
    for (objective, k), family in families.items():
        reference = build("reparameterization", objective, k)
        results = [values(build(est, objective, k), reference) for est in family]
        first = results[0][1]
        for est, (loss, loss_value) in zip(family, results):
            assert loss_value == pytest.approx(first, rel=1e-6), (objective, est)
            assert loss == pytest.approx(loss_value, rel=1e-6), (objective, est)


def test_gumbel_softmax_temperature_follows_schedule_in_graph():
    est = kvi.estimators.GumbelSoftmax(kvi.schedules.Linear(100, start=10.0, stop=0.05))
    q = tfd.OneHotCategorical(logits=tf.zeros([512, 6]), dtype=tf.float32)
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function(jit_compile=True)
    def largest_coordinate(training):
        scope = _scope.StepScope(training=training, step=step)
        with _scope.recording(scope):
            z = est.sample(q, tf.constant([1, 2]))
        return tf.reduce_mean(tf.reduce_max(z, axis=-1))

    hot = float(largest_coordinate(True))
    step.assign(100)
    cold = float(largest_coordinate(True))
    assert hot < 0.3 < 0.95 < cold  # near uniform at temperature 10, near one-hot at 0.05
    assert float(largest_coordinate(False)) == 1.0  # evaluation: exact one-hot samples
    assert float(est.temperature_at(50)) == pytest.approx(10.0 + 0.5 * (0.05 - 10.0))

    st = kvi.estimators.GumbelSoftmax(1.0, straight_through=True)
    with _scope.recording(_scope.StepScope(training=True)):
        logits = tf.Variable(tf.zeros([4, 3]))
        with tf.GradientTape() as tape:
            z = st.sample(
                tfd.OneHotCategorical(logits=logits, dtype=tf.float32), tf.constant([3, 4])
            )
            f = tf.reduce_sum(z * [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(tf.reduce_max(z, -1), 1.0)
    np.testing.assert_array_equal(tf.reduce_sum(z, -1), 1.0)
    assert np.abs(tape.gradient(f, logits).numpy()).max() > 0  # the soft sample's gradient


def test_relaxed_categorical_latent_outputs_simplex_points():
    layer = kvi.layers.RelaxedCategoricalLatent(4, temperature=0.5, num_variables=3)
    z = layer(tf.random.normal([8, 12])).numpy().reshape(8, 3, 4)
    assert np.all(z >= 0)
    np.testing.assert_allclose(z.sum(-1), 1.0, rtol=1e-5)
    assert isinstance(layer.prior, kvi.layers.RelaxedUniform)
    assert layer.prior.temperature == 0.5
    assert layer.resolved_estimator.alias == "reparameterization"


def test_aliases_and_serialization():
    for alias, cls in [
        ("stl", kvi.estimators.StickingTheLanding),
        ("dreg", kvi.estimators.DoublyReparameterized),
        ("vimco", kvi.estimators.VIMCO),
        ("gumbel_softmax", kvi.estimators.GumbelSoftmax),
    ]:
        assert type(kvi.estimators.get(alias)) is cls
    for est in [
        kvi.estimators.DoublyReparameterized(),
        kvi.estimators.VIMCO(),
        kvi.estimators.GumbelSoftmax(kvi.schedules.Linear(10, 1.0, 0.5), straight_through=True),
        kvi.estimators.GumbelSoftmax(0.3),
        kvi.estimators.ScoreFunction(B.LeaveOneOut()),
        nvil(),
    ]:
        config = keras.saving.serialize_keras_object(est)
        again = keras.saving.deserialize_keras_object(config)
        assert type(again) is type(est)
        assert repr(again) == repr(est)


def _model_with(latent, width, **kwargs):
    x = keras.Input((20,))
    z = latent(keras.layers.Dense(width)(x))
    return kvi.VariationalModel(x, keras.layers.Dense(20)(z), likelihood="bernoulli", **kwargs)


@pytest.mark.parametrize(
    "make,width,kwargs,match",
    [
        (lambda: kvi.layers.NormalLatent(2, estimator="vimco"), 4, {}, "needs objective='iwae'"),
        (
            lambda: kvi.layers.NormalLatent(2, estimator="dreg"),
            4,
            {"num_samples": 4},
            "needs objective='iwae'",
        ),
        (
            lambda: kvi.layers.BernoulliLatent(
                3, estimator=kvi.estimators.ScoreFunction(B.LeaveOneOut())
            ),
            3,
            {},
            "needs num_samples >= 2",
        ),
        (
            lambda: kvi.layers.BernoulliLatent(
                3, estimator=kvi.estimators.ScoreFunction(B.LeaveOneOut())
            ),
            3,
            {"num_samples": 3, "objective": "iwae"},
            "Use estimator=kvi",
        ),
        (
            lambda: kvi.layers.NormalLatent(2, estimator="gumbel_softmax"),
            4,
            {},
            "relaxes a categorical q",
        ),
        (
            lambda: kvi.layers.BernoulliLatent(3, estimator="gumbel_softmax"),
            3,
            {},
            "relaxes a categorical q",
        ),
        (
            lambda: kvi.layers.CategoricalLatent(3, estimator="gumbel_softmax"),
            3,
            {"num_samples": 2, "objective": "iwae"},
            "cannot be used with objective='iwae'",
        ),
        (
            lambda: kvi.layers.CategoricalLatent(3, estimator="gumbel_softmax", kl="mc"),
            3,
            {},
            "kl='mc' cannot be used",
        ),
        (
            lambda: kvi.layers.BernoulliLatent(3, estimator="dreg"),
            3,
            {"num_samples": 2, "objective": "iwae"},
            "needs a reparameterizable q",
        ),
    ],
)
def test_incompatible_combinations_raise_clear_errors(make, width, kwargs, match, binary_data):
    model = _model_with(make(), width, **kwargs)
    with pytest.raises(ValueError, match=match):
        model.compute_objective(binary_data[:4], binary_data[:4], training=True)


def test_evaluation_with_another_objective_still_works(binary_data):
    # Training-only requirements do not block evaluation: kvi.log_likelihood runs its own
    # IWAE (or K = 1 ELBO) pass on a model trained with leave-one-out or VIMCO.
    loo = _model_with(
        kvi.layers.BernoulliLatent(3, estimator=kvi.estimators.ScoreFunction(B.LeaveOneOut())),
        3,
        num_samples=2,
    )
    vimco = _model_with(
        kvi.layers.BernoulliLatent(3, estimator="vimco"), 3, num_samples=2, objective="iwae"
    )
    for model in (loo, vimco):
        for k in (1, 5):
            ll = kvi.log_likelihood(model, binary_data[:8], num_samples=k)
            assert np.all(np.isfinite(ll))


def test_dreg_rejects_dependent_latents(binary_data):
    x = keras.Input((20,))
    z1 = kvi.layers.NormalLatent(2, estimator="dreg", name="top")(keras.layers.Dense(4)(x))
    z2 = kvi.layers.NormalLatent(2, estimator="dreg", name="bottom")(keras.layers.Dense(4)(z1))
    model = kvi.VariationalModel(
        x, keras.layers.Dense(20)(z2), likelihood="bernoulli", num_samples=2, objective="iwae"
    )
    with pytest.raises(ValueError, match="'bottom' depends on the sample of latent 'top'"):
        model.compute_objective(binary_data[:4], binary_data[:4], training=True)


def test_expectation_errors():
    q = tfd.Normal(0.0, 1.0)
    with pytest.raises(ValueError, match="needs objective='iwae'"):
        kvi.expectation(lambda z: z, q, "vimco", num_samples=4)
    with pytest.raises(ValueError, match="needs objective='iwae'"):
        kvi.expectation(lambda z: z, q, "dreg", num_samples=4, objective="elbo")
    with pytest.raises(ValueError, match="needs num_samples >= 2"):
        kvi.expectation(lambda z: z, q, "vimco", num_samples=1, objective="iwae")
    with pytest.raises(ValueError, match="Unknown `objective`"):
        kvi.expectation(lambda z: z, q, objective="kl")
    cat = tfd.OneHotCategorical(logits=tf.zeros(3), dtype=tf.float32)
    with pytest.raises(ValueError, match="closed-form KL"):
        kvi.expectation(lambda z: z[..., 0], cat, "gumbel_softmax", objective="elbo")
    with pytest.raises(ValueError, match="must return log p"):
        kvi.expectation(lambda z: z[:, None], q, "dreg", num_samples=2, objective="iwae")
    with pytest.raises(ValueError, match="`temperature` must be a positive"):
        kvi.estimators.GumbelSoftmax(0.0)
    with pytest.raises(ValueError, match="`network` must be a Keras layer"):
        B.Learned(lambda x: x)


def test_discrete_vae_example_smoke():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import discrete_vae

    rows = discrete_vae.main(
        steps=3,
        hidden=32,
        num_train=200,
        num_test=40,
        estimators=["NVIL", "VIMCO (K=5)", "ST Gumbel-softmax"],
        jit_compile=False,
        elbo_passes=1,
        ll_samples=3,
        variance_draws=3,
        variance_batch=20,
        verbose=False,
    )
    assert [r["estimator"] for r in rows] == ["NVIL", "VIMCO (K=5)", "ST Gumbel-softmax"]
    for row in rows:
        assert row["test_elbo"] < 0 and row["steps_per_second"] > 0
        assert row["gradient_variance"] > 0
        # Importance sampling cannot be below the ELBO by more than noise.
        assert row["test_log_likelihood"] > row["test_elbo"] - 5.0


def test_num_samples_benchmark_smoke():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import num_samples

    results = num_samples.main(
        ks=(2,), rounds=1, steps=2, hidden=16, jit_compile=False, verbose=False
    )
    row = results[2]
    assert all(row[v] > 0 for v in num_samples.VARIANTS)
    assert row["speed-up"] == pytest.approx(row["loop"] / row["vectorised"])
