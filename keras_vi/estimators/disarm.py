"""DisARM: antithetic gradients for Bernoulli latents (Dong, Mnih & Tucker 2020; the same
estimator as U2G, Yin et al. 2020)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vi import _scope
from keras_vi.backend import distributions as tfd
from keras_vi.backend import random as backend_random
from keras_vi.estimators.base import Estimator, checks_training_setup, is_joint

__all__ = ["DisARM"]


def _bernoulli_base(q: tfd.Distribution):
    """The `tfd.Bernoulli` inside q (q itself or an `Independent` of one), else None."""
    base = q
    while isinstance(base, tfd.Independent):
        base = base.distribution
    return base if isinstance(base, tfd.Bernoulli) else None


def _pair_count(sample_shape) -> int | None:
    """K / 2 for `kvi.expectation`'s `sample_shape=[K]`, None for any other sample shape."""
    if isinstance(sample_shape, int):
        sample_shape = (sample_shape,)
    if not isinstance(sample_shape, (list, tuple)) or len(sample_shape) != 1:
        return None
    k = sample_shape[0]
    return k // 2 if isinstance(k, int) and k >= 2 and k % 2 == 0 else None


@keras.saving.register_keras_serializable(package="keras_vi")
class DisARM(Estimator):
    """DisARM (Dong, Mnih & Tucker 2020; U2G, Yin et al. 2020): antithetic gradients for
    Bernoulli latents.

    The K samples of an example form K / 2 antithetic pairs: sample k draws
    b = 1[u < sigmoid(a)] from uniforms u, sample k + K / 2 draws b~ = 1[1 - u < sigmoid(a)]
    from the same u. With f the per-sample learning signal (the ELBO's log-weight, as for
    `ScoreFunction`), each pair estimates the gradient with respect to the logits a as
    `1/2 (f(b) - f(b~)) (-1)^b~_i 1[b_i != b~_i] sigmoid(|a_i|)`, averaged over the pairs.
    Unbiased, and at two evaluations per pair usually of lower variance than REINFORCE with
    a leave-one-out baseline. Each sample is still an exact draw from q, so the reported
    ELBO is the usual one.

    Needs a Bernoulli q (`kvi.layers.BernoulliLatent`, `tfd.Bernoulli` or an `Independent`
    of one), `objective="elbo"` and an even `num_samples` >= 2. The two samples of a pair
    must share q's logits: the latent's logits may depend on the input but not on other
    latents' samples drawn in the same step (a hierarchy of latents above it).

    Example:
        >>> z = kvi.layers.BernoulliLatent(16, estimator="disarm")(keras.layers.Dense(16)(h))
        >>> vae = kvi.VariationalModel(x, keras.layers.Dense(784)(z), likelihood="bernoulli",
        ...                            num_samples=2)
    """

    alias = "disarm"

    def validate(self, q: tfd.Distribution, *, objective: Any, num_samples: int) -> None:
        super().validate(q, objective=objective, num_samples=num_samples)
        if is_joint(q) or _bernoulli_base(q) is None:
            raise ValueError(
                "estimator=DisARM() is defined for Bernoulli latents: expected q to be "
                "tfd.Bernoulli or tfd.Independent(tfd.Bernoulli) (e.g. "
                f"kvi.layers.BernoulliLatent), got {type(q).__name__}. Use "
                "estimator='score_function' (or 'auto') for other discrete q."
            )
        if not checks_training_setup():
            return
        if objective is not None and objective != "elbo":
            # Multi-sample bounds (IWAE, Renyi) couple the K samples of an example.
            raise ValueError(
                f"estimator=DisARM() estimates gradients of the ELBO; objective={objective!r} "
                "is not supported (the multi-sample form of DisARM needs the bound of K "
                "independent samples, with the antithetic partners used only in the learning "
                "signal). Use objective='elbo', or estimator='vimco' for the IWAE bound."
            )
        if num_samples < 2 or num_samples % 2:
            raise ValueError(
                "estimator=DisARM() pairs sample k with sample k + K/2 (antithetic draws) "
                f"and needs an even num_samples >= 2, got num_samples={num_samples}."
            )

    def sample(self, q: tfd.Distribution, seed: Any, sample_shape=()) -> Any:
        scope = _scope.current_scope()
        if scope is None or not scope.training:
            return super().sample(q, seed, sample_shape)
        logits = ops.cast(_bernoulli_base(q).logits_parameter(), "float32")
        probs = ops.sigmoid(logits)
        if sample_shape in ((), []):
            # A model's step: K * B rows, k-major, so the first half of the rows holds
            # samples 0 .. K/2 - 1 of every example and the second half their partners.
            if scope.num_samples % 2:
                return super().sample(q, seed, sample_shape)
            shape = ops.shape(logits)
            half = (shape[0] // 2, *shape[1:])
        else:
            # kvi.expectation: sample_shape=[K], the pairs along that axis.
            pairs = _pair_count(sample_shape)
            if pairs is None:
                return super().sample(q, seed, sample_shape)
            half = (pairs, *ops.shape(logits))
            probs = probs[None]
        u = backend_random.uniform(half, seed, "float32")
        uniforms = ops.concatenate([u, 1.0 - u], axis=0)
        return ops.stop_gradient(ops.cast(ops.less(uniforms, probs), q.dtype))

    def surrogate(self, site, signals) -> Any:
        """sum_i stop_gradient(g_i) a_i, averaged over pairs and examples like the ELBO.

        f is held fixed here; its own dependence on the logits (log q(z) in the ELBO's
        log-weight) is differentiated in the objective's value, as for `ScoreFunction`.
        """
        signal = ops.stop_gradient(signals.learning_signal(site))
        logits = ops.cast(_bernoulli_base(site.q).logits_parameter(), "float32")
        z = ops.cast(ops.stop_gradient(site.z), "float32")
        if signals.layout == "samples":
            logits = logits[None]
        else:
            logits = signals.to_samples(logits)
            z = signals.to_samples(z)
        pairs = ops.shape(z)[0] // 2
        b, b_tilde = z[:pairs], z[pairs:]
        f, f_tilde = signal[:pairs], signal[pairs:]
        if signals.layout != "samples":
            logits = logits[:pairs]  # the partners' rows hold the same logits
        signal_rank, rank = len(signal.shape), len(z.shape)
        difference = f - f_tilde
        for _ in range(rank - signal_rank):
            difference = ops.expand_dims(difference, -1)
        # (-1)^b~_i 1[b_i != b~_i] is b_i - b~_i.
        weight = 0.5 * difference * (b - b_tilde) * ops.sigmoid(ops.abs(logits))
        per_pair = ops.stop_gradient(weight) * logits
        if rank > signal_rank:
            per_pair = ops.sum(per_pair, axis=tuple(range(signal_rank, rank)))
        return signals.reduce_samples(per_pair)
