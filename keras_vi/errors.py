"""Exceptions raised by keras_vi."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(RuntimeError):
    """Training met too many consecutive steps whose loss or gradients were not finite.

    The message names the first non-finite term of the last such step (the likelihood, the
    KL of a given latent, the Bayesian layers' weight KL, an estimator's surrogate, or the
    gradients).

    Example:
        >>> vae = kvi.VariationalModel(x, logits, likelihood="bernoulli", max_consecutive_skips=5)
        >>> try:
        ...     vae.fit(x_train, epochs=10)
        ... except kvi.NonFiniteError as error:
        ...     print(error)  # e.g. "... the KL of latent 'z' ..."
    """
