"""DisARM (Dong, Mnih & Tucker 2020): unbiasedness against a closed form, variance against
REINFORCE leave-one-out at the same two evaluations, the antithetic row layout, and the
estimator inside a VariationalModel (XLA, saving, mixed latents, clear errors). Its
multi-sample form (objective="iwae" or Renyi): unbiased against exact enumeration of the K
samples, variance against VIMCO at the same evaluations, the reported bound that of the
first K rows.

The statistical checks draw N independent estimates at once: q holds N identical copies of
the logits (one variable row per copy), so N times the gradient of the batch-mean value with
respect to row n is estimate n. Tolerances are 4 standard errors computed from the draws.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_vi as kvi
from keras_vi import _scope, objectives

from backend_utils import gradients
from quadratic_bits import QuadraticBits

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions
numpy = ops.convert_to_numpy

# f(b) = sum_i c_i b_i + sum_{i<j} d_ij b_i b_j on 20 Bernoulli bits, fixed small c, d.
DIM = 20
N = 20_000
PROBLEM = QuadraticBits(DIM)
LOGITS = PROBLEM.logits
quadratic_f = PROBLEM.f
exact_gradient = PROBLEM.exact_gradient


def estimates(estimator, num_samples, seed):
    """[N, DIM] independent gradient estimates of E[f(b)] w.r.t. the logits."""
    logits = keras.Variable(np.tile(LOGITS, [N, 1]))
    (g,) = gradients(
        lambda: kvi.expectation(
            quadratic_f,
            tfd.Independent(tfd.Bernoulli(logits=logits, dtype="float32"), 1),
            estimator,
            num_samples=num_samples,
            seed=seed,
        ),
        [logits],
    )
    return g * N


@pytest.mark.parametrize("num_samples", [2, 4])
def test_unbiased_against_closed_form(num_samples):
    g = estimates("disarm", num_samples, seed=num_samples)
    exact = exact_gradient()
    se = g.std(axis=0, ddof=1) / np.sqrt(N)
    z = (g.mean(axis=0) - exact) / se
    print(f"K={num_samples}: (mean - exact) / SE per logit:", np.round(z, 2))
    assert np.all(np.abs(z) < 4), np.round(z, 2)


def test_elbo_gradient_unbiased_against_exact_enumeration():
    # objective="elbo": the value holds log p(x, b) - log q(b), whose direct dependence on
    # the logits (through log q) is differentiated in the value; DisARM adds the rest.
    dim = 4
    rng = np.random.default_rng(5)
    logits0 = rng.normal(0.0, 1.0, dim)
    log_joint_table = rng.normal(0.0, 1.0, 2**dim).astype("float32")
    configs = np.array(list(np.ndindex(*([2] * dim))), np.float64)  # row i is i in binary
    powers = (2 ** np.arange(dim)[::-1]).astype("float32")

    def exact_elbo(a):
        log_q = (configs * a - np.logaddexp(0.0, a)).sum(axis=1)
        return np.sum(np.exp(log_q) * (log_joint_table - log_q))

    h = 1e-5
    exact = np.array(
        [(exact_elbo(logits0 + h * e) - exact_elbo(logits0 - h * e)) / (2 * h) for e in np.eye(dim)]
    )

    def log_joint(b):
        return ops.take(log_joint_table, ops.cast(ops.sum(b * powers, axis=-1), "int32"))

    logits = keras.Variable(np.tile(logits0.astype("float32"), [N, 1]))
    (g,) = gradients(
        lambda: kvi.expectation(
            log_joint,
            tfd.Independent(tfd.Bernoulli(logits=logits, dtype="float32"), 1),
            "disarm",
            num_samples=2,
            seed=21,
            objective="elbo",
        ),
        [logits],
    )
    g = g * N
    z = (g.mean(axis=0) - exact) / (g.std(axis=0, ddof=1) / np.sqrt(N))
    print("ELBO, (mean - exact) / SE per logit:", np.round(z, 2))
    assert np.all(np.abs(z) < 4), np.round(z, 2)


def test_model_training_step_gradient_unbiased_against_exact_enumeration():
    # Per-row logits (an Embedding) give one independent estimate per row from one training
    # step of a VariationalModel (K = 2 rows per example, analytic KL to the fair-coin
    # prior): one SGD step with learning rate `rows` moves each row by its estimate.
    rows, dim = 20_000, 3
    rng = np.random.default_rng(7)
    start = rng.normal(0.0, 1.0, dim).astype("float32")
    kernel = rng.normal(0.0, 1.5, (dim, 4)).astype("float32")
    bias = rng.normal(0.0, 0.5, 4).astype("float32")
    target = np.array([1.0, 0.0, 1.0, 1.0], "float32")

    x = keras.Input((), dtype="int32")
    logits = keras.layers.Embedding(rows, dim, name="encoder")(x)
    z = kvi.layers.BernoulliLatent(dim, estimator="disarm")(logits)
    decoder = keras.layers.Dense(
        4,
        kernel_initializer=keras.initializers.Constant(kernel),
        bias_initializer=keras.initializers.Constant(bias),
        trainable=False,
    )
    model = kvi.VariationalModel(x, decoder(z), likelihood="bernoulli", num_samples=2)
    encoder = model.get_layer("encoder")
    encoder.embeddings.assign(np.tile(start, [rows, 1]))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=float(rows)))
    model.train_on_batch(np.arange(rows, dtype="int32"), np.tile(target, [rows, 1]))
    g = numpy(encoder.embeddings).astype(np.float64) - start

    configs = np.array(list(np.ndindex(*([2] * dim))), np.float64)
    out = configs @ kernel + bias
    log_lik = np.sum(target * out - np.logaddexp(0.0, out), axis=1)

    def exact_elbo(a):
        p = 1.0 / (1.0 + np.exp(-a))
        q = np.prod(np.where(configs == 1.0, p, 1.0 - p), axis=1)
        kl = np.sum(p * np.log(2 * p) + (1 - p) * np.log(2 * (1 - p)))
        return np.sum(q * log_lik) - kl

    h = 1e-5
    a0 = start.astype(np.float64)
    exact = np.array(
        [(exact_elbo(a0 + h * e) - exact_elbo(a0 - h * e)) / (2 * h) for e in np.eye(dim)]
    )
    z_scores = (g.mean(axis=0) - exact) / (g.std(axis=0, ddof=1) / np.sqrt(rows))
    print("model step, (mean - exact) / SE per logit:", np.round(z_scores, 2))
    assert np.all(np.abs(z_scores) < 4), np.round(z_scores, 2)


def _total_variance(g):
    """Sum over coordinates of the variance, and its standard error."""
    squared = np.sum((g - g.mean(axis=0)) ** 2, axis=1) * N / (N - 1)
    return squared.mean(), squared.std(ddof=1) / np.sqrt(N)


def test_variance_below_reinforce_leave_one_out_at_two_evaluations():
    disarm, disarm_se = _total_variance(estimates("disarm", 2, seed=11))
    loo_estimator = kvi.estimators.ScoreFunction(kvi.estimators.baselines.LeaveOneOut())
    loo, loo_se = _total_variance(estimates(loo_estimator, 2, seed=12))
    ratio = disarm / loo
    ratio_se = ratio * np.hypot(disarm_se / disarm, loo_se / loo)
    print(
        f"total variance: DisARM {disarm:.2f}, RLOO {loo:.2f}, ratio {ratio:.3f} +- {ratio_se:.3f}"
    )
    # The ratio is ~0.82 here; 4 standard errors of it still leave it below 1.
    assert ratio + 4 * ratio_se < 1.0, (ratio, ratio_se)


def test_surrogate_in_model_row_layout_matches_the_formula_by_hand():
    # K = 4 samples of B = 3 examples in rows k * B + b; pairs are (k, k + 2).
    k, batch, dim = 4, 3, 5
    rng = np.random.default_rng(3)
    example_logits = rng.normal(0.0, 1.5, (batch, dim)).astype("float32")
    logits = keras.Variable(np.tile(example_logits, [k, 1]))  # [K * B, D], k-major
    z = (rng.random((k * batch, dim)) < 0.5).astype("float32")
    f = rng.normal(0.0, 1.0, (k, batch)).astype("float32")
    estimator = kvi.estimators.DisARM()

    def surrogate():
        q = tfd.Independent(tfd.Bernoulli(logits=logits, dtype="float32"), 1)
        site = _scope.Site(
            name="bits", q=q, z=z, prior=None, estimator=estimator, inputs=None, seed=None
        )
        signals = objectives.Signals(
            objective="elbo",
            num_samples=k,
            training=True,
            kl_weight=ops.zeros(()),
            per_sample=ops.convert_to_tensor(f),
            bound=ops.mean(f, axis=0),
        )
        return estimator.surrogate(site, signals)

    (g,) = gradients(surrogate, [logits])
    z_kb = z.reshape(k, batch, dim)
    b, b_tilde = z_kb[:2], z_kb[2:]
    per_pair = (
        0.5
        * (f[:2] - f[2:])[..., None]
        * (-1.0) ** b_tilde
        * (b != b_tilde)
        * (1.0 / (1.0 + np.exp(-np.abs(example_logits))))
    )
    expected = np.zeros((k * batch, dim))
    # Mean over the 2 pairs and the 3 examples, carried by the first-half rows.
    expected[: 2 * batch] = (per_pair / (2 * batch)).reshape(2 * batch, dim)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)


def _vae(num_samples=2, objective="elbo", with_normal=True, bits=None, extra=None):
    x = keras.Input((20,))
    h = keras.layers.Dense(16, activation="tanh", name="enc")(x)
    bits = bits or kvi.layers.BernoulliLatent(8, estimator="disarm", name="bits")
    width = bits.units * (2 if isinstance(bits, kvi.layers.NormalLatent) else 1)
    zs = [bits(keras.layers.Dense(width, name="bits_params")(h))]
    if with_normal:
        normal = kvi.layers.NormalLatent(2, estimator="reparameterization", name="z")
        zs.append(normal(keras.layers.Dense(4, name="z_params")(h)))
    if extra is not None:
        zs.append(extra(keras.layers.Dense(extra.units)(h)))
    z = keras.layers.Concatenate()(zs) if len(zs) > 1 else zs[0]
    out = keras.layers.Dense(20)(keras.layers.Dense(16, activation="tanh")(z))
    return kvi.VariationalModel(
        x, out, likelihood="bernoulli", num_samples=num_samples, objective=objective
    )


def test_bernoulli_vae_with_a_normal_latent_trains_under_xla_and_round_trips(binary_data, tmp_path):
    model = _vae()
    model.compile(optimizer=keras.optimizers.Adam(3e-2), jit_compile=True)
    before = [numpy(v).copy() for v in model.trainable_variables]
    history = model.fit(binary_data, batch_size=64, epochs=4, verbose=0).history
    elbo = history["elbo"]
    print("ELBO per epoch:", np.round(elbo, 3))
    assert np.all(np.isfinite(elbo))
    assert elbo[-1] > elbo[0] + 1.0, elbo
    moved = {
        v.path: not np.allclose(b, numpy(v)) for b, v in zip(before, model.trainable_variables)
    }
    assert all(moved.values()), moved

    path = str(tmp_path / "disarm_vae.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    estimator = loaded.get_layer("bits").resolved_estimator
    assert isinstance(estimator, kvi.estimators.DisARM), estimator
    assert repr(estimator) == "DisARM()"
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    out = loaded.compute_objective(binary_data[:8], binary_data[:8], training=True)
    assert np.isfinite(float(out["loss"]))


def test_pairs_are_antithetic_in_the_model_rows(binary_data):
    # With zero logits (probability 1/2) the antithetic partner of b is exactly 1 - b, and
    # the decoder (identity, no bias) shows z itself: row k * B + b, for K = 4 and B = 5.
    x = keras.Input((20,))
    logits = keras.layers.Dense(20, kernel_initializer="zeros")(x)
    z = kvi.layers.BernoulliLatent(20, estimator="disarm", name="bits")(logits)
    out = keras.layers.Dense(20, kernel_initializer="identity", use_bias=False)(z)
    model = kvi.VariationalModel(x, out, likelihood="bernoulli", num_samples=4)
    rows = numpy(model.compute_objective(binary_data[:5], binary_data[:5], training=True)["y_pred"])
    first, second = rows[:10], rows[10:]
    np.testing.assert_array_equal(second, 1.0 - first)
    assert 0.3 < first.mean() < 0.7  # fresh uniforms, not a constant
    # Evaluation needs no pairs: an odd K and the IWAE bound are fine there.
    out = model.compute_objective(
        binary_data[:5], binary_data[:5], training=False, num_samples=3, objective="iwae"
    )
    assert np.isfinite(float(out["loss"]))


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: _vae(bits=kvi.layers.NormalLatent(8, estimator="disarm", name="bits")),
            "defined for Bernoulli latents",
        ),
        (lambda: _vae(num_samples=3), "even num_samples >= 2, got num_samples=3"),
        (lambda: _vae(num_samples=1), "got num_samples=1"),
        (
            lambda: _vae(objective="iwae"),
            r"num_samples >= 4 \(K >= 2; K = 1 is the ELBO\), got num_samples=2",
        ),
        (lambda: _vae(num_samples=5, objective="iwae"), "got num_samples=5"),
        (
            lambda: _vae(
                num_samples=4,
                objective="iwae",
                extra=kvi.layers.BernoulliLatent(3, estimator="score_function", name="other"),
            ),
            "latent 'other' with estimator=ScoreFunction\\(\\) would take learning signals",
        ),
    ],
)
def test_unsupported_set_ups_raise_clear_errors(make, match, binary_data):
    model = make()
    with pytest.raises(ValueError, match=match):
        model.compute_objective(binary_data[:4], binary_data[:4], training=True)


def test_expectation_errors():
    with pytest.raises(ValueError, match="defined for Bernoulli latents"):
        kvi.expectation(lambda z: z, tfd.Normal(0.0, 1.0), "disarm", num_samples=2, seed=0)
    bits = tfd.Bernoulli(logits=0.0, dtype="float32")
    with pytest.raises(ValueError, match="got num_samples=5"):
        kvi.expectation(lambda z: z, bits, "disarm", num_samples=5, seed=0)
    with pytest.raises(ValueError, match="K = 1 is the ELBO"):
        kvi.expectation(lambda z: z, bits, "disarm", num_samples=2, seed=0, objective="iwae")
    assert isinstance(kvi.estimators.get("disarm"), kvi.estimators.DisARM)


# The multi-sample form: num_samples = 2K rows, the bound that of the first K.


def _bound_np(objective, log_weights, axis):
    """The IWAE or Renyi bound over `axis` of float64 log-weights."""
    alpha = 0.0 if objective == "iwae" else objective.alpha
    k = log_weights.shape[axis]
    scaled = (1.0 - alpha) * log_weights
    return (np.logaddexp.reduce(scaled, axis=axis) - np.log(k)) / (1.0 - alpha)


@pytest.mark.parametrize(
    "objective,pairs", [("iwae", 3), (kvi.objectives.Renyi(0.5), 2)], ids=["iwae", "renyi"]
)
def test_multi_sample_gradient_unbiased_against_exact_enumeration(objective, pairs):
    # E[L(b_1..b_K)] over all (2^3)^K joint values of K independent 3-bit samples, a fixed
    # log p(x, b) table; its gradient in the logits by central differences in float64.
    dim = 3
    rng = np.random.default_rng(5)
    logits0 = rng.normal(0.0, 1.0, dim)
    log_joint_table = rng.normal(0.0, 1.5, 2**dim)
    configs = np.array(list(np.ndindex(*([2] * dim))), np.float64)
    joint = np.array(list(np.ndindex(*([2**dim] * pairs))))  # [M, K] config indices
    powers = (2 ** np.arange(dim)[::-1]).astype("float32")

    def expected_bound(a):
        log_q = (configs * a - np.logaddexp(0.0, a)).sum(axis=1)
        log_w = (log_joint_table - log_q)[joint]
        return np.sum(np.exp(log_q[joint].sum(axis=1)) * _bound_np(objective, log_w, axis=1))

    h = 1e-5
    exact = np.array(
        [
            (expected_bound(logits0 + h * e) - expected_bound(logits0 - h * e)) / (2 * h)
            for e in np.eye(dim)
        ]
    )
    table = log_joint_table.astype("float32")

    def log_joint(b):
        return ops.take(table, ops.cast(ops.sum(b * powers, axis=-1), "int32"))

    logits = keras.Variable(np.tile(logits0.astype("float32"), [N, 1]))
    (g,) = gradients(
        lambda: kvi.expectation(
            log_joint,
            tfd.Independent(tfd.Bernoulli(logits=logits, dtype="float32"), 1),
            "disarm",
            num_samples=2 * pairs,
            seed=3,
            objective=objective,
        ),
        [logits],
    )
    g = g * N
    z = (g.mean(axis=0) - exact) / (g.std(axis=0, ddof=1) / np.sqrt(N))
    print(
        f"{objective}, K={pairs}: exact {np.round(exact, 4)}, (mean - exact) / SE", np.round(z, 2)
    )
    assert np.all(np.abs(z) < 4), np.round(z, 2)


def test_multi_sample_variance_below_vimco_at_the_same_evaluations():
    # 20 bits, log p(x, b) = the quadratic f: K = 2 pairs (4 evaluations) against VIMCO with
    # 4 samples, the paper's comparison (VIMCO then ascends the 4-sample bound; against VIMCO
    # with 2 samples, the same 2-sample bound, the ratio is ~0.39).
    def iwae_estimates(estimator, seed):
        logits = keras.Variable(np.tile(LOGITS, [N, 1]))
        (g,) = gradients(
            lambda: kvi.expectation(
                quadratic_f,
                tfd.Independent(tfd.Bernoulli(logits=logits, dtype="float32"), 1),
                estimator,
                num_samples=4,
                seed=seed,
                objective="iwae",
            ),
            [logits],
        )
        return g * N

    disarm, disarm_se = _total_variance(iwae_estimates("disarm", seed=31))
    vimco, vimco_se = _total_variance(iwae_estimates("vimco", seed=32))
    ratio = disarm / vimco
    ratio_se = ratio * np.hypot(disarm_se / disarm, vimco_se / vimco)
    print(
        f"total variance: DisARM (2 pairs) {disarm:.2f}, VIMCO (4 samples) {vimco:.2f}, "
        f"ratio {ratio:.3f} +- {ratio_se:.3f}"
    )
    # The ratio is ~0.84 here; 4 standard errors of it still leave it below 1.
    assert ratio + 4 * ratio_se < 1.0, (ratio, ratio_se)


def test_multi_sample_surrogate_matches_the_local_signals_by_hand():
    # K = 3 pairs (6 rows) of B = 2 examples; IWAE. Sample k's signal by hand: the bound with
    # b_k swapped for its partner, in both directions, averaged.
    pairs, batch, dim = 3, 2, 4
    rng = np.random.default_rng(4)
    example_logits = rng.normal(0.0, 1.5, (batch, dim)).astype("float32")
    logits = keras.Variable(np.tile(example_logits, [2 * pairs, 1]))
    z = (rng.random((2 * pairs * batch, dim)) < 0.5).astype("float32")
    log_w = rng.normal(0.0, 2.0, (2 * pairs, batch)).astype("float32")
    estimator = kvi.estimators.DisARM()

    def surrogate():
        q = tfd.Independent(tfd.Bernoulli(logits=logits, dtype="float32"), 1)
        site = _scope.Site(
            name="bits", q=q, z=z, prior=None, estimator=estimator, inputs=None, seed=None
        )
        signals = objectives.Signals(
            objective="iwae",
            num_samples=2 * pairs,
            training=True,
            kl_weight=ops.zeros(()),
            per_sample=ops.convert_to_tensor(log_w),
            bound=ops.zeros((batch,)),  # not read: the signals come from the log-weights
        )
        return estimator.surrogate(site, signals)

    (g,) = gradients(surrogate, [logits])
    own, partner = log_w[:pairs].astype(np.float64), log_w[pairs:].astype(np.float64)
    signal = np.zeros((pairs, batch))
    for k in range(pairs):
        own_k, partner_k = own.copy(), partner.copy()
        own_k[k], partner_k[k] = partner[k], own[k]
        forward = _bound_np("iwae", own, 0) - _bound_np("iwae", own_k, 0)
        backward = _bound_np("iwae", partner_k, 0) - _bound_np("iwae", partner, 0)
        signal[k] = 0.5 * (forward + backward)
    z_kb = z.reshape(2 * pairs, batch, dim)
    b, b_tilde = z_kb[:pairs], z_kb[pairs:]
    per_pair = 0.5 * signal[..., None] * (b - b_tilde) / (1.0 + np.exp(-np.abs(example_logits)))
    expected = np.zeros((2 * pairs * batch, dim))
    # Summed over the K samples (the bound depends on all of them), mean over examples.
    expected[: pairs * batch] = (per_pair / batch).reshape(pairs * batch, dim)
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)


def test_iwae_model_reports_the_bound_of_the_first_k_samples(binary_data):
    # Identity decoder without bias: each row's likelihood logits are its sample z, so the
    # log-weights follow by hand: log p(x | z) + log p(z) - log q(z) with q's logits the
    # encoder's bias c and the fair-coin prior. 6 rows: K = 3 samples and 3 partners.
    dim, batch, pairs = 20, 8, 3
    c = np.linspace(-1.5, 1.5, dim).astype("float32")
    x = keras.Input((dim,))
    logits = keras.layers.Dense(
        dim, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(c)
    )(x)
    z = kvi.layers.BernoulliLatent(dim, estimator="disarm", name="bits")(logits)
    out = keras.layers.Dense(dim, kernel_initializer="identity", use_bias=False)(z)
    model = kvi.VariationalModel(
        x, out, likelihood="bernoulli", num_samples=2 * pairs, objective="iwae"
    )
    data = binary_data[:batch]
    result = model.compute_objective(data, data, training=True)
    rows = numpy(result["y_pred"]).astype(np.float64).reshape(2 * pairs, batch, dim)
    c64 = c.astype(np.float64)
    log_lik = np.sum(data * rows - np.logaddexp(0.0, rows), axis=-1)
    log_q = np.sum(rows * c64 - np.logaddexp(0.0, c64), axis=-1)
    log_w = log_lik - dim * np.log(2.0) - log_q  # [2K, B]
    first_k = _bound_np("iwae", log_w[:pairs], 0)
    np.testing.assert_allclose(numpy(result["bound"]), first_k, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(result["loss_value"]), -first_k.mean(), rtol=1e-5)
    # Not the bound of all 2K dependent rows (which would read higher).
    all_rows = _bound_np("iwae", log_w, 0)
    assert np.max(np.abs(all_rows - first_k)) > 0.1, (all_rows, first_k)
    # Evaluation draws no pairs: there every row is an independent sample of the bound.
    evaluation = model.compute_objective(data, data, training=False)
    rows = numpy(evaluation["y_pred"]).astype(np.float64).reshape(2 * pairs, batch, dim)
    log_w = (
        np.sum(data * rows - np.logaddexp(0.0, rows), axis=-1)
        - dim * np.log(2.0)
        - np.sum(rows * c64 - np.logaddexp(0.0, c64), axis=-1)
    )
    np.testing.assert_allclose(
        numpy(evaluation["bound"]), _bound_np("iwae", log_w, 0), rtol=1e-5, atol=1e-4
    )


def test_iwae_vae_trains_under_xla_and_round_trips(binary_data, tmp_path):
    model = _vae(num_samples=4, objective="iwae")
    model.compile(optimizer=keras.optimizers.Adam(3e-2), jit_compile=True)
    before = [numpy(v).copy() for v in model.trainable_variables]
    loss = model.fit(binary_data, batch_size=64, epochs=3, verbose=0).history["loss"]
    print("IWAE loss (K = 2) per epoch:", np.round(loss, 3))
    assert np.all(np.isfinite(loss))
    assert loss[-1] < loss[0] - 1.0, loss
    moved = {
        v.path: not np.allclose(b, numpy(v)) for b, v in zip(before, model.trainable_variables)
    }
    assert all(moved.values()), moved

    path = str(tmp_path / "disarm_iwae_vae.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("bits").resolved_estimator, kvi.estimators.DisARM)
    assert loaded.objective == "iwae" and loaded.num_samples == 4
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    out = loaded.compute_objective(binary_data[:8], binary_data[:8], training=True)
    assert np.isfinite(float(out["loss"]))
