"""The TensorFlow step's conditional update (`keras_vi.backend.tensorflow.conditional_update`).

Where the update is computed before the finite check and only its writes wait for it, the
result must be the optimizer's own, bit for bit, or nothing at all.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vi.backend.tensorflow import conditional_update

from conftest import small_vae

SHAPES = ((5, 3), (3,))


def _variables(seed, constraint=None):
    rng = np.random.default_rng(seed)
    return [
        keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}", constraint=constraint)
        for i, s in enumerate(SHAPES)
    ]


def _state(optimizer, variables):
    return [v.numpy() for v in [*variables, *optimizer.variables]]


DEFERRABLE = {
    "sgd": lambda: keras.optimizers.SGD(0.1),
    "sgd-nesterov": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(0.1),
    "adam-amsgrad-clipnorm": lambda: keras.optimizers.Adam(0.1, amsgrad=True, clipnorm=0.5),
    "adam-schedule": lambda: keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    ),
    "rmsprop-centered": lambda: keras.optimizers.RMSprop(0.1, momentum=0.5, centered=True),
    "adagrad": lambda: keras.optimizers.Adagrad(0.1),
    "adadelta": lambda: keras.optimizers.Adadelta(0.1),
    "adamax": lambda: keras.optimizers.Adamax(0.1),
    "nadam": lambda: keras.optimizers.Nadam(0.1),
    "ftrl": lambda: keras.optimizers.Ftrl(0.1, l1_regularization_strength=0.01),
    "lion": lambda: keras.optimizers.Lion(0.1),
    "lamb": lambda: keras.optimizers.Lamb(0.1),
    "adafactor": lambda: keras.optimizers.Adafactor(0.1),
}


@pytest.mark.parametrize("name", sorted(DEFERRABLE))
def test_a_deferred_update_is_the_optimizers_own_or_nothing(name):
    """Over four steps (skipped ones between), the deferred update leaves every weight and
    optimizer variable exactly as `optimizer.apply` does, and a skipped one touches nothing."""
    constraint = keras.constraints.MaxNorm(2.0) if name == "adam" else None
    reference_vars, deferred_vars = _variables(0, constraint), _variables(0, constraint)
    reference, deferred = DEFERRABLE[name](), DEFERRABLE[name]()
    reference.build(reference_vars)
    deferred.build(deferred_vars)

    @tf.function
    def reference_step(grads):
        reference.apply(grads, reference_vars)

    @tf.function
    def deferred_step(grads, ok):
        assert conditional_update.can_defer(deferred, grads)
        conditional_update.apply_if(deferred, grads, deferred_vars, ok)

    rng = np.random.default_rng(1)
    for _ in range(4):
        grads = [tf.constant(rng.normal(size=s).astype("float32")) for s in SHAPES]
        before = _state(deferred, deferred_vars)
        deferred_step(grads, tf.constant(False))
        for got, want in zip(_state(deferred, deferred_vars), before):
            np.testing.assert_array_equal(got, want)
        reference_step(grads)
        deferred_step(grads, tf.constant(True))
        for got, want in zip(_state(deferred, deferred_vars), _state(reference, reference_vars)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: keras.optimizers.AdamW(0.1),
        lambda: keras.optimizers.Adam(0.1, use_ema=True),
        lambda: keras.optimizers.Adam(0.1, gradient_accumulation_steps=2),
        lambda: type("MyAdam", (keras.optimizers.Adam,), {})(0.1),
    ],
    ids=["adamw", "ema", "accumulation", "subclass"],
)
def test_optimizers_writing_variables_directly_get_the_whole_update_in_a_cond(make_optimizer):
    """Weight decay, EMA and gradient accumulation write `tf.Variable`s directly on
    TensorFlow, and a user's optimizer may too: those keep the `tf.cond` around the update,
    and a skipped step still touches nothing."""
    variables = _variables(0)
    optimizer = make_optimizer()
    optimizer.build(variables)
    grads = [tf.ones(s) for s in SHAPES]

    @tf.function
    def step(ok):
        assert not conditional_update.can_defer(optimizer, grads)
        conditional_update.apply_if(optimizer, grads, variables, ok)

    before = _state(optimizer, variables)
    step(tf.constant(False))
    for got, want in zip(_state(optimizer, variables), before):
        np.testing.assert_array_equal(got, want)
    step(tf.constant(True))
    after = _state(optimizer, variables)
    assert any(not np.array_equal(got, was) for got, was in zip(after, before))


def _trace_a_deferred_step(optimizer):
    """Builds `optimizer` and traces one deferred update (whose checks run while tracing)."""
    variables = _variables(0)
    optimizer.build(variables)

    @tf.function
    def step():
        grads = [tf.ones(s) for s in SHAPES]
        conditional_update._deferred_apply_if(optimizer, grads, variables, tf.constant(True))

    step()


def test_a_write_outside_the_optimizers_contract_is_refused_while_tracing():
    """An update that writes a `tf.Variable` itself would escape the held-back writes; the
    deferred path finds the write op while tracing and raises instead of skipping wrongly."""

    class DirectSGD(keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            variable.assign_sub(gradient * learning_rate)

    with pytest.raises(RuntimeError, match=r"DirectSGD\.apply created AssignSubVariableOp"):
        _trace_a_deferred_step(DirectSGD(0.1))


def test_a_write_to_an_unknown_variable_is_refused():
    untracked = tf.Variable(0.0, name="updates_seen")

    class CountingSGD(keras.optimizers.SGD):
        def update_step(self, gradient, variable, learning_rate):
            self.assign_add(untracked, 1.0)
            super().update_step(gradient, variable, learning_rate)

    with pytest.raises(ValueError, match=r"wrote 'updates_seen.*neither a weight"):
        _trace_a_deferred_step(CountingSGD(0.1))


def _refuse_deferral(monkeypatch):
    def deferred(*args):
        raise AssertionError("the update was deferred")

    monkeypatch.setattr(conditional_update, "_deferred_apply_if", deferred)


@pytest.mark.parametrize("where", ["xla", "gpu"])
def test_xla_steps_and_gpu_machines_keep_the_whole_update_in_a_cond(where, monkeypatch):
    """Under XLA (which schedules the update itself) and with a GPU visible (whose memory may
    not hold every new value beside the old), Adam's update stays whole inside the `tf.cond`,
    and still skips exactly."""
    xla = where == "xla"
    if where == "gpu":
        visible = tf.config.list_logical_devices

        def with_a_gpu(device_type=None):
            if device_type == "GPU":
                return [tf.config.LogicalDevice(name="/device:GPU:0", device_type="GPU")]
            return visible(device_type)

        monkeypatch.setattr(tf.config, "list_logical_devices", with_a_gpu)
    _refuse_deferral(monkeypatch)
    variables = _variables(0)
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build(variables)
    grads = [tf.ones(s) for s in SHAPES]

    @tf.function
    def step(ok):
        conditional_update.apply_if(optimizer, grads, variables, ok, xla=xla)

    before = _state(optimizer, variables)
    step(tf.constant(False))
    for got, want in zip(_state(optimizer, variables), before):
        np.testing.assert_array_equal(got, want)
    step(tf.constant(True))
    assert int(optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("jit_compile", [False, True])
def test_the_training_step_defers_the_update_only_without_xla(jit_compile, monkeypatch):
    """`fit` takes the deferred update without XLA and the whole-update `tf.cond` with it."""
    deferred = []
    original = conditional_update._deferred_apply_if

    def spy(*args):
        deferred.append(True)
        original(*args)

    monkeypatch.setattr(conditional_update, "_deferred_apply_if", spy)
    model = small_vae()
    model.compile(optimizer="adam", jit_compile=jit_compile)
    x = (np.random.default_rng(0).random((32, 20)) < 0.5).astype("float32")
    model.fit(x, batch_size=16, epochs=1, verbose=0)
    assert bool(deferred) is not jit_compile
    assert int(model.optimizer.iterations.numpy()) == 2


def test_sparse_gradients_keep_the_whole_update_in_a_cond():
    """An embedding's gradient arrives as `tf.IndexedSlices`, which the optimizer scatters
    into the variable in place; that update is not deferred."""
    variables = _variables(0)
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build(variables)

    @tf.function
    def deferrable():
        rows = tf.IndexedSlices(tf.ones((1, 3)), tf.constant([2]), tf.constant([5, 3]))
        sparse = conditional_update.can_defer(optimizer, [rows, tf.ones(3)])
        dense = conditional_update.can_defer(optimizer, [tf.ones((5, 3)), tf.ones(3)])
        return sparse, dense

    assert deferrable() == (False, True)
