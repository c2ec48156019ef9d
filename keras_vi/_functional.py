"""Functional-API construction of `VariationalModel` subclasses.

`keras.Model(inputs, outputs)` builds a `Functional` model; Keras's own `Model.__new__`
does it for subclasses by rewriting the subclass's `__bases__` in place, which would break
every later subclass-style use of `VariationalModel`. Here each class gets a separate cached
variant with `Functional` mixed in, so both styles work side by side.

`Functional` is not exported by Keras (`keras.src.models.functional`), and saved models must
name the user's class rather than the variant, which takes a write to Keras's registry of
custom names (`keras.src.saving.object_registration.GLOBAL_CUSTOM_NAMES`). Both are private
Keras APIs with no public route; `tests/test_architecture.py::test_private_keras_apis_in_place`
fails loudly if a Keras release moves them.
"""

from __future__ import annotations

import keras
from keras.src.models.functional import Functional
from keras.src.saving import object_registration

_VARIANTS: dict[type, type] = {}


def is_functional_call(args: tuple, kwargs: dict) -> bool:
    """Whether constructor arguments are the functional API's (inputs, outputs)."""
    return (
        (len(args) == 2)
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


def is_functional(model) -> bool:
    return isinstance(model, Functional)


def variant(cls: type) -> type:
    """`cls` with Keras's Functional mixed in, made once per class."""
    if issubclass(cls, Functional):
        return cls
    if cls not in _VARIANTS:
        mixed = type(cls.__name__, (cls, Functional), {"__module__": cls.__module__})
        object_registration.GLOBAL_CUSTOM_NAMES[mixed] = keras.saving.get_registered_name(cls)
        _VARIANTS[cls] = mixed
    return _VARIANTS[cls]


def init(model, args: tuple, kwargs: dict) -> None:
    """Runs `Functional.__init__` on a variant instance (inputs and outputs in args/kwargs)."""
    Functional.__init__(model, *args, **kwargs)
