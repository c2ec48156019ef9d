"""Skipping non-finite training steps, and the state that says why a step was skipped.

A step whose loss terms or gradients are not finite leaves weights, optimizer and baseline
state untouched (the shape of Optax's `apply_if_finite`: the update is applied only when
finite, and a counter of consecutive skips is kept). The per-backend trainer applies the
update conditionally; this module decides which terms are checked, keeps the counters as
model variables (saved with the model) and words the error that `NonFiniteStop`
(`keras_vi.callbacks`) raises after too many consecutive skips.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def add_state(model) -> None:
    """The model's skip counters (same value on every replica, hence first-replica reads)."""
    model._consecutive_skips = model.add_weight(
        shape=(),
        initializer="zeros",
        trainable=False,
        name="consecutive_skips",
        dtype="int32",
        aggregation="only_first_replica",
    )
    model._nonfinite_term = model.add_weight(
        shape=(),
        initializer="zeros",
        trainable=False,
        name="nonfinite_term",
        dtype="int32",
        aggregation="only_first_replica",
    )
    model._skipped_steps = keras.metrics.Sum(name="skipped_steps")
    model._nonfinite_term_names = []


def check(model, out: dict, gradients, check_gradients: bool = True):
    """(all finite, finite flag of each term as one boolean vector) for one step's objective
    and gradients.

    Terms, in the order they are reported: the target's support (a target outside it gives a
    finite but meaningless log-likelihood), the likelihood, each latent's KL, the total KL,
    the loss and (unless the optimizer checks them itself) the gradients.

    Each term is checked through its sum, and all of them by one `isfinite` on the stacked
    sums. A NaN or an infinity anywhere makes a sum non-finite (inf - inf is NaN); finite
    values whose sum overflows float32 (beyond 3e38) count as non-finite too, and a step
    with such values would not be finite either. One sum per gradient tensor costs a third
    of `isfinite` plus `all` on large gradients (a tenth of a VAE step on CPU), and one
    `isfinite` for all terms a handful of operations instead of three per term, which a
    step run op by op (TensorFlow without XLA) pays for. How a tensor is summed: `_total`.
    """
    terms = []
    if out["target_in_support"] is not None:
        terms.append((model._support_text(), [ops.where(out["target_in_support"], 0.0, np.nan)]))
    terms.append(("the likelihood (nll)", [out["nll"]]))
    terms += [(f"the KL of latent {name!r}", [v]) for name, v in out["kl_per_latent"].items()]
    terms.append(("the total KL (latents and Bayesian layers' weight KL)", [out["kl"]]))
    terms.append(("the loss (bound or an estimator's surrogate)", [out["loss"]]))
    if check_gradients:
        terms.append(("the gradients", gradients))
    model._nonfinite_term_names = [name for name, _ in terms]
    sums = [_sum(values) for _, values in terms]
    flags = ops.isfinite(ops.stack(sums))
    return ops.all(flags), flags


def _sum(tensors):
    sums = [_total(ops.cast(t, "float32")) for t in tensors if t is not None]
    if not sums:
        return ops.zeros((), "float32")
    return sums[0] if len(sums) == 1 else ops.sum(ops.stack(sums))


def _total(tensor):
    """The sum of `tensor`'s elements; non-finite when any element is.

    On JAX, a tensor of rank 2 or more is summed as its rows' product with a vector of
    ones, then over the rows: XLA:CPU computes that product faster than it reduces a matrix
    to a scalar (the MNIST VAE's compiled step on a 2-core CPU: 7.05 ms instead of 7.24,
    see benchmarks/README.md). A NaN or an infinity in a row makes its product non-finite
    as it makes a sum. TensorFlow keeps the reduction (the product did not speed its step
    up, with or without XLA).
    """
    shape = tuple(tensor.shape)
    if len(shape) < 2 or shape[-1] is None or keras.backend.backend() != "jax":
        return ops.sum(tensor)
    rows = ops.reshape(tensor, (-1, shape[-1]))
    return ops.sum(ops.matmul(rows, ops.ones((shape[-1],), "float32")))


def below_limit(model, consecutive_skips):
    """Whether a step may update the model: false once `max_consecutive_skips` consecutive
    steps were skipped (None when there is no limit).

    From then on every step is skipped until `fit` starts again, so a model's weights,
    optimizer and baseline state stay those of the step that reached the limit however
    late the host reads the count (`kvi.callbacks.NonFiniteStop` reads it a window of steps
    late, without making the host wait for a step; `train_on_batch` raises at once).
    """
    if model.max_consecutive_skips is None:
        return None
    return ops.less(consecutive_skips, model.max_consecutive_skips)


def record(model, ok, flags) -> None:
    """Counts a skipped step (ok false) and remembers the first non-finite term of the last
    step that had one."""
    first_bad = ops.cast(ops.argmin(ops.cast(flags, "int32")), "int32")
    term = ops.convert_to_tensor(model._nonfinite_term)
    skips = ops.convert_to_tensor(model._consecutive_skips)
    model._nonfinite_term.assign(ops.where(ops.all(flags), term, first_bad))
    model._consecutive_skips.assign(ops.where(ok, 0, skips + 1))
    model._skipped_steps.update_state(1.0 - ops.cast(ok, "float32"))


def consecutive_skips(model) -> int:
    from keras_vi.backend import trainer

    return int(keras.ops.convert_to_numpy(trainer.current_value(model, model._consecutive_skips)))


def skips_snapshot(model):
    """The consecutive-skip count now, as an array to read later without waiting now."""
    from keras_vi.backend import trainer

    return trainer.snapshot(model, model._consecutive_skips)


def message(model, limit: int) -> str:
    index = int(keras.ops.convert_to_numpy(model._nonfinite_term))
    names = model._nonfinite_term_names
    term = names[index] if index < len(names) else "an unknown term"
    return (
        f"Training stopped after {limit} consecutive steps with non-finite values (each was "
        f"skipped: weights, optimizer and baseline state untouched). In the last one, "
        f"{term} was the first non-finite term. Check the data, the learning rate and the "
        "scales of the distributions, or raise `max_consecutive_skips`."
    )
