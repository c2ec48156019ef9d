"""A latent whose q is a diagonal Normal pushed through normalizing flows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_vi import _checks, _prediction, _scope, flows
from keras_vi.backend import distributions as tfd
from keras_vi.layers.latent import Latent, _check_width

logger = logging.getLogger("keras_vi")

__all__ = ["FlowLatent"]


@keras.saving.register_keras_serializable(package="keras_vi")
class FlowLatent(Latent):
    """A flow posterior: a diagonal Normal base pushed through `kvi.flows` blocks.

    The input has width 2 * units, read as `NormalLatent` reads it (loc, and softplus plus
    `min_scale` for the scale); the base sample then goes through the blocks in order (every
    other block on the reversed event axis, so stacked coupling blocks transform every
    dimension). q is a `kvi.flows.FlowDistribution`, fully reparameterized (so `"auto"` picks
    `Reparameterization`; `"stl"` and `"dreg"` work too), whose log q(z) is always computed
    through the exact inverse. The blocks' weights are this layer's weights: Keras trains and
    saves them. Blocks compute in float32 under any dtype policy.

    The KL to the prior has no closed form: it is a Monte Carlo estimate (`kl="auto"` and
    `kl="mc"` both; `kl="analytic"` is a ValueError), by default the one-sample log q(z) -
    log p(z) at the layer's own z. Under `prediction="mean"` the layer returns the blocks
    applied to the base's loc (a deterministic point; q's mean has no closed form).

    Args:
        units: latent dimensions, a positive integer (the coupling blocks need >= 2).
        flows: `kvi.flows` blocks (`IAF`, `AffineCoupling`, `Planar`, `SplineCoupling`, or
            any `kvi.flows.FlowBlock`), each used once; empty means q is the base.
        prior: as in `Latent`; default `"standard_normal"`.
        estimator: as in `Latent`.
        kl: `"auto"` or `"mc"` (both Monte Carlo).
        min_scale: floor added to the base's standard deviation (>= 0).
        **kwargs: `Latent` arguments (`kl_samples`, `seed`) and `keras.layers.Layer`
            arguments (`name`, ...).

    Example:
        >>> z = kvi.layers.FlowLatent(
        ...     8, flows=[kvi.flows.IAF((16,)), kvi.flows.IAF((16,))], name="z"
        ... )(keras.layers.Dense(16)(h))
        >>> z.shape
        (None, 8)
    """

    reparameterized = True

    def __init__(
        self,
        units: int,
        flows: Sequence[flows.FlowBlock] = (),
        prior: Any = "standard_normal",
        estimator: Any = "auto",
        kl: str = "auto",
        min_scale: float = 1e-5,
        **kwargs,
    ):
        if kl == "analytic":
            raise ValueError(
                "FlowLatent: kl='analytic' is not available: a flow posterior has no "
                "closed-form KL to its prior. Use kl='auto' or kl='mc' (Monte Carlo)."
            )
        super().__init__(prior=prior, estimator=estimator, kl=kl, **kwargs)
        owner = f"FlowLatent {self.name!r}"
        self.units = _checks.positive_int(units, "units", owner)
        self.min_scale = _checks.finite_number(min_scale, "min_scale", owner, minimum=0.0)
        self.flows = _check_flows(flows, owner)

    def build(self, input_shape):
        _check_width(self, input_shape, 2 * self.units, "loc and scale of the base Normal")
        for block in self.flows:
            if not block.built:
                block.build((None, self.units))
            elif block.event_size is not None and block.event_size != self.units:
                raise ValueError(
                    f"FlowLatent {self.name!r}: block {block.name!r} was built for "
                    f"{block.event_size} dimensions, but the latent has units={self.units}."
                )
        if self.prior is not None:
            logger.info(
                "keras_vi: FlowLatent %r has no closed-form KL; its KL term is a Monte Carlo "
                "estimate (kl_samples=%d).",
                self.name,
                self.kl_samples,
            )
        super().build(input_shape)

    def base_distribution(self, inputs) -> tfd.Distribution:
        """The diagonal Normal base for a batch of parameters [batch, 2 * units]."""
        inputs = ops.cast(inputs, "float32")
        loc, raw_scale = ops.split(inputs, 2, axis=-1)
        scale = ops.softplus(raw_scale) + self.min_scale
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)

    def make_distribution(self, inputs) -> flows.FlowDistribution:
        return flows.FlowDistribution(self.base_distribution(inputs), self.flows)

    def call(self, inputs, training=None, prior_params=None):
        if _scope.current_scope() is None and _prediction.point_estimates():
            # prediction="mean": the blocks applied to the base's loc.
            point = self.make_distribution(ops.cast(inputs, "float32")).point()
            return ops.cast(point, self.compute_dtype)
        return super().call(inputs, training=training, prior_params=prior_params)

    def get_config(self):
        config = super().get_config()
        config.pop("distribution_fn")
        return {
            **config,
            "units": self.units,
            "min_scale": self.min_scale,
            "flows": [keras.saving.serialize_keras_object(block) for block in self.flows],
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["flows"] = [
            keras.saving.deserialize_keras_object(block) if isinstance(block, dict) else block
            for block in config.get("flows", [])
        ]
        return super().from_config(config)


def _check_flows(blocks, owner: str) -> list:
    if isinstance(blocks, flows.FlowBlock) or not isinstance(blocks, Sequence):
        raise ValueError(
            f"{owner}: `flows` must be a list of kvi.flows blocks (IAF, AffineCoupling, "
            f"Planar, SplineCoupling), got {blocks!r}."
        )
    seen = set()
    for block in blocks:
        if not isinstance(block, flows.FlowBlock):
            raise ValueError(
                f"{owner}: every entry of `flows` must be a kvi.flows block (IAF, "
                f"AffineCoupling, Planar, SplineCoupling), got {type(block).__name__} "
                f"{block!r}. TFP bijectors built on tf_keras networks are not trained by "
                "Keras 3."
            )
        if id(block) in seen:
            raise ValueError(
                f"{owner}: block {block.name!r} appears twice in `flows`; give each position "
                "its own block."
            )
        seen.add(id(block))
    return list(blocks)
