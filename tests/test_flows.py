"""kvi.flows and kvi.layers.FlowLatent: exact log-determinants and inverses, estimators, fit."""

import json
import logging
import math
import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_vi as kvi

from backend_utils import gradients
from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions
BACKEND = keras.backend.backend()
JIT = BACKEND == "jax"  # eager JAX runs op by op; TensorFlow graphs need no XLA here


def numpy(x):
    return ops.convert_to_numpy(x)


def every_block():
    return [
        kvi.flows.IAF((6, 6)),
        kvi.flows.AffineCoupling((6,)),
        kvi.flows.Planar(),
        kvi.flows.SplineCoupling(num_bins=4, hidden_units=(6,), bound=2.0),
    ]


def randomize(block, rng, scale=0.4):
    """Weights away from zero (a fresh block is the identity)."""
    for weight in block.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32") * scale)


def _as_json(config):
    return json.loads(json.dumps(config))


def _softplus_inverse(y):
    return float(np.log(np.expm1(y)))


# ----------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("index", range(4), ids=["iaf", "affine", "planar", "spline"])
def test_log_det_is_the_jacobian_and_the_inverse_is_exact(index):
    rng = np.random.default_rng(index)
    size, rows = 3, 4
    block = every_block()[index]
    block.build((None, size))
    randomize(block, rng)
    # Spline: bound 2, so some points fall outside, where the block is the identity.
    x = (rng.normal(size=(rows, size)) * 1.5).astype("float32")

    # The Jacobian by autodiff: copy j of x (one per output dimension) differentiates
    # sum_rows y[:, j], giving row j of each row's Jacobian.
    copies = keras.Variable(np.tile(x[None], [size, 1, 1]))
    selector = np.eye(size, dtype="float32")[:, None, :]
    (grad,) = gradients(lambda: ops.sum(block.forward(copies)[0] * selector), [copies])
    jacobians = np.transpose(grad, (1, 0, 2))  # [rows, output j, input i]
    expected = np.linalg.slogdet(jacobians.astype("float64"))[1]

    y, log_det = block.forward(x)
    np.testing.assert_allclose(numpy(log_det), expected, atol=2e-5)
    assert np.abs(expected).max() > 0.05  # the weights make it far from the identity
    x_back, inverse_log_det = block.inverse(y)
    np.testing.assert_allclose(numpy(x_back), x, atol=1e-5)
    np.testing.assert_allclose(numpy(inverse_log_det), -numpy(log_det), atol=2e-5)


def test_planar_stays_invertible_where_w_dot_u_is_very_negative():
    block = kvi.flows.Planar()
    block.build((None, 2))
    block.w.assign([1.0, -0.5])
    block.u.assign([-20.0, 10.0])  # w . u = -25: u_hat is moved to w . u_hat > -1
    y = np.array([[0.3, -0.2], [2.0, 1.0], [-3.0, 0.5]], "float32")
    x, log_det = block.inverse(y)
    y_again, forward_log_det = block.forward(x)
    np.testing.assert_allclose(numpy(y_again), y, atol=1e-5)
    assert np.all(np.isfinite(numpy(log_det)))
    np.testing.assert_allclose(numpy(log_det), -numpy(forward_log_det), atol=1e-5)


def test_two_coupling_blocks_transform_every_dimension():
    blocks = [kvi.flows.AffineCoupling((4,)), kvi.flows.SplineCoupling(3, (4,))]
    for block in blocks:
        block.build((None, 5))
        randomize(block, np.random.default_rng(3), 0.3)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    one, _ = kvi.flows.forward(blocks[:1], x)
    two, log_det = kvi.flows.forward(blocks, x)
    assert np.abs(numpy(one) - x).max(axis=0)[:2].max() == 0.0  # one block: half untouched
    assert np.all(np.abs(numpy(two) - x).max(axis=0) > 1e-3)  # two: every dimension
    x_back, inverse_log_det = kvi.flows.inverse(blocks, two)
    np.testing.assert_allclose(numpy(x_back), x, atol=1e-5)
    np.testing.assert_allclose(numpy(inverse_log_det), -numpy(log_det), atol=1e-5)


def test_block_configs_round_trip():
    for block in every_block():
        config = block.get_config()
        copy = type(block).from_config(config)
        assert copy.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(block))
        assert type(restored) is type(block) and restored.get_config() == config
    assert kvi.flows.SplineCoupling(5, (3, 2), bound=1.5).get_config()["num_bins"] == 5


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: kvi.flows.IAF(hidden_units=8), "hidden_units"),
        (lambda: kvi.flows.AffineCoupling(hidden_units=(8, 0)), "hidden_units"),
        (lambda: kvi.flows.IAF(activation="no_such_activation"), "activation"),
        (lambda: kvi.flows.SplineCoupling(num_bins=0), "num_bins"),
        (lambda: kvi.flows.SplineCoupling(bound=-1.0), "bound"),
        (lambda: kvi.flows.Planar(iterations=0), "iterations"),
        (lambda: kvi.flows.AffineCoupling().build((None, 1)), ">= 2"),
        (lambda: kvi.layers.FlowLatent(0), "units"),
        (lambda: kvi.layers.FlowLatent(2, min_scale=-1.0), "min_scale"),
        (lambda: kvi.layers.FlowLatent(2, kl="analytic"), "analytic"),
        (lambda: kvi.layers.FlowLatent(2, flows=kvi.flows.Planar()), "flows"),
        (lambda: kvi.layers.FlowLatent(2, flows=[kvi.bijectors.Exp()]), "kvi.flows block"),
        (lambda: kvi.layers.FlowLatent(2, flows=[_shared := kvi.flows.Planar(), _shared]), "twice"),
        (lambda: kvi.layers.FlowLatent(2)(keras.Input((3,))), "width 4"),
    ],
)
def test_bad_arguments_are_clear_value_errors(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


# ------------------------------------------------------------------------- FlowLatent
def _latent_and_params(units=3, randomized=True):
    latent = kvi.layers.FlowLatent(units, flows=every_block(), name="z")
    latent.build((None, 2 * units))
    if randomized:
        for block in latent.flows:
            randomize(block, np.random.default_rng(7), 0.4)
    params = np.random.default_rng(1).normal(size=(4, 2 * units)).astype("float32")
    return latent, params


def test_log_prob_at_own_samples_is_the_change_of_variables():
    latent, params = _latent_and_params()
    q = latent.make_distribution(params)
    assert tuple(q.batch_shape) == (4,) and tuple(q.event_shape) == (3,)
    assert q.reparameterization_type == tfd.FULLY_REPARAMETERIZED
    base = latent.base_distribution(params)
    x = base.sample(2, seed=kvi.backend.random.draw_seed(3))
    y, log_det = kvi.flows.forward(latent.flows, x)
    expected = numpy(base.log_prob(x)) - numpy(log_det)
    np.testing.assert_allclose(numpy(q.log_prob(y)), expected, atol=1e-4)
    # q.sample is that push-forward of the base's draws.
    seed = kvi.backend.random.draw_seed(5)
    np.testing.assert_allclose(
        numpy(q.sample(2, seed=seed)),
        numpy(kvi.flows.forward(latent.flows, base.sample(2, seed=seed))[0]),
        atol=1e-6,
    )


def test_a_fresh_flow_latent_is_its_base_normal():
    latent, params = _latent_and_params(randomized=False)
    q = latent.make_distribution(params)
    base = kvi.layers.NormalLatent(3).make_distribution(params)
    z = numpy(base.sample(2, seed=kvi.backend.random.draw_seed(0)))
    np.testing.assert_allclose(numpy(q.log_prob(z)), numpy(base.log_prob(z)), atol=1e-5)


def _conjugate_flow_model(estimator, flows, **model_kwargs):
    """p(z) = N(0, I2), p(x | z) = N(z, I2); q(z | x) from a Dense encoder and identity flows."""
    x = keras.Input((2,))
    params = keras.layers.Dense(4, name="encoder")(x)
    latent = kvi.layers.FlowLatent(2, flows=flows, min_scale=0.0, estimator=estimator, name="z")
    model = kvi.VariationalModel(x, latent(params), likelihood="normal", **model_kwargs)
    encoder = model.get_layer("encoder")
    # The base is the exact posterior N(x / 2, 1 / 2), and the fresh flows are the identity.
    encoder.kernel.assign([[0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    raw = _softplus_inverse(np.sqrt(0.5))
    encoder.bias.assign([0.0, 0.0, raw, raw])
    return model, encoder, latent


@pytest.mark.parametrize(
    "estimator, model_kwargs",
    [
        ("stl", {}),
        ("dreg", {"objective": "iwae", "num_samples": 3}),
        ("reparameterization", {}),
    ],
)
def test_stl_and_dreg_gradients_vanish_at_the_exact_posterior(estimator, model_kwargs):
    # Zero only if d log q(z) / dz is right at the (stopped or perturbed) sample: a log q read
    # from a cache keyed by z would leave the likelihood's pathwise gradient in place.
    # Every block for STL and DReG; the contrast (plain reparameterization, whose score term
    # is not zero) needs only one.
    flows = [kvi.flows.AffineCoupling((4,))] if estimator == "reparameterization" else every_block()
    model, encoder, latent = _conjugate_flow_model(estimator, flows, **model_kwargs)
    x = np.random.default_rng(0).normal(size=(32, 2)).astype("float32") * 1.5
    flow_weights = [w for block in latent.flows for w in block.trainable_weights]
    grads = gradients(
        lambda: model.compute_objective(x, x, training=True)["loss"],
        encoder.trainable_weights + flow_weights,
    )
    largest = max(float(np.abs(g).max()) for g in grads)
    if estimator == "reparameterization":  # the score term is there: far from zero
        assert largest > 1e-2
        assert max(float(np.abs(g).max()) for g in grads[2:]) > 1e-2  # flow weights too
    else:
        assert largest < 1e-5, [float(np.abs(g).max()) for g in grads]


# -------------------------------------------------------------------------- training
SIGMA = 0.4  # y = z1 + z2 + noise: the posterior of (z1, z2) has correlation -0.86


def _sum_likelihood(out):
    return tfd.Normal(out, SIGMA)


def _correlated_model(latent):
    y = keras.Input((1,))
    z = latent(keras.layers.Dense(4, name="encoder")(y))
    total = keras.layers.Dense(1, use_bias=False, trainable=False, kernel_initializer="ones")(z)
    return kvi.VariationalModel(y, total, likelihood=_sum_likelihood)


def test_a_flow_beats_a_diagonal_gaussian_on_a_correlated_posterior():
    # The best diagonal Gaussian is 0.5 * log(1 / (1 - rho^2)) = 0.68 nats below log p(y);
    # an affine coupling can represent the exact posterior.
    rng = np.random.default_rng(0)
    evidence_scale = math.sqrt(2.0 + SIGMA**2)
    y_train = (rng.normal(size=(256 * 300, 1)) * evidence_scale).astype("float32")
    y_test = (rng.normal(size=(1024, 1)) * evidence_scale).astype("float32")
    log_evidence = (
        -0.5 * np.log(2 * np.pi * evidence_scale**2) - 0.5 * (y_test[:, 0] / evidence_scale) ** 2
    )
    gaps = {}
    for name in ("normal", "flow"):
        keras.utils.set_random_seed(0)
        if name == "normal":
            latent = kvi.layers.NormalLatent(2, name="z")
        else:
            flows = [kvi.flows.AffineCoupling((16,)), kvi.flows.AffineCoupling((16,))]
            latent = kvi.layers.FlowLatent(2, flows=flows, name="z")
        model = _correlated_model(latent)
        model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=JIT)
        model.fit(y_train, batch_size=256, epochs=1, verbose=0)
        bound = numpy(model.compute_objective(y_test, y_test, training=False)["bound"])
        gaps[name] = bound - log_evidence  # per-example ELBO minus the exact log p(y)
    means = {name: gap.mean() for name, gap in gaps.items()}
    se = math.sqrt(sum(gap.var() / gap.size for gap in gaps.values()))
    assert means["flow"] - means["normal"] > 4 * se, (means, se)
    assert means["normal"] < -0.5 and means["flow"] > -0.35, means


def test_fit_under_xla_with_iwae_and_diagnostics_trains_the_flow_weights(binary_data, tmp_path):
    # Two of the blocks, to keep XLA's compile time down (all four compile under
    # test_stl_and_dreg_gradients_vanish_at_the_exact_posterior on JAX).
    flows = [kvi.flows.AffineCoupling((6,)), kvi.flows.Planar()]
    latent = kvi.layers.FlowLatent(3, flows=flows, estimator="dreg", name="z")
    model = small_vae(latent=latent, params_width=6, objective="iwae", num_samples=4)
    model.compile(optimizer="adam", jit_compile=True)
    assert model.resolved_tile_at == "latent"
    callbacks = [
        kvi.callbacks.LatentDiagnostics(str(tmp_path), validation_data=binary_data[:32], seed=0),
    ]
    history = model.fit(binary_data[:64], batch_size=32, epochs=1, verbose=0, callbacks=callbacks)
    assert np.isfinite(history.history["elbo"]).all()
    for block in latent.flows:  # the zero-initialised last layers moved: Keras trains them
        last = [
            w for w in block.trainable_weights if w.path.endswith(("kernel_2", "kernel_1", "u"))
        ]
        assert last and max(float(np.abs(numpy(w)).max()) for w in last) > 0, block.name
    assert os.listdir(tmp_path) == ["validation"]  # LatentDiagnostics wrote its summaries


def test_tiling_at_the_latent_gives_the_same_iwae_bound(binary_data):
    data = binary_data[:16]
    outputs = {}
    for tile_at in ("input", "auto"):
        keras.utils.set_random_seed(21)
        flows = [kvi.flows.IAF((6,)), kvi.flows.Planar()]
        latent = kvi.layers.FlowLatent(3, flows=flows, name="z")
        model = small_vae(
            latent=latent, params_width=6, objective="iwae", num_samples=4, tile_at=tile_at
        )
        for block in latent.flows:
            randomize(block, np.random.default_rng(2), 0.3)
        model.compile(jit_compile=JIT)  # the same seed-generator states in both models
        outputs[model.resolved_tile_at] = model.evaluate(
            data, batch_size=16, verbose=0, return_dict=True
        )
    for key in ("loss", "elbo", "nll", "kl"):
        np.testing.assert_allclose(outputs["latent"][key], outputs["input"][key], rtol=1e-5)


def test_save_and_load_round_trip(binary_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="keras_vi"):
        latent = kvi.layers.FlowLatent(3, flows=every_block(), kl_samples=1, name="z")
        model = small_vae(latent=latent, params_width=6)
    assert any("Monte Carlo" in record.getMessage() for record in caplog.records)
    for block in latent.flows:
        randomize(block, np.random.default_rng(4), 0.3)
    path = str(tmp_path / "flow.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("z"), kvi.layers.FlowLatent)
    assert _as_json(loaded.get_layer("z").get_config()) == _as_json(latent.get_config())
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    x = binary_data[:8]
    # The seed generators' states are saved: the next draws are the same.
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-5)
    model.prediction = loaded.prediction = "mean"  # the flows applied to the base's loc
    first = model.predict(x, verbose=0)
    np.testing.assert_allclose(first, model.predict(x, verbose=0))
    np.testing.assert_allclose(first, loaded.predict(x, verbose=0), atol=1e-5)


def test_mixed_precision_computes_the_flow_in_float32(binary_data):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        flows = [kvi.flows.IAF((6,)), kvi.flows.Planar()]
        latent = kvi.layers.FlowLatent(3, flows=flows, name="z")
        model = small_vae(latent=latent, params_width=6)
        model.compile(optimizer="adam", jit_compile=JIT)
        history = model.fit(binary_data[:16], batch_size=16, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert latent.compute_dtype == "float16"
    assert all(w.dtype == "float32" for block in latent.flows for w in block.weights)
    assert np.isfinite(history.history["loss"]).all()
    assert np.abs(numpy(latent.flows[1].u)).max() > 0  # the float32 flow weights trained
