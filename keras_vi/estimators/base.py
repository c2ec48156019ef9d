"""The gradient-estimator contract.

An estimator decides three things for one latent variable:

* how z is drawn (`sample`): with a pathwise gradient or with the gradient stopped;
* what log q(z) enters the objective's value (`log_prob`): all estimators agree on the
  number, but some (STL, DReG) cut parts of its gradient;
* an optional surrogate (`surrogate`): a scalar whose gradient is added to the objective's
  gradient and whose value is removed, so the reported bound is the same for every estimator.

The model builds one scalar, `value + (surrogate - stop_gradient(surrogate))`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


def is_reparameterized(q: tfd.Distribution) -> bool:
    return q.reparameterization_type == tfd.FULLY_REPARAMETERIZED


def path_only_log_prob(q: tfd.Distribution, z: tf.Tensor) -> tf.Tensor:
    """log q(z) whose gradient flows through z only, not through q's parameters.

    Written as log q(z) - (log q(stop z) - stop(log q(stop z))): same value, and the second
    term removes the direct parameter gradient. Works for any q, flows included.
    """
    direct = q.log_prob(tf.stop_gradient(z))
    return q.log_prob(z) - (direct - tf.stop_gradient(direct))


class Estimator:
    """Base class of gradient estimators.

    Subclasses set the class attributes below and override what differs.

    Attributes:
        alias: the string name accepted wherever an estimator is.
        pathwise: z carries a reparameterization gradient.
        needs_path_gradient: the model must provide d log w / dz (DReG).
        requires_objective: "iwae" for multi-sample estimators, else None.
    """

    alias: str = ""
    pathwise: bool = False
    needs_path_gradient: bool = False
    requires_objective: str | None = None
    baseline: Any = None

    def validate(self, q: tfd.Distribution, *, objective: str, num_samples: int) -> None:
        """Raises ValueError when this estimator cannot serve q under this objective."""
        if self.requires_objective is not None and objective != self.requires_objective:
            raise ValueError(
                f"estimator={type(self).__name__}() needs objective={self.requires_objective!r}, "
                f"got objective={objective!r}."
            )
        if self.pathwise and not is_reparameterized(q):
            raise ValueError(
                f"estimator={type(self).__name__}() needs a reparameterizable q, but "
                f"{type(q).__name__} has reparameterization_type="
                f"{q.reparameterization_type}. Use estimator='score_function' (or 'auto')."
            )
        if self.baseline is not None:
            self.baseline.validate(num_samples=num_samples)

    def sample(self, q: tfd.Distribution, seed: tf.Tensor, sample_shape=()) -> tf.Tensor:
        z = q.sample(sample_shape, seed=seed)
        return z if self.pathwise else tf.stop_gradient(z)

    def log_prob(self, q: tfd.Distribution, z: tf.Tensor) -> tf.Tensor:
        return q.log_prob(z)

    def surrogate(self, record, signals) -> tf.Tensor | None:
        """A scalar whose gradient joins the objective's (value discarded), or None."""
        return None

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> Estimator:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
