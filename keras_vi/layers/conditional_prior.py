"""`ConditionalPrior`: a latent's prior built from parameters computed after its draw."""

from __future__ import annotations

import weakref
from typing import Any

import keras

from keras_vi import _prediction, _scope
from keras_vi._scope import in_symbolic_scope
from keras_vi.layers import bayesian
from keras_vi.layers.latent import Latent

__all__ = ["ConditionalPrior"]


@keras.saving.register_keras_serializable(package="keras_vi")
class ConditionalPrior(keras.layers.Layer):
    """Gives a latent drawn earlier in the forward pass its prior p(z | parent).

    `prior_params=` on a latent's call needs the prior's parameters before the draw, which
    suits top-down inference. When inference runs bottom-up, as in Burda et al.'s
    two-stochastic-layer IWAE (q(z1 | x), then q(z2 | z1), with p(z2) p(z1 | z2) p(x | z1)),
    the parent z2 is drawn from z1: call this layer on z1 and the parameters computed from z2,
    and use its output (z1, unchanged) downstream. The latent's KL term then uses
    p(z1 | z2), built as `prior_params=` would build it (`NormalLatent`: loc and softplus
    scale; a generic `Latent`: its callable `prior`), analytic when both are Normal and Monte
    Carlo otherwise. In a plain Keras model the KL joins the loss through `add_loss` here
    instead of in the latent.

    Args:
        latent: the latent layer whose prior this builds (its `prior` must not be None).

    Example:
        >>> h1 = keras.layers.Dense(8, activation="tanh")(x)
        >>> z1_layer = kvi.layers.NormalLatent(4, name="z1")
        >>> z1 = z1_layer(h1)  # q(z1 | x)
        >>> z2 = kvi.layers.NormalLatent(2, name="z2")(keras.layers.Dense(4)(z1))  # q(z2 | z1)
        >>> z1 = kvi.layers.ConditionalPrior(z1_layer)(z1, keras.layers.Dense(8)(z2))
        >>> vae = kvi.VariationalModel(x, keras.layers.Dense(784)(z1), likelihood="bernoulli")
        >>> vae.compile(optimizer="adam")
        >>> logs = vae.fit(x_train, epochs=1, batch_size=32, verbose=0).history
        >>> sorted(k for k in logs if k.startswith("kl/"))  # p(z1 | z2) and p(z2)
        ['kl/z1', 'kl/z2']
    """

    def __init__(self, latent: Latent | str, **kwargs):
        super().__init__(**kwargs)
        if isinstance(latent, Latent):
            self._claim(latent)
            self.latent_name = latent.name
        elif isinstance(latent, str):
            self._latent_ref = None  # found from the graph at the first symbolic call (loading)
            self.latent_name = latent
        else:
            raise ValueError(
                f"ConditionalPrior: `latent` must be a kvi.layers latent layer (or its name), "
                f"got {latent!r}."
            )

    def _claim(self, latent: Latent) -> None:
        if latent.prior is None:
            raise ValueError(
                f"ConditionalPrior: latent {latent.name!r} has prior=None (no KL term); give "
                "it a prior (the family p(z | parent) belongs to)."
            )
        if latent.conditioned_by not in (None, self.name):
            raise ValueError(
                f"ConditionalPrior {self.name!r}: latent {latent.name!r} already gets its "
                f"prior from ConditionalPrior {latent.conditioned_by!r}."
            )
        latent.conditioned_by = self.name
        # A weak reference: Keras would track the layer itself as a sublayer of this one.
        self._latent_ref = weakref.ref(latent)

    def _resolve(self, z) -> Latent:
        if self._latent_ref is None or self._latent_ref() is None:
            history = getattr(z, "_keras_history", None)
            layer = getattr(history, "operation", None)
            if not isinstance(layer, Latent) or layer.name != self.latent_name:
                raise ValueError(
                    f"ConditionalPrior {self.name!r} conditions latent {self.latent_name!r}: "
                    "its first input must be that latent layer's output."
                )
            self._claim(layer)
        return self._latent_ref()

    def compute_output_spec(self, z, prior_params):
        latent = self._resolve(z)
        latent._check_prior_params(prior_params)
        return keras.KerasTensor(z.shape, dtype=z.dtype)

    def call(self, z, prior_params, training=None):
        latent = self._resolve(z)
        scope = _scope.current_scope()
        if scope is not None:
            site = self._site(scope)
            site.prior = site.prior_from(prior_params)
            site.conditioned_by = self.name
            return z
        if in_symbolic_scope() or _prediction.point_estimates() or _kl_disabled():
            return z
        pending = latent._pending_plain_kl
        if pending is None:
            raise ValueError(
                f"ConditionalPrior {self.name!r}: latent {latent.name!r} was not drawn "
                "before this layer in the forward pass."
            )
        latent._pending_plain_kl = None
        q, seed, given_at_call = pending
        prior = latent._prior_after_call(q, prior_params, given_at_call)
        self.add_loss(latent._mean_kl(q, prior, seed))
        return z

    def _site(self, scope) -> Any:
        sites = [site for site in scope.latents if site.name == self.latent_name]
        if not sites:
            raise ValueError(
                f"ConditionalPrior {self.name!r}: latent {self.latent_name!r} was not drawn "
                "before this layer in the forward pass."
            )
        site = sites[-1]
        if site.conditioned_by is not None:
            raise ValueError(
                f"ConditionalPrior {self.name!r}: the draw {site.key!r} already got its prior "
                f"from {site.conditioned_by!r}; call the latent once per ConditionalPrior."
            )
        return site

    def get_config(self) -> dict:
        return {**super().get_config(), "latent": self.latent_name}


def _kl_disabled() -> bool:
    return getattr(bayesian._state, "kl_disabled", False)
