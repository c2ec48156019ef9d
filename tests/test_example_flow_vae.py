"""The flow-posterior VAE and the two-stochastic-layer VAE/IWAE examples run (tiny settings)."""

import math
import os
import sys

import keras
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

pytestmark = pytest.mark.backends("tensorflow", "jax")

# Without XLA, TensorFlow still runs a traced graph (and traces faster than XLA compiles),
# but JAX runs op by op, far slower.
JIT = keras.backend.backend() == "jax"


def test_flow_vae_example_smoke():
    import flow_vae

    results = flow_vae.main(
        epochs=1,
        hidden=32,
        latent=2,
        num_flows=2,
        flow_hidden=4,
        importance_samples=10,
        num_train=256,
        num_test=100,
        jit_compile=JIT,
    )
    assert set(results) == {"normal", "flow"}
    for r in results.values():
        assert all(math.isfinite(v) for v in r.values())
        # The only latent's KL is reported under its name, and a positive KL was learnt.
        assert r["test_kl_z"] == pytest.approx(r["test_kl"], rel=1e-5) and r["test_kl"] > 0
        # Importance sampling tightens the bound: the log p(x) estimate is above the ELBO
        # (by 0.8-1.1 nats here, against a standard error of the test mean of 0.1).
        assert r["test_elbo"] < r["test_log_likelihood"] < 0
        assert r["gap"] == pytest.approx(r["test_log_likelihood"] - r["test_elbo"])
    # The flow's IAF blocks are trained weights of the model.
    assert results["flow"]["num_params"] > results["normal"]["num_params"]


def test_two_layer_vae_example_smoke():
    import two_layer_vae

    results = two_layer_vae.main(
        checkpoints=(1, 2),
        k=3,
        units=(4, 2),
        hidden=(32, 8),
        importance_samples=20,
        num_train=256,
        num_test=100,
        jit_compile=JIT,
    )
    assert set(results) == {"VAE", "IWAE (k=3)"}
    for rows in results.values():
        assert [r["epoch"] for r in rows] == [1, 2]
        for r in rows:
            assert all(math.isfinite(v) for v in r.values())
            # Both latents' KL terms are reported, each positive (the conditional prior of
            # z1 given z2 included).
            assert r["kl/z1"] > 0 and r["kl/z2"] > 0
            assert r["kl"] == pytest.approx(r["kl/z1"] + r["kl/z2"], rel=1e-5)
            # ELBO <= IWAE-3 <= IWAE-20 in expectation; each gap is 0.7-4 nats here.
            assert r["test_elbo"] < r["test_iwae3"] < r["test_log_likelihood"] < 0
        assert rows[1]["train_seconds"] >= rows[0]["train_seconds"]
