"""Early checks of in-memory training data, with messages that name the culprit."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _arrays(structure, name):
    """Yields (name, array) for every NumPy-like leaf of x or y."""
    if structure is None:
        return
    if isinstance(structure, dict):
        for key, value in structure.items():
            yield from _arrays(value, f"{name}[{key!r}]")
    elif isinstance(structure, (list, tuple)):
        for index, value in enumerate(structure):
            yield from _arrays(value, f"{name}[{index}]")
    elif isinstance(structure, (np.ndarray, tf.Tensor)) or hasattr(structure, "__array__"):
        yield name, np.asarray(structure)


def is_in_memory(x) -> bool:
    return any(True for _ in _arrays(x, "x")) and not isinstance(x, tf.data.Dataset)


def check_arrays(x, y, batch_size: int | None) -> None:
    """Raises ValueError for string data, mismatched lengths, or NaN/Inf values.

    The NaN/Inf message gives the first offending example and its batch index, so the
    bad batch can be found without a debugger.
    """
    batch_size = batch_size or 32
    lengths = {}
    for name, array in [*_arrays(x, "x"), *_arrays(y, "y")]:
        if array.dtype.kind in "USO":
            raise ValueError(
                f"`{name}` must be numeric (float, int or bool); got dtype {array.dtype}."
            )
        if array.ndim == 0:
            raise ValueError(f"`{name}` must have a batch axis; got a scalar.")
        lengths[name] = array.shape[0]
        if array.dtype.kind in "fc":
            finite = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
            if not finite.all():
                row = int(np.argmin(finite))
                raise ValueError(
                    f"`{name}` contains NaN or Inf at example {row} (batch {row // batch_size} "
                    f"with batch_size={batch_size}); expected finite values. Clean the data, or "
                    "pass validate_data=False to fit() to skip this check."
                )
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"`{k}` has {v}" for k, v in lengths.items())
        raise ValueError(f"x and y must have the same number of examples; {shown} examples.")
