"""Keras layers: latent variables and Bayesian layers."""

from keras_vi.layers.bayesian import BayesianLayer
from keras_vi.layers.bayesian_conv import (
    Conv2DFlipout,
    Conv2DLocalReparameterization,
    Conv2DReparameterization,
)
from keras_vi.layers.bayesian_dense import (
    DenseFlipout,
    DenseLocalReparameterization,
    DenseReparameterization,
)
from keras_vi.layers.conditional_prior import ConditionalPrior
from keras_vi.layers.dense_variational import (
    DenseVariational,
    MeanFieldNormal,
    NormalPrior,
    mean_field_posterior,
    standard_normal_prior,
    trainable_prior,
)
from keras_vi.layers.flow_latent import FlowLatent
from keras_vi.layers.latent import BernoulliLatent, CategoricalLatent, Latent, NormalLatent
from keras_vi.layers.relaxed import RelaxedCategoricalLatent, RelaxedUniform

__all__ = [
    "Latent",
    "NormalLatent",
    "FlowLatent",
    "ConditionalPrior",
    "BernoulliLatent",
    "CategoricalLatent",
    "RelaxedCategoricalLatent",
    "RelaxedUniform",
    "BayesianLayer",
    "DenseReparameterization",
    "DenseFlipout",
    "DenseLocalReparameterization",
    "Conv2DReparameterization",
    "Conv2DFlipout",
    "Conv2DLocalReparameterization",
    "DenseVariational",
    "MeanFieldNormal",
    "NormalPrior",
    "mean_field_posterior",
    "trainable_prior",
    "standard_normal_prior",
]
