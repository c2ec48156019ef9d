"""Every estimator and objective trains under jit_compile=True (XLA)."""

import math

import keras
import numpy as np
import pytest

from conftest import estimator_matrix, small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")
CASES = estimator_matrix()


@pytest.mark.parametrize("name,make_latent,width,kwargs", CASES, ids=[c[0] for c in CASES])
def test_estimator_trains_under_xla(binary_data, name, make_latent, width, kwargs):
    model = small_vae(latent=make_latent(), params_width=width, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=True)
    before = [w.copy() for w in model.get_weights()] if model.built else None
    history = model.fit(binary_data[:128], epochs=3, batch_size=32, verbose=0).history
    assert all(math.isfinite(v) for v in history["loss"]), history
    assert history["skipped_steps"][-1] == 0
    assert history["loss"][-1] < history["loss"][0]
    if before is not None:
        assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
