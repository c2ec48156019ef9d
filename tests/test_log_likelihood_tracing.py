"""`kvi.log_likelihood` traces once per model and settings, partial last batch included."""

import gc
import logging
import warnings
import weakref

import keras
import numpy as np
import pytest

import keras_vi as kvi
from keras_vi import inference
from keras_vi.backend import gradients as backend_gradients

from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _reference(model, x, num_samples, batch_size):
    """The estimate as computed before caching: a fresh compiled function per batch (a fresh
    tf.function on TensorFlow; JAX runs it op by op), no padding."""
    objective = "iwae" if num_samples > 1 else "elbo"
    results = []
    for start in range(0, len(x), batch_size):

        def bound(xb, yb):
            return model.compute_objective(
                xb,
                yb,
                training=False,
                num_samples=num_samples,
                objective=objective,
                kl_weight=keras.ops.convert_to_tensor(1.0, "float32"),
            )["bound"]

        batch = x[start : start + batch_size]
        fresh = backend_gradients.function(bound, jit_compile=True)
        results.append(keras.ops.convert_to_numpy(fresh(batch, batch)))
    return np.concatenate(results)


@pytest.fixture(scope="module")
def repeated_calls(binary_data):
    """Three calls with the same settings: (model, results, log messages, warnings)."""
    keras.utils.set_random_seed(1234)  # module-scoped: set up before the per-test seed
    model = small_vae()
    x = binary_data[:50]  # batches of 16, 16, 16 and a partial 2
    records = _Records()
    logger = logging.getLogger("tensorflow")  # where TensorFlow logs its retracing warnings
    logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = [kvi.log_likelihood(model, x, num_samples=5, batch_size=16) for _ in range(3)]
    finally:
        logger.removeHandler(records)
    return model, results, records.messages, caught


def test_repeated_calls_reuse_one_function_and_draw_fresh_noise(repeated_calls):
    model, results, _, _ = repeated_calls
    assert len(inference._BOUNDS[model]) == 1
    for result in results:
        assert result.shape == (50,) and np.all(np.isfinite(result))
    # Fresh noise on every call (the layers' seed generators advance).
    assert np.abs(results[0] - results[1]).max() > 1e-4


@pytest.mark.backends("tensorflow")  # counts tf.function traces and TF's retracing warnings
def test_repeated_calls_trace_once_and_do_not_warn(repeated_calls):
    model, _, messages, caught = repeated_calls
    functions = list(inference._BOUNDS[model].values())
    assert len(functions) == 1
    assert functions[0].experimental_get_tracing_count() == 1
    assert not [m for m in messages if "retracing" in m]
    assert not [w for w in caught if "retracing" in str(w.message)]


@pytest.mark.parametrize("num_samples", [1, 5])
def test_results_equal_the_unpadded_reference_with_the_same_seed(binary_data, num_samples):
    model = small_vae()
    x = binary_data[:40]  # batches of 16, 16 and a partial 8
    # Weights and seed-generator states.
    state = [keras.ops.convert_to_numpy(v) for v in model.variables]
    cached = kvi.log_likelihood(model, x, num_samples=num_samples, batch_size=16)
    for variable, value in zip(model.variables, state):
        variable.assign(value)
    reference = _reference(model, x, num_samples, 16)
    np.testing.assert_allclose(cached, reference, rtol=1e-6, atol=1e-6)


def _cached_settings(data):
    """Runs log_likelihood with several settings; returns (settings, tracing counts or None
    where the functions are not traced, a weak reference to the model), dropping every
    strong reference to the model on return."""
    model = small_vae()
    x = data[:20]
    kvi.log_likelihood(model, x, num_samples=3, batch_size=8)
    kvi.log_likelihood(model, x, num_samples=3, batch_size=8, jit_compile=False)
    kvi.log_likelihood(model, x, num_samples=4, batch_size=6)
    kvi.log_likelihood(model, x, num_samples=4, batch_size=7)  # another batch size: same trace
    functions = inference._BOUNDS[model]
    settings = sorted((key[0], key[1]) for key in functions)
    counts = [
        f.experimental_get_tracing_count() if hasattr(f, "experimental_get_tracing_count") else None
        for f in functions.values()
    ]
    return settings, counts, weakref.ref(model)


@pytest.fixture(scope="module")
def cached_settings(binary_data):
    keras.utils.set_random_seed(1234)
    return _cached_settings(binary_data)


def test_each_setting_has_its_own_function_and_the_cache_does_not_keep_the_model(
    cached_settings,
):
    settings, _, model_ref = cached_settings
    assert settings == [(3, False), (3, True), (4, True)]
    gc.collect()
    assert model_ref() is None  # a cached function holding the model would keep it alive


@pytest.mark.backends("tensorflow")  # counts tf.function traces
def test_each_setting_is_traced_once(cached_settings):
    _, counts, _ = cached_settings
    assert counts == [1, 1, 1]


def test_bad_arguments_are_named(binary_data):
    model = small_vae()
    with pytest.raises(ValueError, match="`batch_size` must be None or a positive integer, got 0"):
        kvi.log_likelihood(model, binary_data[:4], batch_size=0)
    with pytest.raises(ValueError, match="same number of examples, got 4 and 3"):
        kvi.log_likelihood(model, binary_data[:4], binary_data[:3])
    with pytest.raises(ValueError, match="`model` must be a kvi.VariationalModel"):
        kvi.log_likelihood(keras.Sequential([keras.layers.Dense(1)]), binary_data[:4])
