"""Argument checks shared by keras_vi's public objects.

Each raises a ValueError naming the argument, the value given and what was expected, before
anything is built or traced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value: Any, name: str, owner: str | None = None) -> int:
    """`value` if it is an int >= 1."""
    if not (is_int(value) and value >= 1):
        raise ValueError(f"{_prefix(owner)}`{name}` must be a positive integer, got {value!r}.")
    return value


def int_at_least(value: Any, name: str, minimum: int, owner: str | None = None) -> int:
    """`value` if it is an int >= minimum."""
    if not (is_int(value) and value >= minimum):
        raise ValueError(
            f"{_prefix(owner)}`{name}` must be an integer >= {minimum}, got {value!r}."
        )
    return value


def finite_number(
    value: Any,
    name: str,
    owner: str | None = None,
    minimum: float | None = None,
    exclusive: bool = False,
) -> float:
    """`value` as a float if it is a finite number (>= minimum, or > with `exclusive`)."""
    if not (is_number(value) and math.isfinite(value)):
        bound = "" if minimum is None else f" {'>' if exclusive else '>='} {minimum}"
        raise ValueError(f"{_prefix(owner)}`{name}` must be a finite number{bound}, got {value!r}.")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ValueError(
            f"{_prefix(owner)}`{name}` must be {'>' if exclusive else '>='} {minimum}, "
            f"got {value!r}."
        )
    return float(value)


def one_of(value: Any, name: str, choices: Iterable, owner: str | None = None) -> Any:
    """`value` if it is one of `choices`."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{_prefix(owner)}Unknown `{name}` {value!r}; expected one of {choices}.")
    return value
