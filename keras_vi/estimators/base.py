"""The gradient-estimator contract.

An estimator decides three things for one latent variable:

* how z is drawn (`sample`): with a pathwise gradient or with the gradient stopped;
* what log q(z) enters the objective's value (`log_prob`): all estimators agree on the
  number, but some (STL, DReG) cut parts of its gradient;
* an optional surrogate (`surrogate`): a scalar whose gradient is added to the objective's
  gradient and whose value is removed, so the reported bound is the same for every estimator.

The model builds one scalar, `value + (surrogate - stop_gradient(surrogate))`.
"""

from __future__ import annotations

import warnings
from typing import Any

from keras import ops, tree

from keras_vi import _scope
from keras_vi.backend import distributions as tfd
from keras_vi.backend import random as backend_random


def checks_training_setup() -> bool:
    """Whether objective and sample-count requirements apply to the current call.

    They matter where gradients are estimated: a training step, or a direct call outside any
    model step (`kvi.expectation`). Evaluation (`evaluate`, `kvi.log_likelihood` with its own
    objective and K, `predict`) only needs q to be compatible with the estimator.
    """
    scope = _scope.current_scope()
    return scope is None or bool(scope.training)


def is_joint(q: tfd.Distribution) -> bool:
    """Whether q's samples are structures (lists, dicts, tuples of parts), as those of the
    `tfd.JointDistribution*` family (Sequential, Named, Coroutine, their AutoBatched variants).

    Example:
        >>> kvi.estimators.is_joint(tfd.JointDistributionNamed({"a": tfd.Normal(0.0, 1.0)}))
        True
    """
    return tree.is_nested(q.dtype)


def is_reparameterized(q: tfd.Distribution) -> bool:
    """Whether q is fully reparameterized; a joint distribution only when every part is.

    Example:
        >>> q = tfd.JointDistributionSequential([tfd.Normal(0.0, 1.0), tfd.Bernoulli(0.5)])
        >>> kvi.estimators.is_reparameterized(q)  # the Bernoulli part is not
        False
    """
    return all(
        part == tfd.FULLY_REPARAMETERIZED for part in tree.flatten(q.reparameterization_type)
    )


def stop_gradient_nested(z: Any) -> Any:
    """`stop_gradient` of a sample, part by part when it is a structure (a joint q's).

    `ops.stop_gradient` itself would pack a list of parts into one tensor (or fail when the
    parts differ in shape), and `q.log_prob` needs the structure.
    """
    return tree.map_structure(ops.stop_gradient, z)


def path_only_log_prob(q: tfd.Distribution, z: Any) -> Any:
    """log q(z) whose gradient flows through z only, not through q's parameters.

    Written as log q(z) - (log q(stop z) - stop(log q(stop z))): same value, and the second
    term removes the direct parameter gradient. Works for any q, flows and joint
    distributions (z a structure of parts) included.
    """
    direct = q.log_prob(stop_gradient_nested(z))
    return q.log_prob(z) - (direct - ops.stop_gradient(direct))


class Estimator:
    """Base class of gradient estimators.

    Subclasses declare what the objective must know (the class attributes below) and
    override what differs: `sample` (how z is drawn), `log_prob` (the log q(z) in the
    objective's value; same number for every estimator), `surrogate(site, signals)` (a
    scalar whose gradient joins the objective's, value removed; `site` is the latent's
    `keras_vi._scope.Site`: its name, q, z, prior, inputs; `signals` the step's
    `keras_vi.objectives.Signals`: log-weights, bound, KL terms, `path_gradient(site)`).
    Register subclasses with `keras.saving.register_keras_serializable` and give them a
    `get_config` so models that use them can be saved. Defining a subclass with its own
    `alias` makes that string name it everywhere (`estimator="<alias>"`): a new estimator
    is one new class, touching nothing else.

    Attributes:
        alias: the string name accepted wherever an estimator is ("" for none).
        reparameterized: z keeps its pathwise gradient, so q must be fully reparameterized;
            otherwise the sample's gradient is stopped and `surrogate` carries the gradient.
        kl: which KL the latent's term must be: `"sample"`, the per-sample log q(z) -
            log p(z) at the drawn z (STL, DReG, which change how log q(z) is
            differentiated); `"analytic"`, the closed form (Gumbel-softmax, whose relaxed
            sample has no density under the categorical q); None, the latent's own `kl`.
        objective: the objective it needs (`"iwae"` for multi-sample estimators), or None.
        baseline: a `keras_vi.estimators.baselines.Baseline` (a Keras layer the latent layer
            tracks and saves), or None. A baseline holds state for one latent: give each
            latent its own estimator object when baselines are involved.

    Example:
        >>> @keras.saving.register_keras_serializable(package="my_project")
        ... class ScaledScore(kvi.estimators.ScoreFunction):
        ...     def learning_signal(self, site, signals):
        ...         return 0.5 * signals.learning_signal(site)
        >>> latent = kvi.layers.BernoulliLatent(8, estimator=ScaledScore())
    """

    alias: str = ""
    reparameterized: bool = False
    kl: str | None = None
    objective: str | None = None
    baseline: Any = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _translate_old_flags(cls)
        _register_alias(cls)

    def validate(self, q: tfd.Distribution, *, objective: str | None, num_samples: int) -> None:
        """Raises ValueError when this estimator cannot serve q under this objective.

        `objective` is the model's (`"elbo"` or `"iwae"`), or the `objective` given to
        `kvi.expectation` (None there means a plain Monte Carlo mean of `fn`). Requirements on
        the objective and K are checked only where gradients are estimated (see
        `checks_training_setup`); q's compatibility is always checked.
        """
        strict = checks_training_setup()
        if strict and self.objective is not None and objective != self.objective:
            raise ValueError(
                f"estimator={type(self).__name__}() needs objective={self.objective!r} "
                "(kvi.VariationalModel(objective='iwae', num_samples=K) or "
                f"kvi.expectation(..., objective='iwae')), got objective={objective!r}."
            )
        if self.reparameterized and not is_reparameterized(q):
            parts = " (every part must be FULLY_REPARAMETERIZED)" if is_joint(q) else ""
            raise ValueError(
                f"estimator={type(self).__name__}() needs a reparameterizable q, but "
                f"{type(q).__name__} has reparameterization_type="
                f"{q.reparameterization_type}{parts}. Use estimator='score_function' "
                "(or 'auto')."
            )
        if strict and self.baseline is not None:
            self.baseline.validate(num_samples=num_samples, objective=objective)

    def sample(self, q: tfd.Distribution, seed: Any, sample_shape=()) -> Any:
        """z ~ q: a tensor, or for a joint q a structure of parts (list, dict, tuple)."""
        z = _normal_sample(q, seed, sample_shape)
        if z is None:
            z = q.sample(sample_shape, seed=seed)
        return z if self.reparameterized else stop_gradient_nested(z)

    def log_prob(self, q: tfd.Distribution, z: Any) -> Any:
        return q.log_prob(z)

    def surrogate(self, site, signals) -> Any:
        """A scalar whose gradient joins the objective's (value discarded), or None."""
        return None

    def draw_weights(self, site, scope) -> Any:
        """The weight of each of the site's draws in the mean over samples, or None for 1/K.

        Shaped like `site.q.log_prob(site.z)` (K * B rows in a model step, [K, *batch] in
        `kvi.expectation`); the weights of an example's K draws sum to one. `Enumerate()`
        gives q(k | x) where its draws are the latent's values in turn; the objective (and
        every other estimator's `Signals.reduce_samples`) then averages with them. `scope`
        is the step's `keras_vi._scope.StepScope` (objective, K, training, every site).
        """
        return None

    def bound_samples(self, objective: Any, num_samples: int) -> int:
        """How many of an example's `num_samples` draws, the first ones, form the bound in a
        step where gradients are estimated (a training step, `kvi.expectation`).

        All of them (the default) unless the estimator draws extra, dependent samples that
        only its learning signals use: `DisARM()` with a multi-sample bound draws K samples
        and K antithetic partners, and the bound is that of the K.
        """
        return num_samples

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> Estimator:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _normal_sample(q: tfd.Distribution, seed: Any, sample_shape) -> Any:
    """loc + scale * eps for a plain `tfd.Normal` or `tfd.Independent` of one, else None.

    The same numbers as `q.sample(sample_shape, seed=seed)` outside XLA (TFP draws
    stateless normals with the same seed and scales them the same way), but always on the
    backend's Philox draws, which are much faster than TFP's default algorithm under XLA.
    Subclasses, other distributions, a Normal with `validate_args` (whose checks run in
    `q.sample`) and a seed that is not a stateless seed tensor go through `q.sample`.
    """
    normal = q.distribution if type(q) is tfd.Independent else q
    if type(normal) is not tfd.Normal or normal.validate_args or not ops.is_tensor(seed):
        return None
    if isinstance(sample_shape, int):
        sample_shape = (sample_shape,)
    if not isinstance(sample_shape, (list, tuple)):
        return None
    sample_shape = tuple(sample_shape)
    if not all(isinstance(d, int) for d in sample_shape):
        return None
    batch_shape = tuple(normal.batch_shape)
    if all(isinstance(d, int) for d in batch_shape):
        shape = sample_shape + batch_shape
    else:
        batch = ops.cast(normal.batch_shape_tensor(), "int32")
        shape = ops.concatenate([ops.convert_to_tensor(sample_shape, "int32"), batch], axis=0)
    loc = ops.convert_to_tensor(normal.loc)
    scale = ops.convert_to_tensor(normal.scale)
    eps = backend_random.normal(shape, seed, dtype=normal.dtype)
    return eps * scale + loc


# alias -> class, filled as estimator classes are defined (`Estimator.__init_subclass__`).
ALIASES: dict[str, type] = {}

# 0.1's class flags, read from subclasses that still set them: old name -> (new name, value).
_OLD_FLAGS = {
    "pathwise": lambda value: ("reparameterized", bool(value)),
    "needs_sample_kl": lambda value: ("kl", "sample") if value else None,
    "requires_analytic_kl": lambda value: ("kl", "analytic") if value else None,
    "requires_objective": lambda value: ("objective", value),
    "needs_path_gradient": lambda value: None,  # d log w / dz is now given on request
}


def _translate_old_flags(cls: type) -> None:
    for old, translate in _OLD_FLAGS.items():
        if old not in vars(cls):
            continue
        warnings.warn(
            f"{cls.__name__}.{old} is keras_vi 0.1's estimator flag; declare `reparameterized`, "
            "`kl` or `objective` instead (see kvi.estimators.Estimator).",
            DeprecationWarning,
            stacklevel=3,
        )
        new = translate(vars(cls)[old])
        if new is not None and new[0] not in vars(cls):
            setattr(cls, *new)


def _register_alias(cls: type) -> None:
    alias = vars(cls).get("alias")
    if not alias:
        return
    known = ALIASES.get(alias)
    if known is not None and (known.__module__, known.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise ValueError(
            f"estimator alias {alias!r} of {cls.__qualname__} is already taken by "
            f"{known.__module__}.{known.__qualname__}; choose another `alias`."
        )
    ALIASES[alias] = cls
