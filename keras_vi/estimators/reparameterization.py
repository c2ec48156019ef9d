"""Pathwise (reparameterization) gradients."""

from __future__ import annotations

import keras

from keras_vi.estimators.base import Estimator, path_only_log_prob


@keras.saving.register_keras_serializable(package="keras_vi")
class Reparameterization(Estimator):
    """The pathwise estimator: z = g(eps; phi), gradients flow through the sample.

    Needs a fully reparameterized q (Normal, flows on a Normal base, relaxed categoricals);
    raises a ValueError naming q's type otherwise.

    Example:
        >>> latent = kvi.layers.NormalLatent(16, estimator=kvi.estimators.Reparameterization())
    """

    alias = "reparameterization"
    pathwise = True


@keras.saving.register_keras_serializable(package="keras_vi")
class StickingTheLanding(Estimator):
    """Roeder et al. (2017): pathwise, with the score term of log q removed.

    The value is the ordinary ELBO; in the gradient, log q(z) is differentiated only through
    z, so the estimator has zero variance when q equals the exact posterior. It needs the
    per-sample log q(z), so the latent's KL is estimated by Monte Carlo.

    Example:
        >>> latent = kvi.layers.NormalLatent(16, estimator="stl")
    """

    alias = "stl"
    pathwise = True

    def log_prob(self, q, z):
        return path_only_log_prob(q, z)
