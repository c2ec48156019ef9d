"""Models saved by keras_vi 0.1.0 (tests/data) must keep loading in every later version.

The fixtures are written once by tests/data/make_fixture.py; never regenerate them to make this
test pass: a failure here means a saved user model would no longer load. One was written with
the oldest Keras keras_vi supports (3.10) and must load in every supported Keras; one with Keras
3.15, which loads from Keras 3.15 on. A file written by a newer Keras can fail in an older one
(Keras 3.15 writes initializer arguments older versions refuse); its weights file still loads
into the rebuilt model in any supported Keras, which is what the README tells users to do.
"""

import glob
import json
import os
import sys
import zipfile

import keras
import numpy as np
import pytest

import keras_vi as kvi

pytestmark = pytest.mark.backends("tensorflow", "jax")

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXTURES = sorted(glob.glob(os.path.join(DATA, "vae_v0_1_0_keras*.keras")))
KERAS_VERSION = tuple(int(part) for part in keras.__version__.split(".")[:2])


def _written_by(path):
    with zipfile.ZipFile(path) as archive:
        version = json.loads(archive.read("metadata.json"))["keras_version"]
    return tuple(int(part) for part in version.split(".")[:2])


def _loadable(path):
    return _written_by(path) <= KERAS_VERSION


def test_fixtures_cover_the_oldest_supported_keras():
    assert [_written_by(path) for path in FIXTURES] == [(3, 10), (3, 15)]


@pytest.fixture(
    scope="module",
    params=[p for p in FIXTURES if _loadable(p)],
    ids=lambda p: os.path.basename(p),
)
def saved(request):
    model = keras.models.load_model(request.param)
    expected = np.load(request.param.replace(".keras", ".npz"))
    return model, expected


@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
def test_weights_file_loads_into_the_rebuilt_model(path):
    """What a user does with a file from a newer Keras: rebuild in code, load the weights."""
    sys.path.insert(0, DATA)
    try:
        from make_fixture import build
    finally:
        sys.path.remove(DATA)
    model = build()
    model.load_weights(path.replace(".keras", ".weights.h5"))
    expected = np.load(path.replace(".keras", ".npz"))
    for i, variable in enumerate(model.weights):
        np.testing.assert_array_equal(variable.numpy(), expected[f"weight_{i}"], variable.path)


@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
def test_file_loads_unless_a_newer_keras_wrote_it(path):
    if _loadable(path):
        assert isinstance(keras.models.load_model(path), kvi.VariationalModel)
    else:  # what the README says: upgrade Keras, or rebuild the model and load the weights
        with pytest.raises((TypeError, ValueError)):
            keras.models.load_model(path)


def test_saved_model_config_round_trips(saved):
    model, _ = saved
    assert isinstance(model, kvi.VariationalModel)
    assert model.num_samples == 2 and model.objective == "elbo"
    assert model.free_bits == pytest.approx(0.01) and model.num_examples == 64
    assert isinstance(model._kl_schedule, kvi.schedules.Linear)
    assert model._kl_schedule.warmup_steps == 10
    bits = model.get_layer("bits")
    assert isinstance(bits.resolved_estimator, kvi.estimators.ScoreFunction)
    assert bits.resolved_estimator.baseline.decay == pytest.approx(0.8)
    assert model.get_layer("z").kl == "analytic"
    assert isinstance(model.get_layer("flipout"), kvi.layers.DenseFlipout)


def test_saved_weights_and_state(saved):
    model, expected = saved
    weights = [expected[f"weight_{i}"] for i in range(len(model.weights))]
    for variable, value in zip(model.weights, weights):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    assert float(model.kl_weight.numpy()) == pytest.approx(float(expected["kl_weight"]))
    average = model.get_layer("bits").baseline.average.numpy()
    assert float(average) == pytest.approx(float(expected["baseline_average"]))


def test_saved_model_computes_the_same_numbers(saved):
    model, expected = saved
    latent = model.get_layer("z")
    dense = model.get_layer("zp")
    params = keras.ops.convert_to_numpy(dense(expected["h"]))
    # The weights are equal (above), but backends order the sums of a float32 product
    # differently: a sum of K terms is exact to K * eps * (the sum of the terms' magnitudes).
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in dense.weights)
    magnitude = np.abs(expected["h"]) @ np.abs(kernel) + np.abs(bias)
    bound = kernel.shape[0] * np.finfo("float32").eps * magnitude
    assert (np.abs(params - expected["z_params"]) <= bound).all()
    q = latent.make_distribution(params)
    kl = keras.ops.convert_to_numpy(q.kl_divergence(latent.prior_distribution(q)))
    np.testing.assert_allclose(kl, expected["z_kl"], rtol=1e-5)


def test_saved_model_keeps_training(saved):
    model, expected = saved
    x = (np.random.default_rng(0).random((64, 12)) > 0.5).astype("float32")
    history = model.fit(x, epochs=1, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert int(model.optimizer.iterations.numpy()) == int(expected["iterations"]) + 4
