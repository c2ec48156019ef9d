"""A Concrete (relaxed one-hot categorical) latent layer (Maddison et al. 2017)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vi import priors
from keras_vi.backend import distributions as tfd
from keras_vi.layers.latent import CategoricalLatent, Latent

__all__ = ["RelaxedCategoricalLatent", "RelaxedUniform"]


def _check_temperature(value, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}: `{name}` must be a positive number, got {value!r}.")
    return float(value)


@keras.saving.register_keras_serializable(package="keras_vi")
class RelaxedUniform(priors.Prior):
    """The Concrete distribution with equal class odds, in log space, over q's event shape.

    The prior of `RelaxedCategoricalLatent`: ExpRelaxedOneHotCategorical(temperature,
    logits=0). Densities of the log-space sample are used on both sides of the KL, which is
    the same KL as on the simplex and numerically stable at low temperatures.

    Args:
        temperature: the prior's temperature (Maddison et al. suggest a prior temperature
            of about 1/2 to 2/3).

    Example:
        >>> latent = kvi.layers.RelaxedCategoricalLatent(
        ...     10, temperature=0.67, prior=kvi.layers.RelaxedUniform(0.5))
    """

    def __init__(self, temperature: float = 0.5):
        self.temperature = _check_temperature(temperature, "temperature", "RelaxedUniform")

    def __call__(self, q):
        shape = priors._known_shape(q.event_shape)
        if shape is None:
            raise ValueError(
                f"RelaxedUniform: q's event shape {q.event_shape} must be fully known."
            )
        # TFP keeps a dtype given as a string ("float32") as is.
        dtype = keras.backend.standardize_dtype(q.dtype)
        base = tfd.ExpRelaxedOneHotCategorical(
            ops.convert_to_tensor(self.temperature, dtype), logits=ops.zeros(shape, dtype)
        )
        return tfd.Independent(base, len(shape) - 1) if len(shape) > 1 else base

    def get_config(self):
        return {"temperature": self.temperature}


@keras.saving.register_keras_serializable(package="keras_vi")
class RelaxedCategoricalLatent(CategoricalLatent):
    """Categorical latents relaxed to the Concrete distribution, trained pathwise.

    q is the Concrete (Gumbel-softmax) distribution itself, not a categorical: it is fully
    reparameterized, so `"auto"` picks `Reparameterization`, and its KL to the relaxed prior
    is estimated by Monte Carlo in log space (Maddison et al. 2017), so both `"elbo"` and
    `"iwae"` are proper bounds *of the relaxed model*. The layer returns points on the
    simplex (soft one-hots). Compare `CategoricalLatent(estimator=GumbelSoftmax(...))`, which
    keeps a discrete model and uses the relaxation only for the gradient.

    Args:
        num_classes: classes per variable.
        temperature: q's temperature (> 0); lower is closer to one-hot and noisier.
        num_variables: None for one variable (input width `num_classes`), or V independent
            variables (input width and output width `V * num_classes`).
        prior: default `RelaxedUniform(prior_temperature)`; any prior over the log-space
            sample of matching event shape.
        prior_temperature: the default prior's temperature (defaults to `temperature`).

    Example:
        >>> z = kvi.layers.RelaxedCategoricalLatent(10, temperature=0.5, num_variables=20)(
        ...     keras.layers.Dense(200)(h))
    """

    reparameterized = True

    def __init__(
        self,
        num_classes: int,
        temperature: float = 0.5,
        num_variables: int | None = None,
        prior: Any = "relaxed_uniform",
        prior_temperature: float | None = None,
        **kwargs,
    ):
        owner = "RelaxedCategoricalLatent"
        temperature = _check_temperature(temperature, "temperature", owner)
        if prior_temperature is not None:
            prior_temperature = _check_temperature(prior_temperature, "prior_temperature", owner)
        if isinstance(prior, str) and prior == "relaxed_uniform":
            prior = RelaxedUniform(temperature if prior_temperature is None else prior_temperature)
        super().__init__(num_classes, num_variables=num_variables, prior=prior, **kwargs)
        self.temperature = temperature
        self.prior_temperature = prior_temperature

    def make_distribution(self, inputs):
        logits = self._logits(inputs)
        temperature = ops.convert_to_tensor(self.temperature, "float32")
        q = tfd.ExpRelaxedOneHotCategorical(temperature, logits=logits)
        return q if self.num_variables is None else tfd.Independent(q, 1)

    def call(self, inputs, training=None, prior_params=None):
        # q lives in log space (stable densities); the layer outputs the simplex point.
        z = Latent.call(self, inputs, training=training, prior_params=prior_params)
        return self._flatten(ops.exp(z))

    def get_config(self):
        config = super().get_config()
        return {
            **config,
            "temperature": self.temperature,
            "prior_temperature": self.prior_temperature,
        }
