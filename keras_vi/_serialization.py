"""Refuses, at save time, callables that a saved model could not load back.

Keras serializes an unregistered function by its bare name and an object by its class's
registered name; both save without complaint, and the load then fails with a generic
"could not be deserialized" (or, for a function named like a Keras builtin such as `relu`
or `poisson`, silently loads Keras's function instead). `check_registered` catches this in
`get_config`, where the owning layer or model and the argument are known.
"""

from __future__ import annotations

import types
from typing import Any

import keras

__all__ = ["check_registered", "serialize"]

_PLAIN = (str, int, float, bool, type(None))


def _describe(obj: Any) -> str:
    if not isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
        return f"{_describe(type(obj))} instance"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None:
        return repr(obj)
    module = getattr(obj, "__module__", None)
    return f"{module}.{name}" if module else name


# The Keras modules whose functions a saved model finds by bare name (Keras's own list).
_BUILTIN_MODULES = (
    "activations",
    "constraints",
    "initializers",
    "losses",
    "metrics",
    "optimizers",
    "regularizers",
)


def _is_registered(target: Any) -> bool:
    try:
        name = keras.saving.get_registered_name(target)
        return keras.saving.get_registered_object(name) is target
    except Exception:
        return False


def _is_keras_builtin(fn: Any) -> bool:
    """Whether loading finds this very function among Keras's builtins by its name.

    An unregistered function is saved by bare name, and loading looks that name up in
    `keras.activations`, `keras.losses`, ...: `keras.activations.relu` comes back as itself,
    another library's `relu` would come back as `keras.activations.relu`, a user's `poisson` as
    `keras.losses.poisson`.
    """
    name = getattr(fn, "__name__", None)
    return name is not None and any(
        getattr(getattr(keras, module, None), name, None) is fn for module in _BUILTIN_MODULES
    )


def _problem(obj: Any) -> str | None:
    """None when a saved model can load `obj` back, else what is wrong with it."""
    if isinstance(obj, _PLAIN):
        return None
    if isinstance(obj, types.FunctionType) and obj.__name__ == "<lambda>":
        return (
            "it is a lambda, which Keras can only save as Python bytecode that "
            "`keras.saving.load_model` refuses to load"
        )
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
        if _is_registered(obj) or _is_keras_builtin(obj):
            return None
        if "<locals>" in getattr(obj, "__qualname__", ""):
            return "it is defined inside a function and is not registered with Keras"
        if any(hasattr(getattr(keras, m, None), obj.__name__) for m in _BUILTIN_MODULES):
            return (
                "it is not registered with Keras, and a load would find Keras's own "
                f"function named {obj.__name__!r} in its place"
            )
        return "it is not registered with Keras"
    cls = type(obj)
    if cls.__module__.split(".")[0] in ("keras", "keras_vi"):
        # Keras's public classes load by module and name; keras_vi's are registered, and
        # its few unsaveable ones (a prior wrapping a tfd.Distribution) raise their own error.
        return None
    if not callable(getattr(obj, "get_config", None)):
        return f"its class {cls.__qualname__} has no `get_config`"
    if not _is_registered(cls):
        return f"its class {cls.__qualname__} is not registered with Keras"
    return None


def check_registered(obj: Any, argument: str, owner: str) -> None:
    """Raises ValueError unless a saved model holding `obj` could be loaded back.

    Fine are: plain values; a function or class registered with
    `keras.saving.register_keras_serializable`; one of Keras's own builtins (e.g.
    `keras.activations.relu`); an object of Keras's or keras_vi's classes; an object with
    `get_config` whose class is registered.

    Args:
        obj: the value `get_config` is about to serialize.
        argument: the constructor argument it came from, e.g. `"likelihood"`.
        owner: the layer or model that holds it, e.g. `"VariationalModel 'vae'"`.

    Raises:
        ValueError: naming the callable, the argument, the owner and the fix.
    """
    problem = _problem(obj)
    if problem is None:
        return
    raise ValueError(
        f"{owner}: the `{argument}` {_describe(obj)} cannot be saved: {problem}, so the saved "
        "model could not be loaded back. Define it at module level (a lambda, or a function "
        "or class defined inside another function, cannot be found by name when loading) and "
        'decorate it with `@keras.saving.register_keras_serializable(package="my_package")`'
        "; an object also needs a `get_config` method."
    )


def serialize(obj: Any, argument: str, owner: str) -> Any:
    """`keras.saving.serialize_keras_object(obj)` after `check_registered`."""
    check_registered(obj, argument, owner)
    return keras.saving.serialize_keras_object(obj)
