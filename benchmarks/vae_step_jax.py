"""keras_vi's training step on the JAX backend against two anchors (alternated in one process).

The MNIST-shaped VAE (784-512-512-32, Bernoulli likelihood, batch 128, Adam 1e-3,
`jit_compile=True`), three ways:

* keras_vi: `kvi.VariationalModel` with a `NormalLatent`, trained with `fit`;
* hand-written Keras on JAX: the same network as a Keras user writes it without keras_vi, a
  sampling layer that draws with `keras.random.normal` and reports the analytic KL through
  `add_loss`, the summed Bernoulli negative log-likelihood as the compiled loss;
* NumPyro: `SVI` with `Trace_ELBO` and a `jax.jit`-compiled update, weights as `numpyro.param`
  (skipped, and said so, when NumPyro is not installed).

Data: 8,192 MNIST-shaped binary images drawn with a fixed per-pixel probability (the step's
cost does not depend on pixel values, and the anchors' scripts use the same data). Each model
first trains one warm-up round (compilation); then rounds alternate between the models, in
an order shuffled each round (seeded), so that no model always runs right after the same
other one, and the median steps/s of each is printed with keras_vi's ratio to it. A Keras round is a
two-epoch `fit` timed over its second epoch (from its start to its end, which waits for the
last step), so that what `fit` does once per call is not counted as step time. Targets: >= 0.95x the
hand-written Keras step, >= 1.0x NumPyro on CPU.

The Keras models train twice over: on the NumPy array (what `fit` is usually given; Keras then
copies each batch to the device on every step) and on the same data as a JAX array on the
device, which is how the NumPyro runner holds its batches (`fit` then slices it there). Each
Keras model is compared with the other at the same placement; NumPyro with both. One more
keras_vi run on device data compiles with `steps_per_execution=8`: Keras's per-step loop
(callbacks, logs) then runs once per 8 steps, which shows what that loop costs against
NumPyro's bare loop. Each ratio is also given round by round (median and range).

Run:  KERAS_BACKEND=jax python benchmarks/vae_step_jax.py [--rounds 5] [--batch 128]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from _clock import EpochClock  # noqa: E402
from keras import ops  # noqa: E402

import keras_vi as kvi  # noqa: E402

LATENT, HIDDEN, PIXELS = 32, 512, 784


def mnist_shaped(n: int = 8192, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.random((1, PIXELS)).astype("float32") * 0.5
    return (rng.random((n, PIXELS)) < p).astype("float32")


def encoder_layers(inputs):
    h = keras.layers.Dense(HIDDEN, activation="relu")(inputs)
    h = keras.layers.Dense(HIDDEN, activation="relu")(h)
    return keras.layers.Dense(2 * LATENT)(h)


def decoder_layers(z):
    h = keras.layers.Dense(HIDDEN, activation="relu")(z)
    h = keras.layers.Dense(HIDDEN, activation="relu")(h)
    return keras.layers.Dense(PIXELS)(h)


def keras_vi_vae(steps_per_execution: int = 1) -> keras.Model:
    images = keras.Input((PIXELS,))
    z = kvi.layers.NormalLatent(LATENT, name="z")(encoder_layers(images))
    model = kvi.VariationalModel(images, decoder_layers(z), likelihood="bernoulli")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        jit_compile=True,
        steps_per_execution=steps_per_execution,
    )
    return model


class Sampling(keras.layers.Layer):
    """z = loc + scale * eps, with the analytic KL to N(0, I) added as a loss."""

    def __init__(self):
        super().__init__()
        self.seed_generator = keras.random.SeedGenerator(0)

    def call(self, params):
        loc, raw_scale = params[:, :LATENT], params[:, LATENT:]
        scale = ops.softplus(raw_scale) + 1e-5
        z = loc + scale * keras.random.normal(ops.shape(loc), seed=self.seed_generator)
        kl = 0.5 * ops.sum(loc**2 + scale**2 - 1.0, -1) - ops.sum(ops.log(scale), -1)
        self.add_loss(ops.mean(kl))
        return z

    def compute_output_spec(self, params):
        return keras.KerasTensor((params.shape[0], LATENT), dtype="float32")


def bernoulli_nll(x, logits):
    return ops.sum(ops.softplus(logits) - x * logits, -1)


def hand_written_vae() -> keras.Model:
    images = keras.Input((PIXELS,))
    logits = decoder_layers(Sampling()(encoder_layers(images)))
    model = keras.Model(images, logits)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=bernoulli_nll, jit_compile=True)
    return model


class KerasRunner:
    def __init__(self, model, data, batch, supervised):
        self.model, self.data, self.batch, self.supervised = model, data, batch, supervised

    def __call__(self) -> float:
        """Steps/s of the second epoch of a two-epoch `fit`: the steps alone, without what
        `fit` does once per call (keras_vi checks in-memory data for NaNs and values outside
        the likelihood's support, 25 MB here; Keras builds its data adapter and callbacks)."""
        y = self.data if self.supervised else None
        clock = EpochClock()
        self.model.fit(
            self.data,
            y,
            batch_size=self.batch,
            epochs=2,
            verbose=0,
            shuffle=False,
            callbacks=[clock],
        )
        return (len(self.data) // self.batch) / (clock.ends[1] - clock.begins[1])


class NumPyroRunner:
    """NumPyro SVI (Trace_ELBO) with a jit-compiled update over the same batches."""

    def __init__(self, data, batch):
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from numpyro.infer import SVI, Trace_ELBO

        def init(key, sizes):
            keys = jax.random.split(key, len(sizes))
            return [
                (jax.random.normal(k, s) * (2.0 / s[0]) ** 0.5, jnp.zeros(s[1]))
                for k, s in zip(keys, sizes)
            ]

        def mlp(params, x):
            for i, (w, b) in enumerate(params):
                x = x @ w + b
                if i < len(params) - 1:
                    x = jax.nn.relu(x)
            return x

        dec0 = init(jax.random.PRNGKey(2), [(LATENT, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, PIXELS)])
        enc0 = init(
            jax.random.PRNGKey(3), [(PIXELS, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 2 * LATENT)]
        )

        def model(x):
            dec = numpyro.param("dec", dec0)
            with numpyro.plate("batch", x.shape[0]):
                prior = dist.Normal(jnp.zeros((x.shape[0], LATENT)), 1.0).to_event(1)
                z = numpyro.sample("z", prior)
                numpyro.sample("x", dist.Bernoulli(logits=mlp(dec, z)).to_event(1), obs=x)

        def guide(x):
            enc = numpyro.param("enc", enc0)
            with numpyro.plate("batch", x.shape[0]):
                h = mlp(enc, x)
                scale = jax.nn.softplus(h[:, LATENT:]) + 1e-5
                numpyro.sample("z", dist.Normal(h[:, :LATENT], scale).to_event(1))

        x = jnp.asarray(data)
        self.batches = [x[i : i + batch] for i in range(0, len(data) - batch + 1, batch)]
        svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
        self.state = svi.init(jax.random.PRNGKey(0), self.batches[0])
        self.update = jax.jit(svi.update)

    def __call__(self) -> float:
        start = time.perf_counter()
        for batch in self.batches:
            self.state, loss = self.update(self.state, batch)
        loss.block_until_ready()
        return len(self.batches) / (time.perf_counter() - start)


def main(rounds: int = 5, batch: int = 128) -> dict:
    keras.utils.set_random_seed(0)
    data = mnist_shaped()
    on_device = jax.device_put(data)
    runners = {
        "keras_vi": KerasRunner(keras_vi_vae(), data, batch, supervised=False),
        "hand-written Keras-JAX": KerasRunner(hand_written_vae(), data, batch, supervised=True),
        "keras_vi, device data": KerasRunner(keras_vi_vae(), on_device, batch, supervised=False),
        "hand-written, device data": KerasRunner(
            hand_written_vae(), on_device, batch, supervised=True
        ),
        # Keras's loop once per 8 steps (callbacks, logs), not once per step.
        "keras_vi, device data, 8 steps a call": KerasRunner(
            keras_vi_vae(steps_per_execution=8), on_device, batch, supervised=False
        ),
    }
    try:
        runners["NumPyro SVI"] = NumPyroRunner(data, batch)
    except ImportError:
        print("NumPyro is not installed: its anchor is left out.")
    for run in runners.values():
        run()  # warm-up: tracing and compilation
    rates = {name: [] for name in runners}
    order = list(runners)
    shuffler = random.Random(0)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            rates[name].append(runners[name]())
    medians = {name: statistics.median(r) for name, r in rates.items()}
    device = jax.devices()[0]
    print(
        f"device {device.platform} ({device.device_kind}), batch {batch}, {rounds} rounds of "
        f"{len(data) // batch} steps; keras_vi {medians['keras_vi']:7.1f} steps/s"
    )
    pairs = [
        ("keras_vi", "hand-written Keras-JAX"),
        ("keras_vi", "NumPyro SVI"),
        ("keras_vi, device data", "hand-written, device data"),
        ("keras_vi, device data", "NumPyro SVI"),
        ("keras_vi, device data, 8 steps a call", "NumPyro SVI"),
    ]
    for ours, anchor in pairs:
        if anchor not in medians:
            continue
        ratio = medians[ours] / medians[anchor]
        # The same ratio within each round (both timed a few seconds apart), whose spread
        # says how much the machine's speed moved the medians.
        paired = sorted(a / b for a, b in zip(rates[ours], rates[anchor]))
        print(
            f"    {ours:37} {medians[ours]:7.1f} vs {anchor:26} {medians[anchor]:7.1f} "
            f"steps/s   ratio {ratio:.3f}   per round: median {statistics.median(paired):.3f}, "
            f"{paired[0]:.3f}-{paired[-1]:.3f}"
        )
        print("RESULT", ours, "vs", anchor, f"ratio={ratio:.3f}")
    for name, median in medians.items():
        print("RESULT", name, f"steps/s={median:.1f}")
    return medians


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    main(args.rounds, args.batch)
