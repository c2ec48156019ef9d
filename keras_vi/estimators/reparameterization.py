"""Pathwise (reparameterization) gradients: plain, sticking-the-landing, doubly reparameterized."""

from __future__ import annotations

import math

import keras
from keras import ops, tree

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
    reparameterized = True


@keras.saving.register_keras_serializable(package="keras_vi")
class StickingTheLanding(Estimator):
    """Roeder et al. (2017): pathwise, with the score term of log q removed.

    The value is the ordinary ELBO; in the gradient, log q(z) is differentiated only through
    z, so the estimator has zero variance when q equals the exact posterior. It needs the
    per-sample log q(z), so the latent's KL is estimated by Monte Carlo (`kl="auto"` and
    `kl="analytic"` are overridden by the one-sample estimate at the layer's own z).

    Unbiased for the ELBO. Under `objective="iwae"` with K > 1 it is biased (Tucker et al.
    2019); use `DoublyReparameterized()` there.

    Example:
        >>> latent = kvi.layers.NormalLatent(16, estimator="stl")
    """

    alias = "stl"
    reparameterized = True
    kl = "sample"

    def log_prob(self, q, z):
        return path_only_log_prob(q, z)


@keras.saving.register_keras_serializable(package="keras_vi")
class DoublyReparameterized(Estimator):
    """DReG (Tucker et al. 2019): the doubly reparameterized gradient of the IWAE bound.

    For q's parameters phi the gradient is sum_k w_k^2 d log w_k / d z_k  d z_k / d phi (w the
    normalised importance weights, log q differentiated through z only), whose signal-to-noise
    ratio grows with K where the plain IWAE gradient's shrinks (Rainforth et al. 2018). The
    model's other parameters keep the ordinary IWAE gradient sum_k w_k grad log w_k.

    It is built from the plain IWAE gradient (which carries w_k on the z path) plus the
    correction sum_k stop((w_k^2 - w_k) d log w_k / d z_k) . z_k; `VariationalModel` provides
    d log w / d z by watching z with a gradient tape during the forward pass. Unbiased.

    Needs `objective="iwae"` and a reparameterizable q (for a joint q, every part; each
    part then needs q's full batch shape). Latents using DReG must not depend on
    one another's samples (a ValueError says so), and layers that mix the rows of a batch
    (BatchNormalization in training mode) make d log w_k / d z_k include cross-sample terms.

    Example:
        >>> z = kvi.layers.NormalLatent(16, estimator="dreg")(keras.layers.Dense(32)(h))
        >>> vae = kvi.VariationalModel(x, keras.layers.Dense(784)(z), likelihood="bernoulli",
        ...                            objective="iwae", num_samples=16)
    """

    alias = "dreg"
    reparameterized = True
    kl = "sample"
    objective = "iwae"

    def log_prob(self, q, z):
        return path_only_log_prob(q, z)

    def surrogate(self, site, signals):
        # d sum(log w) / dz, shaped like z (part by part for a joint q).
        gradients = tree.flatten(signals.path_gradient(site))
        weights = ops.stop_gradient(signals.normalized_weights)
        coefficient = weights * weights - weights  # [K, B] (or [S, ...] in kvi.expectation)
        parts = tree.flatten(site.z)
        event_ranks = tree.flatten(
            tree.map_shape_structure(lambda shape: len(tuple(shape)), site.q.event_shape)
        )
        corrections = [
            _path_correction(coefficient, z, gradient, event_rank, index)
            for index, (z, gradient, event_rank) in enumerate(zip(parts, gradients, event_ranks))
        ]
        per_sample = corrections[0]
        for correction in corrections[1:]:
            per_sample = per_sample + correction
        return signals.reduce_samples(signals.to_samples(per_sample))


def _num_elements(shape) -> int | None:
    dims = tuple(shape)
    return None if any(d is None for d in dims) else math.prod(dims)


def _path_correction(coefficient, z, gradient, event_rank: int, index: int):
    """stop((w^2 - w) d log w / dz) . z for one part of z, summed over its event axes.

    Returns a tensor of z's sample-and-batch shape (the model's K * B rows).
    """
    rank = len(z.shape)
    sample_rank = rank - event_rank
    sample_shape = tuple(z.shape[:sample_rank])
    num_weights = _num_elements(coefficient.shape)
    num_rows = _num_elements(sample_shape)
    if num_weights is not None and num_rows is not None and num_weights != num_rows:
        raise ValueError(
            "estimator=DoublyReparameterized() needs every part of q's sample to carry one "
            f"value per importance weight ({num_weights}, log-weights of shape "
            f"{tuple(coefficient.shape)}), but part {index} of z has sample and batch shape "
            f"{sample_shape}. Give every part of a joint q the full batch shape."
        )
    coefficient = ops.reshape(coefficient, ops.shape(z)[:sample_rank] + (1,) * event_rank)
    correction = ops.stop_gradient(coefficient * ops.cast(gradient, coefficient.dtype))
    return ops.sum(correction * ops.cast(z, correction.dtype), axis=tuple(range(sample_rank, rank)))
