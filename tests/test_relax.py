"""RELAX (Grathwohl et al. 2018): unbiasedness against closed forms with an untrained and a
trained control variate, Bernoulli and categorical; lower variance than REINFORCE once c_phi
is trained; c_phi's gradient is minus that of the estimate's variance (closed form and
central differences); the estimator inside a VariationalModel (an exact-enumeration check of
one training step, XLA, saving, mixed latents, errors).

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

# f(b) = sum_i c_i b_i + sum_{i<j} d_ij b_i b_j on 6 Bernoulli bits, fixed small c, d.
DIM = 6
N = 20_000
PROBLEM = QuadraticBits(DIM)
LOGITS = PROBLEM.logits
quadratic_f = PROBLEM.f
exact_gradient = PROBLEM.exact_gradient


def bits(logits):
    return tfd.Independent(tfd.Bernoulli(logits=logits, dtype="float32"), 1)


def estimates(estimator, seed):
    """[N, DIM] independent one-sample gradient estimates of E[f(b)] w.r.t. the logits."""
    logits = keras.Variable(np.tile(LOGITS, [N, 1]))
    (g,) = gradients(
        lambda: kvi.expectation(quadratic_f, bits(logits), estimator, num_samples=1, seed=seed),
        [logits],
    )
    return g.astype(np.float64) * N


def z_scores(g, exact):
    return (g.mean(axis=0) - exact) / (g.std(axis=0, ddof=1) / np.sqrt(len(g)))


def total_variance(g):
    """Sum over coordinates of the variance, and its standard error."""
    squared = np.sum((g - g.mean(axis=0)) ** 2, axis=1) * len(g) / (len(g) - 1)
    return squared.mean(), squared.std(ddof=1) / np.sqrt(len(g))


def relax(seed=1, hidden_units=16):
    keras.utils.set_random_seed(seed)
    estimator = kvi.estimators.RELAX(hidden_units=hidden_units)
    estimator.control_variate.build((None, DIM))
    return estimator


def compiled_gradients(fn, variables, tf_function=True, jit_compile=False):
    """`(*args) -> d fn(*args) / d variables` as NumPy, compiled once and reading the
    variables' current values at each call (`backend_utils.gradients` compiles per call).
    On TensorFlow, `tf_function=False` runs eagerly (cheaper for a few calls) and
    `jit_compile=True` compiles with XLA (JAX always does)."""
    if keras.backend.backend() == "jax":
        import jax

        def grads(values, *args):
            def mapped(values):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return fn(*args)

            return jax.grad(mapped)(values)

        compiled = jax.jit(grads)
        return lambda *args: [numpy(g) for g in compiled([v.value for v in variables], *args)]

    import tensorflow as tf

    def grads(*args):
        with tf.GradientTape() as tape:
            out = fn(*args)
        return tape.gradient(out, variables)

    if tf_function:
        grads = tf.function(grads, jit_compile=jit_compile)
    return lambda *args: [numpy(g) for g in grads(*args)]


def train_control_variate(estimator, steps=50, rows=256, learning_rate=5e-2):
    """Adam on phi alone, descending the surrogate's variance term (kvi.expectation minimizes
    the mean of f here, so the surrogate carries +sum g^2)."""
    variables = estimator.control_variate.trainable_variables
    logits = ops.convert_to_tensor(np.tile(LOGITS, [rows, 1]))
    step = compiled_gradients(
        lambda seed: kvi.expectation(
            quadratic_f, bits(logits), estimator, num_samples=1, seed=seed
        ),
        variables,
        tf_function=False,
    )
    optimizer = keras.optimizers.Adam(learning_rate)
    for i in range(steps):
        optimizer.apply(step(ops.convert_to_tensor(np.int32(1000 + i))), variables)
    return estimator


@pytest.fixture(scope="module")
def trained():
    return train_control_variate(relax())


@pytest.fixture(scope="module")
def untrained_estimates():
    return estimates(relax(), seed=3)


def test_unbiased_with_an_untrained_control_variate(untrained_estimates):
    z = z_scores(untrained_estimates, exact_gradient())
    print("untrained c_phi: (mean - exact) / SE per logit:", np.round(z, 2))
    assert np.all(np.abs(z) < 4), np.round(z, 2)


def test_unbiased_after_training_and_variance_below_reinforce(trained, untrained_estimates):
    g = estimates(trained, seed=4)
    z = z_scores(g, exact_gradient())
    print("trained c_phi: (mean - exact) / SE per logit:", np.round(z, 2))
    assert np.all(np.abs(z) < 4), np.round(z, 2)

    relaxed, relaxed_se = total_variance(g)
    untrained, untrained_se = total_variance(untrained_estimates)
    plain, plain_se = total_variance(estimates(kvi.estimators.ScoreFunction(), seed=5))
    ratio = relaxed / plain
    ratio_se = ratio * np.hypot(relaxed_se / relaxed, plain_se / plain)
    print(
        f"total variance: RELAX trained {relaxed:.3f} +- {relaxed_se:.3f}, untrained "
        f"{untrained:.3f} +- {untrained_se:.3f}, REINFORCE {plain:.3f} +- {plain_se:.3f}, "
        f"ratio {ratio:.3f} +- {ratio_se:.3f}"
    )
    # Measured: ratio ~0.4 on both backends; the random c_phi gave 1.4 (TensorFlow) and 2.8
    # (JAX), above REINFORCE: the variance drop is what training phi bought.
    assert ratio + 4 * ratio_se < 1.0, (ratio, ratio_se)
    assert relaxed + 4 * np.hypot(relaxed_se, untrained_se) < untrained, (relaxed, untrained)


@pytest.mark.parametrize("rebar", [False, True], ids=["relax", "relax_with_rebar_term"])
def test_categorical_unbiased_against_exact_enumeration(rebar):
    # Two categorical variables of 3 classes: f = t0[i] + t1[j] + m[i, j] for classes (i, j).
    rng = np.random.default_rng(11)
    logits0 = rng.normal(0.0, 1.0, (2, 3)).astype("float32")
    t = rng.normal(0.0, 1.0, (2, 3)).astype("float32")
    m = rng.normal(0.0, 1.0, (3, 3)).astype("float32")

    def f(b):  # b: [S, N, 2, 3] one-hot
        first, second = b[..., 0, :], b[..., 1, :]
        pair = ops.sum(ops.matmul(first, m) * second, axis=-1)
        return ops.sum(b * t, axis=(-2, -1)) + pair

    p = np.exp(logits0 - np.log(np.exp(logits0).sum(axis=1, keepdims=True))).astype(np.float64)
    table = t[0][:, None] + t[1][None, :] + m  # F[i, j]
    mean = p[0] @ table @ p[1]
    exact = np.stack([p[0] * (table @ p[1] - mean), p[1] * (p[0] @ table - mean)])

    keras.utils.set_random_seed(2)
    estimator = kvi.estimators.RELAX(hidden_units=16, rebar=rebar)
    estimator.control_variate.build((None, 6))
    logits = keras.Variable(np.tile(logits0, [N, 1, 1]))
    q = lambda: tfd.Independent(tfd.OneHotCategorical(logits=logits, dtype="float32"), 1)  # noqa: E731
    (g,) = gradients(lambda: kvi.expectation(f, q(), estimator, num_samples=1, seed=7), [logits])
    g = g.reshape(N, 6).astype(np.float64) * N
    z = z_scores(g, exact.reshape(6))
    print("categorical: (mean - exact) / SE per logit:", np.round(z, 2))
    assert np.all(np.abs(z) < 4), np.round(z, 2)


def test_model_training_step_gradient_unbiased_against_exact_enumeration():
    # Per-row logits (Embeddings) give one independent estimate per row from one training
    # step of a VariationalModel (K = 2 rows per example, analytic KLs to uniform priors):
    # one SGD step with learning rate `rows` moves each row by its estimate. Two latents
    # with their own RELAX: 3 bits, and 2 categorical variables of 3 classes.
    rows = 10_000
    rng = np.random.default_rng(7)
    start_bits = rng.normal(0.0, 1.0, 3).astype("float32")
    start_classes = rng.normal(0.0, 1.0, 6).astype("float32")
    kernel = rng.normal(0.0, 1.0, (9, 4)).astype("float32")
    bias = rng.normal(0.0, 0.5, 4).astype("float32")
    target = np.array([1.0, 0.0, 1.0, 1.0], "float32")

    x = keras.Input((), dtype="int32")
    bit_logits = keras.layers.Embedding(rows, 3, name="bit_encoder")(x)
    class_logits = keras.layers.Embedding(rows, 6, name="class_encoder")(x)
    relax_bits = kvi.estimators.RELAX(hidden_units=8)
    relax_classes = kvi.estimators.RELAX(hidden_units=8)
    z = keras.layers.Concatenate()(
        [
            kvi.layers.BernoulliLatent(3, estimator=relax_bits)(bit_logits),
            kvi.layers.CategoricalLatent(3, num_variables=2, estimator=relax_classes)(class_logits),
        ]
    )
    decoder = keras.layers.Dense(
        4,
        kernel_initializer=keras.initializers.Constant(kernel),
        bias_initializer=keras.initializers.Constant(bias),
        trainable=False,
    )
    model = kvi.VariationalModel(x, decoder(z), likelihood="bernoulli", num_samples=2)
    encoders = [model.get_layer("bit_encoder"), model.get_layer("class_encoder")]
    for encoder, start in zip(encoders, [start_bits, start_classes]):
        encoder.embeddings.assign(np.tile(start, [rows, 1]))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=float(rows)))
    model.train_on_batch(np.arange(rows, dtype="int32"), np.tile(target, [rows, 1]))
    g = np.concatenate(
        [
            numpy(encoder.embeddings).astype(np.float64) - start
            for encoder, start in zip(encoders, [start_bits, start_classes])
        ],
        axis=1,
    )

    # Every (bits, classes) configuration: 8 x 9 rows of 3 + 6 features.
    configs = np.array(
        [
            np.concatenate([bits_, np.eye(3)[i], np.eye(3)[j]])
            for bits_ in np.ndindex(2, 2, 2)
            for i, j in np.ndindex(3, 3)
        ],
        np.float64,
    )
    out = configs @ kernel + bias
    log_lik = np.sum(target * out - np.logaddexp(0.0, out), axis=1)

    def exact_elbo(a):
        p = 1.0 / (1.0 + np.exp(-a[:3]))
        classes = a[3:].reshape(2, 3)
        pc = np.exp(classes - np.log(np.exp(classes).sum(axis=1, keepdims=True)))
        probs = np.concatenate([p, pc.reshape(-1)])
        q = np.prod(
            np.where(configs == 1.0, probs, np.concatenate([1.0 - p, np.ones(6)])),
            axis=1,
        )
        kl = np.sum(p * np.log(2 * p) + (1 - p) * np.log(2 * (1 - p)))
        kl += np.sum(pc * np.log(3 * pc))
        return np.sum(q * log_lik) - kl

    h = 1e-5
    a0 = np.concatenate([start_bits, start_classes]).astype(np.float64)
    exact = np.array(
        [(exact_elbo(a0 + h * e) - exact_elbo(a0 - h * e)) / (2 * h) for e in np.eye(9)]
    )
    z_score = z_scores(g, exact)
    print("model step, (mean - exact) / SE per logit (3 bits, 6 classes):", np.round(z_score, 2))
    assert np.all(np.abs(z_score) < 4), np.round(z_score, 2)


def test_control_variate_gradient_is_minus_the_variance_gradient_in_the_row_layout():
    # K = 2 samples of B = 3 examples in rows k * B + b, 4 bits. The logits' gradient of the
    # surrogate is g_r / (K * B) for row r (the ELBO's mean); phi's must be -d/dphi of
    # V = mean_r sum_i g_ri^2 (the model ascends): for the output bias c0 in closed form
    # (dg/dc0 = -score), for a hidden-layer weight by central differences of V.
    k, batch, dim = 2, 3, 4
    rng = np.random.default_rng(3)
    logits = keras.Variable(np.tile(rng.normal(0.0, 1.0, (batch, dim)), [k, 1]).astype("float32"))
    b = (rng.random((k * batch, dim)) < 0.5).astype("float32")
    f = rng.normal(0.0, 1.0, (k, batch)).astype("float32")
    keras.utils.set_random_seed(4)
    estimator = kvi.estimators.RELAX(hidden_units=4)
    estimator.control_variate.build((None, dim))
    hidden, output = estimator.control_variate.network.layers

    def surrogate():
        site = _scope.Site(
            name="bits",
            q=bits(logits),
            z=ops.convert_to_tensor(b),
            prior=None,
            estimator=estimator,
            inputs=None,
            seed=ops.convert_to_tensor(np.array([5, 6], "int32")),
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

    gradient_of = compiled_gradients(
        surrogate, [logits, hidden.kernel, output.bias], tf_function=False
    )

    def variance():
        g = gradient_of()[0].astype(np.float64) * k * batch
        return np.mean(np.sum(g**2, axis=1))

    g_logits, g_kernel, g_bias = gradient_of()
    g = g_logits.astype(np.float64) * k * batch
    score = b - 1.0 / (1.0 + np.exp(-numpy(logits).astype(np.float64)))
    np.testing.assert_allclose(g_bias, -np.mean(np.sum(2 * g * -score, axis=1)), rtol=1e-4)

    h, start = 1e-2, numpy(hidden.kernel).copy()
    shifted = []
    for step in (h, -h):
        kernel = start.copy()
        kernel[0, 0] += step
        hidden.kernel.assign(kernel)
        shifted.append(variance())
    hidden.kernel.assign(start)
    numeric = (shifted[0] - shifted[1]) / (2 * h)
    print(f"dV/dW[0, 0]: surrogate {-g_kernel[0, 0]:.5f}, central differences {numeric:.5f}")
    np.testing.assert_allclose(-g_kernel[0, 0], numeric, rtol=2e-2, atol=1e-4)


def _vae(num_samples=2, objective="elbo", first=None):
    x = keras.Input((20,))
    h = keras.layers.Dense(16, activation="tanh", name="enc")(x)
    first = first or kvi.layers.BernoulliLatent(
        8, estimator=kvi.estimators.RELAX(hidden_units=16), name="bits"
    )
    width = first.units * (2 if isinstance(first, kvi.layers.NormalLatent) else 1)
    zs = [first(keras.layers.Dense(width, name="bits_params")(h))]
    normal = kvi.layers.NormalLatent(2, estimator="reparameterization", name="z")
    zs.append(normal(keras.layers.Dense(4, name="z_params")(h)))
    z = keras.layers.Concatenate()(zs)
    out = keras.layers.Dense(20)(keras.layers.Dense(16, activation="tanh")(z))
    return kvi.VariationalModel(
        x, out, likelihood="bernoulli", num_samples=num_samples, objective=objective
    )


def test_bernoulli_vae_with_a_normal_latent_trains_under_xla_and_round_trips(binary_data, tmp_path):
    model = _vae()
    model.compile(optimizer=keras.optimizers.Adam(3e-2), jit_compile=True)
    control = model.get_layer("bits").resolved_estimator.control_variate
    assert control.built and len(control.trainable_variables) == 4
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
    assert sum("control_variate" in path for path in moved) == 4, sorted(moved)

    path = str(tmp_path / "relax_vae.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    estimator = loaded.get_layer("bits").resolved_estimator
    assert isinstance(estimator, kvi.estimators.RELAX), estimator
    assert repr(estimator) == "RELAX(hidden_units=16)"
    loaded_control = estimator.control_variate.trainable_variables
    for a, b in zip(control.trainable_variables, loaded_control):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Evaluation (exact samples, no surrogate) with the loaded weights.
    out = loaded.compute_objective(binary_data[:8], binary_data[:8], training=False)
    assert np.isfinite(float(out["loss"]))


def test_custom_control_variate_network_round_trips_its_config():
    network = keras.Sequential(
        [keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)], name="my_cv"
    )
    estimator = kvi.estimators.get("relax")
    assert isinstance(estimator, kvi.estimators.RELAX)
    custom = kvi.estimators.RELAX(control_variate=network)
    assert repr(custom) == "RELAX(control_variate=<my_cv>)"
    again = kvi.estimators.RELAX.from_config(custom.get_config())
    assert again.control_variate.network.name == "my_cv"
    assert again.control_variate.network is not network


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: _vae(first=kvi.layers.NormalLatent(8, estimator="relax", name="bits")),
            "defined for Bernoulli and categorical latents: .* got Independent",
        ),
        (lambda: _vae(objective="iwae"), "objective='iwae' is not supported"),
    ],
)
def test_unsupported_set_ups_raise_clear_errors(make, match, binary_data):
    model = make()
    with pytest.raises(ValueError, match=match):
        model.compute_objective(binary_data[:4], binary_data[:4], training=True)


def test_argument_and_expectation_errors():
    with pytest.raises(ValueError, match="defined for Bernoulli and categorical .* got Normal"):
        kvi.expectation(lambda z: z, tfd.Normal(0.0, 1.0), "relax", num_samples=2, seed=0)
    joint = tfd.JointDistributionSequential([tfd.Bernoulli(0.0, dtype="float32")])
    with pytest.raises(ValueError, match="got JointDistributionSequential"):
        kvi.expectation(lambda z: z[0], joint, "relax", num_samples=2, seed=0)
    with pytest.raises(ValueError, match="`hidden_units` must be a positive integer, got 0"):
        kvi.estimators.RELAX(hidden_units=0)
    with pytest.raises(ValueError, match="`control_variate` must be a Keras layer .* got str"):
        kvi.estimators.RELAX(control_variate="dense")


# ----------------------------------------------------------------------------------- REBAR
# REBAR's control variate eta * f(sigma(z / lambda)) on 20 Bernoulli bits with product terms.
WIDE = QuadraticBits(20)
WIDE_ROWS = 10_000


def wide_estimates(estimator, seed, rows=WIDE_ROWS):
    """[rows, 20] independent one-sample gradient estimates of E[f(b)] on WIDE."""
    logits = keras.Variable(np.tile(WIDE.logits, [rows, 1]))
    (g,) = gradients(
        lambda: kvi.expectation(WIDE.f, bits(logits), estimator, num_samples=1, seed=seed),
        [logits],
    )
    return g.astype(np.float64) * rows


def test_rebar_unbiased_below_reinforce_and_its_eta_and_lambda_train_under_xla():
    rebar = kvi.estimators.REBAR()
    cv = rebar.control_variate
    start = wide_estimates(rebar, seed=3)
    z = z_scores(start, WIDE.exact_gradient())
    print("REBAR at eta = 1, lambda = 0.5: (mean - exact) / SE per logit:", np.round(z, 2))
    assert np.all(np.abs(z) < 4), np.round(z, 2)

    # Adam on eta and log lambda alone, in a compiled (XLA) step.
    variables = cv.trainable_variables
    assert [v.path.split("/")[-1] for v in variables] == ["rebar_scale", "log_temperature"]
    logits = ops.convert_to_tensor(np.tile(WIDE.logits, [256, 1]))
    step = compiled_gradients(
        lambda seed: kvi.expectation(WIDE.f, bits(logits), rebar, num_samples=1, seed=seed),
        variables,
        jit_compile=True,
    )
    optimizer = keras.optimizers.Adam(5e-2)
    for i in range(50):
        optimizer.apply(step(ops.convert_to_tensor(np.int32(1000 + i))), variables)
    eta, temperature = float(numpy(cv.rebar_scale)), float(np.exp(numpy(cv.log_temperature)))
    trained = wide_estimates(rebar, seed=4)
    z = z_scores(trained, WIDE.exact_gradient())
    print(f"trained eta {eta:.3f}, lambda {temperature:.3f}: z per logit", np.round(z, 2))
    assert np.all(np.abs(z) < 4), np.round(z, 2)

    plain, plain_se = total_variance(wide_estimates(kvi.estimators.ScoreFunction(), seed=5))
    before, before_se = total_variance(start)
    after, after_se = total_variance(trained)
    print(
        f"total variance: REINFORCE {plain:.2f} +- {plain_se:.2f}, REBAR at the start "
        f"{before:.2f} +- {before_se:.2f}, after 50 steps {after:.2f} +- {after_se:.2f}"
    )
    # Measured on TensorFlow: 66, 17.3 and 15.3 (lambda 0.5 -> 0.31).
    assert before + 4 * np.hypot(before_se, plain_se) < plain, (before, plain)
    assert after + 4 * np.hypot(after_se, before_se) < before, (after, before)


def test_rebar_eta_and_lambda_gradients_are_the_variance_gradient():
    # kvi.expectation minimises mean f here, so the surrogate carries +mean_n sum_i g_ni^2;
    # its gradient in eta and log lambda must match central differences of that variance
    # (common random numbers: one seed throughout).
    rows = 2_000
    rebar = kvi.estimators.REBAR()
    cv = rebar.control_variate
    logits = ops.convert_to_tensor(np.tile(WIDE.logits, [rows, 1]))
    surrogate_gradient = compiled_gradients(
        lambda: kvi.expectation(WIDE.f, bits(logits), rebar, num_samples=1, seed=9),
        cv.trainable_variables,
        tf_function=False,
    )

    def variance():
        g = wide_estimates(rebar, seed=9, rows=rows)  # the per-row estimates g_n
        return np.mean(np.sum(g**2, axis=1))

    analytic = [float(g) for g in surrogate_gradient()]
    numeric = []
    for variable in cv.trainable_variables:
        start, h = float(numpy(variable)), 1e-2
        shifted = []
        for value in (start + h, start - h):
            variable.assign(value)
            shifted.append(variance())
        variable.assign(start)
        numeric.append((shifted[0] - shifted[1]) / (2 * h))
    print("d variance / d (eta, log lambda): surrogate", analytic, "central differences", numeric)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


def test_rebar_leaves_fn_variables_to_the_value():
    # f(b) = (b - w)^2: w's gradient is that of the Monte Carlo value alone, as with
    # REINFORCE on the same draws; the variance term must not reach fn's own variables.
    w = keras.Variable(0.45)
    logits = keras.Variable(np.full([1000], 0.3, "float32"))
    q = lambda: tfd.Bernoulli(logits=logits, dtype="float32")  # noqa: E731
    f = lambda b: (b - w) ** 2  # noqa: E731
    results = []
    for estimator in (kvi.estimators.REBAR(), kvi.estimators.ScoreFunction()):
        (g_w,) = gradients(
            lambda: kvi.expectation(f, q(), estimator, num_samples=2, seed=5),  # noqa: B023
            [w],
        )
        results.append(float(g_w))
    assert results[0] == pytest.approx(results[1], rel=1e-5), results


@pytest.mark.parametrize(
    "estimator",
    [lambda: kvi.estimators.REBAR(), lambda: kvi.estimators.RELAX(hidden_units=8, rebar=True)],
    ids=["rebar", "relax_with_rebar_term"],
)
def test_rebar_is_refused_in_a_variational_model(estimator, binary_data):
    model = _vae(
        first=kvi.layers.BernoulliLatent(8, estimator=estimator(), name="bits"),
    )
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="only kvi.expectation.* can do"):
        model.fit(binary_data[:32], batch_size=16, epochs=1, verbose=0)


def test_rebar_configs_round_trip():
    rebar = kvi.estimators.get("rebar")
    assert isinstance(rebar, kvi.estimators.REBAR) and repr(rebar) == "REBAR(temperature=0.5)"
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(kvi.estimators.REBAR(temperature=0.25))
    )
    assert type(again) is kvi.estimators.REBAR and again.control_variate.temperature == 0.25
    assert again.control_variate.network is None
    assert float(np.exp(numpy(again.control_variate.log_temperature))) == pytest.approx(0.25)
    both = kvi.estimators.RELAX(hidden_units=8, rebar=True, temperature=0.3)
    assert repr(both) == "RELAX(hidden_units=8, rebar=True, temperature=0.3)"
    again = kvi.estimators.RELAX.from_config(both.get_config())
    assert again.control_variate.rebar and again.control_variate.temperature == 0.3
    # A config saved before REBAR existed (no `rebar` key) still loads, without the term.
    old = kvi.estimators.RELAX.from_config({"control_variate": None, "hidden_units": 8})
    assert not old.control_variate.rebar


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), True, "0.5"])
def test_rebar_temperature_errors(temperature):
    with pytest.raises(ValueError, match="`temperature` must be a positive finite number"):
        kvi.estimators.REBAR(temperature=temperature)
    with pytest.raises(ValueError, match="`rebar` must be True or False, got 'yes'"):
        kvi.estimators.RELAX(rebar="yes")
