"""Joint-distribution posteriors (`tfd.JointDistribution*`) in kvi.expectation and in Latent.

The gradient checks draw N independent estimates at once: every parameter has one variable
per batch copy, so the gradient of the batch-mean value with respect to copy n is estimate n
divided by N. Tolerances are 4 standard errors computed from those N estimates.
"""

import keras
import numpy as np
import pytest

import keras_vi as kvi

from backend_utils import gradients

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions
ops = keras.ops

N = 20_000  # independent gradient estimates per check
numpy = keras.ops.convert_to_numpy
LOC1, SCALE1 = 0.5, 1.2
LOC2, SCALE2 = np.array([0.1, -0.3, 0.7]), np.array([0.5, 1.0, 1.5])
A, B_TARGET = 1.0, np.array([0.0, 1.0, 2.0], np.float32)


def parts(loc1, scale1, loc2, scale2):
    """z1 ~ N(loc1, scale1) per copy, z2 ~ N(loc2, scale2) over 3 event dimensions."""
    return tfd.Normal(loc1, scale1), tfd.Independent(tfd.Normal(loc2, scale2), 1)


def sequential(*params):
    return tfd.JointDistributionSequential(list(parts(*params)))


def named(*params):
    first, second = parts(*params)
    return tfd.JointDistributionNamed({"a": first, "b": second})


def coroutine(*params):
    first, second = parts(*params)

    def model():
        yield tfd.JointDistributionCoroutine.Root(first)
        yield tfd.JointDistributionCoroutine.Root(second)

    return tfd.JointDistributionCoroutine(model)


def sequential_auto_batched(*params):
    return tfd.JointDistributionSequentialAutoBatched(list(parts(*params)), batch_ndims=1)


JOINTS = {
    "sequential": sequential,
    "named": named,
    "coroutine": coroutine,
    "sequential_auto_batched": sequential_auto_batched,
}


def copies():
    """The four parameters as variables with N identical copies."""
    return [
        keras.Variable(np.full([N], LOC1, "float32")),
        keras.Variable(np.full([N], SCALE1, "float32")),
        keras.Variable(np.tile(LOC2.astype("float32")[np.newaxis], [N, 1])),
        keras.Variable(np.tile(SCALE2.astype("float32")[np.newaxis], [N, 1])),
    ]


def squared_distance(z):
    """(z1 - a)^2 + sum (z2 - b)^2; a dict's parts flatten in key order (a, b)."""
    z1, z2 = keras.tree.flatten(z)
    return (z1 - A) ** 2 + ops.sum((z2 - B_TARGET) ** 2, axis=-1)


def per_copy_gradients(make_q, fn, estimator, num_samples=1, seed=0, **kwargs):
    """Gradient estimates, one row per copy, for each of the four parameters."""
    params = copies()
    grads = gradients(
        lambda: kvi.expectation(
            fn, make_q(*params), estimator, num_samples=num_samples, seed=seed, **kwargs
        ),
        params,
    )
    return [g * N for g in grads]


def assert_within_4_se(draws, expected, what):
    """Column-wise: the mean of the N draws within 4 standard errors of `expected`."""
    draws = draws.reshape(N, -1)
    expected = np.broadcast_to(expected, draws.shape[1:])
    se = draws.std(axis=0, ddof=1) / np.sqrt(N)
    deviation = np.abs(draws.mean(axis=0) - expected)
    assert np.all(deviation < 4 * se), f"{what}: {draws.mean(axis=0)} vs {expected} (SE {se})"
    return se


def assert_same_mean(a, b, what):
    a, b = a.reshape(N, -1), b.reshape(N, -1)
    se = np.sqrt(a.var(axis=0, ddof=1) / N + b.var(axis=0, ddof=1) / N)
    deviation = np.abs(a.mean(axis=0) - b.mean(axis=0))
    assert np.all(deviation < 4 * se), f"{what}: {a.mean(axis=0)} vs {b.mean(axis=0)} (SE {se})"


ZEROS3, ONES3 = np.zeros(3, "float32"), np.ones(3, "float32")


def normal_part(loc=0.0):
    return tfd.Normal(loc, 1.0)


@pytest.mark.parametrize(
    "make_q, expected",
    [
        (lambda: tfd.Normal(0.0, 1.0), True),
        (lambda: tfd.Bernoulli(0.5), False),
        (lambda: sequential(0.0, 1.0, ZEROS3, ONES3), True),
        (lambda: tfd.JointDistributionSequential([normal_part(), tfd.Bernoulli(0.5)]), False),
        (lambda: tfd.JointDistributionSequential([normal_part(), normal_part]), True),
        (lambda: named(0.0, 1.0, ZEROS3, ONES3), True),
        (lambda: tfd.JointDistributionNamed({"a": normal_part(), "c": tfd.Poisson(2.0)}), False),
        (lambda: coroutine(0.0, 1.0, ZEROS3, ONES3), True),
        (
            lambda: sequential_auto_batched(
                np.zeros(2, "float32"), np.ones(2, "float32"), ZEROS3, ONES3
            ),
            True,
        ),
        (
            lambda: tfd.JointDistributionNamedAutoBatched(
                {"a": normal_part(), "c": tfd.Categorical(logits=[0.0, 1.0])}
            ),
            False,
        ),
    ],
    ids=[
        "normal",
        "bernoulli",
        "sequential",
        "sequential_with_bernoulli",
        "sequential_dependent",
        "named",
        "named_with_poisson",
        "coroutine",
        "sequential_auto_batched",
        "named_auto_batched_with_categorical",
    ],
)
def test_is_reparameterized_checks_every_part(make_q, expected):
    q = make_q()
    assert kvi.estimators.is_reparameterized(q) is expected
    assert kvi.estimators.is_joint(q) is isinstance(q, tfd.JointDistribution)


def test_pathwise_estimators_refuse_a_joint_q_with_a_discrete_part():
    q = tfd.JointDistributionSequential([normal_part(), tfd.Bernoulli(0.5, dtype="float32")])
    with pytest.raises(ValueError, match="every part must be FULLY_REPARAMETERIZED"):
        kvi.expectation(lambda z: z[0] + z[1], q, estimator="reparameterization", seed=0)


# TFP warns that AutoBatched joints sample stateless seeds in a loop (slower, same draws).
@pytest.mark.filterwarnings("ignore:Saw Tensor seed")
@pytest.mark.parametrize("joint", sorted(JOINTS))
@pytest.mark.parametrize("estimator", ["auto", "reparameterization", "score_function"])
def test_expectation_gradient_matches_closed_form(joint, estimator):
    # E[(z1 - a)^2 + sum (z2 - b)^2] = (loc1 - a)^2 + scale1^2 + sum (loc2 - b)^2 + scale2^2.
    gradients = per_copy_gradients(JOINTS[joint], squared_distance, estimator)
    expected = [2 * (LOC1 - A), 2 * SCALE1, 2 * (LOC2 - B_TARGET), 2 * SCALE2]
    names = ["loc1", "scale1", "loc2", "scale2"]
    for name, draws, closed_form in zip(names, gradients, expected):
        se = assert_within_4_se(draws, closed_form, f"{joint}/{estimator} d/d{name}")
        # The check has power: 4 standard errors stay below the gradient's scale, so a
        # missing or wrongly scaled gradient term would fail it.
        limit = 0.25 if estimator == "score_function" else 0.05
        assert np.all(se < limit * np.maximum(1.0, np.abs(closed_form))), (name, se)


def log_joint(z):
    """log p(x, z) of a conjugate model: z1, z2 ~ N(0, 1), x1 ~ N(z1, 1), x2 ~ N(z2, 1)."""
    z1, z2 = keras.tree.flatten(z)
    observed1, observed2 = 1.0, np.array([0.5, -1.0, 2.0], "float32")
    return (
        tfd.Normal(0.0, 1.0).log_prob(z1)
        + tfd.Normal(z1, 1.0).log_prob(observed1)
        + ops.sum(tfd.Normal(0.0, 1.0).log_prob(z2) + tfd.Normal(z2, 1.0).log_prob(observed2), -1)
    )


@pytest.mark.parametrize("joint", ["sequential", "named"])
@pytest.mark.parametrize(
    "estimator, objective, num_samples",
    [
        ("stl", "elbo", 1),
        ("score_function", "elbo", 1),
        ("dreg", "iwae", 4),
        ("vimco", "iwae", 4),
    ],
)
def test_bound_estimators_agree_with_reparameterization(joint, estimator, objective, num_samples):
    # Every estimator is unbiased for the gradient of the same bound: its mean over N copies
    # agrees with the plain pathwise gradient's (independent noise) within 4 standard errors.
    kwargs = dict(objective=objective, num_samples=num_samples)
    reference = per_copy_gradients(JOINTS[joint], log_joint, "reparameterization", seed=1, **kwargs)
    gradients = per_copy_gradients(JOINTS[joint], log_joint, estimator, seed=2, **kwargs)
    for name, a, b in zip(["loc1", "scale1", "loc2", "scale2"], gradients, reference):
        assert_same_mean(a, b, f"{joint}/{estimator} d/d{name}")


def test_gumbel_softmax_refuses_a_joint_q():
    q = tfd.JointDistributionSequential(
        [tfd.OneHotCategorical(logits=[0.0, 1.0], dtype="float32"), normal_part()]
    )
    with pytest.raises(ValueError, match="GumbelSoftmax.*joint distribution"):
        kvi.expectation(lambda z: z[1], q, estimator=kvi.estimators.GumbelSoftmax(0.5), seed=0)


# ---------------------------------------------------------------------------- Latent layers
def joint_q(params):
    """A JDSequential posterior from 8 parameters: z1 scalar, z2 of 3 dimensions."""
    loc1, raw1, loc2, raw2 = ops.split(params, [1, 2, 5], axis=-1)  # widths 1, 1, 3, 3
    return tfd.JointDistributionSequential(
        [
            tfd.Normal(loc1[:, 0], ops.softplus(raw1[:, 0]) + 1e-3),
            tfd.Independent(tfd.Normal(loc2, ops.softplus(raw2) + 1e-3), 1),
        ]
    )


def joint_prior(q):
    return tfd.JointDistributionSequential(
        [tfd.Normal(0.0, 1.0), tfd.Independent(tfd.Normal(ZEROS3, 1.0), 1)]
    )


def named_q(params):
    first, second = joint_q(params).model
    return tfd.JointDistributionNamed({"a": first, "b": second})


def named_prior(q):
    first, second = joint_prior(q).model
    return tfd.JointDistributionNamed({"a": first, "b": second})


def joint_vae(estimator, named=False, seed=3, **model_kwargs):
    """A Bernoulli VAE whose latent is a joint q; the decoder concatenates the parts."""
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(16, activation="relu", name="encoder")(inputs)
    params = keras.layers.Dense(8)(hidden)
    latent = kvi.layers.Latent(
        named_q if named else joint_q,
        prior=named_prior if named else joint_prior,
        estimator=estimator,
        name="z",
        seed=seed,
    )
    z = latent(params)
    z1, z2 = (z["a"], z["b"]) if named else z
    joined = keras.layers.Concatenate()([keras.layers.Reshape((1,))(z1), z2])
    logits = keras.layers.Dense(20)(keras.layers.Dense(16, activation="relu")(joined))
    return kvi.VariationalModel(inputs, logits, likelihood="bernoulli", **model_kwargs), latent


@pytest.mark.parametrize("named", [False, True], ids=["sequential", "named"])
def test_joint_latent_trains_with_auto(binary_data, named):
    model, latent = joint_vae("auto", named=named)
    spec = latent.compute_output_spec(keras.KerasTensor((None, 8)))
    assert [(tuple(t.shape), t.dtype) for t in keras.tree.flatten(spec)] == [
        ((None,), "float32"),
        ((None, 3), "float32"),
    ]
    assert isinstance(spec, dict) is named
    assert isinstance(latent.resolved_estimator, kvi.estimators.Reparameterization)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    history = model.fit(binary_data, epochs=2, batch_size=32, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    # Training works: the bound improves (the untrained loss is about 20 * log 2 = 13.9).
    assert history["loss"][-1] < history["loss"][0] - 0.5, history["loss"]


@pytest.mark.parametrize(
    "estimator, expected",
    [("dreg", kvi.estimators.DoublyReparameterized), ("vimco", kvi.estimators.VIMCO)],
)
@pytest.mark.parametrize("named", [False, True], ids=["sequential", "named"])
def test_joint_latent_trains_under_iwae(binary_data, named, estimator, expected):
    model, latent = joint_vae(estimator, named=named, objective="iwae", num_samples=3)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    history = model.fit(binary_data, epochs=2, batch_size=32, verbose=0).history
    assert isinstance(latent.resolved_estimator, expected)
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0] - 0.5, history["loss"]


def test_joint_latent_bound_is_the_same_for_every_estimator(binary_data):
    x = binary_data[:64]
    models, outputs = {}, {}
    for estimator in ("reparameterization", "score_function"):
        keras.utils.set_random_seed(7)  # same initial weights and latent noise for both
        model, _ = joint_vae(estimator)
        encoder_kernel = model.get_layer("encoder").kernel
        outputs[estimator] = model.compute_objective(x, x, training=True)
        [gradient] = gradients(
            lambda model=model: model.compute_objective(x, x, training=True)["loss"],
            [encoder_kernel],
        )
        # The estimator's gradient reaches the encoder through the joint sample (pathwise)
        # or through its score.
        assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 1e-3, estimator
        models[estimator] = model
    a, b = outputs["reparameterization"], outputs["score_function"]
    for key in ("loss_value", "elbo", "nll", "kl"):
        np.testing.assert_allclose(numpy(a[key]), numpy(b[key]), rtol=1e-6, err_msg=key)

    # The KL is the closed form summed over the parts, from the encoder's output.
    model = models["reparameterization"]
    encoder = keras.Model(model.input, model.get_layer("z").input)
    params = numpy(encoder(x)).astype(np.float64)
    scale = np.log1p(np.exp(params[:, [1, 5, 6, 7]])) + 1e-3
    loc = params[:, [0, 2, 3, 4]]
    kl = np.sum(0.5 * (scale**2 + loc**2 - 1.0) - np.log(scale), axis=1).mean()
    np.testing.assert_allclose(numpy(a["kl"]), kl, rtol=1e-5)


def test_joint_latent_free_bits_floor_the_whole_latent(binary_data):
    # Four dimensions at 10 nats each: the floor (40 nats) exceeds the KL, so the loss is
    # the NLL plus exactly 40.
    model, _ = joint_vae("auto", free_bits=10.0)
    x = binary_data[:16]
    out = model.compute_objective(x, x, training=True)
    assert numpy(out["kl"]) < 40.0
    np.testing.assert_allclose(numpy(out["loss_value"]), numpy(out["nll"]) + 40.0, rtol=1e-6)


def test_joint_latent_refuses_a_prior_of_another_structure():
    latent = kvi.layers.Latent(joint_q, prior="standard_normal", name="z")
    with pytest.raises(ValueError, match="cannot give a prior for the joint distribution"):
        latent(np.zeros([2, 8], "float32"))
    mismatched = kvi.layers.Latent(joint_q, prior=named_prior, name="z2")
    with pytest.raises(ValueError, match="do not match the parts of q"):
        mismatched(np.zeros([2, 8], "float32"))
