"""Multi-worker training: the same VariationalModel code under MultiWorkerMirroredStrategy.

Each worker runs this script with its own TF_CONFIG. On one machine, two workers:

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
                "task": {"type": "worker", "index": 0}}' python examples/multi_worker.py &
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]},
                "task": {"type": "worker", "index": 1}}' python examples/multi_worker.py

On several machines, put each machine's host:port in "worker" and start the script on each
with its own "index". The only change from single-device code is `strategy.scope()`: the
global batch is split across workers, gradients are all-reduced, and every worker ends with
the same weights. Worker 0 (the chief) prints the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(
    epochs: int = 3, steps_per_epoch: int = 10, global_batch: int = 64, out: str | None = None
):
    # The strategy must exist before any other TensorFlow work in the process.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras

    import keras_vi as kvi

    from data import digits_binary

    keras.utils.set_random_seed(0)
    x, _ = digits_binary()
    data = tf.data.Dataset.from_tensor_slices(x).repeat().batch(global_batch, drop_remainder=True)
    with strategy.scope():
        inputs = keras.Input((64,))
        h = keras.layers.Dense(64, activation="relu")(inputs)
        z = kvi.layers.NormalLatent(4, name="z")(keras.layers.Dense(8)(h))
        logits = keras.layers.Dense(64)(keras.layers.Dense(64, activation="relu")(z))
        model = kvi.VariationalModel(inputs, logits, likelihood="bernoulli", num_examples=len(x))
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(data, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0).history
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {"index": 0})
    if task.get("index", 0) == 0:
        print(f"workers: {strategy.num_replicas_in_sync}, loss per epoch: {history['loss']}")
    if out is not None:
        weights = {f"weight_{i}": w.numpy() for i, w in enumerate(model.weights)}
        np.savez(out, loss=np.array(history["loss"]), **weights)
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=10)
    parser.add_argument("--out", default=None, help="save losses and weights (.npz) here")
    args = parser.parse_args()
    main(args.epochs, args.steps_per_epoch, out=args.out)
