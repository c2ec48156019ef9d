"""The one loop over data in batches, outside `fit`: for `kvi.predict_samples`,
`kvi.log_likelihood` and the diagnostics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
from keras import tree

from keras_vi.backend import data as backend_data


def batches(
    data: Any, batch_size: int, *, targets: bool = True, owner: str = "keras_vi"
) -> Iterator[Any]:
    """Batches of in-memory arrays (any structure) or of a batched dataset, in order.

    With `targets` (the default), `data` is unpacked as Keras unpacks `fit`'s data (x, an
    `(x, y)` or `(x, y, sample_weight)` tuple) and each batch is `(x, y)`, with y = x for
    unsupervised data. Without, `data` is the inputs alone (a tuple is several inputs) and
    each batch is x; a dataset's `(x, y)` elements give their x.
    """
    if backend_data.is_dataset(data):
        for element in data:
            x, y, _ = keras.utils.unpack_x_y_sample_weight(element)
            yield (x, x if y is None else y) if targets else x
        return
    if targets:
        if isinstance(data, list):
            data = tuple(data)
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if x is None:
            raise ValueError(f"{owner}: the data holds no inputs.")
        data = (x, x if y is None else y)
        leaves = tree.flatten(x)
    else:
        leaves = tree.flatten(data)
        if not leaves:
            raise ValueError(f"{owner}: `x` must contain at least one array.")
    n = int(leaves[0].shape[0])
    for start in range(0, n, batch_size):
        yield tree.map_structure(lambda a, s=start: a[s : s + batch_size], data)
