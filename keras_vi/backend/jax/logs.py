"""A step's logs, carried out of the compiled JAX step as one array.

Keras's JAX `fit` converts every log value to a Python float after every step (in a
background thread while no callback has a batch-end hook). Each value is its own array, so
each conversion is its own device-to-host transfer and wait; on a GPU, the seven scalars a
`VariationalModel` step reports cost it about 40% of its steps per second against a step
that reports only its loss. `StepLogs` stacks the scalar entries into one vector inside the
compiled step and hands them back, outside it, as `LogValue`s that share one transfer of
that vector, made the first time any of them is read.

A `StepLogs` is a dict: inside the compiled step its values are arrays (slices of the
vector), and entries a subclass adds, replaces or removes are carried as they are.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np


class StepLogs(dict):
    """`{name: value}` whose float scalars leave a compiled step as one stacked array."""

    def __init__(self, entries: dict):
        # Only while the step is traced: run eagerly, stacking would add work.
        packed = tuple(
            name
            for name, value in entries.items()
            if isinstance(value, jax.core.Tracer) and _is_float_scalar(value)
        )
        vector = jnp.stack([entries[n].astype("float32") for n in packed]) if packed else None
        entries = {
            name: vector[packed.index(name)] if name in packed else value
            for name, value in entries.items()
        }
        super().__init__(entries)
        self._vector = vector
        self._packed = packed
        # What each packed name held when the logs were made: an entry replaced since
        # (`logs["loss"] = ...`, `update`) is carried as itself, not from the vector.
        self._made = {name: dict.__getitem__(self, name) for name in packed}


def _flatten(logs: StepLogs):
    keys = tuple(logs.keys())
    from_vector = tuple(
        name in logs._made and dict.__getitem__(logs, name) is logs._made[name] for name in keys
    )
    extras = [dict.__getitem__(logs, k) for k, packed in zip(keys, from_vector) if not packed]
    return (logs._vector, *extras), (logs._packed, keys, from_vector)


def _unflatten(aux, children):
    packed, keys, from_vector = aux
    vector, extras = children[0], iter(children[1:])
    if isinstance(vector, jax.Array) and not isinstance(vector, jax.core.Tracer):
        host = _HostCopy(vector)
        values = [LogValue(host, i) for i in range(len(packed))]
    elif vector is not None and hasattr(vector, "shape") and len(packed):
        values = [vector[i] for i in range(len(packed))]
    else:  # a placeholder JAX passes through tree utilities (None, object())
        values = [vector] * len(packed)
    entries = {
        key: values[packed.index(key)] if packed_entry else next(extras)
        for key, packed_entry in zip(keys, from_vector)
    }
    logs = StepLogs.__new__(StepLogs)
    dict.__init__(logs, entries)
    logs._vector, logs._packed = vector, packed
    logs._made = {key: entries[key] for key, packed_entry in zip(keys, from_vector) if packed_entry}
    return logs


jax.tree_util.register_pytree_node(StepLogs, _flatten, _unflatten)


class _HostCopy:
    """The stacked vector, copied to the host once, when the first value is read."""

    def __init__(self, vector):
        self.vector = vector
        self._values = None
        self._lock = threading.Lock()

    def values(self) -> np.ndarray:
        with self._lock:
            if self._values is None:
                self._values = np.asarray(self.vector)
            return self._values


class LogValue:
    """One logged scalar of a compiled step; `float(value)` reads it (one transfer for all)."""

    __slots__ = ("_host", "_index")

    def __init__(self, host: _HostCopy, index: int):
        self._host, self._index = host, index

    def __float__(self) -> float:
        return float(self._host.values()[self._index])

    def __array__(self, dtype=None, copy=None):
        value = self._host.values()[self._index]
        return np.asarray(value, dtype=dtype)

    def __repr__(self) -> str:
        return repr(float(self))

    def __format__(self, spec: str) -> str:
        return format(float(self), spec)


def _is_float_scalar(value) -> bool:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    return shape == () and dtype is not None and jnp.issubdtype(dtype, jnp.floating)
