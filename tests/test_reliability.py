"""Reliability: bad input explained early, non-finite steps skipped, exact resumption."""

import keras
import numpy as np
import pytest

import keras_vi as kvi

from conftest import InterruptAt, small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")

tfd = kvi.distributions


def compiled(model, **kwargs):
    model.compile(optimizer=keras.optimizers.Adam(0.01), **kwargs)
    return model


# ----------------------------------------------------------------- bad input
def test_nan_in_numpy_data_names_example_and_batch(binary_data):
    data = binary_data.copy()
    data[70, 3] = np.nan
    model = compiled(small_vae())
    with pytest.raises(ValueError, match=r"`x` contains NaN or Inf at example 70 \(batch 2 with "):
        model.fit(data, batch_size=32, epochs=1, verbose=0)
    target = binary_data.copy()
    target[5, 0] = np.inf
    with pytest.raises(ValueError, match=r"`y` contains NaN or Inf at example 5 \(batch 0"):
        model.fit(binary_data, target, batch_size=32, epochs=1, verbose=0)


def test_string_data_and_mismatched_lengths(binary_data):
    model = compiled(small_vae())
    with pytest.raises(ValueError, match=r"`x` must be numeric .* got dtype <U"):
        model.fit(np.array([["a"] * 20] * 4), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`x` has 256, `y` has 100 examples"):
        model.fit(binary_data, binary_data[:100], epochs=1, verbose=0)


def test_integer_images_are_fine_for_bernoulli(binary_data):
    model = compiled(small_vae())
    history = model.fit(binary_data.astype("uint8"), epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_estimator_on_incompatible_latent_and_bad_skip_limit(binary_data):
    with pytest.raises(ValueError, match=r"`max_consecutive_skips` must be None or a positive"):
        small_vae(max_consecutive_skips=0)
    latent = kvi.layers.BernoulliLatent(4, estimator="reparameterization")
    model = compiled(small_vae(latent=latent, params_width=4))
    with pytest.raises(ValueError, match=r"reparameterizable"):
        model.fit(binary_data, epochs=1, verbose=0)


# ----------------------------------------------------------------- numerical faults
def score_function_vae():
    latent = kvi.layers.BernoulliLatent(4, name="bits")  # auto: REINFORCE + moving average
    return small_vae(latent=latent, params_width=4)


def test_non_finite_step_is_skipped_and_leaves_state_untouched(binary_data):
    model = compiled(score_function_vae())
    model.fit(binary_data[:64], batch_size=64, epochs=1, verbose=0)  # builds everything
    # Everything but the noise generators and the skip bookkeeping itself.
    untouched = [
        v
        for v in model.variables
        if not any(k in v.path for k in ("seed_generator", "consecutive_skips", "nonfinite_term"))
    ]
    before = [v.numpy().copy() for v in untouched]
    optimizer_before = [v.numpy().copy() for v in model.optimizer.variables]
    poisoned = binary_data[:64].copy()
    poisoned[0, 0] = np.nan
    history = model.fit(poisoned, batch_size=64, epochs=1, verbose=0, validate_data=False).history
    assert history["skipped_steps"] == [1.0]
    after = [v.numpy() for v in untouched]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # weights, kl_weight and the baseline's average
    for a, b in zip(optimizer_before, model.optimizer.variables):
        np.testing.assert_array_equal(a, b.numpy())  # step count and Adam moments


def test_training_goes_on_after_a_bad_batch(binary_data):
    data = binary_data[:128].copy()
    data[40, 0] = np.nan  # one of four batches per epoch
    model = compiled(small_vae())
    history = model.fit(
        data, batch_size=32, epochs=3, verbose=0, shuffle=False, validate_data=False
    ).history
    assert history["skipped_steps"] == [1.0, 2.0, 3.0]  # cumulative over the run
    assert np.isfinite(history["loss"]).all()  # epoch means over the good steps only
    assert int(model.optimizer.iterations.numpy()) == 9
    assert all(np.isfinite(w).all() for w in model.get_weights())
    # The skip counter leaves the compiled step as a private log entry; users never see it.
    logs = model.train_on_batch(data[:32], return_dict=True)
    assert sorted(history) == sorted(logs) == sorted([*model.metrics_names, "skipped_steps"])


class NaNGradient(keras.layers.Layer):
    """Passes its input on unchanged (adds sqrt(0 * x)), but the gradient through it is NaN:
    sqrt's derivative at 0 is infinite, and 0 * inf is NaN. The 0 is a weight, which no
    graph optimizer folds away."""

    def build(self, input_shape):
        self.zero = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x):
        return x + keras.ops.sqrt(self.zero * x)


def nan_gradient_vae(**model_kwargs):
    """A finite loss whose gradients are NaN in the first layer's kernel and bias only."""
    inputs = keras.Input((20,))
    h = NaNGradient()(keras.layers.Dense(32, activation="relu")(inputs))
    z = kvi.layers.NormalLatent(4, name="z")(keras.layers.Dense(8)(h))
    logits = keras.layers.Dense(20)(keras.layers.Dense(32, activation="relu")(z))
    return kvi.VariationalModel(inputs, logits, likelihood="bernoulli", **model_kwargs)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_nan_gradient_under_a_finite_loss_skips_the_step(binary_data, jit_compile):
    model = compiled(nan_gradient_vae(max_consecutive_skips=None), jit_compile=jit_compile)
    logs = model.evaluate(binary_data[:64], batch_size=64, verbose=0, return_dict=True)
    assert np.isfinite(logs["loss"])
    trained = [*model.trainable_variables, *model.optimizer.variables]
    before = [v.numpy().copy() for v in trained]
    history = model.fit(binary_data[:64], batch_size=32, epochs=1, verbose=0).history
    assert history["skipped_steps"] == [2.0]
    assert int(model.optimizer.iterations.numpy()) == 0
    for value, variable in zip(before, trained):
        np.testing.assert_array_equal(value, variable.numpy())
    model = compiled(nan_gradient_vae(max_consecutive_skips=2), jit_compile=jit_compile)
    with pytest.raises(kvi.errors.NonFiniteError, match=r"2 consecutive .*the gradients"):
        model.fit(binary_data, batch_size=32, epochs=1, verbose=0)


@pytest.mark.parametrize("shape", [(7, 5), (1, 9), (9, 1), (2, 3, 4, 5)])
def test_the_gradient_check_finds_one_non_finite_element_anywhere(shape):
    """Each gradient is checked through one sum (on JAX a matrix's through its product with
    a vector of ones): one NaN or infinity at any position must make it non-finite, and
    finite values, up to a large magnitude, must not."""
    from keras_vi import _nonfinite

    size = int(np.prod(shape))
    finite = np.random.default_rng(0).normal(size=size).astype("float32")
    cases = [finite.reshape(shape), np.full(shape, 1e30, "float32")]
    for position in sorted({0, size // 2, size - 1}):
        for value in (np.nan, np.inf, -np.inf):
            case = finite.copy()
            case[position] = value
            cases.append(case.reshape(shape))
    both = finite.copy()
    both[0], both[-1] = np.inf, -np.inf  # inf - inf: NaN
    cases.append(both.reshape(shape))

    def totals(tensors):
        return keras.ops.stack([_nonfinite._sum([t]) for t in tensors])

    if keras.backend.backend() == "jax":
        import jax

        compiled_totals = jax.jit(totals)
    else:
        import tensorflow as tf

        compiled_totals = tf.function(totals, jit_compile=True)
    expected = [True, True] + [False] * (len(cases) - 2)
    for run in (totals, compiled_totals):
        found = keras.ops.convert_to_numpy(keras.ops.isfinite(run(cases)))
        assert found.tolist() == expected


@keras.saving.register_keras_serializable(package="keras_vi_tests")
def degenerate_prior(q):
    return tfd.Independent(tfd.Normal(keras.ops.zeros(4), keras.ops.zeros(4)), 1)


def test_consecutive_skips_stop_training_naming_the_term(binary_data):
    latent = kvi.layers.NormalLatent(4, name="code", prior=degenerate_prior)
    model = compiled(small_vae(latent=latent, params_width=8, max_consecutive_skips=3))
    with pytest.raises(kvi.errors.NonFiniteError, match=r"3 consecutive .*the KL of latent 'code'"):
        model.fit(binary_data, batch_size=32, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0
    nan_model = compiled(small_vae(max_consecutive_skips=2))
    with pytest.raises(kvi.errors.NonFiniteError, match=r"the likelihood \(nll\)"):
        nan_model.fit(np.full((64, 20), np.nan, "float32"), verbose=0, validate_data=False)


def test_scales_are_floored_against_softplus_underflow():
    latent = kvi.layers.NormalLatent(3)
    params = np.concatenate([np.zeros([2, 3]), np.full([2, 3], -1e4)], -1).astype("float32")
    q = latent.make_distribution(params)
    assert keras.ops.convert_to_numpy(q.stddev()).min() >= np.float32(1e-5)
    z = latent(params)
    assert np.isfinite(keras.ops.convert_to_numpy(q.log_prob(z))).all()


# ----------------------------------------------------------------- interruption
def test_mid_epoch_interruption_resumes_exactly(binary_data, tmp_path):
    data = binary_data[:256]  # 8 steps an epoch at batch 32

    def fresh():
        keras.utils.set_random_seed(5)
        return compiled(score_function_vae())

    def train(model, callbacks):
        annealing = kvi.callbacks.KLAnnealing(kvi.schedules.Linear(warmup_steps=12))
        return model.fit(
            data,
            batch_size=32,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[*callbacks, annealing],
        )

    reference = fresh()
    train(reference, [])

    backup_dir = str(tmp_path / "backup")
    interrupted = fresh()
    with pytest.raises(RuntimeError, match="simulated interruption"):
        # Saved after global steps 3, 6, 9, 12 (save_freq=3); stopped before step 14.
        train(
            interrupted,
            [keras.callbacks.BackupAndRestore(backup_dir, save_freq=3), InterruptAt(13)],
        )
    resumed = fresh()
    train(resumed, [keras.callbacks.BackupAndRestore(backup_dir, save_freq=3)])

    assert int(resumed.optimizer.iterations.numpy()) == 24
    for a, b in zip(reference.variables, resumed.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
    layer = resumed.get_layer("bits")
    assert float(layer.baseline.average.numpy()) == pytest.approx(
        float(reference.get_layer("bits").baseline.average.numpy()), abs=1e-5
    )
    np.testing.assert_array_equal(  # the random-generator state
        layer.seed_generator.state.numpy(),
        reference.get_layer("bits").seed_generator.state.numpy(),
    )
    assert float(resumed.kl_weight.numpy()) == pytest.approx(float(reference.kl_weight.numpy()))
