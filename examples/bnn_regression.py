"""Bayesian neural network regression with a gap in the data: uncertainty grows away from it.

A 1-D toy problem: y = sin(x) + 0.1 x + noise (sd 0.1), observed only on [-4, -1.5] and
[1.5, 4]. A two-hidden-layer Flipout network (standard-normal priors) outputs the mean and
a softplus noise scale of a normal likelihood and is trained with `kvi.VariationalModel`.
The posterior predictive (epistemic spread of the network plus the predicted noise) is
drawn with `kvi.predict_samples`; the script saves a PNG with the data, the predictive
mean and a +-2 standard deviation band, and prints the predictive standard deviation near
the data, in the gap, and far outside it.

Run:  python examples/bnn_regression.py [--epochs 150] [--layer flipout]
      (the plot goes to runs/bnn_regression.png; change it with --out)
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_vi as kvi  # noqa: E402

tfd = kvi.distributions  # TFP's distributions for the active Keras backend

NOISE_SD = 0.1
DATA_RANGES = ((-4.0, -1.5), (1.5, 4.0))
# "Far" means at least this distance from every training input (twice the data's half-width).
FAR_DISTANCE = 4.0
LAYERS = {
    "flipout": kvi.layers.DenseFlipout,
    "local_reparameterization": kvi.layers.DenseLocalReparameterization,
    "reparameterization": kvi.layers.DenseReparameterization,
}


def truth(x: np.ndarray) -> np.ndarray:
    return np.sin(x) + 0.1 * x


def make_data(num_points: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy observations on the two intervals of DATA_RANGES, as float32 [n, 1] arrays."""
    rng = np.random.default_rng(seed)
    halves = [rng.uniform(lo, hi, n) for (lo, hi), n in zip(DATA_RANGES, (num_points // 2,) * 2)]
    x = np.concatenate(halves + [rng.uniform(*DATA_RANGES[1], num_points % 2)])
    y = truth(x) + NOISE_SD * rng.normal(size=x.shape)
    return x[:, None].astype("float32"), y[:, None].astype("float32")


def build_model(hidden: int = 32, layer: str = "flipout") -> kvi.VariationalModel:
    """x -> (mean, raw noise scale), both from Bayesian layers; normal likelihood."""
    if layer not in LAYERS:
        raise ValueError(f"`layer` must be one of {sorted(LAYERS)}, got {layer!r}.")
    dense = LAYERS[layer]
    inputs = keras.Input((1,))
    h = dense(hidden, activation="relu", name="hidden_1")(inputs)
    h = dense(hidden, activation="relu", name="hidden_2")(h)
    outputs = dense(2, name="mean_and_scale")(h)
    # likelihood="normal" with an output twice the target's width: loc and softplus scale.
    return kvi.VariationalModel(inputs, outputs, likelihood="normal")


def likelihood_distribution(outputs) -> tfd.Distribution:
    """The normal the model's likelihood builds from its output (for predictive moments)."""
    return tfd.Normal(outputs[..., :1], keras.ops.softplus(outputs[..., 1:]) + 1e-5)


def predictive(model, x: np.ndarray, num_samples: int) -> dict:
    """Predictive mean, total std (epistemic + noise) and epistemic std at inputs x."""
    samples = kvi.predict_samples(model, x, num_samples=num_samples)
    mean, std = kvi.predictive_mean_std(samples, likelihood_distribution)
    _, epistemic = kvi.predictive_mean_std(samples[..., :1])
    return {"mean": mean[:, 0], "std": std[:, 0], "epistemic_std": epistemic[:, 0]}


def uncertainty_summary(model, x_train: np.ndarray, num_samples: int = 200) -> dict:
    """Mean predictive std near the data (at training inputs), in the gap, and far away."""
    rng = np.random.default_rng(0)
    near_x = x_train[rng.choice(len(x_train), size=min(200, len(x_train)), replace=False)]
    lo, hi = float(x_train.min()), float(x_train.max())
    far_x = np.concatenate(
        [
            np.linspace(lo - FAR_DISTANCE - 2, lo - FAR_DISTANCE, 21),
            np.linspace(hi + FAR_DISTANCE, hi + FAR_DISTANCE + 2, 21),
        ]
    )[:, None].astype("float32")
    gap_x = np.linspace(-0.5, 0.5, 11)[:, None].astype("float32")
    pred = predictive(model, np.concatenate([near_x, far_x, gap_x]), num_samples)
    splits = np.cumsum([len(near_x), len(far_x)])
    near, far, gap = (
        {key: part for key, part in zip(pred, parts)}
        for parts in zip(*(np.split(value, splits) for value in pred.values()))
    )
    summary = {
        "near_std": float(near["std"].mean()),
        "gap_std": float(gap["std"].mean()),
        "far_std": float(far["std"].mean()),
        "near_epistemic_std": float(near["epistemic_std"].mean()),
        "far_epistemic_std": float(far["epistemic_std"].mean()),
        "near_rmse": float(np.sqrt(np.mean((near["mean"] - truth(near_x[:, 0])) ** 2))),
    }
    summary["far_to_near"] = summary["far_std"] / summary["near_std"]
    summary["gap_to_near"] = summary["gap_std"] / summary["near_std"]
    return summary


def save_plot(model, x_train, y_train, path: str, num_samples: int = 200) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = float(x_train.min()), float(x_train.max())
    grid = np.linspace(lo - FAR_DISTANCE - 2, hi + FAR_DISTANCE + 2, 400)[:, None]
    pred = predictive(model, grid.astype("float32"), num_samples)
    g = grid[:, 0]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.scatter(x_train[:, 0], y_train[:, 0], s=4, color="0.55", label="training data")
    ax.plot(g, truth(g), "k--", lw=1, label="true function")
    ax.plot(g, pred["mean"], color="C0", lw=2, label="predictive mean")
    ax.fill_between(
        g,
        pred["mean"] - 2 * pred["std"],
        pred["mean"] + 2 * pred["std"],
        color="C0",
        alpha=0.25,
        label="±2 std (total)",
    )
    ax.fill_between(
        g,
        pred["mean"] - 2 * pred["epistemic_std"],
        pred["mean"] + 2 * pred["epistemic_std"],
        color="C1",
        alpha=0.25,
        label="±2 std (network only)",
    )
    ax.set_ylim(-4, 4)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("Bayesian MLP (keras_vi): posterior predictive")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(
    epochs: int = 150,
    num_points: int = 1000,
    hidden: int = 32,
    layer: str = "flipout",
    batch_size: int = 50,
    num_samples: int = 200,
    output: str | None = "runs/bnn_regression.png",
    seed: int = 0,
    verbose: int = 0,
) -> dict:
    """Trains the network, prints the uncertainty summary and saves the plot.

    Returns the summary dict (`near_std`, `gap_std`, `far_std`, `far_to_near`, ...) plus
    `train_seconds` and `png` (None when `output` is None).
    """
    keras.utils.set_random_seed(seed)
    x, y = make_data(num_points, seed=seed)
    model = build_model(hidden, layer)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    start = time.perf_counter()
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose)
    train_seconds = time.perf_counter() - start
    summary = uncertainty_summary(model, x, num_samples)
    summary.update(
        train_seconds=train_seconds,
        final_elbo=float(history.history["elbo"][-1]),
        png=None,
    )
    if output:
        save_plot(model, x, y, output, max(num_samples, 500))
        summary["png"] = output
    print(
        f"{layer}: ELBO {summary['final_elbo']:.3f} nats/example | predictive std near the "
        f"data {summary['near_std']:.3f}, in the gap {summary['gap_std']:.3f}, far away "
        f"{summary['far_std']:.3f} (far/near {summary['far_to_near']:.1f}x) | fit RMSE "
        f"{summary['near_rmse']:.3f} (noise sd {NOISE_SD}) | trained in {train_seconds:.0f} s"
        + (f" | plot: {output}" if output else "")
    )
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layer", choices=sorted(LAYERS), default="flipout")
    parser.add_argument("--out", default="runs/bnn_regression.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.points, args.hidden, args.layer, output=args.out, seed=args.seed)
