"""Normalizing flows as Keras 3 layers, for flow posteriors (`kvi.layers.FlowLatent`).

Every block is a Keras layer with tracked weights, an exact log-determinant, an exact inverse
and a `get_config`; a fresh block is the identity.

* `IAF`: inverse autoregressive flow with a MADE network (Kingma et al. 2016).
* `AffineCoupling`: RealNVP affine coupling (Dinh et al. 2017).
* `Planar`: planar flow (Rezende and Mohamed 2015), kept invertible.
* `SplineCoupling`: rational-quadratic spline coupling (Durkan et al. 2019).

`forward` and `inverse` compose blocks (every other one on the reversed event axis), and
`FlowDistribution` is the distribution of a base pushed through them.
"""

from keras_vi.flows.autoregressive import IAF
from keras_vi.flows.base import FlowBlock, FlowDistribution, forward, inverse
from keras_vi.flows.coupling import AffineCoupling, SplineCoupling
from keras_vi.flows.planar import Planar

__all__ = [
    "FlowBlock",
    "FlowDistribution",
    "IAF",
    "AffineCoupling",
    "Planar",
    "SplineCoupling",
    "forward",
    "inverse",
]
