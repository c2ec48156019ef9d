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
        >>> vae.compile(optimizer=keras.optimizers.SGD(learning_rate=1e30))  # far too large
        >>> try:
        ...     vae.fit(x_train, epochs=10, batch_size=8, verbose=0)
        ... except kvi.NonFiniteError as error:
        ...     print(error)
        Training stopped after 5 consecutive steps with non-finite values ... In the last one,
        the ... was the first non-finite term. ...

        Here the overflowing weights make the KL of latent 'z' non-finite, and the likelihood
        too, unless the decoder's `Dense` + `relu` maps NaN to 0 (TensorFlow's fused CPU
        kernel does): the message names the likelihood on JAX, the KL on TensorFlow.
    """
