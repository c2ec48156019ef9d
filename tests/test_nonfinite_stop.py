"""`max_consecutive_skips` stops training with the model the step reaching the limit left,
though the skip count is read a window of steps late (the host never waits for a step)."""

import keras
import numpy as np
import pytest

import keras_vi as kvi

from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")


class CountBatches(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


@pytest.mark.parametrize("limit, first_bad", [(3, 0), (3, 4), (10, 7), (1, 2)])
def test_training_stops_with_the_model_of_the_step_reaching_the_limit(limit, first_bad):
    rng = np.random.default_rng(0)
    x = (rng.random((16 * 20, 20)) > 0.5).astype("float32")
    x[16 * first_bad :] = np.nan  # every batch from `first_bad` on is non-finite
    model = small_vae(max_consecutive_skips=limit)
    model.compile(optimizer="adam")
    counter = CountBatches()
    with pytest.raises(kvi.NonFiniteError, match=f"{limit} consecutive"):
        model.fit(
            x,
            batch_size=16,
            epochs=1,
            verbose=0,
            validate_data=False,
            callbacks=[counter],
            shuffle=False,
        )
    # Stopped within two windows of `limit` steps past the step reaching the limit (or at
    # the end of the 20 batches); nothing trained after the first bad batch.
    assert first_bad + limit <= counter.batches <= min(first_bad + 3 * limit, 20)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == first_bad


def test_recovering_steps_reset_the_count():
    rng = np.random.default_rng(1)
    x = (rng.random((16 * 12, 20)) > 0.5).astype("float32")
    for start in (1, 5, 9):  # runs of two bad batches, each shorter than the limit of 3
        x[16 * start : 16 * (start + 2)] = np.nan
    model = small_vae(max_consecutive_skips=3)
    model.compile(optimizer="adam")
    history = model.fit(x, batch_size=16, epochs=1, verbose=0, validate_data=False, shuffle=False)
    assert history.history["skipped_steps"] == [6.0]
    assert int(model.optimizer.iterations.numpy()) == 6


def test_steps_past_the_limit_are_skipped_until_training_stops():
    """Training stops after the step that reached the limit is seen, which can be later
    (Keras's background-thread read of the count, or, here, `steps_per_execution=4` running
    the finite batch 7 with the bad batches 4-6 in one call): every step past the limit is
    skipped, so the model is the one the limit-reaching step left."""
    rng = np.random.default_rng(2)
    x = (rng.random((16 * 20, 20)) > 0.5).astype("float32")
    x[16 * 4 : 16 * 7] = np.nan  # the limit of 3 is reached at batch 6; batch 7 is finite

    def model_after(data, expect_stop):
        keras.utils.set_random_seed(3)
        model = small_vae(max_consecutive_skips=3)
        model.compile(optimizer="adam", steps_per_execution=4)
        fit = lambda: model.fit(  # noqa: E731
            data, batch_size=16, epochs=1, verbose=0, shuffle=False, validate_data=False
        )
        if expect_stop:
            with pytest.raises(kvi.NonFiniteError, match="3 consecutive"):
                fit()
        else:
            fit()
        return model

    stopped = model_after(x, expect_stop=True)
    assert int(keras.ops.convert_to_numpy(stopped.optimizer.iterations)) == 4
    reference = model_after(x[: 16 * 4], expect_stop=False)  # the four batches before
    for a, b in zip(stopped.trainable_weights, reference.trainable_weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7
        )


def test_train_on_batch_raises_at_the_limit_and_counts_again():
    rng = np.random.default_rng(4)
    good = (rng.random((16, 20)) > 0.5).astype("float32")
    bad = np.full((16, 20), np.nan, "float32")
    model = small_vae(max_consecutive_skips=3)
    model.compile(optimizer="adam")
    model.train_on_batch(good)
    model.train_on_batch(bad)
    model.train_on_batch(bad)
    with pytest.raises(kvi.NonFiniteError, match="3 consecutive.*the likelihood"):
        model.train_on_batch(bad)
    model.train_on_batch(good)  # the count started again: this step trains
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
