"""The estimator contract after the re-cut: three declarations, aliases registered by the
classes themselves, 0.1's flags still honoured, and the step hook diagnostics use."""

import warnings

import keras
import numpy as np
import pytest

import keras_vi as kvi
from keras_vi.estimators import base

from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")


def test_builtin_estimators_declare_the_contract():
    declared = {
        name: (cls.reparameterized, cls.kl, cls.objective)
        for name, cls in sorted(base.ALIASES.items())
        if cls.__module__.startswith("keras_vi.")
    }
    assert declared == {
        "disarm": (False, None, None),
        "dreg": (True, "sample", "iwae"),
        "enumerate": (False, None, None),
        "gumbel_softmax": (True, "analytic", None),
        "rebar": (False, None, None),
        "relax": (False, None, None),
        "reparameterization": (True, None, None),
        "score_function": (False, None, None),
        "stl": (True, "sample", None),
        "sum_and_sample": (False, None, None),
        "vimco": (False, None, "iwae"),
    }


def test_a_new_estimator_class_registers_its_alias():
    class HalfScore(kvi.estimators.ScoreFunction):
        alias = "test_half_score"

        def learning_signal(self, site, signals):
            return 0.5 * signals.learning_signal(site)

    estimator = kvi.estimators.get("test_half_score")
    assert isinstance(estimator, HalfScore)
    latent = kvi.layers.BernoulliLatent(4, estimator="test_half_score", name="bits")
    model = small_vae(latent=latent, params_width=4)
    model.compile(optimizer="adam")
    x = (np.random.default_rng(0).random((32, 20)) > 0.5).astype("float32")
    assert np.isfinite(model.fit(x, epochs=1, batch_size=16, verbose=0).history["loss"]).all()


def test_subclasses_inherit_the_alias_without_taking_it():
    class Scaled(kvi.estimators.ScoreFunction):
        pass

    assert base.ALIASES["score_function"] is kvi.estimators.ScoreFunction
    assert isinstance(kvi.estimators.get("score_function"), kvi.estimators.ScoreFunction)
    assert Scaled.alias == "score_function"


def test_an_alias_taken_by_another_class_is_refused():
    with pytest.raises(ValueError, match="alias 'dreg' .* already taken"):

        class Impostor(kvi.estimators.Estimator):
            alias = "dreg"


def test_old_flags_are_translated_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class OldStyle(kvi.estimators.Estimator):
            pathwise = True
            needs_sample_kl = True
            requires_objective = "iwae"
            needs_path_gradient = True

    assert {type(w.message) for w in caught} == {DeprecationWarning}
    assert len(caught) == 4
    assert (OldStyle.reparameterized, OldStyle.kl, OldStyle.objective) == (True, "sample", "iwae")


def test_old_analytic_flag_translates():
    with pytest.warns(DeprecationWarning, match="requires_analytic_kl"):

        class OldRelaxed(kvi.estimators.Estimator):
            requires_analytic_kl = True

    assert OldRelaxed.kl == "analytic" and OldRelaxed.reparameterized is False


def test_a_layer_called_twice_gives_two_sites_keyed_by_name():
    inputs = keras.Input((6,))
    latent = kvi.layers.NormalLatent(3, name="z")
    z1 = latent(keras.layers.Dense(6, name="a")(inputs))
    z2 = latent(keras.layers.Dense(6, name="b")(inputs))
    outputs = keras.layers.Dense(6)(keras.layers.Concatenate()([z1, z2]))
    model = kvi.VariationalModel(inputs, outputs, likelihood="normal")
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    out = model.compute_objective(x, x, training=False)
    assert sorted(out["signals"].kls) == ["z", "z#2"]
    total = out["signals"].kls["z"][0] + out["signals"].kls["z#2"][0]
    np.testing.assert_allclose(float(out["kl_per_latent"]["z"]), float(np.mean(total)), rtol=1e-5)


def test_step_hooks_see_each_batch_before_the_update():
    model = small_vae()
    model.compile(optimizer="adam")
    seen = keras.Variable(0.0, trainable=False)
    steps = keras.Variable(-1, dtype="int64", trainable=False)
    kernel = model.trainable_weights[0]
    first_kernel = keras.Variable(np.zeros(kernel.shape, "float32"), trainable=False)

    def hook(x, y, step):
        seen.assign_add(keras.ops.sum(x) * 0.0 + keras.ops.cast(keras.ops.shape(x)[0], "float32"))
        steps.assign(keras.ops.cast(step, "int64"))
        first_kernel.assign(keras.ops.where(step == 0, kernel.value, first_kernel.value))

    # The variables besides the model's that the hook writes (`add_step_hook`'s contract: a
    # stateless step, JAX's, carries only those as state).
    hook.variables = [seen, steps, first_kernel]

    before = kernel.numpy().copy()
    model.add_step_hook(hook)
    assert model.train_function is None
    x = (np.random.default_rng(0).random((48, 20)) > 0.5).astype("float32")
    model.fit(x, epochs=1, batch_size=16, verbose=0)
    assert float(seen.numpy()) == 48.0 and int(steps.numpy()) == 2
    np.testing.assert_array_equal(first_kernel.numpy(), before)  # before the first update
    model.remove_step_hook(hook)
    model.fit(x, epochs=1, batch_size=16, verbose=0)
    assert float(seen.numpy()) == 48.0
    with pytest.raises(ValueError, match="not a step hook"):
        model.remove_step_hook(hook)
    with pytest.raises(ValueError, match="needs a callable"):
        model.add_step_hook("hook")
