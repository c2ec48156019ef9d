"""Keras callbacks for variational training (installed as `keras_vi.callbacks`)."""

from keras_vi.callbacks.gradient_variance import GradientVarianceLogger
from keras_vi.callbacks.image_samples import ImageSamples
from keras_vi.callbacks.kl_annealing import KLAnnealing
from keras_vi.callbacks.latent_diagnostics import LatentDiagnostics

__all__ = ["GradientVarianceLogger", "ImageSamples", "KLAnnealing", "LatentDiagnostics"]
