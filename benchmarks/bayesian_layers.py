"""Step time of a Flipout MLP: keras_vi against plain Dense and against tfp.layers.

Three MLPs of the same shape (784 -> 256 -> 256 -> 10, batch 128, Adam) are trained on
random MNIST-shaped data in one process:

* `dense`: `keras.layers.Dense` in a plain `keras.Model` (the deterministic baseline);
* `kvi`: `kvi.layers.DenseFlipout` in a `kvi.VariationalModel` (categorical likelihood,
  weight KL / N in the objective); `kvi_add_loss`: the same layers in a plain
  `keras.Model` with `num_examples=N` (KL through `add_loss`);
* `tfp`: `tfp.layers.DenseFlipout` in a `tf_keras` model (Keras 2; the only place TFP's
  layers work), KL / N added through the layers' divergence functions.

Every step is a call of the model's own compiled train function on an iterator (the body of
`fit` without its per-epoch bookkeeping). Models run in interleaved rounds so that load from
other processes hits all of them alike; the reported time per step is the median over rounds.
Run with `--jit` to also compare under XLA (`jit_compile=True`).

Note: TFP's DenseFlipout keeps a deterministic bias by default; keras_vi's bias is Bayesian
(per-example noise), so keras_vi does slightly more work per step.

Usage:
    python benchmarks/bayesian_layers.py [--rounds 7] [--steps 60] [--jit]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_vi as kvi  # noqa: E402

NUM_EXAMPLES = 6400
BATCH = 128
WIDTH = 256


def _data():
    rng = np.random.default_rng(0)
    x = rng.random((NUM_EXAMPLES, 784), dtype=np.float32)
    y = rng.integers(0, 10, NUM_EXAMPLES).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH, drop_remainder=True)
    return ds.cache().repeat().prefetch(4)


def _keras_mlp(layer, **layer_kwargs):
    inputs = keras.Input((784,))
    h = layer(WIDTH, activation="relu", **layer_kwargs)(inputs)
    h = layer(WIDTH, activation="relu", **layer_kwargs)(h)
    return inputs, layer(10, **layer_kwargs)(h)


def build_dense(jit: bool):
    model = keras.Model(*_keras_mlp(keras.layers.Dense))
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def build_kvi(jit: bool):
    model = kvi.VariationalModel(
        *_keras_mlp(kvi.layers.DenseFlipout),
        likelihood="categorical",
        num_examples=NUM_EXAMPLES,
    )
    model.compile(optimizer="adam", jit_compile=jit)
    return model


def build_kvi_add_loss(jit: bool):
    model = keras.Model(*_keras_mlp(kvi.layers.DenseFlipout, num_examples=NUM_EXAMPLES))
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def build_tfp(jit: bool):
    import tensorflow_probability as tfp
    import tf_keras

    def divergence(q, p, _):
        return tfp.distributions.kl_divergence(q, p) / NUM_EXAMPLES

    def flipout(units, activation=None):
        return tfp.layers.DenseFlipout(
            units, activation=activation, kernel_divergence_fn=divergence
        )

    model = tf_keras.Sequential(
        [
            tf_keras.Input((784,)),
            flipout(WIDTH, "relu"),
            flipout(WIDTH, "relu"),
            flipout(10),
        ]
    )
    model.compile(
        optimizer=tf_keras.optimizers.Adam(),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def _runner(model, ds):
    """A callable running `steps` training steps of `model` (compiled on first use)."""
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # builds model and optimizer
    model.make_train_function()
    iterator = iter(ds)

    def run(steps: int) -> None:
        logs = None
        for _ in range(steps):
            logs = model.train_function(iterator)
        float(logs["loss"])  # wait for the last step

    return run


def measure(builders: dict, jit: bool, rounds: int, steps: int) -> dict:
    ds = _data()
    runners = {}
    for name, build in builders.items():
        try:
            runners[name] = _runner(build(jit), ds)
            runners[name](20)  # warm-up: tracing, XLA compilation, caches
        except Exception as err:  # noqa: BLE001 - report and keep benchmarking the others
            print(f"  {name}: not measured ({type(err).__name__}: {str(err)[:120]})")
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(steps)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def main(rounds: int = 7, steps: int = 60, jit_modes=(False,)) -> dict:
    builders = {
        "dense": build_dense,
        "kvi": build_kvi,
        "kvi_add_loss": build_kvi_add_loss,
    }
    try:
        import tensorflow_probability as tfp
        import tf_keras  # noqa: F401

        _ = tfp.layers.DenseFlipout
        builders["tfp"] = build_tfp
    except ImportError:
        print("tf_keras / tfp.layers not available: skipping the TFP comparison.")
    results = {}
    for jit in jit_modes:
        print(
            f"\njit_compile={jit}: {rounds} rounds x {steps} steps, batch {BATCH}, "
            f"MLP 784-{WIDTH}-{WIDTH}-10"
        )
        med = measure(builders, jit, rounds, steps)
        for name, seconds in med.items():
            print(f"  {name:13s} {1000 * seconds:7.2f} ms/step")
        if "dense" in med:
            for name in ("kvi", "kvi_add_loss", "tfp"):
                if name in med:
                    print(f"  ratio {name:13s}/ dense : {med[name] / med['dense']:.2f}x")
        if "tfp" in med:
            for name in ("kvi", "kvi_add_loss"):
                if name in med:
                    ratio = med[name] / med["tfp"]
                    verdict = "no slower" if ratio <= 1.0 else "SLOWER"
                    print(f"  ratio {name:13s}/ tfp   : {ratio:.2f}x  ({verdict} than TFP)")
        results[jit] = med
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--jit", action="store_true", help="also compare with jit_compile=True")
    args = parser.parse_args()
    main(args.rounds, args.steps, (False, True) if args.jit else (False,))
