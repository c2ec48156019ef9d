"""Gradient-variance logging and training diagnostics in TensorBoard (issue 5)."""

import glob
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf  # reads the TensorBoard event files (written through tf.summary)
from keras import ops

import keras_vi as kvi

from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")
tfd = kvi.distributions


def numpy(x):
    return ops.convert_to_numpy(x)


# ---------------------------------------------------------------------------- helpers


def read_events(run_dir):
    """tag -> sorted [(step, value)] from every event file of one TensorBoard run."""
    series = {}
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    data = tf.make_ndarray(value.tensor)
                elif value.HasField("simple_value"):
                    data = np.asarray(value.simple_value)
                else:
                    continue
                series.setdefault(value.tag, []).append((event.step, data))
    return {tag: sorted(points, key=lambda p: p[0]) for tag, points in series.items()}


def scalar(points):
    assert len(points) == 1, points
    return float(points[0][1])


# ---------------------------------------------------------- a closed-form gradient variance
# z ~ N(mu, sigma^2), loss (z - k)^2 (+ a constant): d = mu - k. Single-sample variances
# (DESIGN.md): pathwise Var d/dmu = 4 sigma^2, Var d/dsigma = 4 d^2 + 8 sigma^2. A batch of
# ROWS identical rows averages ROWS independent samples, dividing each variance by ROWS.
MU, SIGMA, K, ROWS = 1.0, 2.0, 3.0, 32
D = MU - K
PATHWISE_MU, PATHWISE_SIGMA = 4 * SIGMA**2, 4 * D**2 + 8 * SIGMA**2
# log N(k; z, 1/sqrt 2) = -(z - k)^2 - log(sqrt(pi)): the score-function estimator sees
# f = (z - k)^2 + c, whose Var d/dmu is E[f^2 e^2] / sigma^2 - 4 d^2 with e ~ N(0, 1):
C = 0.5 * math.log(math.pi)
A = D**2 + C
SCORE_MU = (A**2 + 12 * D**2 * SIGMA**2 + 15 * SIGMA**4 + 6 * A * SIGMA**2) / SIGMA**2 - 4 * D**2


class GaussianParams(keras.layers.Layer):
    """Trainable mu and sigma, repeated for every row: q(z) = N(mu, sigma^2)."""

    def build(self, input_shape):
        self.mu = self.add_weight(
            shape=(1,), initializer=keras.initializers.Constant(MU), name="mu"
        )
        self.sigma = self.add_weight(
            shape=(1,), initializer=keras.initializers.Constant(SIGMA), name="sigma"
        )

    def call(self, x):
        ones = ops.ones_like(x[:, :1])
        return ops.concatenate([ones * self.mu, ones * self.sigma], axis=-1)


def gaussian_q(params):
    return tfd.Independent(tfd.Normal(params[:, :1], params[:, 1:]), 1)


def squared_error(z):
    return tfd.Normal(z, math.sqrt(0.5))  # log-prob at k: -(z - k)^2 - C


def closed_form_model():
    inputs = keras.Input((1,))
    params = GaussianParams(name="params")(inputs)
    z = kvi.layers.Latent(gaussian_q, estimator="reparameterization", name="z")(params)
    model = kvi.VariationalModel(inputs, z, likelihood=squared_error)
    model.compile(keras.optimizers.SGD(0.01), jit_compile=True)
    return model, np.zeros((ROWS, 1), "float32"), np.full((ROWS, 1), K, "float32")


def within(value, expected, tolerance=0.15):
    assert abs(value - expected) <= tolerance * abs(expected), (value, expected)


def test_logged_variance_matches_closed_form(tmp_path):
    model, x, y = closed_form_model()
    logger = kvi.callbacks.GradientVarianceLogger(
        tmp_path,
        every_n_steps=1,
        num_estimates=2000,
        estimators={"score_function": "score_function"},
        seed=11,
    )
    # One step: the estimates are taken inside it, before the weights move.
    model.fit(x, y, batch_size=ROWS, epochs=1, verbose=0, callbacks=[logger])

    pathwise = read_events(tmp_path / "train")
    within(scalar(pathwise["gradients/total_variance"]), (PATHWISE_MU + PATHWISE_SIGMA) / ROWS)
    within(scalar(pathwise["gradient_variance/params/mu"]), PATHWISE_MU / ROWS)
    within(scalar(pathwise["gradient_variance/params/sigma"]), PATHWISE_SIGMA / ROWS)
    # The mean gradient is (2d, 2 sigma): SNR = ||(2d, 2 sigma)|| / sqrt(total variance).
    mean_norm = math.hypot(2 * D, 2 * SIGMA)
    total = (PATHWISE_MU + PATHWISE_SIGMA) / ROWS
    within(scalar(pathwise["gradients/snr"]), mean_norm / math.sqrt(total))
    # Jensen: ||E g|| <= E ||g|| <= sqrt(E ||g||^2) = sqrt(||E g||^2 + total variance).
    norm = scalar(pathwise["gradients/mean_norm"])
    assert 0.99 * mean_norm <= norm <= 1.01 * math.sqrt(mean_norm**2 + total)

    score = read_events(tmp_path / "train_score_function")
    within(scalar(score["gradient_variance/params/mu"]), SCORE_MU / ROWS)
    assert scalar(score["gradients/total_variance"]) > 5 * total


def test_gradient_variance_function_matches_closed_form_and_leaves_model_alone():
    model, x, y = closed_form_model()
    weights = [numpy(w) for w in model.weights]
    model(x)  # build; the seed generator's state after this is what training would continue from
    state = [numpy(v) for v in model.non_trainable_variables]

    result = kvi.gradient_variance(model, (x, y), num_estimates=2000, seed=3)

    assert result.num_estimates == 2000
    assert set(result.variance) == {"params/mu", "params/sigma"}
    within(result.variance["params/mu"], PATHWISE_MU / ROWS)
    within(result.variance["params/sigma"], PATHWISE_SIGMA / ROWS)
    assert result.total_variance == pytest.approx(sum(result.variance.values()), rel=1e-5)
    for before, after in zip(weights, model.weights):
        np.testing.assert_array_equal(before, numpy(after))
    for before, after in zip(state, model.non_trainable_variables):
        np.testing.assert_array_equal(before, numpy(after))
    # Same seed, same estimates; another seed, other noise.
    first = kvi.gradient_variance(model, (x, y), num_estimates=20, seed=3, jit_compile=False)
    again = kvi.gradient_variance(model, (x, y), num_estimates=20, seed=3, jit_compile=False)
    other = kvi.gradient_variance(model, (x, y), num_estimates=20, seed=4, jit_compile=False)
    assert again == first
    assert other.total_variance != first.total_variance


# ------------------------------------------------------ one training run with every logger


def _train(data, callbacks, annealing=None, jit_compile=True, epochs=2):
    keras.utils.set_random_seed(7)
    model = small_vae()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    keras.utils.set_random_seed(8)
    model.fit(data, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)
    return model


EVERY = 3
STEPS = 16  # 256 examples, batch 32, two epochs
LOGGED_STEPS = list(range(0, STEPS, EVERY))
SCORE_FUNCTION = "sf_moving_average"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, binary_data):
    """A VAE trained (XLA) beside keras.callbacks.TensorBoard with all three diagnostics."""
    log_dir = str(tmp_path_factory.mktemp("logs"))
    reference = _train(binary_data, [])
    score_function = kvi.estimators.ScoreFunction(
        baseline=kvi.estimators.baselines.MovingAverage(0.9)
    )
    callbacks = [
        keras.callbacks.TensorBoard(log_dir),
        kvi.callbacks.GradientVarianceLogger(
            log_dir,
            every_n_steps=EVERY,
            num_estimates=4,
            estimators={SCORE_FUNCTION: {"z": score_function}},
            seed=1,
        ),
        kvi.callbacks.LatentDiagnostics(log_dir, validation_data=binary_data[:100], seed=2),
        kvi.callbacks.ImageSamples(log_dir, binary_data, num_images=6, image_shape=(4, 5)),
    ]
    logged = _train(binary_data, callbacks)
    return log_dir, reference, logged


def test_logging_does_not_disturb_training(trained):
    _, reference, logged = trained
    assert len(reference.variables) == len(logged.variables)
    for a, b in zip(reference.variables, logged.variables):
        np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=a.path)
    assert "train_step" not in vars(logged)  # the model's own train_step is back
    assert not logged._step_hooks  # and the logger's step hook is removed


def test_event_files_hold_the_expected_tags(trained):
    log_dir, _, logged = trained
    train = read_events(os.path.join(log_dir, "train"))
    assert "epoch_loss" in train  # keras.callbacks.TensorBoard's scalars, same run
    variable_tags = {f"gradient_variance/{v.path}" for v in logged.trainable_variables}
    expected = {"gradients/total_variance", "gradients/mean_norm", "gradients/snr"}
    score = read_events(os.path.join(log_dir, f"train_{SCORE_FUNCTION}"))
    for run in (train, score):
        assert expected | variable_tags <= set(run)
        for tag in expected | variable_tags:
            assert [step for step, _ in run[tag]] == LOGGED_STEPS, tag
            assert all(np.isfinite(value) for _, value in run[tag]), tag
        total = np.array([v for _, v in run["gradients/total_variance"]])
        per_variable = sum(np.array([v for _, v in run[tag]]) for tag in variable_tags)
        np.testing.assert_allclose(total, per_variable, rtol=1e-4)
    # Same batches and noise, another estimator: REINFORCE is far noisier than pathwise here.
    for (_, pathwise), (_, reinforce) in zip(
        train["gradients/total_variance"], score["gradients/total_variance"]
    ):
        assert reinforce > pathwise

    validation = read_events(os.path.join(log_dir, "validation"))
    epoch_steps = [STEPS // 2, STEPS]
    scalars = ["latents/z/kl", "latents/z/active_units"] + [
        f"latent_kl/z/dim_{d}" for d in range(4)
    ]
    for tag in scalars + ["latents/z/posterior_scale", "images/reconstructions"]:
        assert [step for step, _ in validation[tag]] == epoch_steps, tag
    for tag in scalars:
        assert all(np.isfinite(value) for _, value in validation[tag]), tag
    for (_, kl), *dims in zip(*(validation[t] for t in ["latents/z/kl"] + scalars[2:])):
        assert float(kl) == pytest.approx(sum(float(v) for _, v in dims), rel=1e-4)
    assert all(0 <= float(v) <= 4 for _, v in validation["latents/z/active_units"])
    # Images are stored encoded: [width, height, PNG]; two rows of 4x5 images, 6 across.
    _, image = validation["images/reconstructions"][-1]
    width, height = int(image[0]), int(image[1])
    assert (height, width) == (2 * 4 + 1, 6 * 5 + 5)
    decoded = tf.io.decode_png(image[2]).numpy()
    assert decoded.shape == (height, width, 1)
    _, samples = validation["images/prior_samples"][-1]
    assert (int(samples[1]), int(samples[0])) == (2 * 4 + 1, 3 * 5 + 2)  # 6 samples: 2 rows of 3


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read().decode())


def test_tensorboard_server_serves_the_tags(trained, tmp_path):
    log_dir, _, _ = trained
    port = _free_port()
    binary = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    command = [binary] if os.path.exists(binary) else [sys.executable, "-m", "tensorboard.main"]
    command += ["--logdir", log_dir, "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}/data/plugin"
    want_scalars = {
        "train": {"epoch_loss", "gradients/total_variance", "gradients/snr"},
        f"train_{SCORE_FUNCTION}": {"gradients/total_variance", "gradients/mean_norm"},
        "validation": {"latents/z/active_units", "latents/z/kl", "latent_kl/z/dim_0"},
    }
    with open(tmp_path / "tensorboard.log", "wb") as log:
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        try:
            deadline, scalars = time.monotonic() + 90, {}
            while time.monotonic() < deadline:
                assert server.poll() is None, (tmp_path / "tensorboard.log").read_text()
                try:
                    scalars = _get_json(f"{base}/scalars/tags")
                except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                    scalars = {}
                if all(tags <= set(scalars.get(run, {})) for run, tags in want_scalars.items()):
                    break
                time.sleep(1)
            for run, tags in want_scalars.items():
                assert tags <= set(scalars.get(run, {})), (run, scalars.keys())
            images = _get_json(f"{base}/images/tags")
            assert {"images/reconstructions", "images/prior_samples"} <= set(images["validation"])
            histograms = _get_json(f"{base}/histograms/tags")
            assert "latents/z/posterior_scale" in histograms["validation"]
            series = _get_json(f"{base}/scalars/scalars?run=train&tag=gradients/total_variance")
            assert [point[1] for point in series] == LOGGED_STEPS
            assert all(math.isfinite(point[2]) and point[2] > 0 for point in series)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def test_logger_works_with_kl_annealing_in_either_order(tmp_path, binary_data):
    def run(order):
        anneal = kvi.callbacks.KLAnnealing(kvi.schedules.Linear(warmup_steps=8))
        logger = kvi.callbacks.GradientVarianceLogger(
            tmp_path / order, every_n_steps=4, num_estimates=2, seed=0
        )
        callbacks = {"first": [logger, anneal], "last": [anneal, logger], "none": [anneal]}
        # Keras's default: without XLA on TensorFlow's CPU (the trained fixture has XLA), with
        # it on JAX, where jit_compile=False would run every step op by op (ten times slower).
        model = _train(binary_data[:128], callbacks[order], jit_compile="auto")
        assert "train_step" not in vars(model)
        assert not model._step_hooks
        return model

    reference = run("none")
    for order in ("first", "last"):
        model = run(order)
        for a, b in zip(reference.variables, model.variables):
            np.testing.assert_array_equal(numpy(a), numpy(b))
        steps = [s for s, _ in read_events(tmp_path / order / "train")["gradients/snr"]]
        assert steps == [0, 4]


# --------------------------------------------------------------------------- active units
LATENT = 3


def _constant_posterior_model():
    """q(z|x) = N(0, 1) = the prior, whatever x: no unit is active."""
    inputs = keras.Input((LATENT,))
    raw_scale_of_one = math.log(math.e - 1.0)  # softplus^-1(1)
    params = keras.layers.Dense(
        2 * LATENT,
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant([0.0] * LATENT + [raw_scale_of_one] * LATENT),
    )(inputs)
    z = kvi.layers.NormalLatent(LATENT, min_scale=0.0, name="z")(params)
    return kvi.VariationalModel(inputs, keras.layers.Dense(LATENT)(z), likelihood="normal")


class CopyWithScale(keras.layers.Layer):
    def call(self, x):
        return ops.concatenate([x, ops.full_like(x, -2.0)], axis=-1)


def _copying_model():
    """q(z|x) = N(x, softplus(-2)^2): the posterior mean copies the input."""
    inputs = keras.Input((LATENT,))
    z = kvi.layers.NormalLatent(LATENT, name="z")(CopyWithScale()(inputs))
    return kvi.VariationalModel(inputs, keras.layers.Dense(LATENT)(z), likelihood="normal")


def test_active_units_of_collapsed_and_copying_posteriors(tmp_path):
    x = np.random.default_rng(0).normal(size=(300, LATENT)).astype("float32")

    collapsed = kvi.diagnostics.latent_statistics(_constant_posterior_model(), x, seed=0)["z"]
    assert collapsed.active_units == 0
    np.testing.assert_allclose(collapsed.activity, 0.0, atol=1e-12)
    np.testing.assert_allclose(collapsed.kl_per_dim, 0.0, atol=1e-6)
    np.testing.assert_allclose(collapsed.scales, 1.0, rtol=1e-5)

    copying = kvi.diagnostics.latent_statistics(_copying_model(), x, batch_size=64, seed=0)["z"]
    assert copying.active_units == LATENT
    np.testing.assert_allclose(copying.activity, x.var(axis=0), rtol=1e-5)
    # KL(N(x, s^2) || N(0, 1)) = (s^2 + x^2 - 1) / 2 - log s, averaged over the data.
    s = math.log1p(math.exp(-2.0)) + 1e-5
    expected = ((s**2 + (x**2).mean(axis=0) - 1) / 2 - math.log(s)).astype("float64")
    np.testing.assert_allclose(copying.kl_per_dim, expected, rtol=1e-4)
    assert copying.kl == pytest.approx(expected.sum(), rel=1e-4)

    # The callback writes the same count every epoch.
    model = _copying_model()
    model.compile("adam")
    diagnostics = kvi.callbacks.LatentDiagnostics(tmp_path, validation_data=(x, x), seed=0)
    model.fit(x, x, epochs=2, batch_size=100, verbose=0, callbacks=[diagnostics])
    events = read_events(tmp_path / "validation")
    assert [(s, float(v)) for s, v in events["latents/z/active_units"]] == [
        (3, LATENT),
        (6, LATENT),
    ]


# ---------------------------------------------------------------------------- arguments


def test_arguments_are_checked(tmp_path, binary_data):
    cases = [
        (lambda: kvi.callbacks.GradientVarianceLogger(tmp_path, every_n_steps=0), "every_n_steps"),
        (lambda: kvi.callbacks.GradientVarianceLogger(tmp_path, num_estimates=1), "num_estimates"),
        (lambda: kvi.callbacks.GradientVarianceLogger(None), "log_dir"),
        (
            lambda: kvi.callbacks.GradientVarianceLogger(tmp_path, estimators={"a b": "stl"}),
            "estimators",
        ),
        (
            lambda: kvi.callbacks.GradientVarianceLogger(tmp_path, estimators={"a": "auto"}),
            "auto",
        ),
        (lambda: kvi.callbacks.LatentDiagnostics(tmp_path), "validation_data"),
        (lambda: kvi.callbacks.ImageSamples(tmp_path), "data"),
        (
            lambda: kvi.callbacks.ImageSamples(tmp_path, binary_data, every_n_epochs=0),
            "every_n_epochs",
        ),
        (lambda: kvi.gradient_variance(small_vae(), binary_data, num_estimates=1), "num_est"),
        (
            lambda: kvi.gradient_variance(keras.Sequential([keras.layers.Dense(1)]), [[1.0]]),
            "VariationalModel",
        ),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()

    model = small_vae()
    model.compile("adam")
    unknown = kvi.callbacks.GradientVarianceLogger(
        tmp_path, estimators={"sf": {"nope": "score_function"}}
    )
    with pytest.raises(ValueError, match=r"no latent layer named \['nope'\].*\['z'\]"):
        model.fit(binary_data[:32], epochs=1, verbose=0, callbacks=[unknown])
    no_square = kvi.callbacks.ImageSamples(tmp_path, binary_data)  # 20 values: not n x n
    with pytest.raises(ValueError, match="image_shape"):
        model.fit(binary_data[:32], epochs=1, verbose=0, callbacks=[no_square])


def test_logger_config_round_trips(tmp_path):
    estimator = kvi.estimators.ScoreFunction(baseline=kvi.estimators.baselines.MovingAverage(0.8))
    logger = kvi.callbacks.GradientVarianceLogger(
        str(tmp_path), every_n_steps=50, num_estimates=4, estimators={"sf": estimator}, seed=9
    )
    config = logger.get_config()
    restored = kvi.callbacks.GradientVarianceLogger.from_config(config)
    assert restored.get_config() == config
    assert isinstance(restored.estimators["sf"], kvi.estimators.ScoreFunction)
    assert restored.estimators["sf"].baseline.decay == 0.8
    name = keras.saving.get_registered_name(kvi.callbacks.GradientVarianceLogger)
    assert name == "keras_vi>GradientVarianceLogger"
