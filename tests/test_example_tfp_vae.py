"""TFP's probabilistic-layers VAE tutorial, ported (examples/tfp_vae.py), at tiny settings."""

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

pytestmark = pytest.mark.backends("tensorflow", "jax")


def test_tfp_vae_example_trains_and_reconstructs():
    import tfp_vae

    summary = tfp_vae.main(
        epochs=2,
        num_train=128,
        num_test=32,
        batch_size=64,
        encoded_size=2,
        base_depth=2,
        verbose=0,
    )
    losses = summary["loss_history"] + summary["val_loss_history"]
    assert len(summary["loss_history"]) == 2 and all(math.isfinite(v) for v in losses)
    # Training lowers the negative ELBO, on the training batches and on the fixed
    # validation pixels alike (a model that does not learn stays near 784 log 2 = 543).
    assert summary["loss_history"][-1] < summary["loss_history"][0]
    assert summary["val_loss_history"][-1] < summary["val_loss_history"][0]
    # The reported loss is the bound's two terms: NLL of the pixels plus the latent's KL.
    assert summary["val_loss"] == pytest.approx(summary["val_nll"] + summary["val_kl"], rel=1e-5)
    recon = summary["reconstructions"]
    assert recon.shape == (10, 28, 28, 1)
    assert np.all((recon > 0.0) & (recon < 1.0))  # Bernoulli means from the 784 logits
