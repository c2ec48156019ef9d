"""tf.distribute on two logical CPU devices and across two worker processes; mixed precision.

`tf.distribute` is TensorFlow's by nature: these tests run on TensorFlow only (the JAX
backend's data parallelism is tested in test_jax_backend.py). Mixed precision runs on both.
"""

import json
import math
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import keras_vi as kvi

from conftest import estimator_matrix, small_vae

pytestmark = pytest.mark.backends("tensorflow")

tfd = tfp.distributions
ROOT = os.path.join(os.path.dirname(__file__), "..")


_STRATEGY = []


def mirrored():
    """One MirroredStrategy per process: separate instances clash over collective-op keys."""
    if not _STRATEGY:
        _STRATEGY.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _STRATEGY[0]


@keras.saving.register_keras_serializable(package="keras_vi_tests")
def nearly_deterministic_normal(params):
    return tfd.Independent(tfd.Normal(params, 1e-6), 1)


def deterministic_vae():
    inputs = keras.Input((20,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    z = kvi.layers.Latent(nearly_deterministic_normal, prior=None, name="z")(
        keras.layers.Dense(3)(h)
    )
    logits = keras.layers.Dense(20)(z)
    return kvi.VariationalModel(inputs, logits, likelihood="bernoulli")


def test_mirrored_loss_and_gradients_equal_single_device(binary_data):
    """With q of scale 1e-6 the loss is deterministic: replicas must reproduce one device."""
    keras.utils.set_random_seed(0)
    single = deterministic_vae()
    weights = single.get_weights()
    single.compile(optimizer=keras.optimizers.SGD(0.1))
    single_history = single.fit(binary_data, epochs=2, batch_size=64, shuffle=False, verbose=0)
    with mirrored().scope():
        replicated = deterministic_vae()
        replicated.set_weights(weights)
        replicated.compile(optimizer=keras.optimizers.SGD(0.1))
    history = replicated.fit(binary_data, epochs=2, batch_size=64, shuffle=False, verbose=0)
    # Per-example loss, not multiplied or divided by the replica count.
    np.testing.assert_allclose(history.history["loss"], single_history.history["loss"], rtol=1e-5)
    for a, b in zip(single.get_weights(), replicated.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-5)
    evaluated = replicated.evaluate(binary_data, batch_size=64, verbose=0, return_dict=True)
    expected = single.evaluate(binary_data, batch_size=64, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_replicas_draw_independent_noise():
    strategy = mirrored()
    with strategy.scope():
        layer = kvi.layers.NormalLatent(3, seed=1)
        layer.build((None, 6))

    @tf.function
    def draw():
        return strategy.run(lambda: layer(tf.zeros([4, 6])))

    first = [t.numpy() for t in strategy.experimental_local_results(draw())]
    second = [t.numpy() for t in strategy.experimental_local_results(draw())]
    assert not np.allclose(first[0], first[1])  # replicas differ
    assert not np.allclose(first[0], second[0])  # steps differ
    states = [
        v.numpy() for v in strategy.experimental_local_results(layer.seed_generator.state.value)
    ]
    np.testing.assert_array_equal(states[0], states[1])  # the generator stays mirrored


CASES = estimator_matrix()


@pytest.mark.parametrize("name,make_latent,width,kwargs", CASES, ids=[c[0] for c in CASES])
def test_mirrored_trains_every_estimator(binary_data, name, make_latent, width, kwargs):
    with mirrored().scope():
        model = small_vae(latent=make_latent(), params_width=width, **kwargs)
        model.compile(optimizer=keras.optimizers.Adam(0.01))
    history = model.fit(binary_data[:128], epochs=3, batch_size=32, verbose=0).history
    assert all(math.isfinite(v) for v in history["loss"])
    assert history["loss"][-1] < history["loss"][0]


def test_mirrored_moving_average_state_is_finite_and_tracks_the_signal(binary_data):
    with mirrored().scope():
        latent = kvi.layers.BernoulliLatent(6, name="bits")
        model = small_vae(latent=latent, params_width=6)
        model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(binary_data, epochs=2, batch_size=64, verbose=0)
    average = float(latent.baseline.average.numpy())
    assert math.isfinite(average) and average < 0  # it tracks the (negative) ELBO


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_training_two_processes(tmp_path):
    ports = [free_port(), free_port()]
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="3",
            TF_CONFIG=json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            ),
        )
        command = [
            sys.executable,
            os.path.join(ROOT, "examples", "multi_worker.py"),
            "--epochs",
            "3",
            "--steps-per-epoch",
            "5",
            "--out",
            str(tmp_path / f"w{index}.npz"),
        ]
        procs.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=420)
        finally:
            if proc.poll() is None:
                proc.kill()
        outputs.append(out)
        assert proc.returncode == 0, out[-3000:]
    assert "workers: 2" in outputs[0]
    first, second = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert first["loss"][-1] < first["loss"][0]
    for key in first.files:
        np.testing.assert_allclose(first[key], second[key], rtol=1e-6, atol=1e-6)


@pytest.mark.backends("tensorflow", "jax")
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(binary_data, policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = small_vae(num_samples=2)
        model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=True)
        history = model.fit(binary_data, epochs=4, batch_size=64, verbose=0).history
        out = model.compute_objective(binary_data[:8], binary_data[:8], training=False)
        latent = model.get_layer("z")
        z = latent(np.zeros([2, 8], "float32"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(math.isfinite(v) for v in history["loss"])
    assert history["loss"][-1] < history["loss"][0]
    # Activations in half precision, distribution maths and the objective in float32.
    dtype = keras.backend.standardize_dtype
    assert dtype(z.dtype) == keras.mixed_precision.Policy(policy).compute_dtype
    assert dtype(out["elbo"].dtype) == "float32" and dtype(out["y_pred"].dtype) != "float32"
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
