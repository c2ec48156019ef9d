"""`kvi.expectation`: Monte Carlo expectations with a chosen gradient estimator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops

from keras_vi import _layout, _scope, estimators, objectives
from keras_vi.backend import distributions as tfd
from keras_vi.backend import gradients
from keras_vi.backend import random as backend_random

__all__ = ["expectation"]


def _align(values: Any, log_q: Any):
    """Brings f(z) [S, ...] and log q(z) [S, ...] to one shape.

    Extra trailing axes of log q (independent batch members that f sums over) are summed;
    extra axes of f (several outputs per sample) are averaged, matching the value's mean.
    """
    f_rank, q_rank = len(values.shape), len(log_q.shape)
    if q_rank > f_rank:
        log_q = ops.sum(log_q, axis=tuple(range(f_rank, q_rank)))
    elif f_rank > q_rank:
        values = ops.mean(values, axis=tuple(range(q_rank, f_rank)))
    return values, log_q


def _compatible(shape, other) -> bool:
    """Whether two static shapes can describe the same tensor (None matches any size)."""
    shape, other = tuple(shape), tuple(other)
    return len(shape) == len(other) and all(
        a is None or b is None or a == b for a, b in zip(shape, other)
    )


def _check_objective(objective, est):
    """The objective in canonical form (see `objectives.check_objective`), or None."""
    if objective is not None:
        if not isinstance(objective, objectives.Renyi) and objective not in objectives.OBJECTIVES:
            raise ValueError(
                f"Unknown `objective` {objective!r} for kvi.expectation; expected None (the "
                "mean of fn), 'elbo', 'iwae' or kvi.objectives.Renyi(alpha) (fn is then the "
                "log joint density log p(x, z))."
            )
        # Any K >= 1 here: with one draw a multi-sample bound is that draw's log-weight.
        objective = objectives.check_objective(objective, num_samples=2)
    if objective is not None and est.kl == "analytic":
        raise ValueError(
            f"estimator={type(est).__name__}() replaces log q(z) by a closed-form KL to a "
            f"prior, which kvi.expectation(objective={objective!r}) does not have. Use "
            "objective=None and put the KL in fn yourself."
        )
    return objective


def _baseline_inputs(inputs, num_samples: int):
    """[*batch, F] features -> [S * prod(batch), F] rows, sample-major like the model's."""
    if inputs is None:
        return None
    inputs = ops.convert_to_tensor(inputs)
    return _layout.tile(ops.reshape(inputs, (-1, inputs.shape[-1])), num_samples)


def expectation(
    fn: Callable[[Any], Any],
    q: tfd.Distribution,
    estimator: Any = "auto",
    num_samples: int = 1,
    seed: Any = None,
    *,
    objective: str | objectives.Renyi | None = None,
    baseline_inputs: Any = None,
    maximize: bool | None = None,
) -> Any:
    """E_q[fn(z)] (or a variational bound) by Monte Carlo, with the chosen estimator's gradient.

    With `objective=None` the value is the mean of `fn(z)` over the `num_samples` draws (and
    any batch axes). Its gradient is the estimator's: pathwise through z for
    `Reparameterization`, `(fn(z) - b) grad log q(z)` for `ScoreFunction`, the relaxed path
    for `GumbelSoftmax`, plus `fn`'s own variables.

    With `objective="elbo"`, `"iwae"` or `kvi.objectives.Renyi(alpha)`, `fn` is the log joint
    density log p(x, z) of the samples (an unnormalised target, like
    `tfp.vi.monte_carlo_variational_loss`'s `target_log_prob_fn`), kvi.expectation subtracts
    log q(z) itself, and the value is the ELBO (mean of the log-weights), the IWAE bound (mean
    over batch members of log mean_k exp(log w_k), the draws being the K importance samples)
    or the Rényi bound of order alpha. This is where the
    estimators that change how log q(z) is differentiated apply: `StickingTheLanding`,
    `DoublyReparameterized` and `VIMCO` (the last two need `objective="iwae"` and raise a
    ValueError otherwise). With `objective=None`, `"stl"` is the plain pathwise estimator,
    since fn's own use of q is not known.

    q may be a joint distribution (`tfd.JointDistributionSequential`, `...Named`,
    `...Coroutine`, or their AutoBatched variants): `fn` then receives its structured
    sample (a list, dict or tuple of parts, each with leading axis `num_samples`), and
    `"auto"` picks `Reparameterization` only when every part is fully reparameterized.

    Args:
        fn: maps samples of shape `[num_samples, *q.batch_shape, *q.event_shape]` (for a
            joint q, the structure of such parts) to values with leading axis
            `num_samples`. For an objective it must return log p(x, z) of shape
            `[num_samples, *q.batch_shape]`.
        q: the distribution to average over.
        estimator: `"auto"`, an alias, or a `kvi.estimators.Estimator`. Pass the same object
            on every call to keep the state of a `MovingAverage` or `Learned` baseline.
        num_samples: Monte Carlo draws (K for `objective="iwae"`; any K >= 1 there, K = 1
            being the ELBO).
        seed: int, int32[2] stateless seed, or a `keras.random.SeedGenerator` (advanced on
            every call, so repeated calls draw fresh noise).
        objective: None (mean of fn), `"elbo"`, `"iwae"` or a `kvi.objectives.Renyi`.
        baseline_inputs: features `[*batch, F]` of the batch members (the shape of one
            sample of fn's output, plus a feature axis), fed to a `Learned` baseline's
            network; without them a learned baseline is a learned constant.
        maximize: whether you will ascend the returned value; it sets the direction of the
            auxiliary objective that trains a `Learned` baseline. Default: True for a bound
            (`objective` given), False for a plain expectation (a cost to minimise).

    Returns:
        A scalar tensor.

    Example:
        >>> loc, scale = tf.Variable(1.0), tf.Variable(2.0)
        >>> with tf.GradientTape() as tape:
        ...     value = kvi.expectation(lambda z: (z - 3.0) ** 2, tfd.Normal(loc, scale),
        ...                             estimator="score_function", num_samples=1000, seed=0)
        >>> [round(float(g), 1) for g in tape.gradient(value, [loc, scale])]  # exact: [-4, 4]
        [-3.9, 3.9]
        >>> # The IWAE bound of log p(x) = log N(x; 0, 2) at x = 2, with DReG gradients. With q
        >>> # the exact posterior N(1, 1/2), every importance weight is p(x): the bound is exact.
        >>> x = 2.0
        >>> log_joint = lambda z: tfd.Normal(0.0, 1.0).log_prob(z) + tfd.Normal(z, 1.0).log_prob(x)
        >>> with tf.GradientTape() as tape:
        ...     bound = kvi.expectation(log_joint, tfd.Normal(loc, 0.5**0.5), estimator="dreg",
        ...                             num_samples=16, objective="iwae", seed=0)
        >>> round(float(bound), 4), round(float(tfd.Normal(0.0, 2.0**0.5).log_prob(x)), 4)
        (-2.2655, -2.2655)
        >>> abs(float(tape.gradient(bound, loc))) < 1e-5  # and its DReG gradient is zero
        True
    """
    objectives.check_num_samples(num_samples)
    est = estimators.get(estimator)
    if est == "auto":
        est = (
            estimators.Reparameterization()
            if estimators.is_reparameterized(q)
            else estimators.ScoreFunction()
        )
    objective = _check_objective(objective, est)
    est.validate(q, objective=objective, num_samples=num_samples)
    maximize = objective is not None if maximize is None else bool(maximize)
    tfp_seed = backend_random.draw_seed(seed)

    # Sampling runs in a training scope: estimators that behave differently at evaluation
    # (Gumbel-softmax draws exact samples there) use their training behaviour here.
    step = _scope.StepScope(objective=objective or "elbo", num_samples=num_samples, training=True)
    with _scope.recording(step):
        z = est.sample(q, tfp_seed, sample_shape=[num_samples])

    site = _scope.Site(
        name="expectation",
        q=q,
        z=z,
        prior=None,
        estimator=est,
        inputs=_baseline_inputs(baseline_inputs, num_samples),
        seed=tfp_seed,
        key="expectation",
    )
    step.latents = [site]

    def relaxed_signal(site, value, log_q):
        """fn's learning signal at a relaxed value of the sample (REBAR's control variate)."""
        values = ops.cast(ops.convert_to_tensor(fn(value)), "float32")
        if objective is None:
            return _align(values, log_q)[0]
        return values - log_q

    def run(tape):
        # d log w / dz is taken (on request: DReG) from the tape that watched z.
        z_watched = z if tape is None else tape.watch(z)
        per_sample = _per_sample(fn, q, z_watched, est, objective, num_samples)
        score_log_q = q.log_prob(estimators.stop_gradient_nested(z_watched))
        weights = est.draw_weights(site, step)
        if weights is not None:  # Enumerate: the draws are q's values, weighted by q
            signal, bound = _weighted_sum(per_sample, ops.cast(weights, "float32"))
            value = ops.mean(bound)
        elif objective is None:
            signal, score_log_q = _align(per_sample, score_log_q)
            value = ops.mean(per_sample)
            bound = ops.mean(signal, axis=0)
        else:
            signal = per_sample
            num_bound = objectives.bound_samples([site], objective, num_samples)
            bound = objectives.bound_of(objective, per_sample[:num_bound])
            value = ops.mean(bound)
        site.z = z_watched
        signals = objectives.Signals(
            objective=objective or "elbo",
            num_samples=num_samples,
            training=True,
            kl_weight=ops.zeros(()),
            per_sample=signal,
            bound=bound,
            maximize=maximize,
            layout="samples",
            draw_weights=weights,
            score_log_probs={site.key: score_log_q},
            path_gradient_fn=None
            if tape is None
            else objectives.path_gradient_fn(tape, [site], per_sample),
            relaxed_signal_fn=relaxed_signal,
        )
        return objectives.surrogate_loss(value, [site], signals)

    if not est.reparameterized:
        return run(None)
    return gradients.with_sample_tape(run)


def _weighted_sum(values, weights):
    """fn's values [S, ...] and their sum over the draws weighted by `weights`, which has
    the shape of log q(z) [S, *batch]: extra axes of fn are averaged (as in the value's
    mean); fn must keep q's batch axes, each member weighted by its own probabilities."""
    f_rank, w_rank = len(values.shape), len(weights.shape)
    if f_rank < w_rank:
        raise ValueError(
            "estimator=Enumerate() weights every batch member of q by its own "
            f"probabilities, so `fn` must return one value per draw and batch member, shape "
            f"{tuple(weights.shape)}; got {tuple(values.shape)}."
        )
    if f_rank > w_rank:
        values = ops.mean(values, axis=tuple(range(w_rank, f_rank)))
    return values, ops.sum(weights * values, axis=0)


def _per_sample(fn, q, z, est, objective: str | None, num_samples: int):
    """fn(z) [S, ...] (objective None), or the log-weights fn(z) - log q(z) [S, ...]."""
    values = ops.convert_to_tensor(fn(z))
    if len(values.shape) == 0 or values.shape[0] != num_samples:
        raise ValueError(
            f"`fn` must return values with leading axis num_samples={num_samples}, got "
            f"shape {tuple(values.shape)}."
        )
    values = ops.cast(values, "float32")
    if objective is None:
        return values
    log_q = ops.cast(est.log_prob(q, z), "float32")
    if not _compatible(values.shape, log_q.shape):
        raise ValueError(
            f"With objective={objective!r}, `fn` must return log p(x, z) with the shape "
            f"of log q(z), {tuple(log_q.shape)}; got {tuple(values.shape)}."
        )
    return values - log_q
