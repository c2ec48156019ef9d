"""Property-based checks: every call either works or raises keras_vi's own clear ValueError.

Hypothesis draws shapes and arguments, including invalid ones; the property is that nothing
reaches an internal TensorFlow or JAX error, and a ValueError names the offending argument.
"""

import math

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras_vi as kvi

pytestmark = pytest.mark.backends("tensorflow", "jax")

FAST = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

numbers = st.one_of(
    st.integers(-3, 10),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


@FAST
@given(units=st.integers(1, 6), width=st.integers(1, 14), batch=st.integers(1, 5))
def test_normal_latent_width(units, width, batch):
    layer = kvi.layers.NormalLatent(units, name="z")
    if width == 2 * units:
        z = layer(np.zeros([batch, width], "float32"))
        assert z.shape == (batch, units) and np.isfinite(keras.ops.convert_to_numpy(z)).all()
    else:
        with pytest.raises(
            ValueError, match=rf"NormalLatent 'z' expects an input of width {2 * units}"
        ):
            layer(np.zeros([batch, width], "float32"))


@FAST
@given(
    classes=st.integers(1, 5),
    variables=st.one_of(st.none(), st.integers(1, 4)),
    width=st.integers(1, 22),
)
def test_categorical_latent_width(classes, variables, width):
    layer = kvi.layers.CategoricalLatent(classes, num_variables=variables, name="c")
    expected = classes * (variables or 1)
    if width == expected:
        z = layer(np.zeros([3, width], "float32"))
        assert z.shape == (3, expected)
        np.testing.assert_allclose(np.sum(keras.ops.convert_to_numpy(z), -1), variables or 1)
    else:
        with pytest.raises(ValueError, match=rf"expects an input of width {expected}"):
            layer(np.zeros([3, width], "float32"))


def _is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@FAST
@given(value=numbers)
def test_layer_integer_arguments(value):
    for make, name in [
        (lambda v: kvi.layers.NormalLatent(v), "units"),
        (lambda v: kvi.layers.BernoulliLatent(v), "units"),
        (lambda v: kvi.layers.CategoricalLatent(v), "num_classes"),
        (lambda v: kvi.layers.NormalLatent(2, kl_samples=v), "kl_samples"),
    ]:
        if _is_positive_int(value):
            make(value)
        else:
            with pytest.raises(ValueError, match=rf"`{name}` must be a positive integer"):
                make(value)


def _tiny_model(**kwargs):
    inputs = keras.Input((4,))
    z = kvi.layers.NormalLatent(2, name="z")(keras.layers.Dense(4)(inputs))
    kwargs.setdefault("likelihood", "bernoulli")
    return kvi.VariationalModel(inputs, keras.layers.Dense(4)(z), **kwargs)


@FAST
@given(num_samples=numbers, objective=st.sampled_from(["elbo", "iwae", "vae", ""]))
def test_model_sampling_arguments(num_samples, objective):
    valid_k = _is_positive_int(num_samples)
    if valid_k and objective == "elbo" or valid_k and objective == "iwae" and num_samples >= 2:
        _tiny_model(num_samples=num_samples, objective=objective)
        return
    with pytest.raises(ValueError, match=r"`num_samples`|`objective`|objective='iwae'"):
        _tiny_model(num_samples=num_samples, objective=objective)


@FAST
@given(kl_weight=numbers, free_bits=numbers)
def test_model_weight_arguments(kl_weight, free_bits):
    def finite_nonneg(v, allow_none):
        if v is None:
            return allow_none
        return (
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        )

    if finite_nonneg(kl_weight, False) and finite_nonneg(free_bits, True):
        _tiny_model(kl_weight=kl_weight, free_bits=free_bits)
    else:
        with pytest.raises(ValueError, match=r"`kl_weight`|`free_bits`"):
            _tiny_model(kl_weight=kl_weight, free_bits=free_bits)


@FAST
@given(
    warmup=numbers,
    start=numbers,
    cycle=numbers,
    ratio=numbers,
    steepness=numbers,
    step=st.integers(0, 10_000),
)
def test_schedule_arguments(warmup, start, cycle, ratio, steepness, step):
    for make in [
        lambda: kvi.schedules.Linear(warmup_steps=warmup, start=start),
        lambda: kvi.schedules.Cyclical(cycle_steps=cycle, ratio=ratio),
        lambda: kvi.schedules.Sigmoid(midpoint=10, steepness=steepness),
    ]:
        try:
            schedule = make()
        except ValueError as err:
            assert "`" in str(err)  # names the argument
            continue
        value = float(schedule(step))
        assert math.isfinite(value) and value >= 0


@FAST
@given(
    target_width=st.integers(1, 6),
    likelihood=st.sampled_from(["bernoulli", "poisson", "normal", "categorical"]),
)
def test_target_shapes(target_width, likelihood):
    """Output width 4: a target of another width is a clear error, never a backend shape error."""
    model = _tiny_model(likelihood=likelihood)
    model.compile(optimizer="adam")
    x = np.zeros((3, 4), "float32")
    if likelihood == "categorical":
        y = np.zeros((3, target_width), "float32")  # one-hot targets must have width 4
        ok = target_width == 4 or target_width == 1
    elif likelihood == "normal":
        y = np.zeros((3, target_width), "float32")
        ok = target_width in (4, 2)  # 2: output = loc and scale of a width-2 target
    else:
        y = np.zeros((3, target_width), "float32")
        ok = target_width == 4
    if ok:
        out = model.compute_objective(x, y, training=False)
        assert math.isfinite(float(out["loss_value"]))
    else:
        with pytest.raises(ValueError, match=rf"likelihood='{likelihood}'.*target"):
            model.compute_objective(x, y, training=False)
