"""Every public class documents its constructor arguments and shows an example."""

import inspect

import pytest

import keras_vi as kvi
import keras_vi.callbacks

pytestmark = pytest.mark.backends("tensorflow", "jax")


def _public_classes():
    modules = [
        kvi,
        kvi.layers,
        kvi.estimators,
        kvi.estimators.baselines,
        kvi.flows,
        kvi.heads,
        kvi.priors,
        kvi.schedules,
        keras_vi.callbacks,
    ]
    seen = {}
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and obj.__module__.startswith("keras_vi"):
                seen.setdefault(obj.__qualname__, obj)
    return sorted(seen.items())


@pytest.mark.parametrize("name, cls", _public_classes(), ids=lambda value: str(value))
def test_public_class_docstring_has_args_and_example(name, cls):
    doc = inspect.getdoc(cls) or ""
    assert "Example:" in doc, f"{name} has no Example section"
    init = cls.__dict__.get("__init__")
    if init is None:  # inherited constructor: documented by the class that defines it
        return
    parameters = [
        p.name
        for p in inspect.signature(init).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    missing = [p for p in parameters if f"{p}:" not in doc]
    assert not missing, f"{name} does not document {missing}"
