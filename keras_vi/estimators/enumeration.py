"""Exact enumeration of a small discrete latent: the expectation over q as a weighted sum."""

from __future__ import annotations

import itertools
import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vi import _layout, _scope
from keras_vi.backend import distributions as tfd
from keras_vi.backend import random as backend_random
from keras_vi.estimators.base import (
    Estimator,
    is_joint,
    stop_gradient_nested,
)

__all__ = ["Enumerate", "SumAndSample", "support"]

# Above this many values the K = M copies of every example cost more than any estimator saves.
MAX_SUPPORT = 1024


def _base(q: tfd.Distribution):
    """The Bernoulli, Categorical or OneHotCategorical inside q (through `Independent`s)."""
    base = q
    while isinstance(base, tfd.Independent):
        base = base.distribution
    if isinstance(base, (tfd.Bernoulli, tfd.Categorical, tfd.OneHotCategorical)):
        return base
    return None


def _num_classes(base) -> int | None:
    if isinstance(base, tfd.Bernoulli):
        return 2
    params = base.logits if base.logits is not None else base.probs
    return params.shape[-1]


def _variable_shape(q: tfd.Distribution, base) -> tuple | None:
    """The shape of q's enumerated variables: q's event shape less the base's own event."""
    event = tuple(q.event_shape)
    if isinstance(base, tfd.OneHotCategorical):
        event = event[:-1]
    if any(d is None for d in event):
        return None
    return tuple(int(d) for d in event)


def support_size(q: tfd.Distribution) -> int | None:
    """M, the number of values of one event of q, or None when q's shapes are not known."""
    base = _base(q)
    classes = _num_classes(base)
    shape = _variable_shape(q, base)
    if classes is None or shape is None:
        return None
    return int(classes) ** math.prod(shape)


def support(q: tfd.Distribution) -> np.ndarray:
    """All M values of one event of q, `[M, *q.event_shape]`, in a fixed order.

    Value k is the k-th tuple of class indices in lexicographic order (the last variable
    changes fastest), as `itertools.product`; for Bernoulli bits, k written in binary.

    Example:
        >>> kvi.estimators.enumeration.support(
        ...     tfd.Independent(tfd.Bernoulli(logits=[0.0, 0.0]), 1)).tolist()
        [[0, 0], [0, 1], [1, 0], [1, 1]]
    """
    base = _base(q)
    classes = int(_num_classes(base))
    shape = _variable_shape(q, base)
    index = np.array(list(itertools.product(range(classes), repeat=math.prod(shape))), "int64")
    index = index.reshape((-1, *shape))
    if isinstance(base, tfd.OneHotCategorical):
        index = np.eye(classes, dtype="int64")[index]
    return index.astype(keras.backend.standardize_dtype(q.dtype))


def _describe(q: tfd.Distribution) -> str:
    names = []
    part = q
    while isinstance(part, tfd.Independent):
        names.append("Independent")
        part = part.distribution
    names.append(type(part).__name__)
    return f"{'('.join(names)}{')' * (len(names) - 1)} with event shape {tuple(q.event_shape)}"


@keras.saving.register_keras_serializable(package="keras_vi")
class Enumerate(Estimator):
    """The exact expectation over a small discrete latent: every value once, weighted by q.

    For a latent whose event has M values (one categorical of M classes, d Bernoulli bits
    with M = 2^d, or n independent categoricals of S classes with M = S^n), the model's K = M
    copies of each example take the M values in turn instead of M random draws, and the
    objective weights copy k by its probability q(k | x) instead of 1/K. The ELBO is then
    sum_k q(k | x) (log p(x | k) - KL terms): exact, with zero variance, and its gradient,
    through the weights and through each term, is the exact gradient (no surrogate). A
    closed-form KL is the same in every copy; with `kl="mc"` the copies' log q(k) - log p(k)
    are weighted too, which gives the same KL. The reported `elbo`, `nll` and `kl` are the
    weighted ones.

    Other latents of the model keep their own estimators: each copy draws them anew given
    its value k, and their score-function terms are weighted like the objective, so their
    gradients stay unbiased. Restrictions: one enumerated latent per model; `num_samples`
    must be M; `objective="elbo"` (IWAE and Rényi bounds need K independent draws);
    M <= 1024; no `DisARM()` latent beside it (its antithetic partners would hold other
    values of this latent). Its q must not depend on another latent's sample drawn in the
    same step, so that the M copies of an example share q (q(k | x) sums to one over them).
    Evaluation with another K or objective (`kvi.log_likelihood`) draws from q as usual.

    Example:
        >>> c = kvi.layers.CategoricalLatent(10, estimator="enumerate")(keras.layers.Dense(10)(h))
        >>> vae = kvi.VariationalModel(x, keras.layers.Dense(784)(c), likelihood="bernoulli",
        ...                            num_samples=10)
        >>> logits = keras.Variable([0.5, -1.0, 2.0])
        >>> f = lambda z: keras.ops.sum(z * np.array([1.0, 4.0, 9.0]), axis=-1)
        >>> value = kvi.expectation(f, tfd.OneHotCategorical(logits=logits, dtype="float32"),
        ...                         "enumerate", num_samples=3)
        >>> p = np.exp([0.5, -1.0, 2.0]) / np.exp([0.5, -1.0, 2.0]).sum()
        >>> bool(np.isclose(float(value), p @ [1.0, 4.0, 9.0]))
        True
    """

    alias = "enumerate"

    def validate(self, q: tfd.Distribution, *, objective: Any, num_samples: int) -> None:
        super().validate(q, objective=objective, num_samples=num_samples)
        if is_joint(q) or _base(q) is None:
            raise ValueError(
                "estimator=Enumerate() sums over the values of a discrete latent: expected q "
                "to be tfd.Bernoulli, tfd.Categorical or tfd.OneHotCategorical, or a "
                "tfd.Independent of one (kvi.layers.BernoulliLatent, CategoricalLatent), got "
                f"{type(q).__name__}."
            )
        size = support_size(q)
        if size is None:
            raise ValueError(
                "estimator=Enumerate() needs q's number of classes and event shape to be "
                f"known when the model is built; got {_describe(q)}."
            )
        if size > MAX_SUPPORT:
            raise ValueError(
                f"estimator=Enumerate(): q ({_describe(q)}) has M={size} values per event, "
                f"above the limit of {MAX_SUPPORT} (each example is run once per value). Use "
                "estimator='score_function' (with a baseline) or 'gumbel_softmax'."
            )
        if _scope.current_scope() is None:
            # kvi.expectation (or a direct call); in a model step the checks run in
            # `draw_weights`, which knows the latent's name.
            _check_setup(q, objective, num_samples, "kvi.expectation's q")

    def _enumerates(self, q: tfd.Distribution, scope) -> bool:
        return scope.num_samples == support_size(q) and scope.objective in (None, "elbo")

    def sample(self, q: tfd.Distribution, seed: Any, sample_shape=()) -> Any:
        scope = _scope.current_scope()
        if scope is None or not self._enumerates(q, scope):
            return super().sample(q, seed, sample_shape)
        values = ops.convert_to_tensor(support(q).astype("float32"))
        size = int(values.shape[0])
        base = _base(q)
        template = ops.zeros_like(ops.cast(base.logits_parameter(), "float32"))
        if isinstance(base, tfd.Categorical):
            template = template[..., 0]
        if sample_shape in ((), []):
            # A model's step: K * B rows, k-major; row k * B + b takes value k.
            if len(q.batch_shape) != 1:
                raise ValueError(
                    "estimator=Enumerate() in a model needs q's batch shape to be the rows "
                    f"only (one event per example), got batch shape {tuple(q.batch_shape)} "
                    f"for {_describe(q)}; use tfd.Independent to make the other axes part of "
                    "the event."
                )
            rows = _layout.to_samples(template, size) + values[:, None]
            z = _layout.to_rows(rows)
        elif list(sample_shape) == [size]:
            batch_rank = len(q.batch_shape)
            z = template[None] + ops.reshape(
                values, (size,) + (1,) * batch_rank + tuple(values.shape[1:])
            )
        else:
            return super().sample(q, seed, sample_shape)
        return stop_gradient_nested(ops.cast(z, q.dtype))

    def draw_weights(self, site, scope) -> Any:
        """q(k | x) of the value each copy holds (shaped like log q(z)): the weights of the
        copies in place of 1/K. None where the copies were drawn at random (evaluation with
        another K or objective)."""
        if not self._enumerates(site.q, scope):
            if scope.training:
                _check_setup(site.q, scope.objective, scope.num_samples, f"latent {site.name!r}")
            return None
        _check_companions(self, site, scope)
        log_q = site.q.log_prob(stop_gradient_nested(site.z))
        return ops.exp(ops.cast(log_q, "float32"))


def _check_setup(q: tfd.Distribution, objective: Any, num_samples: int, where: str) -> None:
    size = support_size(q)
    if objective not in (None, "elbo"):
        raise ValueError(
            f"estimator=Enumerate() ({where}) gives the exact expectation of the ELBO; "
            f"objective={objective!r} needs K independent draws per example. Use "
            "objective='elbo', or another estimator."
        )
    if num_samples != size:
        raise ValueError(
            f"estimator=Enumerate() sums over all M={size} values of {where} "
            f"({_describe(q)}), one per sample: num_samples must be {size}, got "
            f"num_samples={num_samples}."
        )


def _categorical(q: tfd.Distribution):
    """q itself when it is one `tfd.Categorical` or `tfd.OneHotCategorical`, else None."""
    return q if isinstance(q, (tfd.Categorical, tfd.OneHotCategorical)) else None


@keras.saving.register_keras_serializable(package="keras_vi")
class SumAndSample(Estimator):
    """Rao-Blackwellized score-function gradients for one categorical latent (Liu, Regier,
    Tripuraneni, Jordan & McAuliffe 2019, "Rao-Blackwellized stochastic gradients for
    discrete distributions").

    With C the `num_summed` most probable classes of q(. | x), the expectation splits as
    sum_{c in C} q(c) f(c) + (1 - q(C)) E_{q restricted to the rest}[f]. The model's
    K = num_summed + 1 copies of each example hold the classes of C in turn and one draw from
    q restricted to the other classes; the objective weights them by q(c) and 1 - q(C). The
    summed part is exact (its gradient too); the drawn class gets a score-function term on
    the restricted q, so the gradient is unbiased; its variance is never above that of
    one-sample REINFORCE and is small when q puts most of its mass on the summed classes.
    The reported ELBO is an unbiased estimate, exact when q(C) = 1.

    Needs one categorical variable per example (`tfd.Categorical` or
    `tfd.OneHotCategorical`, e.g. `kvi.layers.CategoricalLatent(S)` without
    `num_variables`), `num_samples = num_summed + 1` and `objective="elbo"`. As for
    `Enumerate()`, one such latent per model, no `DisARM()` latent beside it, and its q must
    not depend on another latent's sample of the same step. Evaluation with another K or
    objective draws from q as usual.

    Args:
        num_summed: how many of the most probable classes are summed exactly, 0 <= num_summed
            < number of classes (0 is REINFORCE with one sample and no baseline).

    Example:
        >>> est = kvi.estimators.SumAndSample(num_summed=3)
        >>> c = kvi.layers.CategoricalLatent(10, estimator=est)(keras.layers.Dense(10)(h))
        >>> vae = kvi.VariationalModel(x, keras.layers.Dense(784)(c), likelihood="bernoulli",
        ...                            num_samples=4)
    """

    alias = "sum_and_sample"

    def __init__(self, num_summed: int = 1):
        if isinstance(num_summed, bool) or not isinstance(num_summed, int) or num_summed < 0:
            raise ValueError(
                f"SumAndSample: `num_summed` must be an integer >= 0, got {num_summed!r}."
            )
        self.num_summed = num_summed

    def validate(self, q: tfd.Distribution, *, objective: Any, num_samples: int) -> None:
        super().validate(q, objective=objective, num_samples=num_samples)
        if is_joint(q) or _categorical(q) is None:
            raise ValueError(
                "estimator=SumAndSample() is defined for one categorical variable per example: "
                "expected q to be tfd.Categorical or tfd.OneHotCategorical (e.g. "
                f"kvi.layers.CategoricalLatent without num_variables), got {_describe(q)}."
            )
        classes = _num_classes(q)
        if classes is None or self.num_summed >= classes:
            raise ValueError(
                f"SumAndSample(num_summed={self.num_summed}) needs fewer summed classes than q "
                f"has ({classes}): at least one class must remain to be drawn."
            )
        if _scope.current_scope() is None:
            self._check_setup(objective, num_samples, "kvi.expectation's q")

    def _check_setup(self, objective: Any, num_samples: int, where: str) -> None:
        if objective not in (None, "elbo"):
            raise ValueError(
                f"estimator=SumAndSample() ({where}) estimates gradients of the ELBO; "
                f"objective={objective!r} needs K independent draws per example. Use "
                "objective='elbo', or another estimator."
            )
        if num_samples != self.num_summed + 1:
            raise ValueError(
                f"SumAndSample(num_summed={self.num_summed}) evaluates {where} at the "
                f"{self.num_summed} most probable classes and one drawn class: num_samples "
                f"must be {self.num_summed + 1}, got num_samples={num_samples}."
            )

    def _applies(self, objective: Any, num_samples: int) -> bool:
        return num_samples == self.num_summed + 1 and objective in (None, "elbo")

    def sample(self, q: tfd.Distribution, seed: Any, sample_shape=()) -> Any:
        scope = _scope.current_scope()
        if (
            scope is None
            or not self._applies(scope.objective, scope.num_samples)
            or _categorical(q) is None
        ):
            return super().sample(q, seed, sample_shape)
        k = self.num_summed
        copies = k + 1
        logits = ops.cast(q.logits_parameter(), "float32")
        rows = sample_shape in ((), [])
        if rows:
            logits = _layout.to_samples(logits, copies)  # [K, B, S]
        elif list(sample_shape) == [copies]:
            logits = ops.broadcast_to(logits[None], (copies, *logits.shape))
        else:
            return super().sample(q, seed, sample_shape)
        classes = int(logits.shape[-1])
        index = self._classes(logits, seed, classes)  # [K, ...]
        if rows:
            index = _layout.to_rows(index)
        if isinstance(q, tfd.OneHotCategorical):
            z = ops.one_hot(index, classes, dtype="float32")
        else:
            z = index
        return stop_gradient_nested(ops.cast(z, q.dtype))

    def _classes(self, logits, seed, classes: int):
        """Copy j < k: the j-th most probable class; copy k: a draw from the other classes."""
        k = self.num_summed
        logits = ops.stop_gradient(logits)
        noise = backend_random.uniform(ops.shape(logits[k]), seed, "float32")
        gumbel = -ops.log(-ops.log(ops.clip(noise, 1e-12, 1.0 - 1e-7)))
        rest_logits = logits[k]
        if k:
            top = ops.top_k(rest_logits, k, sorted=True)[1]  # [..., k]
            summed = ops.sum(ops.one_hot(top, classes, dtype="float32"), axis=-2) > 0
            rest_logits = ops.where(summed, float("-inf"), rest_logits)
        drawn = ops.cast(ops.argmax(rest_logits + gumbel, axis=-1), "int32")
        if not k:
            return drawn[None]
        top = ops.cast(ops.top_k(logits, k, sorted=True)[1], "int32")  # [K, ..., k]
        picks = [top[j, ..., j] for j in range(k)]
        return ops.stack(picks + [drawn], axis=0)

    def _weights_by_copy(self, site):
        """([K, ...] weight of each copy, [K, ...] 1 - q(C), [K, ...] log q(z)), per example."""
        q = site.q
        log_q = ops.cast(q.log_prob(stop_gradient_nested(site.z)), "float32")
        logits = ops.cast(q.logits_parameter(), "float32")
        probs = ops.softmax(logits, axis=-1)
        top_mass = ops.zeros_like(probs[..., 0])
        if self.num_summed:
            # q(C) with C fixed: the top classes chosen as in `sample` (from the logits,
            # without gradient), their mass with it.
            top = ops.top_k(ops.stop_gradient(logits), self.num_summed, sorted=True)[1]
            mask = ops.sum(ops.one_hot(top, probs.shape[-1], dtype="float32"), axis=-2)
            top_mass = ops.sum(mask * probs, axis=-1)
        rest_mass = 1.0 - top_mass
        copies = self.num_summed + 1
        rows = len(log_q.shape) == len(rest_mass.shape)
        if rows:
            log_q = _layout.to_samples(log_q, copies)
            rest_mass = _layout.to_samples(rest_mass, copies)
        else:
            rest_mass = ops.zeros_like(log_q) + rest_mass[None]
        last = ops.reshape(
            ops.cast(ops.arange(copies) == self.num_summed, "float32"),
            (copies,) + (1,) * (len(log_q.shape) - 1),
        )
        weights = last * rest_mass + (1.0 - last) * ops.exp(log_q)
        return weights, rest_mass, log_q, last, rows

    def draw_weights(self, site, scope) -> Any:
        """q(c) for the summed classes' copies, 1 - q(C) for the drawn class's copy (shaped
        like log q(z)); None where the copies were drawn from q (another K or objective)."""
        if not self._applies(scope.objective, scope.num_samples):
            if scope.training:
                self._check_setup(scope.objective, scope.num_samples, f"latent {site.name!r}")
            return None
        _check_companions(self, site, scope)
        weights, _, _, _, rows = self._weights_by_copy(site)
        return _layout.to_rows(weights) if rows else weights

    def surrogate(self, site, signals) -> Any:
        """stop(f) log q_rest(z) on the drawn copy, weighted like the objective (by 1 - q(C)):
        the score term of the restricted q; the value carries the summed part's gradient."""
        if not self._applies(signals.objective, signals.num_samples):
            return None
        _, rest_mass, log_q, last, _ = self._weights_by_copy(site)
        signal = ops.stop_gradient(signals.learning_signal(site))
        # log q_rest(z) = log q(z) - log(1 - q(C)), on the drawn copy only.
        log_q_rest = log_q - ops.log(ops.maximum(rest_mass, 1e-30))
        return signals.reduce_samples(last * signal * log_q_rest)

    def get_config(self) -> dict:
        return {"num_summed": self.num_summed}


def _check_companions(estimator, site, scope) -> None:
    """One latent per model weights its copies, and no DisARM latent pairs copies beside it."""
    from keras_vi.estimators.disarm import DisARM

    for other in scope.latents:
        if other is site:
            continue
        if isinstance(other.estimator, (Enumerate, SumAndSample)):
            raise ValueError(
                f"Latents {site.name!r} and {other.key!r} both use "
                f"estimator={type(other.estimator).__name__}() or "
                f"{type(estimator).__name__}(); a model may enumerate one latent. Give the "
                "other one another estimator (e.g. 'score_function'), or merge them into one "
                "latent."
            )
        if isinstance(other.estimator, DisARM):
            raise ValueError(
                f"Latent {other.key!r} uses estimator=DisARM(), whose antithetic pairs "
                f"(copies k and k + K/2) hold different values of the enumerated latent "
                f"{site.name!r}; use estimator='score_function' for {other.key!r}."
            )
