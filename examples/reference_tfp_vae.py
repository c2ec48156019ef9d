"""The reference number for `tfp_vae.py`: TFP's VAE tutorial code itself (tf_keras + tfp.layers).

The tutorial's model, loss and optimizer, unchanged, trained on the same MNIST subset,
split, preprocessing and fixed binary validation images as `tfp_vae.py` (whose data
functions it reuses), so that the two validation losses compare like for like. It needs
`tf_keras` (TFP's `[tf]` extra), which only this script imports.

Run:  python examples/reference_tfp_vae.py [--epochs 15] [--num-train 4000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(
    epochs: int = 15,
    num_train: int = 4000,
    num_test: int = 1000,
    batch_size: int = 256,
    encoded_size: int = 16,
    base_depth: int = 32,
    seed: int = 0,
    data_seed: int = 0,
    verbose: int = 1,
) -> dict:
    """Trains the tutorial's tf_keras model; returns its final validation loss (nats/image)."""
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras as tfk
    import tfp_vae

    tfkl, tfpl, tfd = tfk.layers, tfp.layers, tfp.distributions
    tfk.utils.set_random_seed(seed)
    x_train, test_binary = tfp_vae.load_data(num_train, num_test, data_seed)
    train = tfp_vae.binarized(x_train, batch_size, seed).map(lambda x: (x, x))
    input_shape = tfp_vae.IMAGE_SHAPE

    prior = tfd.Independent(tfd.Normal(loc=tf.zeros(encoded_size), scale=1), 1)
    act = tf.nn.leaky_relu
    encoder = tfk.Sequential(
        [
            tfkl.InputLayer(input_shape=input_shape),
            tfkl.Lambda(lambda x: tf.cast(x, tf.float32) - 0.5),
            tfkl.Conv2D(base_depth, 5, strides=1, padding="same", activation=act),
            tfkl.Conv2D(base_depth, 5, strides=2, padding="same", activation=act),
            tfkl.Conv2D(2 * base_depth, 5, strides=1, padding="same", activation=act),
            tfkl.Conv2D(2 * base_depth, 5, strides=2, padding="same", activation=act),
            tfkl.Conv2D(4 * encoded_size, 7, strides=1, padding="valid", activation=act),
            tfkl.Flatten(),
            tfkl.Dense(tfpl.MultivariateNormalTriL.params_size(encoded_size)),
            tfpl.MultivariateNormalTriL(
                encoded_size, activity_regularizer=tfpl.KLDivergenceRegularizer(prior)
            ),
        ]
    )
    decoder = tfk.Sequential(
        [
            tfkl.InputLayer(input_shape=[encoded_size]),
            tfkl.Reshape([1, 1, encoded_size]),
            tfkl.Conv2DTranspose(2 * base_depth, 7, strides=1, padding="valid", activation=act),
            tfkl.Conv2DTranspose(2 * base_depth, 5, strides=1, padding="same", activation=act),
            tfkl.Conv2DTranspose(2 * base_depth, 5, strides=2, padding="same", activation=act),
            tfkl.Conv2DTranspose(base_depth, 5, strides=1, padding="same", activation=act),
            tfkl.Conv2DTranspose(base_depth, 5, strides=2, padding="same", activation=act),
            tfkl.Conv2DTranspose(base_depth, 5, strides=1, padding="same", activation=act),
            tfkl.Conv2D(filters=1, kernel_size=5, strides=1, padding="same"),
            tfkl.Flatten(),
            tfpl.IndependentBernoulli(input_shape, tfd.Bernoulli.logits),
        ]
    )
    vae = tfk.Model(inputs=encoder.inputs, outputs=decoder(encoder.outputs[0]))
    vae.compile(
        optimizer=tfk.optimizers.Adam(learning_rate=1e-3), loss=lambda x, rv_x: -rv_x.log_prob(x)
    )
    start = time.perf_counter()
    history = vae.fit(
        train, epochs=epochs, validation_data=(test_binary, test_binary), verbose=verbose
    )
    seconds = time.perf_counter() - start
    val_loss = float(vae.evaluate(test_binary, test_binary, batch_size=batch_size, verbose=0))
    print(
        f"tf_keras + tfp.layers: validation loss {val_loss:.1f} nats/image after {epochs} "
        f"epochs on {len(x_train)} images | trained in {seconds:.0f} s"
    )
    return {
        "val_loss": val_loss,
        "loss_history": [float(v) for v in history.history["loss"]],
        "val_loss_history": [float(v) for v in history.history["val_loss"]],
        "train_seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(epochs=args.epochs, num_train=args.num_train, seed=args.seed)
