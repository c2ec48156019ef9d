"""Keras layers: latent variables and Bayesian layers."""

from keras_vi.layers.latent import BernoulliLatent, CategoricalLatent, Latent, NormalLatent

__all__ = ["Latent", "NormalLatent", "BernoulliLatent", "CategoricalLatent"]
