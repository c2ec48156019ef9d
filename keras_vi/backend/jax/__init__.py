"""keras_vi's JAX backend: the only modules of keras_vi that import JAX.

TFP ships its distributions for JAX as `tensorflow_probability.substrates.jax`. TFP 0.25
(the current release) registers its variable type in three JAX tables when it is imported,
under the names JAX had when TFP 0.25 was released: `jax.interpreters.xla.
pytype_aval_mappings` (removed in JAX 0.7), `jax.core.pytype_aval_mappings` (deprecated
since) and `jax.interpreters.xla.canonicalize_dtype_handlers`. The tables themselves still
exist under `jax._src`; keras_vi points each missing name at its table before importing TFP
and leaves names that exist untouched, so a TFP release that no longer reads them is
unaffected. `tests/test_architecture.py` fails if JAX moves a table.
"""

import warnings as _warnings

import jax as _jax
import jax.interpreters.xla as _xla
from jax._src import core as _core
from jax._src import dtypes as _dtypes


def _restore_names_tfp_reads() -> None:
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", DeprecationWarning)
        if not hasattr(_jax.core, "pytype_aval_mappings"):
            _jax.core.pytype_aval_mappings = _core.pytype_aval_mappings
        if not hasattr(_xla, "pytype_aval_mappings"):
            _xla.pytype_aval_mappings = _core.pytype_aval_mappings
        if not hasattr(_xla, "canonicalize_dtype_handlers"):
            _xla.canonicalize_dtype_handlers = _dtypes.canonicalize_value_handlers


_restore_names_tfp_reads()

from tensorflow_probability.substrates import jax as _tfp  # noqa: E402

distributions = _tfp.distributions
bijectors = _tfp.bijectors


def untracked_variables(distribution) -> list:
    """Always empty: TFP's JAX substrate holds arrays, not variables."""
    del distribution
    return []
