"""Keras callbacks for variational training (installed as `keras_vi.callbacks`)."""

from keras_vi.callbacks.kl_annealing import KLAnnealing

__all__ = ["KLAnnealing"]
