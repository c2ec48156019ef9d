"""The estimator family inside VariationalModel: XLA, saving, mixed latents, clear errors,
the same value for every estimator, STL at the exact posterior, DReG/VIMCO end to end."""

import os
import sys

import keras
import numpy as np
import pytest
from keras import ops
from test_estimators_gradients import (
    Q_LOC,
    Q_SCALE,
    X_OBS,
    assert_within_4_se,
    iwae2_quadrature_gradient,
)

import keras_vi as kvi
from keras_vi import _scope
from keras_vi.backend import random as backend_random

from backend_utils import gradients

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions
B = kvi.estimators.baselines
numpy = ops.convert_to_numpy
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
    before = [numpy(v).copy() for v in model.trainable_variables]
    history = model.fit(binary_data, batch_size=64, epochs=3, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    # Every trainable variable moved, the learned baseline's network included: it is trained
    # by the same optimizer step, through its auxiliary objective.
    moved = {
        v.path: not np.allclose(b, numpy(v)) for b, v in zip(before, model.trainable_variables)
    }
    assert all(moved.values()), moved
    if objective == "elbo":
        assert numpy(model.optimizer.iterations) == 12
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
    assert numpy(loaded.optimizer.iterations) == numpy(model.optimizer.iterations)
    # The loaded estimators build their training objective (surrogates included).
    out = loaded.compute_objective(binary_data[:8], binary_data[:8], training=True)
    assert np.isfinite(float(out["loss"]))


def test_learned_baseline_composes_with_moving_average():
    # The composed baseline equals the parts applied by hand (and trains only the network).
    network = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")
    centering = B.MovingAverage(0.5)
    learned = B.Learned(network, centering=centering)
    signal = np.array([[1.0, 2.0], [3.0, 6.0]], "float32")  # [K=2, B=2]
    inputs = np.array([[0.5], [1.0], [1.5], [2.0]], "float32")  # rows k * B + b
    centering.build()
    centering.average.assign(2.0)
    centering.initialized.assign(1.0)
    baseline, auxiliary = learned.compute(signal, inputs, training=True)
    by_hand = 2.0 + inputs.reshape(2, 2)
    np.testing.assert_allclose(numpy(baseline), by_hand)
    expected_aux = -np.mean((signal - 2.0 - inputs.reshape(2, 2)) ** 2)
    assert float(auxiliary) == pytest.approx(expected_aux)
    assert float(numpy(centering.average)) == pytest.approx(0.5 * 2.0 + 0.5 * 3.0)  # updated
    # apply() removes the whole composed baseline (the updated average 2.5 + the network).
    centred, _ = learned.apply(signal, inputs, training=False)
    np.testing.assert_allclose(numpy(centred), signal - (2.5 + inputs.reshape(2, 2)))


def test_leave_one_out_baseline_by_hand():
    signal = np.array([[1.0, 10.0], [2.0, 20.0], [6.0, 0.0]], "float32")
    baseline, aux = B.LeaveOneOut().compute(signal, None, True)
    expected = np.array([[4.0, 10.0], [3.5, 5.0], [1.5, 15.0]])
    np.testing.assert_allclose(numpy(baseline), expected)
    assert aux is None


def test_vimco_leave_one_out_bounds_by_hand_and_stable():
    lw = np.array([[0.1, -2.0], [1.5, -1.0], [-0.7, 0.3]], "float64")
    k = lw.shape[0]
    expected = np.empty_like(lw)
    for i in range(k):
        others = np.delete(lw, i, axis=0)
        swapped = np.concatenate([others, others.mean(0, keepdims=True)], 0)
        expected[i] = np.log(np.exp(swapped).sum(0) / k)
    bounds = numpy(kvi.estimators.leave_one_out_bounds(lw))
    # Exact to the precision it is computed in: float64 where the backend keeps the input's
    # float64 (TensorFlow), float32 where it computes in float32 (JAX without jax_enable_x64).
    rtol = {np.dtype("float64"): 1e-10, np.dtype("float32"): 1e-6}[bounds.dtype]
    np.testing.assert_allclose(bounds, expected, rtol=rtol)
    # Log-weights of -1e4 nats (a long way below float range) stay finite.
    huge = np.array([[-1e4], [-1e4 + 5.0], [-1e4 - 3.0]], "float32")
    assert np.all(np.isfinite(numpy(kvi.estimators.leave_one_out_bounds(huge))))


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
        grads[estimator] = gradients(
            lambda m=model: m.compute_objective(x, x, training=True)["loss"], encoder.weights
        )
        # The value is the evidence, log N(x; 0, 2), for every x (the bound is tight).
        if estimator == "stl":
            out = model.compute_objective(x, x, training=True)
            log_evidence = numpy(tfd.Normal(0.0, np.sqrt(2.0)).log_prob(x[:, 0]))
            np.testing.assert_allclose(numpy(out["bound"]), log_evidence, atol=1e-5)
    stl_max = max(np.abs(g).max() for g in grads["stl"])
    reparam_max = max(np.abs(g).max() for g in grads["reparameterization"])
    assert stl_max < 1e-5, grads["stl"]
    assert reparam_max > 1e-2, grads["reparameterization"]


@pytest.mark.parametrize("estimator", ["dreg", "vimco", "reparameterization"])
def test_model_level_iwae_gradients_match_quadrature(estimator):
    # Per-row encoder parameters (an Embedding) give one independent gradient estimate per
    # row from a single training-mode objective; compare with the K = 2 quadrature. The
    # gradient is the training step's own (where every backend takes DReG's d log w / dz):
    # one SGD step with learning rate `rows` moves each row by -rows * d loss / d row.
    rows = 30_000
    model = _conjugate_model(estimator, objective="iwae", num_samples=2, rows=rows)
    encoder = model.get_layer("encoder")
    raw = _softplus_inverse(Q_SCALE)
    start = np.tile(np.array([[Q_LOC, raw]], "float32"), [rows, 1])
    encoder.embeddings.assign(start)
    ids = np.arange(rows, dtype="int32")
    y = np.full([rows, 1], X_OBS, "float32")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=float(rows)))
    model.train_on_batch(ids, y)

    # d bound / d (loc, raw scale), one row per example (the loss is the mean of -bound).
    g = numpy(encoder.embeddings).astype("float64") - start
    d_loc, d_log_scale = iwae2_quadrature_gradient(Q_LOC, Q_SCALE)
    sigmoid = 1 / (1 + np.exp(-raw))
    assert_within_4_se(g[:, 0], d_loc, f"{estimator} in the model, d/dloc")
    assert_within_4_se(g[:, 1], d_log_scale / Q_SCALE * sigmoid, f"{estimator} d/draw_scale")


LOSS_VALUE_FAMILIES = [
    pytest.param(
        "elbo",
        lambda: [
            "reparameterization",
            "stl",
            "score_function",
            kvi.estimators.ScoreFunction(B.MovingAverage()),
            kvi.estimators.ScoreFunction(B.LeaveOneOut()),
            nvil(),
        ],
        id="elbo",
    ),
    pytest.param(
        "iwae",
        lambda: [
            "reparameterization",
            "vimco",
            "score_function",
            "stl",
            kvi.estimators.ScoreFunction(B.MovingAverage()),
            nvil(),
        ],
        id="iwae",
    ),
    pytest.param(
        "iwae",
        lambda: ["reparameterization", "dreg"],
        id="iwae-dreg",
    ),
]


@pytest.mark.parametrize("objective,family", LOSS_VALUE_FAMILIES)
def test_loss_value_is_the_same_whatever_the_estimator(binary_data, objective, family):
    data = binary_data[:16]
    k = 3

    def build(estimator):
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

    family = family()
    reference = build("reparameterization")
    results = [values(build(est), reference) for est in family]
    first = results[0][1]
    for est, (loss, loss_value) in zip(family, results):
        assert loss_value == pytest.approx(first, rel=1e-6), (objective, est)
        assert loss == pytest.approx(loss_value, rel=1e-6), (objective, est)


def _compiled(fn):
    """`fn(step, training)` compiled with XLA (`training` a Python bool): tf.function on
    TensorFlow, jax.jit on JAX. The step is an argument, as a training step's is."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn, static_argnums=1)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def test_gumbel_softmax_temperature_follows_schedule_in_graph():
    est = kvi.estimators.GumbelSoftmax(kvi.schedules.Linear(100, start=10.0, stop=0.05))
    q = tfd.OneHotCategorical(logits=np.zeros([512, 6], "float32"), dtype="float32")

    def largest_coordinate(step, training):
        scope = _scope.StepScope(training=training, step=step)
        with _scope.recording(scope):
            z = est.sample(q, backend_random.draw_seed(np.array([1, 2])))
        return ops.mean(ops.max(z, axis=-1))

    largest_coordinate = _compiled(largest_coordinate)
    step = lambda value: ops.convert_to_tensor(value, "int32")  # noqa: E731
    hot = float(largest_coordinate(step(0), True))
    cold = float(largest_coordinate(step(100), True))
    assert hot < 0.3 < 0.95 < cold  # near uniform at temperature 10, near one-hot at 0.05
    assert float(largest_coordinate(step(100), False)) == 1.0  # evaluation: exact one-hot
    assert float(est.temperature_at(50)) == pytest.approx(10.0 + 0.5 * (0.05 - 10.0))

    st = kvi.estimators.GumbelSoftmax(1.0, straight_through=True)
    logits = keras.Variable(np.zeros([4, 3], "float32"))
    seed = backend_random.draw_seed(np.array([3, 4]))

    def sample():
        return st.sample(tfd.OneHotCategorical(logits=logits.value, dtype="float32"), seed)

    with _scope.recording(_scope.StepScope(training=True)):
        z = numpy(sample())
        (gradient,) = gradients(lambda: ops.sum(sample() * np.array([1.0, 2.0, 3.0])), [logits])
    np.testing.assert_array_equal(z.max(-1), 1.0)
    np.testing.assert_array_equal(z.sum(-1), 1.0)
    assert np.abs(gradient).max() > 0  # the soft sample's gradient


def test_relaxed_categorical_latent_outputs_simplex_points():
    layer = kvi.layers.RelaxedCategoricalLatent(4, temperature=0.5, num_variables=3)
    z = numpy(layer(keras.random.normal([8, 12]))).reshape(8, 3, 4)
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
    cat = tfd.OneHotCategorical(logits=np.zeros(3, "float32"), dtype="float32")
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
        # Keras's default: no XLA on TensorFlow's CPU; XLA on JAX, where jit_compile=False
        # would run every training step op by op.
        jit_compile="auto",
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


@pytest.mark.backends("tensorflow")  # a TensorFlow benchmark: it times tf.function steps
def test_num_samples_benchmark_smoke():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import num_samples

    results = num_samples.main(
        ks=(2,), rounds=1, steps=2, hidden=16, jit_compile=False, verbose=False
    )
    row = results[2]
    assert all(row[v] > 0 for v in num_samples.VARIANTS)
    assert row["speed-up"] == pytest.approx(row["loop"] / row["vectorised"])
