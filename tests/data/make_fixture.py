"""Writes the saved-model fixture that every later keras_vi version must still load.

Run once per format change, never to "fix" a failing compatibility test, with the OLDEST Keras
keras_vi supports (constraints/minimum.txt), since older files load in newer Keras but not
always the reverse:
    python tests/data/make_fixture.py
It saves `vae_v<keras_vi>_keras<X_Y>.keras` (a model using the library's latents, estimators,
baselines, priors, schedule and a Bayesian layer, after a little training), the `.npz` of the
same name (its weights and deterministic outputs on fixed inputs) and a `.weights.h5` (the
weights alone, which load in any Keras 3 into a model rebuilt by `build()`). The 0.1.0 files
were written by keras_vi 0.1.0 with Keras 3.10 and with Keras 3.15.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_vi as kvi  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def build():
    inputs = keras.Input((12,), name="x")
    h = kvi.layers.DenseFlipout(16, activation="relu", name="flipout")(inputs)
    z = kvi.layers.NormalLatent(3, name="z", kl="analytic")(keras.layers.Dense(6, name="zp")(h))
    bits = kvi.layers.BernoulliLatent(
        4,
        name="bits",
        estimator=kvi.estimators.ScoreFunction(kvi.estimators.baselines.MovingAverage(0.8)),
    )(keras.layers.Dense(4, name="bp")(h))
    joined = keras.layers.Concatenate(name="join")([z, bits])
    logits = keras.layers.Dense(12, name="decoder")(joined)
    return kvi.VariationalModel(
        inputs,
        logits,
        likelihood="bernoulli",
        num_samples=2,
        kl_weight=kvi.schedules.Linear(warmup_steps=10),
        free_bits=0.01,
        num_examples=64,
    )


def main():
    keras.utils.set_random_seed(0)
    x = (np.random.default_rng(0).random((64, 12)) > 0.5).astype("float32")
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(x, epochs=2, batch_size=16, verbose=0)
    major, minor = keras.__version__.split(".")[:2]
    stem = os.path.join(HERE, f"vae_v{kvi.__version__.replace('.', '_')}_keras{major}_{minor}")
    model.save(f"{stem}.keras")
    model.save_weights(f"{stem}.weights.h5")
    # Deterministic values: the latent's closed-form KL for parameters from a fixed hidden input.
    h = np.random.default_rng(1).normal(size=(8, 16)).astype("float32")
    latent = model.get_layer("z")
    params = model.get_layer("zp")(h).numpy()
    q = latent.make_distribution(params)
    np.savez(
        f"{stem}.npz",
        h=h,
        z_params=params,
        z_kl=q.kl_divergence(latent.prior_distribution(q)).numpy(),
        baseline_average=model.get_layer("bits").baseline.average.numpy(),
        kl_weight=model.kl_weight.numpy(),
        iterations=int(model.optimizer.iterations.numpy()),
        **{f"weight_{i}": w.numpy() for i, w in enumerate(model.weights)},
    )
    print("wrote", os.listdir(HERE))


if __name__ == "__main__":
    main()
