"""Early checks of in-memory training data, with messages that name the culprit."""

from __future__ import annotations

import numpy as np

from keras_vi.backend import data as backend_data


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
    elif hasattr(structure, "__array__"):  # NumPy arrays, tensors, pandas objects
        yield name, np.asarray(structure)


def is_in_memory(x) -> bool:
    return any(True for _ in _arrays(x, "x")) and not backend_data.is_dataset(x)


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


def is_single_array(structure) -> bool:
    return (
        structure is not None
        and not isinstance(structure, (dict, list, tuple))
        and any(True for _ in _arrays(structure, "y"))
    )


def num_examples(structure) -> int | None:
    for _, array in _arrays(structure, "x"):
        return int(array.shape[0]) if array.ndim else None
    return None


def check_sample_weight(sample_weight, n: int | None, batch_size: int | None) -> None:
    """Raises ValueError unless `sample_weight` is one finite weight >= 0 per example."""
    batch_size = batch_size or 32
    weights = np.asarray(sample_weight)
    if weights.dtype.kind not in "biuf":
        raise ValueError(f"`sample_weight` must be numeric; got dtype {weights.dtype}.")
    if not (weights.ndim == 1 or (weights.ndim == 2 and weights.shape[1] == 1)):
        raise ValueError(
            "`sample_weight` must hold one weight per example (shape (N,) or (N, 1)); got shape "
            f"{weights.shape}. VariationalModel weights each example's bound, not single "
            "target entries."
        )
    weights = weights.reshape(-1).astype("float64")
    if n is not None and weights.shape[0] != n:
        raise ValueError(
            f"`sample_weight` has {weights.shape[0]} entries, expected one per example ({n})."
        )
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"`sample_weight` must be finite and >= 0; got {float(weights[row])} at example {row} "
            f"(batch {row // batch_size} with batch_size={batch_size})."
        )


SUPPORT_CHECK_ROWS = 8192


def check_support(likelihood, y_pred_shape, target, batch_size: int | None, name: str) -> None:
    """Raises ValueError when a target value lies outside the named likelihood's support.

    The message gives the first offending example, its batch and the value found, e.g. a
    pixel of 255 for `likelihood="bernoulli"` (expected values in [0, 1]).
    """
    from keras_vi import likelihoods

    batch_size = batch_size or 32
    array = next(a for _, a in _arrays(target, name))
    if array.ndim == 0 or array.dtype.kind not in "biuf":
        return
    # In chunks: the check runs in the backend's ops, on its default device, and a whole
    # in-memory dataset copied to an accelerator at once could exhaust its memory.
    for start in range(0, len(array), SUPPORT_CHECK_ROWS):
        checked = likelihoods.support(
            likelihood, y_pred_shape, array[start : start + SUPPORT_CHECK_ROWS]
        )
        if checked is None:
            return
        ok, expected = checked
        ok = np.asarray(ok)
        if not ok.all():
            break
    else:
        return
    row = start + int(np.argmin(ok))
    values = array[row].reshape(-1)
    shown = np.unique(values)[:5].tolist()
    raise ValueError(
        f"`{name}` has values outside the support of likelihood={likelihood!r} at example "
        f"{row} (batch {row // batch_size} with batch_size={batch_size}): found values "
        f"{shown}{'...' if np.unique(values).size > 5 else ''} in {array.dtype} data, expected "
        f"{expected}. For images stored as 0-255 integers divide by 255; pass "
        "validate_data=False to skip this check."
    )
