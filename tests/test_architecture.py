"""The layout the code must keep: TensorFlow and JAX only in their per-backend modules, and
every private Keras, TensorFlow or JAX API keras_vi still uses present where keras_vi expects
it (a loud failure when a release moves one, rather than a silent change of behaviour)."""

import ast
import pathlib

import keras
import numpy as np
import pytest

import keras_vi as kvi

pytestmark = pytest.mark.backends("tensorflow", "jax")

PACKAGE = pathlib.Path(kvi.__file__).parent
# Each backend's own modules of keras_vi: the per-backend step, seeds, data and gradients.
BACKENDS = {
    "tensorflow": PACKAGE / "backend" / "tensorflow",
    "jax": PACKAGE / "backend" / "jax",
}
FRAMEWORKS = ("tensorflow", "tensorflow_probability", "tf_keras", "jax", "jaxlib")
# TensorBoard event files are written through `tf.summary` on every backend (as Keras's own
# TensorBoard callback does): I/O, not maths, imported lazily in this one module.
SUMMARY_WRITER = PACKAGE / "callbacks" / "_summary.py"


def _modules():
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if not any(directory in p.parents for directory in BACKENDS.values())
    )


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
def test_only_the_backend_modules_import_tensorflow_or_jax(path):
    tree = ast.parse(path.read_text())
    imported = [name for name in _imports(tree) if name.split(".")[0] in FRAMEWORKS]
    if path == SUMMARY_WRITER:
        assert all(name.startswith("tensorflow") for name in imported)
        return
    assert imported == [], f"{path.name} imports {imported}: use keras.ops or keras_vi.backend"
    assert _tensorflow_names(tree) == [], f"{path.name} calls TensorFlow directly"


@pytest.mark.parametrize(
    "path",
    sorted(BACKENDS["jax"].rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_jax_backend_imports_no_tensorflow(path):
    """JAX's modules use TFP's JAX substrate; TensorFlow itself only through tf.data, which
    Keras on JAX accepts too (read through sys.modules, never imported)."""
    imported = _imports(ast.parse(path.read_text()))
    for name in imported:
        if name.startswith("tensorflow_probability"):
            assert name == "tensorflow_probability.substrates", name
        else:
            assert not name.startswith(("tensorflow", "tf_keras")), name


def test_the_check_sees_tensorflow_calls():
    code = "import tensorflow as tf\nwith tf.GradientTape() as t:\n    y = tf.reduce_sum(x)\n"
    tree = ast.parse(code)
    assert _imports(tree) == ["tensorflow"]
    assert sorted(_tensorflow_names(tree)) == ["GradientTape", "tf.GradientTape", "tf.reduce_sum"]


def test_kvi_distributions_are_the_backends_tfp_modules():
    if keras.backend.backend() == "jax":
        from tensorflow_probability.substrates import jax as tfp
    else:
        import tensorflow_probability as tfp

    assert kvi.distributions is tfp.distributions
    assert kvi.bijectors is tfp.bijectors


def test_trainer_comes_from_the_backend():
    import importlib

    module = importlib.import_module(f"keras_vi.backend.{keras.backend.backend()}.trainer")
    assert issubclass(kvi.VariationalModel, module.VariationalTrainer)
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


@pytest.mark.backends("tensorflow")
def test_private_tensorflow_apis_in_place():
    """`tf.data`'s batch size of a dataset without static batch size (backend/data.py), and
    the distribute internals the TensorFlow step reads (backend/trainer.py)."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((10, 2))).batch(3)
    assert int(dataset._batch_size) == 3
    assert callable(tf.__internal__.distribute.strategy_supports_no_merge_call)
    strategy = tf.distribute.MultiWorkerMirroredStrategy
    assert hasattr(strategy, "extended") or callable(strategy)


def test_dataset_size_uses_the_batch_size_of_unbatched_spec():
    import tensorflow as tf

    from keras_vi.backend import data

    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((10, 2))).batch(5)
    assert dataset.element_spec.shape[0] is None  # so the private attribute is what tells
    assert data.dataset_size(dataset) == 10


@pytest.mark.backends("jax")
def test_jax_tables_tfp_reads_in_place():
    """The JAX tables TFP registers its variable type in, under the names TFP reads: each
    one JAX's own name, or keras_vi's pointer to the table (backend/jax/__init__.py)."""
    import warnings

    import jax
    import jax.interpreters.xla as xla
    from jax._src import core

    assert isinstance(core.pytype_aval_mappings, dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tables = (
            xla.pytype_aval_mappings,
            jax.core.pytype_aval_mappings,
            xla.canonicalize_dtype_handlers,
        )
    assert all(hasattr(table, "__setitem__") for table in tables)


@pytest.mark.backends("jax")
def test_private_keras_jax_fit_state_in_place(binary_data):
    """Keras's JAX fit keeps the live state in `model._jax_state` mid-epoch, where
    `backend/jax/trainer.current_value` reads the skip counter from it."""
    from keras_vi.backend import trainer

    from conftest import small_vae

    seen = []

    class Look(keras.callbacks.Callback):
        def set_model(self, model):
            super().set_model(model)
            self._trained = model

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                model = self._trained
                # A plain dict: keras_vi stores it untracked (Keras would wrap it in a
                # TrackedDict, walking every array of the state after every step).
                seen.append((model._jax_state_synced, type(model._jax_state) is dict))
                value = trainer.current_value(model, model._consecutive_skips)
                seen.append(int(keras.ops.convert_to_numpy(value)))

    model = small_vae()
    model.compile(optimizer="adam")
    model.fit(binary_data[:64], batch_size=16, epochs=1, verbose=0, callbacks=[Look()])
    assert seen == [(False, True), 0]
    # Where the loops detach the variables (backend/jax/trainer.py keeps their values).
    import inspect

    from keras.src.backend.jax.trainer import JAXTrainer

    parameters = inspect.signature(JAXTrainer._purge_model_variables).parameters
    assert {"trainable_variables", "optimizer_variables"} <= set(parameters)
