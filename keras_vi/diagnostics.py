"""Training diagnostics: the spread of the ELBO's gradient estimates, and posterior collapse.

Two questions come up whenever a variational model trains badly:

* **How noisy is the gradient?** `gradient_variance` draws several independent gradient
  estimates of the training loss on one batch (same weights, fresh noise) and reports their
  variance, mean norm and signal-to-noise ratio, for the model's own estimators or for any
  other estimator swapped in (`estimator=`).
* **Is the posterior collapsing?** `latent_statistics` reports, per latent layer, the KL per
  dimension, the activity Cov_x(E_q[z_d]) of each dimension and the number of active units
  (Burda et al. 2016), and the posterior scales.

Neither disturbs training: the noise comes from the diagnostics' own stateless seeds, and every
piece of model state a forward pass may change (seed generators, baselines' moving averages,
batch-norm statistics) is put back afterwards. `kvi.callbacks.GradientVarianceLogger`,
`LatentDiagnostics` and `ImageSamples` write these to TensorBoard during `fit`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
from keras import ops, tree

from keras_vi import _batching, _checks, _scope, divergences, likelihoods
from keras_vi import estimators as estimators_lib
from keras_vi.backend import gradients as backend_gradients
from keras_vi.backend import random as backend_random

__all__ = [
    "ACTIVITY_THRESHOLD",
    "GradientVariance",
    "LatentStatistics",
    "estimator_override",
    "gradient_variance",
    "isolated_noise",
    "latent_statistics",
]

# Burda et al. (2016): a latent dimension is active when Cov_x(E_q[z_d | x]) exceeds this.
ACTIVITY_THRESHOLD = 0.01

# ---------------------------------------------------------------------------------- checks


def check_seed(seed: int | None, owner: str) -> int:
    """An int seed in [0, 2**31); None draws one from the OS (no global RNG is consumed)."""
    if seed is None:
        return secrets.randbelow(2**31 - 1)
    if not (_checks.is_int(_as_int(seed)) and 0 <= seed < 2**31):
        raise ValueError(f"{owner}: `seed` must be None or an int in [0, 2**31), got {seed!r}.")
    return int(seed)


def check_int(value: Any, name: str, owner: str, minimum: int = 1) -> int:
    """`value` as an int (NumPy integers accepted) if it is >= minimum."""
    _checks.int_at_least(_as_int(value), name, minimum, owner)
    return int(value)


def _as_int(value: Any) -> Any:
    return int(value) if isinstance(value, np.integer) else value


def check_variational(model: Any, owner: str) -> None:
    if not hasattr(model, "compute_objective"):
        raise ValueError(
            f"{owner} needs a kvi.VariationalModel (with `compute_objective`), got "
            f"{type(model).__name__}."
        )


def latent_layers(model: keras.Model) -> list:
    """The `kvi.layers.Latent` layers of a model, in call order of construction."""
    from keras_vi.layers.latent import Latent

    return [
        layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, Latent)
    ]


def variable_names(variables) -> list[str]:
    """Unique, readable names for a list of variables (their Keras paths)."""
    names, seen = [], {}
    for variable in variables:
        name = getattr(variable, "path", None) or variable.name
        count = seen.get(name, 0)
        seen[name] = count + 1
        names.append(name if count == 0 else f"{name}_{count}")
    return names


# ----------------------------------------------------------------- isolating model state


class ModelState:
    """The state a forward pass may change besides the weights, saved and put back.

    That is every non-trainable variable of the model (seed generators' states, baselines'
    moving averages, batch-norm statistics, ...) plus `extra` variables. Works eagerly and
    inside compiled functions / XLA (on TensorFlow, reads and assignments of a variable run
    in program order).
    """

    def __init__(self, model: keras.Model, extra=()):
        self.variables, seen = [], set()
        for variable in [*model.non_trainable_variables, *extra]:
            if id(variable) not in seen:
                seen.add(id(variable))
                self.variables.append(variable)
        seed_ids = {
            id(generator.state)
            for layer in model._flatten_layers(include_self=True)
            for generator in getattr(layer, "_seed_generators", ())
        }
        self.seed_states = [v for v in self.variables if id(v) in seed_ids]

    def save(self) -> list:
        # A copy, not `convert_to_tensor`, which returns a Keras variable itself.
        return [ops.copy(v) for v in self.variables]

    def restore(self, saved: list) -> None:
        for variable, value in zip(self.variables, saved):
            variable.assign(value)

    def reseed(self, seed) -> None:
        """Points every seed generator at a fresh stream derived from `seed` (int32[2])."""
        for state, value in zip(self.seed_states, self._fresh_seeds(seed)):
            state.assign(value)

    def mapping(self, saved: list, seed) -> list:
        """`(variable, value)` pairs for a `keras.StatelessScope`: the `saved` values, with
        every seed generator pointed at a fresh stream derived from `seed` (as `reseed`)."""
        fresh = dict(zip(map(id, self.seed_states), self._fresh_seeds(seed)))
        return [(v, fresh.get(id(v), value)) for v, value in zip(self.variables, saved)]

    def _fresh_seeds(self, seed) -> list:
        return [
            ops.cast(backend_random.fold_in(seed, index), state.dtype)
            for index, state in enumerate(self.seed_states)
        ]


@contextlib.contextmanager
def isolated_noise(model: keras.Model, seed: Any, extra=()) -> Iterator[None]:
    """Runs forward passes with the diagnostics' own noise, leaving the model as it was.

    Inside the block every seed generator of the model draws from a stream derived from
    `seed`; on exit the generators and all other non-trainable state (moving averages,
    batch-norm statistics) are restored, so the training run continues bit for bit as if the
    block had never run.

    Example:
        >>> with kvi.diagnostics.isolated_noise(vae, seed=3):
        ...     reconstructions = vae(x_test[:8])
        >>> with kvi.diagnostics.isolated_noise(vae, seed=3):  # the same seed: the same noise
        ...     again = vae(x_test[:8])
        >>> bool(np.array_equal(reconstructions, again))
        True
    """
    state = ModelState(model, extra)
    saved = state.save()
    state.reseed(_seed_pair(seed))
    try:
        yield
    finally:
        state.restore(saved)


def _seed_pair(seed: Any):
    """An int32[2] stateless seed from an int or an integer seed of two values."""
    if isinstance(seed, (int, np.integer)):
        return backend_random.draw_seed(int(seed))
    return ops.cast(seed, "int32")


# ------------------------------------------------------------------- swapping estimators


def resolve_estimators(spec: Any, owner: str) -> estimators_lib.Estimator | dict:
    """An estimator (or alias) for every latent, or a dict latent name -> estimator."""

    def one(identifier, where):
        estimator = estimators_lib.get(identifier)
        if estimator == "auto":
            raise ValueError(
                f"{owner}: {where} cannot be 'auto' (it resolves per layer); name the estimator, "
                "e.g. 'score_function' or kvi.estimators.Reparameterization()."
            )
        return estimator

    if isinstance(spec, dict) and "class_name" in spec:  # one serialized estimator
        spec = estimators_lib.get(spec)
    if isinstance(spec, dict):
        if not spec:
            raise ValueError(f"{owner}: an estimator dict must name at least one latent layer.")
        for name in spec:
            if not isinstance(name, str):
                raise ValueError(f"{owner}: latent names must be strings, got {name!r}.")
        return {
            name: one(value, f"the estimator for latent {name!r}") for name, value in spec.items()
        }
    return one(spec, "the estimator")


def check_latent_names(model: keras.Model, spec, owner: str) -> None:
    if isinstance(spec, dict):
        names = [layer.name for layer in latent_layers(model)]
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise ValueError(
                f"{owner}: no latent layer named {unknown} in the model; its latent layers are "
                f"{names}."
            )


def prepare_estimators(model: keras.Model, spec) -> list:
    """Builds swapped-in estimators' baselines; returns their state that the model lacks."""
    if spec is None:
        return []
    model_ids = {id(v) for v in model.variables}
    extra = []
    for layer in latent_layers(model):
        estimator = spec.get(layer.name) if isinstance(spec, dict) else spec
        baseline = getattr(estimator, "baseline", None)
        if baseline is None:
            continue
        if not baseline.built:
            shapes = getattr(layer, "_build_shapes_dict", None) or {}
            baseline.build(shapes.get("input_shape"))
        extra.extend(v for v in baseline.non_trainable_variables if id(v) not in model_ids)
    return extra


@contextlib.contextmanager
def estimator_override(model: keras.Model, spec: Any) -> Iterator[None]:
    """Temporarily gives the model's latent layers another gradient estimator.

    The swap is read when the forward pass is traced, so trace (or run eagerly) inside the
    block. The loss value is unchanged; only its gradient differs.

    Args:
        model: a model with `kvi.layers.Latent` layers.
        spec: None (no change), an estimator or alias for every latent, or a dict
            `{latent_name: estimator}`.

    Example:
        >>> with kvi.diagnostics.estimator_override(vae, "score_function"):
        ...     with tf.GradientTape() as tape:
        ...         loss = vae.compute_objective(x_train, x_train, training=True)["loss"]
        >>> gradients = tape.gradient(loss, vae.trainable_weights)  # score-function gradients
        >>> all(g is not None for g in gradients)
        True
    """
    if spec is None:
        yield
        return
    spec = resolve_estimators(spec, "estimator_override")
    check_latent_names(model, spec, "estimator_override")
    prepare_estimators(model, spec)
    previous = []
    try:
        for layer in latent_layers(model):
            estimator = spec.get(layer.name) if isinstance(spec, dict) else spec
            if estimator is not None:
                previous.append((layer, layer._resolved_estimator))
                layer._resolved_estimator = estimator
        yield
    finally:
        for layer, estimator in previous:
            layer._resolved_estimator = estimator


# ------------------------------------------------------------------------ gradient variance


@dataclasses.dataclass(frozen=True)
class GradientVariance:
    """Spread of `num_estimates` independent gradient estimates on one batch.

    Attributes:
        total_variance: sum over every trainable weight of the variance of its gradient
            (the trace of the estimates' covariance; unbiased, divisor `num_estimates - 1`).
        variance: variable path -> the same sum restricted to that variable's weights.
        mean_norm: mean over the estimates of the gradient's global L2 norm.
        snr: signal-to-noise ratio, `||mean gradient|| / sqrt(total_variance)`.
        num_estimates: how many estimates were drawn.
    """

    total_variance: float
    variance: dict
    mean_norm: float
    snr: float
    num_estimates: int


def gradient_moments(
    model: keras.Model,
    x: Any,
    y: Any,
    *,
    num_estimates: int,
    seed: Any,
    kl_weight: Any = None,
    extra_state=(),
) -> dict:
    """The tensors behind `gradient_variance`; call inside a compiled function (or eagerly).

    Estimate i draws its noise from `fold_in(seed, i)` and sees the model's state as it was on
    entry, so the estimates are independent and identically distributed. The passes are
    stateless (`keras.StatelessScope`): every variable they read is mapped to a value, and
    what they write (seed generators, moving averages, batch-norm statistics) is dropped, so
    the model is left unchanged; this also holds inside a stateless training step (JAX),
    where the variables have no values of their own. When `extra_state` (the own state of
    swapped-in estimators, e.g. a moving-average baseline) is given, one forward pass first
    lets it track the current batch's learning signal; their new values are returned (the
    caller assigns them), and the estimates see them.

    Returns:
        A dict of tensors: `total_variance`, `variance` (one entry per trainable variable),
        `mean_norm`, `snr`, and `extra_state` (the new values of `extra_state`, in order).
    """
    variables = list(model.trainable_variables)
    state = ModelState(model, extra_state)
    saved = state.save()
    # Read by the forward pass besides the weights and the state: the training step, for
    # estimators with a schedule (`compute_objective` reads `optimizer.iterations`).
    optimizer = getattr(model, "optimizer", None)
    others = [] if optimizer is None else [(optimizer.iterations, ops.copy(optimizer.iterations))]

    def objective(mapping):
        # The trainable variables' values as the caller sees them (on JAX, inside
        # `value_and_gradients`, the traced values it differentiates with respect to): a
        # stateless scope does not look into an enclosing one, so every value is passed.
        weights = [(v, v.value) for v in variables]
        with keras.StatelessScope(state_mapping=[*weights, *mapping, *others]) as scope:
            out = model.compute_objective(x, y, training=True, kl_weight=kl_weight)
        return out, scope

    extra_values = [ops.copy(v) for v in extra_state]
    if extra_state:
        _, scope = objective(state.mapping(saved, backend_random.fold_in(seed, -1)))
        updated = {}
        for variable, value in zip(extra_state, extra_values):
            new = scope.get_current_value(variable)
            updated[id(variable)] = value if new is None else ops.cast(new, variable.dtype)
        extra_values = [updated[id(v)] for v in extra_state]
        saved = [updated.get(id(v), value) for v, value in zip(state.variables, saved)]

    def estimate(i):
        mapping = state.mapping(saved, backend_random.fold_in(seed, i))

        def loss():
            return objective(mapping)[0]["loss"]

        _, grads = backend_gradients.value_and_gradients(loss, variables)
        return [_dense_float32(g, v) for g, v in zip(grads, variables)]

    def body(i, means, m2s, norm_sum):
        grads = estimate(i)
        count = ops.cast(i + 1, "float32")
        new_means, new_m2s = [], []
        for g, mean, m2 in zip(grads, means, m2s):  # Welford's update: stable in float32.
            delta = g - mean
            mean = mean + delta / count
            new_means.append(mean)
            new_m2s.append(m2 + delta * (g - mean))
        return i + 1, new_means, new_m2s, norm_sum + _global_norm(grads)

    zeros = [ops.zeros(tuple(v.shape), "float32") for v in variables]
    _, means, m2s, norm_sum = ops.while_loop(
        lambda i, *_: i < num_estimates,
        body,
        (ops.convert_to_tensor(0, "int32"), zeros, list(zeros), ops.convert_to_tensor(0.0)),
    )
    per_variable = ops.stack([ops.sum(m2) for m2 in m2s]) / float(num_estimates - 1)
    total = ops.sum(per_variable)
    return {
        "total_variance": total,
        "variance": per_variable,
        "mean_norm": norm_sum / float(num_estimates),
        "snr": _global_norm(means) / ops.sqrt(total),
        "extra_state": extra_values,
    }


def _dense_float32(gradient, variable):
    """A gradient as a dense float32 tensor shaped like its variable.

    The reshape also densifies TensorFlow's IndexedSlices (the gradient of a gather, e.g. an
    embedding lookup), which `convert_to_tensor` passes through unchanged.
    """
    return ops.cast(ops.reshape(gradient, tuple(variable.shape)), "float32")


def _global_norm(tensors: list):
    """The L2 norm of all entries of a list of tensors together."""
    return ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(t)) for t in tensors])))


def _ensure_built(model: keras.Model, x: Any, seed: int) -> None:
    if not model.built:
        with isolated_noise(model, seed):
            model(x, training=False)


def gradient_variance(
    model: keras.Model,
    batch: Any,
    num_estimates: int = 8,
    *,
    estimator: Any = None,
    seed: int | None = None,
    jit_compile: bool | None = None,
) -> GradientVariance:
    """Variance of the training gradient on one batch, from independent estimates.

    Draws `num_estimates` gradients of the model's training loss (the same scalar `fit`
    differentiates: the negative bound plus the estimators' surrogates) on `batch` with the
    current weights and fresh noise, and summarises their spread. The model is not changed:
    its seed generators, baselines and other state are as before the call.

    Args:
        model: a `kvi.VariationalModel`.
        batch: inputs `x` (unsupervised: scored against themselves) or a tuple `(x, y)`.
        num_estimates: independent estimates to draw (>= 2).
        estimator: None for the model's own estimators, or an estimator / alias used by every
            latent instead, or a dict `{latent_name: estimator}`.
        seed: int for reproducible noise; None draws a fresh one.
        jit_compile: compile the estimates with XLA; None follows `model.jit_compile`.

    Returns:
        A `GradientVariance`.

    Example:
        >>> gv = kvi.gradient_variance(vae, x_train, num_estimates=16, seed=0)
        >>> gv.total_variance > 0
        True
        >>> sf = kvi.gradient_variance(vae, x_train, 16, estimator="score_function", seed=0)
        >>> gv.snr > 5 * sf.snr  # the reparameterization gradient is far less noisy
        True
    """
    owner = "gradient_variance"
    check_variational(model, owner)
    num_estimates = check_int(num_estimates, "num_estimates", owner, minimum=2)
    seed = check_seed(seed, owner)
    spec = None if estimator is None else resolve_estimators(estimator, owner)
    x, y = model._unpack(batch)
    _ensure_built(model, x, seed)
    check_latent_names(model, spec, owner)
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError(f"{owner}: the model has no trainable variables.")
    extra = prepare_estimators(model, spec)
    if jit_compile is None:
        jit_compile = bool(getattr(model, "jit_compile", False))

    def run(x, y, seed_pair):
        with estimator_override(model, spec):
            out = gradient_moments(
                model, x, y, num_estimates=num_estimates, seed=seed_pair, extra_state=extra
            )
        for variable, value in zip(extra, out.pop("extra_state")):
            variable.assign(value)
        return out

    out = backend_gradients.function(run, jit_compile=jit_compile, model=model)(
        x, y, _seed_pair(seed)
    )
    out = tree.map_structure(ops.convert_to_numpy, out)
    return GradientVariance(
        total_variance=float(out["total_variance"]),
        variance=dict(zip(variable_names(variables), out["variance"].tolist())),
        mean_norm=float(out["mean_norm"]),
        snr=float(out["snr"]),
        num_estimates=num_estimates,
    )


# ------------------------------------------------------------------------ latent statistics


@dataclasses.dataclass(frozen=True)
class LatentStatistics:
    """Posterior-collapse signals of one latent layer over a data set.

    Attributes:
        kl: mean KL(q(z|x) || p(z)) per example (None without a prior).
        kl_per_dim: mean KL per factor of a factorised latent (`Independent` q and prior),
            shape [D]; closed form where TFP has one, else a one-sample estimate. None when
            the latent is not factorised or has no prior.
        activity: Cov_x(E_q[z_d | x]) per flattened dimension, shape [D].
        active_units: how many dimensions have `activity > threshold` (Burda et al. 2016).
        scales: posterior standard deviations, shape [N, D] (None when q has no stddev).
    """

    kl: float | None
    kl_per_dim: np.ndarray | None
    activity: np.ndarray
    active_units: int
    scales: np.ndarray | None


def _moment(q, name: str):
    try:
        return getattr(q, name)()
    except NotImplementedError:
        return None


def _flatten(t, rows):
    return ops.reshape(ops.cast(t, "float32"), (rows, -1))


def _probe(model: keras.Model, x: Any) -> dict:
    """One forward pass recording every latent's q; returns per-latent tensors."""
    # The scope's objective and sample count only feed the estimators' checks (e.g. a
    # leave-one-out baseline needs K >= 2); the batch itself is not tiled.
    scope = _scope.StepScope(
        objective=getattr(model, "objective", "elbo"),
        num_samples=getattr(model, "num_samples", 1),
        training=False,
    )
    with _scope.recording(scope):
        y_pred = model(x, training=False)
    out, counts = {}, {}
    for site in scope.latents:
        name = site.name
        counts[name] = counts.get(name, 0) + 1
        if counts[name] > 1:
            name = f"{name}_{counts[name] - 1}"
        q, z, prior = site.q, site.z, site.prior
        rows = ops.shape(z)[0]
        mean = _moment(q, "mean")
        if mean is None:  # e.g. a flow: estimate E_q[z] from a few draws.
            seed = backend_random.fold_in(site.seed, 1)
            mean = ops.mean(q.sample(16, seed=seed), axis=0)
        entry = {"mean": _flatten(mean, rows)}
        scale = _moment(q, "stddev")
        if scale is not None:
            entry["scale"] = _flatten(scale, rows)
        if prior is not None:
            if divergences.has_analytic_kl(q, prior):
                entry["kl"] = ops.cast(divergences.analytic_kl(q, prior), "float32")
            else:
                entry["kl"] = ops.cast(divergences.mc_kl_from_samples(q, prior, z), "float32")
            per_dim = divergences.per_dimension(q, prior, z)
            if per_dim is not None:
                entry["kl_per_dim"] = _flatten(per_dim, rows)
        out[name] = entry
    return {"latents": out, "y_pred": y_pred}


def iterate_batches(data: Any, batch_size: int, owner: str) -> Iterator[tuple[Any, Any]]:
    """(x, y) batches of an array, an (x, y) / (x,) tuple or a batched dataset (y = x when
    unsupervised)."""
    return _batching.batches(data, batch_size, owner=owner)


class LatentProbe:
    """A compiled forward pass collecting latent statistics (reused across calls)."""

    def __init__(self, model: keras.Model):
        self.model = model
        self._fn = backend_gradients.function(
            lambda x: _probe(model, x)["latents"], reduce_retracing=True, model=model
        )

    def __call__(
        self,
        data: Any,
        *,
        batch_size: int = 256,
        threshold: float = ACTIVITY_THRESHOLD,
        seed: Any = 0,
        owner: str = "latent_statistics",
    ) -> dict[str, LatentStatistics]:
        batches = iterate_batches(data, batch_size, owner)
        first = next(batches, None)
        if first is None:
            raise ValueError(f"{owner}: the data is empty.")
        _ensure_built(self.model, first[0], 0)
        collected: dict[str, dict[str, list]] = {}
        with isolated_noise(self.model, seed):
            for x, _ in [first, *batches]:
                for name, entry in self._fn(x).items():
                    slot = collected.setdefault(name, {})
                    for key, value in entry.items():
                        slot.setdefault(key, []).append(ops.convert_to_numpy(value))
        stats = {}
        for name, slot in collected.items():
            means = np.concatenate(slot["mean"]).astype(np.float64)
            activity = means.var(axis=0)
            kl = float(np.concatenate(slot["kl"]).mean()) if "kl" in slot else None
            kl_per_dim = (
                np.concatenate(slot["kl_per_dim"]).mean(axis=0) if "kl_per_dim" in slot else None
            )
            scales = np.concatenate(slot["scale"]) if "scale" in slot else None
            stats[name] = LatentStatistics(
                kl=kl,
                kl_per_dim=kl_per_dim,
                activity=activity,
                active_units=int(np.sum(activity > threshold)),
                scales=scales,
            )
        return stats


def latent_statistics(
    model: keras.Model,
    data: Any,
    *,
    batch_size: int = 256,
    threshold: float = ACTIVITY_THRESHOLD,
    seed: int | None = None,
) -> dict[str, LatentStatistics]:
    """Per-latent KL per dimension, active units and posterior scales over a data set.

    Runs the model in inference mode (`training=False`) over `data` and, for each latent
    layer, measures how much each dimension is used: a dimension whose posterior mean does not
    move with x (activity Cov_x(E_q[z_d]) <= `threshold`) and whose KL is near zero has
    collapsed to the prior. The model's state and seed generators are left unchanged.

    Args:
        model: a model with `kvi.layers.Latent` layers (typically a `kvi.VariationalModel`).
        data: inputs as an array, an `(x, y)` tuple, or a batched `tf.data.Dataset`.
        batch_size: examples per forward pass for array data.
        threshold: the activity above which a unit counts as active (0.01 in Burda et al.).
        seed: int for reproducible noise; None draws a fresh one.

    Returns:
        A dict latent layer name -> `LatentStatistics`.

    Example:
        >>> stats = kvi.diagnostics.latent_statistics(vae, x_test, seed=0)
        >>> stats["z"].kl_per_dim.shape  # latent "z" has 8 units
        (8,)
        >>> 0 <= stats["z"].active_units <= 8
        True
    """
    owner = "latent_statistics"
    batch_size = check_int(batch_size, "batch_size", owner)
    if not threshold >= 0:
        raise ValueError(f"{owner}: `threshold` must be >= 0, got {threshold!r}.")
    return LatentProbe(model)(
        data, batch_size=batch_size, threshold=threshold, seed=check_seed(seed, owner), owner=owner
    )


# ------------------------------------------------------------------------------ images


def output_mean(model: keras.Model, y_pred: Any, y: Any) -> Any:
    """The mean of the model's likelihood at `y_pred` (e.g. sigmoid of Bernoulli logits).

    Without a `likelihood` (a compiled Keras loss), the raw output is returned.
    """
    likelihood = getattr(model, "likelihood", None)
    if likelihood is None:
        return ops.convert_to_tensor(y_pred)
    dist, _ = likelihoods.distribution(likelihood, y_pred, ops.convert_to_tensor(y))
    return dist.mean()
