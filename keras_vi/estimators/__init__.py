"""Pluggable gradient estimators for latent variables."""

from __future__ import annotations

import importlib
import pkgutil

import keras

from keras_vi.estimators import baselines
from keras_vi.estimators.base import (
    ALIASES,
    Estimator,
    is_joint,
    is_reparameterized,
    path_only_log_prob,
    stop_gradient_nested,
)
from keras_vi.estimators.relaxation import GumbelSoftmax
from keras_vi.estimators.reparameterization import (
    DoublyReparameterized,
    Reparameterization,
    StickingTheLanding,
)
from keras_vi.estimators.score_function import ScoreFunction
from keras_vi.estimators.vimco import VIMCO, leave_one_out_bounds

__all__ = [
    "DisARM",
    "DoublyReparameterized",
    "Enumerate",
    "Estimator",
    "GumbelSoftmax",
    "REBAR",
    "RELAX",
    "Reparameterization",
    "ScoreFunction",
    "StickingTheLanding",
    "SumAndSample",
    "VIMCO",
    "baselines",
    "get",
    "is_joint",
    "is_reparameterized",
    "leave_one_out_bounds",
    "path_only_log_prob",
    "resolve_auto",
    "stop_gradient_nested",
]

# Every module of this package, so an estimator added as a new file registers its alias
# (Estimator.__init_subclass__) and is reachable as kvi.estimators.<ClassName>.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def __getattr__(name: str):
    for cls in ALIASES.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(identifier) -> Estimator | str:
    """Resolves an estimator identifier. `"auto"` is kept as the string and resolved per q."""
    if identifier == "auto" or isinstance(identifier, Estimator):
        return identifier
    if isinstance(identifier, str):
        if identifier not in ALIASES:
            raise ValueError(
                f"Unknown `estimator` {identifier!r}; expected 'auto', one of "
                f"{sorted(ALIASES)} or a keras_vi.estimators.Estimator instance."
            )
        return ALIASES[identifier]()
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise ValueError(
        f"`estimator` must be 'auto', a string alias or an Estimator; got {identifier!r}."
    )


def resolve_auto(reparameterized: bool) -> Estimator:
    """What `estimator="auto"` means for a q: pathwise if possible, else REINFORCE + average."""
    if reparameterized:
        return Reparameterization()
    return ScoreFunction(baseline=baselines.MovingAverage())
