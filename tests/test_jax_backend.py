"""What the JAX backend adds: `kvi.expectation` inside `jax.grad`, data parallelism over two
devices with `keras.distribution.DataParallel`, and `.keras` files that move between
TensorFlow and JAX."""

import contextlib
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vi as kvi

from conftest import estimator_matrix, small_vae

pytestmark = pytest.mark.backends("jax")

tfd = kvi.distributions
ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_expectation_inside_jax_grad_with_an_integer_seed():
    """d/d(loc, scale) E[(z - 3)^2] under N(loc, scale) is (2 (loc - 3), 2 scale) exactly."""
    import jax

    def value(params, estimator, seed):
        loc, scale = params
        return kvi.expectation(
            lambda z: (z - 3.0) ** 2,
            tfd.Normal(loc, scale),
            estimator=estimator,
            num_samples=4000,
            seed=seed,
        )

    params = (1.0, 2.0)
    exact = np.array([2 * (1.0 - 3.0), 2 * 2.0])
    reparameterized = np.array(jax.grad(value)(params, "reparameterization", 0))
    # Per-sample reparameterized gradients: (2 (z - 3), 2 (z - 3) eps); their standard errors.
    z = 1.0 + 2.0 * np.random.default_rng(0).standard_normal(100_000)
    eps = (z - 1.0) / 2.0
    se = np.array([np.std(2 * (z - 3)), np.std(2 * (z - 3) * eps)]) / np.sqrt(4000)
    assert np.all(np.abs(reparameterized - exact) < 4 * se), (reparameterized, exact, se)
    # The same seed gives the same gradient; another seed another one.
    np.testing.assert_array_equal(reparameterized, jax.grad(value)(params, "reparameterization", 0))
    assert not np.allclose(reparameterized, jax.grad(value)(params, "reparameterization", 1))
    # Under jit too, with the seed as a traced argument.
    jitted = jax.jit(jax.grad(value), static_argnums=1)
    np.testing.assert_allclose(jitted(params, "reparameterization", 0), reparameterized, rtol=1e-5)
    score = np.array(jax.grad(value)(params, "score_function", 0))
    score_se = np.array([np.std((z - 3) ** 2 * eps / 2.0), np.std((z - 3) ** 2 * (eps**2 - 1) / 2)])
    assert np.all(np.abs(score - exact) < 4 * score_se / np.sqrt(4000)), (score, exact)


def test_dreg_expectation_inside_jax_grad_is_zero_at_the_exact_posterior():
    """With q the exact posterior every importance weight is p(x): the IWAE bound is exact
    and its DReG gradient zero (the docstring example of `kvi.expectation`, on JAX)."""
    import jax

    x = 2.0

    def log_joint(z):
        return tfd.Normal(0.0, 1.0).log_prob(z) + tfd.Normal(z, 1.0).log_prob(x)

    def bound(loc):
        return kvi.expectation(
            log_joint,
            tfd.Normal(loc, 0.5**0.5),
            estimator="dreg",
            num_samples=16,
            objective="iwae",
            seed=0,
        )

    value, gradient = jax.value_and_grad(bound)(1.0)
    assert float(value) == pytest.approx(float(tfd.Normal(0.0, 2.0**0.5).log_prob(x)), abs=1e-5)
    assert abs(float(gradient)) < 1e-5
    # Away from the posterior the DReG gradient points back to it.
    assert float(jax.grad(bound)(0.0)) > 0


def _data_parallel():
    import jax

    devices = jax.devices("cpu")
    assert len(devices) == 2, "conftest asks XLA for two CPU devices"
    return keras.distribution.DataParallel(devices=devices)


def _deterministic_vae(seed=0):
    """Normal q of scale 1e-6: the loss is deterministic, so both runs must agree."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((20,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z = kvi.layers.NormalLatent(3, name="z")(keras.layers.Dense(6, bias_initializer="zeros")(h))
    logits = keras.layers.Dense(20)(z)
    return kvi.VariationalModel(inputs, logits, likelihood="bernoulli")


def test_data_parallel_matches_one_device(binary_data):
    single = _deterministic_vae()
    weights = single.get_weights()
    single.compile(optimizer=keras.optimizers.SGD(0.1))
    expected = single.fit(binary_data, epochs=2, batch_size=64, shuffle=False, verbose=0)
    keras.distribution.set_distribution(_data_parallel())
    try:
        parallel = _deterministic_vae()
        parallel.set_weights(weights)
        parallel.compile(optimizer=keras.optimizers.SGD(0.1))
        history = parallel.fit(binary_data, epochs=2, batch_size=64, shuffle=False, verbose=0)
        evaluated = parallel.evaluate(binary_data, batch_size=64, verbose=0, return_dict=True)
    finally:
        keras.distribution.set_distribution(None)
    # The same per-example bound (not scaled by the device count), the same weights.
    np.testing.assert_allclose(
        history.history["loss"], expected.history["loss"], rtol=2e-2, atol=0.0
    )
    for a, b in zip(single.get_weights(), parallel.get_weights()):
        np.testing.assert_allclose(a, b, atol=5e-3)
    reference = single.evaluate(binary_data, batch_size=64, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(reference["loss"], rel=2e-2)


CASES = estimator_matrix()


@pytest.mark.parametrize("name,make_latent,width,kwargs", CASES, ids=[c[0] for c in CASES])
def test_data_parallel_trains_every_estimator(binary_data, name, make_latent, width, kwargs):
    keras.distribution.set_distribution(_data_parallel())
    try:
        model = small_vae(latent=make_latent(), params_width=width, **kwargs)
        model.compile(optimizer=keras.optimizers.Adam(0.01))
        history = model.fit(binary_data[:128], epochs=3, batch_size=32, verbose=0).history
    finally:
        keras.distribution.set_distribution(None)
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]


_SAVE_AND_DESCRIBE = """
import json, os, sys
import keras, numpy as np
import keras_vi as kvi
sys.path.insert(0, {tests!r})
from conftest import small_vae
keras.utils.set_random_seed(0)
latent = kvi.layers.BernoulliLatent(6, name="z")  # a moving-average baseline: state to keep
model = small_vae(latent=latent, params_width=6, kl_weight=kvi.schedules.Linear(50))
model.compile(optimizer=keras.optimizers.Adam(0.01))
x = (np.random.default_rng(0).random((128, 20)) < 0.5).astype("float32")
model.fit(x, epochs=2, batch_size=32, verbose=0)
model.save({path!r})
print(json.dumps(dict(
    backend=keras.backend.backend(),
    weights=[w.tolist() for w in model.get_weights()],
    kl_weight=float(keras.ops.convert_to_numpy(model.kl_weight)),
    baseline=[float(keras.ops.convert_to_numpy(v)) for v in latent.baseline.variables],
)))
"""

_LOAD_DESCRIBE_AND_TRAIN = """
import json, sys
import keras, numpy as np
import keras_vi as kvi
sys.path.insert(0, {tests!r})
import conftest  # registers what the saved model names
model = keras.saving.load_model({path!r})
latent = model.get_layer("z")
description = dict(
    backend=keras.backend.backend(),
    weights=[w.tolist() for w in model.get_weights()],
    kl_weight=float(keras.ops.convert_to_numpy(model.kl_weight)),
    baseline=[float(keras.ops.convert_to_numpy(v)) for v in latent.baseline.variables],
)
x = (np.random.default_rng(1).random((64, 20)) < 0.5).astype("float32")
description["loss_after"] = model.fit(x, epochs=1, batch_size=32, verbose=0).history["loss"][-1]
print(json.dumps(description))
"""


def _run(code: str, backend: str) -> list:
    """Runs `code` under `backend` and gives the JSON lines it printed: in this process when
    `backend` is the active one, in a fresh process otherwise (a TensorFlow import and the
    first steps' tracing, about 25 s here, so callers run all they need in one)."""
    if backend == keras.backend.backend():
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(code, {})
        printed = output.getvalue()
    else:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("XLA_FLAGS", None)
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
        )
        assert result.returncode == 0, result.stderr[-3000:]
        printed = result.stdout
    return [json.loads(line) for line in printed.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def moved_files(tmp_path_factory):
    """{(saved on, loaded on): (what the saving backend described, what the loading one
    did)} for both directions, with one process of the other backend for both."""
    here = keras.backend.backend()
    there = "tensorflow" if here == "jax" else "jax"
    folder = tmp_path_factory.mktemp("moved")
    tests = os.path.dirname(os.path.abspath(__file__))
    path = {backend: str(folder / f"saved_on_{backend}.keras") for backend in (here, there)}

    def save(backend):
        return _SAVE_AND_DESCRIBE.format(tests=tests, path=path[backend])

    def load(backend):
        return _LOAD_DESCRIBE_AND_TRAIN.format(tests=tests, path=path[backend])

    (saved_here,) = _run(save(here), here)
    saved_there, loaded_there = _run(save(there) + load(here), there)
    (loaded_here,) = _run(load(there), here)
    return {(here, there): (saved_here, loaded_there), (there, here): (saved_there, loaded_here)}


@pytest.mark.parametrize("saved_on,loaded_on", [("tensorflow", "jax"), ("jax", "tensorflow")])
def test_keras_files_move_between_backends(moved_files, saved_on, loaded_on):
    """The same weights, KL weight (a schedule's current value) and baseline state, and the
    loaded model trains on."""
    saved, loaded = moved_files[saved_on, loaded_on]
    assert saved["backend"] == saved_on and loaded["backend"] == loaded_on
    assert len(loaded["weights"]) == len(saved["weights"])
    for a, b in zip(saved["weights"], loaded["weights"]):
        np.testing.assert_array_equal(np.asarray(a, "float32"), np.asarray(b, "float32"))
    assert loaded["kl_weight"] == saved["kl_weight"] and 0.0 < saved["kl_weight"] < 1.0
    assert loaded["baseline"] == saved["baseline"] and saved["baseline"][0] != 0.0
    assert np.isfinite(loaded["loss_after"])


def test_a_failed_fit_leaves_a_working_model(binary_data):
    """Keras's JAX fit detaches the variables while it runs; a step refused while it is
    traced must not leave a model that cannot predict or train any more."""
    model = small_vae()
    model.compile(optimizer="adam")
    model.fit(binary_data[:64], batch_size=32, epochs=1, verbose=0)
    weights = [np.array(w) for w in model.trainable_weights]
    with pytest.raises(ValueError):
        model.fit(np.zeros((32, 21), "float32"), epochs=1, verbose=0, validate_data=False)
    for before, after in zip(weights, model.trainable_weights):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(after))
    assert model.predict(binary_data[:2], verbose=0).shape == (2, 20)
    history = model.fit(binary_data[:64], batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_step_logs_leave_a_compiled_step_as_one_array():
    """The float scalars of a step's logs are stacked into one output array and read back
    together; other entries, and entries replaced after the logs were made, go as they are."""
    import jax
    import jax.numpy as jnp

    from keras_vi.backend.jax.logs import StepLogs

    @jax.jit
    def step(x):
        logs = StepLogs({"sum": x.sum(), "mean": x.mean(), "values": x, "count": jnp.int32(4)})
        logs["max"] = x.max()  # added after: carried as itself
        logs.update({"sum": x.min()})  # replaced: the new value, not the stacked one
        return logs

    logs = step(jnp.arange(4.0))
    assert list(logs) == ["sum", "mean", "values", "count", "max"]
    # One array for "mean" (the stacked scalars), then "sum", "values", "count", "max".
    assert len(jax.tree_util.tree_leaves(logs)) == 5
    as_floats = {name: float(value) for name, value in logs.items() if name != "values"}
    assert as_floats == {"sum": 0.0, "mean": 1.5, "count": 4.0, "max": 3.0}
    np.testing.assert_array_equal(logs["values"], [0.0, 1.0, 2.0, 3.0])
    assert np.asarray(logs["mean"]) == np.float32(1.5)
    assert f"{logs['mean']:.2f}" == "1.50" and repr(logs["mean"]) == "1.5"
    # Into and out of a compiled function again: the same entries.
    again = jax.jit(lambda logs: {name: value * 2 for name, value in logs.items()})(logs)
    assert float(again["mean"]) == 3.0 and float(again["sum"]) == 0.0
    # Outside a compiled step nothing is stacked: the values are the arrays given.
    value = jnp.float32(2.0)
    assert StepLogs({"loss": value})["loss"] is value


def test_fit_logs_are_the_step_metrics(binary_data):
    """What callbacks see after each step (read from the stacked logs) is the metrics'
    values, with or without a batch-end hook (Keras reads logs in a thread without one)."""

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.logs = []

        def on_train_batch_end(self, batch, logs=None):
            self.logs.append(dict(logs))

    for recorder in (Recorder(), None):
        keras.utils.set_random_seed(0)
        model = small_vae()
        model.compile(optimizer="adam")
        callbacks = [recorder] if recorder else []
        history = model.fit(
            binary_data, batch_size=64, epochs=2, verbose=0, shuffle=False, callbacks=callbacks
        ).history
        metrics = {name: float(value) for name, value in model.get_metrics_result().items()}
        for name in ("loss", "elbo", "nll", "kl", "kl/z", "kl_weight"):
            assert history[name][-1] == pytest.approx(metrics[name], rel=1e-6), name
            assert isinstance(history[name][-1], float)
        assert history["skipped_steps"] == [0.0, 0.0]
        if recorder:
            assert len(recorder.logs) == 8
            last = recorder.logs[-1]
            assert all(isinstance(value, float) for value in last.values())
            assert {name: last[name] for name in metrics} == pytest.approx(metrics, rel=1e-6)
            first_epoch = {name: history[name][0] for name in metrics}
            assert {name: recorder.logs[3][name] for name in metrics} == pytest.approx(
                first_epoch, rel=1e-6
            )


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: keras.optimizers.Adam(0.1),
        lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        lambda: keras.optimizers.AdamW(0.1, weight_decay=0.05),
        lambda: keras.optimizers.Adam(0.1, use_ema=True, ema_overwrite_frequency=2),
        lambda: keras.optimizers.Adam(0.1, gradient_accumulation_steps=2),
    ],
    ids=["adam", "sgd-nesterov", "adamw", "adam-ema", "adam-accumulation"],
)
def test_a_conditional_update_is_the_optimizers_own_or_nothing(make_optimizer):
    """The step's update (a select at each write the optimizer makes) gives exactly what
    `stateless_apply` gives when the step is finite, and every value untouched when not."""
    import jax.numpy as jnp

    from keras_vi.backend.jax.trainer import _apply_if

    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in ((3, 2), (2,))]
    optimizer = make_optimizer()
    optimizer.build(variables)
    values = [v.value for v in variables]
    slots = [v.value for v in optimizer.variables]
    for _ in range(3):  # through the accumulation and EMA-overwrite steps
        grads = [jnp.asarray(rng.normal(size=v.shape).astype("float32")) for v in variables]
        expected = optimizer.stateless_apply(slots, grads, values)
        skipped = _apply_if(optimizer, jnp.bool_(False), grads, variables, values, slots)
        for got, before in zip([*skipped[0], *skipped[1]], [*values, *slots]):
            np.testing.assert_array_equal(got, before)
        values, slots = _apply_if(optimizer, jnp.bool_(True), grads, variables, values, slots)
        for got, want in zip([*values, *slots], [*expected[0], *expected[1]]):
            np.testing.assert_array_equal(got, want)


def test_an_optimizer_write_outside_its_variables_is_refused():
    """A JAX step carries the weights and `optimizer.variables` only; an optimizer that writes
    any other variable would lose that write, so the update refuses it, naming the variable."""
    import jax.numpy as jnp

    from keras_vi.backend.jax.trainer import _apply_if

    untracked = keras.Variable(0.0, name="updates_seen")

    class CountingSGD(keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            untracked.assign(untracked + 1.0)
            super().update_step(gradient, variable, learning_rate)

    weight = keras.Variable(np.ones(2, "float32"))
    optimizer = CountingSGD(0.1)
    optimizer.build([weight])
    slots = [v.value for v in optimizer.variables]
    with pytest.raises(ValueError, match=r"wrote variable '.*updates_seen'.*neither"):
        _apply_if(optimizer, jnp.bool_(True), [jnp.ones(2)], [weight], [weight.value], slots)
