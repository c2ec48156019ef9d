"""A model holding a callable it could not load back fails at `save`, naming the callable,
the argument and its owner; registered callables save, load and give the same loss."""

import functools

import keras
import numpy as np
import pytest

import keras_vi as kvi
from keras_vi._serialization import check_registered

from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions


# ----------------------------------------------------------- module-level callables
def bernoulli_unregistered(logits):
    return tfd.Independent(tfd.Bernoulli(logits=logits), 1)


@keras.saving.register_keras_serializable(package="keras_vi_tests")
def bernoulli_registered(logits):
    return tfd.Independent(tfd.Bernoulli(logits=logits), 1)


def poisson(log_rate):  # named like keras.losses.poisson: a load would find that instead
    return tfd.Independent(tfd.Poisson(log_rate=log_rate), 1)


def gaussian_unregistered(params):
    loc, raw = keras.ops.split(params, 2, axis=-1)
    return tfd.Independent(tfd.Normal(loc, keras.ops.softplus(raw) + 1e-3), 1)


@keras.saving.register_keras_serializable(package="keras_vi_tests")
def gaussian_registered(params):
    loc, raw = keras.ops.split(params, 2, axis=-1)
    return tfd.Independent(tfd.Normal(loc, keras.ops.softplus(raw) + 1e-3), 1)


def laplace_unregistered(q):
    return tfd.Independent(tfd.Laplace(keras.ops.zeros(tuple(q.event_shape)), 1.0), 1)


@keras.saving.register_keras_serializable(package="keras_vi_tests")
def laplace_registered(q):
    return tfd.Independent(tfd.Laplace(keras.ops.zeros(tuple(q.event_shape)), 1.0), 1)


class HalfScore(kvi.estimators.ScoreFunction):  # a custom estimator, not registered
    pass


class WithConfig:
    def __call__(self, q):
        return laplace_registered(q)

    def get_config(self):
        return {}


def _model(likelihood="bernoulli", distribution_fn=None, prior="standard_normal", **latent):
    if distribution_fn is None:
        layer = kvi.layers.NormalLatent(4, name="z", prior=prior, **latent)
    else:
        layer = kvi.layers.Latent(distribution_fn, prior=prior, name="z", kl="mc", **latent)
    return small_vae(latent=layer, params_width=8, likelihood=likelihood)


def _assert_refused_at_save(model, tmp_path, *fragments):
    with pytest.raises(ValueError) as info:
        model.save(tmp_path / "model.keras")
    message = str(info.value)
    for fragment in (*fragments, "cannot be saved", "register_keras_serializable", "module level"):
        assert fragment in message, message
    assert not (tmp_path / "model.keras").exists()  # refused before any file is written


# ----------------------------------------------------------- refused at save time
@pytest.mark.parametrize(
    "likelihood, name",
    [
        (lambda logits: tfd.Independent(tfd.Bernoulli(logits=logits), 1), "<lambda>"),
        (bernoulli_unregistered, "test_saving_checks.bernoulli_unregistered"),
    ],
    ids=["lambda", "function"],
)
def test_unregistered_likelihood(likelihood, name, tmp_path):
    model = _model(likelihood=likelihood)
    _assert_refused_at_save(model, tmp_path, "VariationalModel", "`likelihood`", name)


def test_likelihood_named_like_a_keras_builtin(tmp_path):
    model = _model(likelihood=poisson)
    _assert_refused_at_save(
        model, tmp_path, "`likelihood`", "test_saving_checks.poisson", "Keras's own function"
    )


def test_closure_likelihood(tmp_path):
    def make(temperature):
        def likelihood(logits):
            return tfd.Independent(tfd.Bernoulli(logits=logits / temperature), 1)

        return likelihood

    model = _model(likelihood=make(2.0))
    _assert_refused_at_save(model, tmp_path, "<locals>", "defined inside a function")


@pytest.mark.parametrize(
    "distribution_fn, name",
    [
        (
            lambda p: tfd.Independent(tfd.Normal(p[:, :4], keras.ops.softplus(p[:, 4:]) + 1e-3), 1),
            "<lambda>",
        ),
        (gaussian_unregistered, "gaussian_unregistered"),
    ],
    ids=["lambda", "function"],
)
def test_unregistered_distribution_fn(distribution_fn, name, tmp_path):
    model = _model(distribution_fn=distribution_fn)
    _assert_refused_at_save(model, tmp_path, "Latent 'z'", "`distribution_fn`", name)


@pytest.mark.parametrize(
    "prior, name",
    [
        (
            lambda q: tfd.Independent(tfd.Laplace(keras.ops.zeros(tuple(q.event_shape)), 1.0), 1),
            "<lambda>",
        ),
        (laplace_unregistered, "laplace_unregistered"),
        (WithConfig(), "WithConfig"),
    ],
    ids=["lambda", "function", "object"],
)
def test_unregistered_prior(prior, name, tmp_path):
    model = _model(prior=prior, kl="mc")
    _assert_refused_at_save(model, tmp_path, "NormalLatent 'z'", "`prior`", name)


def test_unregistered_estimator(tmp_path):
    model = _model(estimator=HalfScore())
    _assert_refused_at_save(model, tmp_path, "NormalLatent 'z'", "`estimator`", "HalfScore")


# ----------------------------------------------------------- registered: save, load, same loss
def _loss(model, batch):
    return float(model.compute_objective(batch, batch, training=False)["loss"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"likelihood": bernoulli_registered},
        {"distribution_fn": gaussian_registered},
        {"prior": laplace_registered, "kl": "mc"},
        {
            "likelihood": bernoulli_registered,
            "distribution_fn": gaussian_registered,
            "prior": laplace_registered,
        },
    ],
    ids=["likelihood", "distribution_fn", "prior", "all"],
)
def test_registered_callables_save_and_load(kwargs, tmp_path, binary_data):
    keras.utils.set_random_seed(3)
    model = _model(seed=11, **kwargs)
    batch = binary_data[:16]
    path = tmp_path / "model.keras"
    model.save(path)
    expected = _loss(model, batch)  # the seed generator's state is the one saved
    loaded = keras.saving.load_model(path)
    assert _loss(loaded, batch) == expected
    for name, value in kwargs.items():
        if callable(value):
            layer = loaded.get_layer("z")
            assert getattr(loaded, name, None) is value or getattr(layer, name) is value


# ----------------------------------------------------------- the check itself
@pytest.mark.parametrize(
    "value",
    [
        None,
        "bernoulli",
        3.0,
        bernoulli_registered,
        keras.activations.relu,
        keras.losses.binary_crossentropy,
        kvi.priors.StandardNormal(),
        kvi.estimators.ScoreFunction(),
        keras.layers.Dense(1),
    ],
    # Stable names (a repr holds an address, and parallel workers must collect the same ids).
    ids=[
        "none",
        "alias",
        "number",
        "registered_function",
        "keras_activation",
        "keras_loss",
        "keras_vi_prior",
        "estimator",
        "layer",
    ],
)
def test_loadable_values_pass(value):
    check_registered(value, "argument", "Owner 'o'")


@pytest.mark.parametrize(
    "value, fragment",
    [
        (keras.ops.relu, "Keras's own function named 'relu'"),  # not keras.activations.relu
        (functools.partial(bernoulli_registered), "functools.partial instance cannot be saved"),
        (WithConfig(), "WithConfig instance cannot be saved: its class WithConfig is not regis"),
        (WithConfig, "not registered"),
    ],
    ids=["keras.ops.relu", "partial", "object", "class"],
)
def test_refused_values(value, fragment):
    with pytest.raises(ValueError, match="Owner 'o': the `argument` ") as info:
        check_registered(value, "argument", "Owner 'o'")
    assert fragment in str(info.value)


def test_registered_object_passes():
    @keras.saving.register_keras_serializable(package="keras_vi_tests")
    class Registered(WithConfig):
        pass

    check_registered(Registered(), "prior", "NormalLatent 'z'")
    np.testing.assert_equal(kvi.layers.NormalLatent(2, prior=Registered()).prior.get_config(), {})
