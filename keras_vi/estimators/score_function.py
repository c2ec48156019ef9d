"""Score-function (REINFORCE) gradients."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vi import _serialization
from keras_vi.estimators import baselines as baselines_lib
from keras_vi.estimators.base import Estimator


@keras.saving.register_keras_serializable(package="keras_vi")
class ScoreFunction(Estimator):
    """REINFORCE: grad E_q[f] = E_q[(f(z) - b) grad log q(z)].

    Works for any q, discrete and joint distributions included. The learning signal f is
    the per-sample objective (ELBO) or the bound of the example (IWAE); a baseline b reduces
    variance without bias.

    Args:
        baseline: None, or a `keras_vi.estimators.baselines.Baseline`: `MovingAverage(decay)`,
            `LeaveOneOut()` (needs `num_samples >= 2`, objective "elbo"), or
            `Learned(network, centering=MovingAverage())` (NVIL).

    Example:
        >>> est = kvi.estimators.ScoreFunction(
        ...     baseline=kvi.estimators.baselines.MovingAverage(0.9))
        >>> latent = kvi.layers.CategoricalLatent(10, estimator=est)
    """

    alias = "score_function"

    def __init__(self, baseline=None):
        self.baseline = baselines_lib.get(baseline)

    def learning_signal(self, site, signals) -> Any:
        return signals.learning_signal(site)

    def surrogate(self, site, signals):
        signal = ops.stop_gradient(self.learning_signal(site, signals))
        auxiliary = None
        if self.baseline is not None:
            signal, auxiliary = self.baseline.apply(signal, site.inputs, signals.training)
            signal = ops.stop_gradient(signal)
        log_q = signals.score_log_prob(site)
        term = signals.reduce_samples(signal * log_q)
        if auxiliary is None:
            return term
        # The auxiliary objective (training a learned baseline) is to be maximised; flip it
        # when the caller minimises the value (kvi.expectation(..., maximize=False)).
        return term + (auxiliary if getattr(signals, "maximize", True) else -auxiliary)

    def __repr__(self) -> str:
        return f"ScoreFunction(baseline={self.baseline!r})"

    def get_config(self):
        baseline = self.baseline
        return {
            "baseline": None
            if baseline is None
            else _serialization.serialize(baseline, "baseline", "ScoreFunction")
        }
