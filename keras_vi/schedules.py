"""Schedules of the KL weight as a function of the global training step.

Every schedule works on Python numbers and on tensors, so the model can evaluate it inside
the compiled training step (from `optimizer.iterations`, which checkpoints restore).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vi import _checks

__all__ = ["Schedule", "Constant", "Linear", "Cyclical", "Sigmoid", "get"]


def _check_finite(value, name, owner, minimum=None, strict=False):
    return _checks.finite_number(value, name, owner, minimum=minimum, exclusive=strict)


def _check_steps(value, name, owner):
    return _checks.positive_int(value, name, owner)


class Schedule:
    """Base class: `schedule(step) -> weight`, for a Python int or an integer tensor.

    Subclasses implement `value(step)` on a float32 tensor with `keras.ops`, so the
    schedule runs inside the compiled training step, and `get_config`.

    Example:
        >>> @keras.saving.register_keras_serializable(package="my_schedules")
        ... class Step(kvi.schedules.Schedule):
        ...     def __init__(self, at: int):
        ...         self.at = at
        ...     def value(self, step):
        ...         return keras.ops.cast(step >= self.at, "float32")
        ...     def get_config(self):
        ...         return {"at": self.at}
        >>> [float(Step(500)(step)) for step in (499, 500)]
        [0.0, 1.0]
        >>> vae = kvi.VariationalModel(x, logits, likelihood="bernoulli", kl_weight=Step(500))
        >>> float(vae.kl_weight.numpy())  # the weight at step 0
        0.0
    """

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return self.value(step)

    def value(self, step: Any) -> Any:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_vi")
class Constant(Schedule):
    """A fixed weight.

    Args:
        value: the weight (>= 0).

    Example:
        >>> float(kvi.schedules.Constant(0.5)(1000))
        0.5
    """

    def __init__(self, value: float = 1.0):
        self.constant = _check_finite(value, "value", "Constant", minimum=0.0)

    def value(self, step):
        return ops.full_like(step, self.constant)

    def get_config(self):
        return {"value": self.constant}


@keras.saving.register_keras_serializable(package="keras_vi")
class Linear(Schedule):
    """Linear warm-up from `start` to `stop` over `warmup_steps`, then constant.

    Args:
        warmup_steps: steps of the ramp, a positive integer.
        start: the weight at step 0 (>= 0).
        stop: the weight from step `warmup_steps` on (>= 0).

    Example:
        >>> warmup = kvi.schedules.Linear(warmup_steps=1000)
        >>> [float(warmup(step)) for step in (0, 500, 1000, 5000)]
        [0.0, 0.5, 1.0, 1.0]
    """

    def __init__(self, warmup_steps: int, start: float = 0.0, stop: float = 1.0):
        self.warmup_steps = _check_steps(warmup_steps, "warmup_steps", "Linear")
        self.start = _check_finite(start, "start", "Linear", minimum=0.0)
        self.stop = _check_finite(stop, "stop", "Linear", minimum=0.0)

    def value(self, step):
        fraction = ops.clip(step / self.warmup_steps, 0.0, 1.0)
        return self.start + (self.stop - self.start) * fraction

    def get_config(self):
        return {"warmup_steps": self.warmup_steps, "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="keras_vi")
class Cyclical(Schedule):
    """Fu et al. (2019) cyclical annealing.

    Each cycle of `cycle_steps` rises linearly from `start` to `stop` over the first `ratio`
    of the cycle and stays at `stop` for the rest. After `num_cycles` cycles (if given) the
    weight stays at `stop`.

    Args:
        cycle_steps: steps per cycle, a positive integer.
        num_cycles: cycles before the weight stays at `stop`; None cycles forever.
        ratio: fraction of each cycle spent rising, in (0, 1].
        start: the weight at the start of each cycle (>= 0).
        stop: the weight at the top of each cycle (>= 0).

    Example:
        >>> sched = kvi.schedules.Cyclical(cycle_steps=1000, num_cycles=4, ratio=0.5)
        >>> [float(sched(step)) for step in (0, 250, 500, 999, 1000, 4000)]
        [0.0, 0.5, 1.0, 1.0, 0.0, 1.0]
    """

    def __init__(
        self,
        cycle_steps: int,
        num_cycles: int | None = None,
        ratio: float = 0.5,
        start: float = 0.0,
        stop: float = 1.0,
    ):
        self.cycle_steps = _check_steps(cycle_steps, "cycle_steps", "Cyclical")
        self.num_cycles = (
            None if num_cycles is None else _check_steps(num_cycles, "num_cycles", "Cyclical")
        )
        self.ratio = _check_finite(ratio, "ratio", "Cyclical", minimum=0.0, strict=True)
        if self.ratio > 1.0:
            raise ValueError(f"Cyclical: `ratio` must be in (0, 1], got {ratio!r}.")
        self.start = _check_finite(start, "start", "Cyclical", minimum=0.0)
        self.stop = _check_finite(stop, "stop", "Cyclical", minimum=0.0)

    def value(self, step):
        position = ops.mod(step, float(self.cycle_steps)) / self.cycle_steps
        weight = self.start + (self.stop - self.start) * ops.minimum(position / self.ratio, 1.0)
        if self.num_cycles is not None:
            weight = ops.where(step >= self.num_cycles * self.cycle_steps, self.stop, weight)
        return weight

    def get_config(self):
        return {
            "cycle_steps": self.cycle_steps,
            "num_cycles": self.num_cycles,
            "ratio": self.ratio,
            "start": self.start,
            "stop": self.stop,
        }


@keras.saving.register_keras_serializable(package="keras_vi")
class Sigmoid(Schedule):
    """A logistic ramp: stop / (1 + exp(-steepness * (step - midpoint))).

    Args:
        midpoint: the step at which the weight is `stop / 2` (>= 0).
        steepness: slope of the logistic in 1/steps (> 0).
        stop: the weight the ramp approaches (>= 0).

    Example:
        >>> float(kvi.schedules.Sigmoid(midpoint=2000, steepness=0.005)(2000))
        0.5
    """

    def __init__(self, midpoint: float, steepness: float, stop: float = 1.0):
        self.midpoint = _check_finite(midpoint, "midpoint", "Sigmoid", minimum=0.0)
        self.steepness = _check_finite(steepness, "steepness", "Sigmoid", minimum=0.0, strict=True)
        self.stop = _check_finite(stop, "stop", "Sigmoid", minimum=0.0)

    def value(self, step):
        return self.stop * ops.sigmoid(self.steepness * (step - self.midpoint))

    def get_config(self):
        return {"midpoint": self.midpoint, "steepness": self.steepness, "stop": self.stop}


def get(identifier):
    """A Schedule from a number, a Schedule, a config dict, or any callable step -> float."""
    if isinstance(identifier, Schedule):
        return identifier
    if isinstance(identifier, (int, float)) and not isinstance(identifier, bool):
        return Constant(identifier)
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(
        f"A KL-weight schedule must be a number, a kvi.schedules.Schedule or a callable "
        f"step -> float; got {identifier!r}."
    )
