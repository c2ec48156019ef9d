"""Posterior predictive samples and their moments."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops, tree

from keras_vi import _batching, _checks
from keras_vi.backend import distributions as tfd
from keras_vi.backend import gradients
from keras_vi.layers.bayesian import kl_disabled

__all__ = ["predict_samples", "predictive_mean_std"]

# Examples per chunk when `batch_size` is not given (each chunk runs num_samples passes).
_DEFAULT_BATCH = 512

_SAMPLERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_num_samples(num_samples: Any) -> int:
    return _checks.positive_int(num_samples, "num_samples")


def _sampler(model, num_samples: int, training: bool):
    """A traced function x -> outputs of shape [K, batch, ...], cached per model.

    The K samples come from K forward passes in a loop (`ops.scan`), not from one pass over
    K tiled copies: a Flipout layer draws one weight perturbation per call (rows differ
    only by random signs), so copies in one call are uncorrelated but not independent, and
    their spread would be a poor estimate of the predictive spread.
    """
    cache = _SAMPLERS.setdefault(model, {})
    key = (num_samples, training)
    if key not in cache:

        def run(x):
            with kl_disabled():
                # The first pass runs outside the loop: it gives the loop its structure, and
                # builds an unbuilt model outside it.
                first = model(x, training=training)
                if num_samples == 1:
                    return tree.map_structure(lambda t: ops.expand_dims(t, 0), first)

                # The state the passes write (each layer's seed generator) is carried
                # through the loop and written back after it: JAX's scan cannot write
                # variables from inside its body.
                state = list(model.non_trainable_variables)

                def step(carry, _):
                    values, _ = carry
                    with keras.StatelessScope(state_mapping=list(zip(state, values))) as scope:
                        outputs = model(x, training=training)
                    values = [
                        value if new is None else new
                        for value, new in zip(values, map(scope.get_current_value, state))
                    ]
                    # The outputs are also the carry: TensorFlow's scan wants outputs shaped
                    # like the carry.
                    return (values, outputs), (values, outputs)

                (values, _), (_, rest) = ops.scan(
                    step, ([v.value for v in state], first), length=num_samples - 1
                )
                for variable, value in zip(state, values):
                    variable.assign(value)
            return tree.map_structure(
                lambda t, r: ops.concatenate([ops.expand_dims(t, 0), r], axis=0), first, rest
            )

        cache[key] = gradients.function(run, reduce_retracing=True, model=weakref.ref(model))
    return cache[key]


def _batches(x, batch_size: int | None):
    for batch in _batching.batches(x, batch_size or _DEFAULT_BATCH, targets=False):
        yield tree.map_structure(ops.convert_to_tensor, batch)


def predict_samples(
    model,
    x: Any,
    num_samples: int = 100,
    *,
    batch_size: int | None = None,
    training: bool = False,
) -> Any:
    """Draws `num_samples` predictions per example from a model with stochastic layers.

    Runs `num_samples` forward passes (inside one traced loop), so every sample
    has fresh weight noise in every Bayesian layer and fresh z in every `Latent` layer.
    Bayesian layers sample their weights whatever `training` is and skip their KL here.
    Within one pass, a weight-sampling layer (`DenseReparameterization`, ...) uses the same
    weights for all examples of a chunk, so `samples[k]` is a coherent function draw for
    models made only of such layers; Flipout and local-reparameterization layers give each
    example its own noise, so only per-example statistics are meaningful for them.

    Args:
        model: a Keras model (a `kvi.VariationalModel` or a plain `keras.Model`).
        x: inputs: an array, a tensor, a nest of them, or a dataset of batches (of `x` or
            of `(x, y)` tuples).
        num_samples: predictions per example (>= 1).
        batch_size: examples per chunk (each chunk runs `num_samples` passes); default 512.
        training: passed to the model (True also samples e.g. dropout masks: MC dropout).

    Returns:
        A NumPy array of shape `(num_samples, num_examples, *output_shape)`, or the same
        nest of arrays as the model's outputs.

    Example:
        >>> samples = kvi.predict_samples(model, x_grid, num_samples=200)
        >>> samples.shape  # 200 draws of the 50 outputs (2 numbers each)
        (200, 50, 2)
        >>> mean, std = samples.mean(axis=0), samples.std(axis=0)
    """
    num_samples = _check_num_samples(num_samples)
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be None or a positive integer, got {batch_size!r}."
            )
    run = _sampler(model, num_samples, bool(training))
    chunks = [
        tree.map_structure(ops.convert_to_numpy, run(batch)) for batch in _batches(x, batch_size)
    ]
    if not chunks:
        raise ValueError("`x` is empty: no examples to predict.")
    return tree.map_structure(lambda *parts: np.concatenate(parts, axis=1), *chunks)


def predictive_mean_std(
    samples: np.ndarray,
    distribution_fn: Callable[[Any], tfd.Distribution] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the posterior predictive from stacked samples.

    Without `distribution_fn`, these are the moments of the sampled outputs over the first
    axis (the epistemic spread of the network's output). With it, each sampled output is
    turned into the likelihood's distribution over the target, and the law of total variance
    combines both sources: `Var[y] = Var_w(E[y | w]) + E_w(Var[y | w])`.

    Args:
        samples: an array of shape `(num_samples, ...)`, e.g. from `kvi.predict_samples`.
        distribution_fn: optional callable mapping a float32 tensor of outputs to a
            `tfd.Distribution` over the target with `mean()` and `variance()`.

    Returns:
        `(mean, std)`, two NumPy arrays of shape `samples.shape[1:]` (or the distribution's
        batch and event shape).

    Example:
        >>> samples = kvi.predict_samples(model, x_grid, num_samples=200)  # (200, 50, 2)
        >>> mean, std = kvi.predictive_mean_std(
        ...     samples, lambda out: tfd.Normal(out[..., :1], keras.ops.softplus(out[..., 1:])))
        >>> mean.shape, std.shape
        ((50, 1), (50, 1))
        >>> bool(np.all(std >= samples[..., :1].std(axis=0)))  # noise adds to the spread
        True
    """
    samples = np.asarray(samples)
    if samples.ndim < 1 or samples.shape[0] < 1:
        raise ValueError(
            f"`samples` must have a leading sample axis of length >= 1, got shape {samples.shape}."
        )
    if distribution_fn is None:
        return samples.mean(axis=0), samples.std(axis=0)
    if not callable(distribution_fn):
        raise ValueError(
            "`distribution_fn` must be None or a callable outputs -> tfd.Distribution, got "
            f"{type(distribution_fn).__name__}."
        )
    dist = distribution_fn(ops.convert_to_tensor(samples, "float32"))
    if not isinstance(dist, tfd.Distribution):
        raise ValueError(
            f"`distribution_fn` must return a tfd.Distribution, got {type(dist).__name__}."
        )
    means = np.asarray(dist.mean())
    variances = np.asarray(dist.variance())
    mean = means.mean(axis=0)
    variance = means.var(axis=0) + variances.mean(axis=0)
    return mean, np.sqrt(variance)
