"""KL-weight schedules and the KLAnnealing callback."""

import csv

import keras
import numpy as np
import pytest

import keras_vi as kvi

from conftest import InterruptAt, small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")


def test_schedule_values():
    assert float(kvi.schedules.Constant(0.3)(10)) == pytest.approx(0.3)
    linear = kvi.schedules.Linear(warmup_steps=100, start=0.2, stop=1.0)
    assert [float(linear(s)) for s in (0, 50, 100, 500)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    cyc = kvi.schedules.Cyclical(cycle_steps=100, num_cycles=2, ratio=0.5)
    values = [float(cyc(s)) for s in (0, 25, 50, 99, 100, 125, 250)]
    assert values == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0])
    sig = kvi.schedules.Sigmoid(midpoint=100, steepness=0.1)
    assert float(sig(100)) == pytest.approx(0.5)
    assert float(sig(0)) < 0.001 and float(sig(200)) > 0.999
    # Tensors work too (the model evaluates schedules inside the compiled step).
    assert float(linear(keras.ops.convert_to_tensor(50, "int64"))) == pytest.approx(0.6)


def test_schedule_serialization_round_trip():
    schedule = kvi.schedules.Cyclical(cycle_steps=40, num_cycles=3, ratio=0.25, stop=0.8)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert [float(restored(s)) for s in range(0, 200, 7)] == pytest.approx(
        [float(schedule(s)) for s in range(0, 200, 7)]
    )


def run(model, data, callbacks, epochs=3, **kwargs):
    return model.fit(
        data, epochs=epochs, batch_size=32, verbose=0, shuffle=False, callbacks=callbacks, **kwargs
    ).history


@pytest.mark.parametrize("jit", [False, True])
def test_kl_annealing_sets_weight_every_step_and_logs_it(binary_data, tmp_path, jit):
    data = binary_data[:128]  # 4 steps an epoch
    schedule = kvi.schedules.Linear(warmup_steps=8)
    model = small_vae()
    model.compile(optimizer="adam", jit_compile=jit)
    log = tmp_path / "log.csv"
    history = run(
        model, data, [kvi.callbacks.KLAnnealing(schedule), keras.callbacks.CSVLogger(str(log))]
    )
    # Epoch means of the per-step weights: steps 0-3, 4-7, 8-11 of a ramp over 8 steps.
    expected = [np.mean([min(s / 8, 1.0) for s in range(e * 4, e * 4 + 4)]) for e in range(3)]
    assert history["kl_weight"] == pytest.approx(expected, rel=1e-5)
    assert float(model.kl_weight.numpy()) == pytest.approx(1.0)
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["kl_weight"]) for r in rows] == pytest.approx(expected, rel=1e-5)


def test_kl_annealing_with_a_python_callable(binary_data):
    model = small_vae()
    model.compile(optimizer="adam")
    history = run(
        model,
        binary_data[:128],
        [kvi.callbacks.KLAnnealing(lambda step: min(1.0, step / 4))],
        epochs=2,
    )
    assert history["kl_weight"] == pytest.approx([np.mean([0, 0.25, 0.5, 0.75]), 1.0])


def test_model_level_schedule(binary_data):
    model = small_vae(kl_weight=kvi.schedules.Linear(warmup_steps=4))
    model.compile(optimizer="adam")
    history = run(model, binary_data[:128], [], epochs=2)
    assert history["kl_weight"] == pytest.approx([np.mean([0, 0.25, 0.5, 0.75]), 1.0])


def test_annealing_resumes_after_backup_and_restore(binary_data, tmp_path):
    data = binary_data[:128]
    schedule = kvi.schedules.Linear(warmup_steps=10)

    def fresh():
        keras.utils.set_random_seed(3)
        model = small_vae()
        model.compile(optimizer="adam")
        return model

    reference = fresh()
    ref_history = run(reference, data, [kvi.callbacks.KLAnnealing(schedule)], epochs=4)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = fresh()
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run(interrupted, data, [backup, kvi.callbacks.KLAnnealing(schedule), InterruptAt(9)], 4)
    resumed = fresh()
    history = run(resumed, data, [backup, kvi.callbacks.KLAnnealing(schedule)], epochs=4)
    # Resumed from the last completed epoch (step 8); the weights follow the restored step.
    assert int(resumed.optimizer.iterations.numpy()) == 16
    assert float(resumed.kl_weight.numpy()) == pytest.approx(float(reference.kl_weight.numpy()))
    assert history["kl_weight"] == pytest.approx(ref_history["kl_weight"][2:], rel=1e-6)
