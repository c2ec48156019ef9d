"""Gumbel-softmax (Concrete) relaxation of categorical latents (Jang et al. 2017;
Maddison et al. 2017)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vi import _scope, _serialization, objectives, schedules
from keras_vi.backend import distributions as tfd
from keras_vi.backend import random as backend_random
from keras_vi.estimators.base import Estimator, checks_training_setup, is_joint

__all__ = ["GumbelSoftmax"]

_MIN_TEMPERATURE = 1e-3


def _categorical_base(q: tfd.Distribution):
    base = q.distribution if isinstance(q, tfd.Independent) else q
    return base if isinstance(base, tfd.OneHotCategorical) else None


@keras.saving.register_keras_serializable(package="keras_vi")
class GumbelSoftmax(Estimator):
    """Pathwise gradients for a categorical q through the Gumbel-softmax relaxation.

    During training z = softmax((logits + g) / temperature) with Gumbel noise g; with
    `straight_through=True` the forward pass uses the exact one-hot argmax of that sample and
    the backward pass the soft sample's gradient. **The gradient is biased** (the bias
    shrinks with the temperature while the variance grows); in exchange it is a single-sample
    pathwise estimator with low variance.

    Where the ELBO needs log q(z), the relaxed sample has no density under the categorical q,
    so the latent's KL is the closed-form KL(q || prior) of the categorical (as Jang et al.
    did); a prior without a closed form, or `kl="mc"`, raises a ValueError. With
    `straight_through=True` the sample is exactly one-hot, so `objective="iwae"` is allowed
    (per-sample log q(z) - log p(z) at the hard sample); without it, IWAE raises.

    Outside training (`evaluate`, `kvi.log_likelihood`, `predict`) the latent draws exact
    categorical samples, so evaluation reports the true discrete ELBO.

    Args:
        temperature: a positive float, or a `kvi.schedules.Schedule` of the training step
            (evaluated in the compiled step from the model's `optimizer.iterations`, so it
            works under `jit_compile=True` and resumes after loading; where there is no
            optimizer, e.g. in `kvi.expectation`, the schedule's value at step 0). Values are
            floored at 1e-3.
        straight_through: forward the hard one-hot sample, backward the soft gradient.

    Example:
        >>> anneal = kvi.schedules.Linear(warmup_steps=5000, start=1.0, stop=0.5)
        >>> est = kvi.estimators.GumbelSoftmax(temperature=anneal, straight_through=True)
        >>> z = kvi.layers.CategoricalLatent(10, num_variables=20, estimator=est)(
        ...     keras.layers.Dense(200)(h))
        >>> z.shape  # 20 one-hot variables of 10 classes, flattened
        (None, 200)
    """

    alias = "gumbel_softmax"
    reparameterized = True
    kl = "analytic"

    def __init__(self, temperature=1.0, straight_through: bool = False):
        if isinstance(temperature, dict):
            temperature = keras.saving.deserialize_keras_object(temperature)
        if isinstance(temperature, schedules.Schedule):
            self.temperature = temperature
        elif (
            isinstance(temperature, (int, float))
            and not isinstance(temperature, bool)
            and temperature > 0
        ):
            self.temperature = float(temperature)
        else:
            raise ValueError(
                "GumbelSoftmax: `temperature` must be a positive number or a "
                f"kvi.schedules.Schedule, got {temperature!r}."
            )
        if not isinstance(straight_through, bool):
            raise ValueError(
                f"GumbelSoftmax: `straight_through` must be a bool, got {straight_through!r}."
            )
        self.straight_through = straight_through

    def validate(self, q, *, objective, num_samples):
        if is_joint(q):
            raise ValueError(
                "estimator=GumbelSoftmax() relaxes one categorical q, but q is the joint "
                f"distribution {type(q).__name__} with parts {q.dtype}. Give each categorical "
                "its own kvi.layers.CategoricalLatent, or use estimator='score_function' for "
                "the joint q."
            )
        if _categorical_base(q) is None:
            raise ValueError(
                "estimator=GumbelSoftmax() relaxes a categorical q: expected OneHotCategorical "
                "or Independent(OneHotCategorical) (e.g. kvi.layers.CategoricalLatent), got "
                f"{type(q).__name__}. For Bernoulli latents use CategoricalLatent(2) or "
                "estimator='score_function'/'vimco'."
            )
        if (
            objectives.is_multi_sample(objective)
            and not self.straight_through
            and checks_training_setup()
        ):
            raise ValueError(
                "estimator=GumbelSoftmax(straight_through=False) cannot be used with "
                f"objective={objective!r}: a multi-sample bound needs log q(z) at every sample, "
                "and a relaxed sample has none under the categorical q. Use straight_through=True, "
                "objective='elbo', or kvi.layers.RelaxedCategoricalLatent."
            )

    def temperature_at(self, step=None) -> Any:
        """The temperature at a training step (an int or integer tensor; None means 0)."""
        if isinstance(self.temperature, schedules.Schedule):
            value = self.temperature(0 if step is None else step)
        else:
            value = self.temperature
        return ops.maximum(ops.cast(value, "float32"), _MIN_TEMPERATURE)

    def sample(self, q, seed, sample_shape=()):
        scope = _scope.current_scope()
        if scope is None or not scope.training:
            return ops.stop_gradient(q.sample(sample_shape, seed=seed))
        logits = ops.cast(_categorical_base(q).logits_parameter(), "float32")
        if isinstance(sample_shape, int):
            sample_shape = (sample_shape,)
        shape = tuple(sample_shape) + tuple(ops.shape(logits))
        tiny = float(np.finfo(np.float32).tiny)
        uniform = backend_random.uniform(shape, seed, "float32", minval=tiny, maxval=1.0)
        gumbel = -ops.log(-ops.log(uniform))
        temperature = self.temperature_at(getattr(scope, "step", None))
        soft = ops.softmax((logits + gumbel) / temperature, axis=-1)
        if self.straight_through:
            hard = ops.one_hot(ops.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)
            soft = soft + ops.stop_gradient(hard - soft)
        return ops.cast(soft, q.dtype)

    def get_config(self):
        temperature = self.temperature
        if isinstance(temperature, schedules.Schedule):
            temperature = _serialization.serialize(temperature, "temperature", "GumbelSoftmax")
        return {"temperature": temperature, "straight_through": self.straight_through}
