"""The layout the code must keep: TensorFlow only in the per-backend modules, and every private
Keras or TensorFlow API keras_vi still uses present where keras_vi expects it (a loud failure
when a release moves one, rather than a silent change of behaviour)."""

import ast
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vi as kvi

PACKAGE = pathlib.Path(kvi.__file__).parent
# TensorFlow's own modules of keras_vi: the per-backend step, seeds, data and gradients.
BACKEND = PACKAGE / "backend" / "tensorflow"
# TensorBoard event files are written through `tf.summary` on every backend (as Keras's own
# TensorBoard callback does): I/O, not maths, imported lazily in this one module.
SUMMARY_WRITER = PACKAGE / "callbacks" / "_summary.py"


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if BACKEND not in p.parents)


def _tensorflow_names(tree: ast.AST) -> list[str]:
    """`tf.x`, `tfp.x` and `GradientTape` in code (docstrings, which show TensorFlow users
    how to call keras_vi, are not code)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in ("tf", "tfp"):
                found.append(f"{node.value.id}.{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr == "GradientTape":
            found.append("GradientTape")
    return found


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_backend_modules_import_tensorflow(path):
    tree = ast.parse(path.read_text())
    imported = [
        name
        for name in _imports(tree)
        if name.split(".")[0] in ("tensorflow", "tensorflow_probability", "tf_keras")
    ]
    if path == SUMMARY_WRITER:
        assert all(name.startswith("tensorflow") for name in imported)
        return
    assert imported == [], f"{path.name} imports {imported}: use keras.ops or keras_vi.backend"
    assert _tensorflow_names(tree) == [], f"{path.name} calls TensorFlow directly"


def test_the_check_sees_tensorflow_calls():
    code = "import tensorflow as tf\nwith tf.GradientTape() as t:\n    y = tf.reduce_sum(x)\n"
    tree = ast.parse(code)
    assert _imports(tree) == ["tensorflow"]
    assert sorted(_tensorflow_names(tree)) == ["GradientTape", "tf.GradientTape", "tf.reduce_sum"]


def test_kvi_distributions_are_the_backends_tfp_modules():
    import tensorflow_probability as tfp

    assert kvi.distributions is tfp.distributions
    assert kvi.bijectors is tfp.bijectors


def test_trainer_comes_from_the_backend():
    from keras_vi.backend.tensorflow.trainer import VariationalTrainer

    assert issubclass(kvi.VariationalModel, VariationalTrainer)
    assert "train_step" not in vars(kvi.VariationalModel)


# ----------------------------------------------------------------- private APIs still used
def test_private_keras_apis_in_place():
    """Each private Keras API keras_vi uses, where keras_vi reads it (see their modules)."""
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    from keras.src.models.functional import Functional
    from keras.src.saving import object_registration

    assert callable(in_symbolic_scope) and not in_symbolic_scope()
    assert issubclass(Functional, keras.Model)
    assert isinstance(object_registration.GLOBAL_CUSTOM_NAMES, dict)
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile("sgd", "mse", metrics=["mae"])
    assert model._compile_metrics is not None  # keras_vi._reporting.compiled_metrics


def test_private_tensorflow_apis_in_place():
    """`tf.data`'s batch size of a dataset without static batch size (backend/data.py), and
    the distribute internals the TensorFlow step reads (backend/trainer.py)."""
    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((10, 2))).batch(3)
    assert int(dataset._batch_size) == 3
    assert callable(tf.__internal__.distribute.strategy_supports_no_merge_call)
    strategy = tf.distribute.MultiWorkerMirroredStrategy
    assert hasattr(strategy, "extended") or callable(strategy)


def test_dataset_size_uses_the_batch_size_of_unbatched_spec():
    from keras_vi.backend import data

    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((10, 2))).batch(5)
    assert dataset.element_spec.shape[0] is None  # so the private attribute is what tells
    assert data.dataset_size(dataset) == 10
