"""Dense networks written with keras.ops on a flow block's own weights (optionally masked)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_vi import _checks


def check_hidden_units(hidden_units, owner: str) -> tuple[int, ...]:
    """`hidden_units` as a tuple of positive ints, or a ValueError."""
    if isinstance(hidden_units, (int, str)) or not isinstance(hidden_units, Sequence):
        raise ValueError(
            f"{owner}: `hidden_units` must be a list or tuple of positive integers (the widths "
            f"of the conditioner's hidden layers, e.g. (32, 32)), got {hidden_units!r}."
        )
    for width in hidden_units:
        if not (_checks.is_int(width) and width >= 1):
            raise ValueError(
                f"{owner}: `hidden_units` must be a list or tuple of positive integers, got "
                f"{hidden_units!r}."
            )
    return tuple(int(width) for width in hidden_units)


def check_activation(activation, owner: str):
    try:
        return keras.activations.get(activation)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{owner}: unknown `activation` {activation!r}; expected a Keras activation name "
            "such as 'relu' or 'tanh', or a callable."
        ) from err


class Network:
    """A dense network inputs -> hidden_units -> outputs whose weights live on `layer`.

    The last layer's kernel and bias start at zero (the block starts as the identity);
    hidden layers use Glorot-uniform kernels. `masks` (one 0/1 array per layer, shaped like
    its kernel) make it autoregressive (MADE).
    """

    def __init__(
        self,
        layer,
        inputs: int,
        hidden_units: tuple[int, ...],
        outputs: int,
        activation,
        masks: list | None = None,
    ):
        widths = [inputs, *hidden_units, outputs]
        self.activation = activation
        self.kernels, self.biases = [], []
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = index == len(widths) - 2
            self.kernels.append(
                layer._add(
                    f"kernel_{index}",
                    (fan_in, fan_out),
                    "zeros" if last else keras.initializers.GlorotUniform(),
                )
            )
            self.biases.append(layer._add(f"bias_{index}", (fan_out,), "zeros"))
        self.masks = None if masks is None else [np.asarray(m, "float32") for m in masks]

    def __call__(self, x):
        h = x
        last = len(self.kernels) - 1
        for index, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            kernel = ops.convert_to_tensor(kernel)
            if self.masks is not None:
                kernel = kernel * ops.convert_to_tensor(self.masks[index])
            h = ops.matmul(h, kernel) + ops.convert_to_tensor(bias)
            if index < last:
                h = self.activation(h)
        return h


def made_masks(event_size: int, hidden_units: tuple[int, ...], outputs_per_dim: int) -> list:
    """MADE masks (Germain et al. 2015) for the natural order 1..D.

    Output block j (outputs_per_dim outputs per dimension, laid out [..., outputs_per_dim * D]
    as outputs_per_dim consecutive groups of D) depends only on inputs 1..j-1.
    """
    degrees_in = np.arange(1, event_size + 1)
    span = max(event_size - 1, 1)
    masks, previous = [], degrees_in
    for width in hidden_units:
        degrees = np.arange(width) % span + 1
        masks.append((degrees[None, :] >= previous[:, None]).astype("float32"))
        previous = degrees
    degrees_out = np.tile(degrees_in, outputs_per_dim)
    masks.append((degrees_out[None, :] > previous[:, None]).astype("float32"))
    return masks
