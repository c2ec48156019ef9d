"""The row layout of K samples per example.

A step with K samples per example works on K * B rows laid out k-major: row k * B + b is
sample k of example b. Tiling the batch, reshaping per-row values to [K, B] and taking the
first copy of each example all follow from that one rule, written here once.
"""

from __future__ import annotations

from typing import Any

from keras import ops, tree


def tile(structure: Any, k: int) -> Any:
    """[B, ...] -> [K * B, ...] for every tensor of a structure (None kept), k-major."""

    def tile_one(t):
        if t is None:
            return None
        t = ops.convert_to_tensor(t)
        if k == 1:
            return t
        tiled = ops.tile(t, [k] + [1] * (len(t.shape) - 1))
        tail = tuple(t.shape[1:])
        if tail and all(d is not None for d in tail):
            # Keras before 3.11 loses the static shape in ops.tile; later layers need it.
            tiled = ops.reshape(tiled, (-1, *tail))
        return tiled

    return tree.map_structure(tile_one, structure)


def to_samples(rows, k: int):
    """[K * B, ...] -> [K, B, ...]."""
    rows = ops.convert_to_tensor(rows)
    return ops.reshape(rows, (k, -1) + tuple(ops.shape(rows)[1:]))


def to_rows(samples):
    """[K, B, ...] -> [K * B, ...]."""
    samples = ops.convert_to_tensor(samples)
    return ops.reshape(samples, (-1,) + tuple(ops.shape(samples)[2:]))


def first_copy(structure: Any, batch_size) -> Any:
    """The rows of sample 0 of each example: [K * B, ...] -> [B, ...]."""
    return tree.map_structure(lambda t: t[:batch_size], structure)
