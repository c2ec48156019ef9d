"""`max_consecutive_skips` stops training at exactly the step that reaches the limit, though
the skip count is read only when it could have reached it."""

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
def test_training_stops_at_the_step_reaching_the_limit(limit, first_bad):
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
    assert counter.batches == first_bad + limit
    assert int(model.optimizer.iterations.numpy()) == first_bad


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
