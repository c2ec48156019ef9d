"""What a `VariationalModel` step reports: its metric trackers, their updates, the logs."""

from __future__ import annotations

import keras
from keras import ops

from keras_vi import _layout

FIXED_METRICS = ("loss", "elbo", "nll", "kl", "kl_weight", "regularization")
# Which way each reported quantity improves, for monitoring callbacks left on mode="auto".
METRIC_MODES = {"loss": "min", "elbo": "max", "nll": "min", "kl": "min", "regularization": "min"}


def metric_mode(monitor: str) -> str | None:
    """The direction ("min" or "max") of a keras_vi metric name, with or without "val_"."""
    name = monitor.removeprefix("val_")
    if name in METRIC_MODES:
        return METRIC_MODES[name]
    if name.startswith("kl/"):
        return "min"
    return None


def trackers() -> dict:
    return {name: keras.metrics.Mean(name=name) for name in FIXED_METRICS}


def update(model, out: dict, y, batch_size, ok=None, sample_weight=None) -> None:
    """Epoch means: `loss` (and `kl_weight`, `regularization`) per batch row as Keras
    weighs its loss; the bound's terms by each example's sample weight.

    A skipped (non-finite) step (`ok` false) adds nothing to the means.
    """
    weight = ops.cast(batch_size, "float32")
    example_weight = out["example_weight"]
    out = dict(out)
    if out["regularization"] is None:
        out["regularization"] = ops.zeros(())
    if ok is not None:
        keep = ops.cast(ok, "float32")
        weight = weight * keep
        example_weight = example_weight * keep
        for key in ("loss_value", "elbo", "nll", "kl", "regularization"):
            out[key] = ops.where(ok, out[key], 0.0)
        out["kl_per_latent"] = {k: ops.where(ok, v, 0.0) for k, v in out["kl_per_latent"].items()}
    per_row = {"loss": out["loss_value"], "kl_weight": ops.convert_to_tensor(model.kl_weight)}
    if model._reports_regularization:  # otherwise not shown, and its update would cost a step
        per_row["regularization"] = out["regularization"]
    per_example = {"elbo": out["elbo"], "nll": out["nll"], "kl": out["kl"]}
    for name, value in per_row.items():
        model._trackers[name].update_state(value, sample_weight=weight)
    for name, value in per_example.items():
        model._trackers[name].update_state(value, sample_weight=example_weight)
    for name, value in out["kl_per_latent"].items():
        if name in model._latent_trackers:
            model._latent_trackers[name].update_state(value, sample_weight=example_weight)
    if out["target_in_support"] is not None:
        model._support_violations.update_state(1.0 - ops.cast(out["target_in_support"], "float32"))
    compile_metrics = compiled_metrics(model)
    if compile_metrics is not None:
        first = _layout.first_copy(out["y_pred"], batch_size)
        compile_metrics.update_state(y, first, sample_weight)


def compiled_metrics(model):
    """The metrics given to `compile(metrics=...)`, or None.

    Keras keeps them in `Model._compile_metrics` (a private attribute; the public
    `compiled_metrics` was removed in Keras 3). A `train_step` override that reports them
    must update that object; `tests/test_architecture.py::test_private_keras_apis_in_place`
    fails if a Keras release renames it.
    """
    return getattr(model, "_compile_metrics", None)


def logs(model) -> dict:
    """`{name: result}` of every reported metric (compiled metrics flattened in)."""
    result = {}
    for metric in model.metrics:
        value = metric.result()
        if isinstance(value, dict):
            result.update(value)
        else:
            result[metric.name] = value
    return result


def as_vectors(logs_: dict) -> dict:
    """Every log value as a length-1 vector (see the TensorFlow trainer's multi-worker logs)."""
    return {name: ops.reshape(value, (1,)) for name, value in logs_.items()}


__all__ = ["FIXED_METRICS", "METRIC_MODES", "logs", "metric_mode", "trackers", "update"]
