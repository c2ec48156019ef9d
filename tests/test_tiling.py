"""Where the K samples per example start: `tile_at="latent"` equals `"input"`, with less work."""

import keras
import numpy as np
import pytest

import keras_vi as kvi

from backend_utils import gradients
from conftest import estimator_matrix, small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")


class RowCounter(keras.layers.Layer):
    """The identity, remembering how many rows it saw (eager calls only)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows = []

    def call(self, x):
        self.rows.append(x.shape[0])
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def _objective_and_gradients(build, tile_at, data):
    keras.utils.set_random_seed(21)
    model = build(tile_at)
    model.compile(optimizer="adam")

    def objective():  # for DReG, compute_objective repeats its passes over the same state
        return model.compute_objective(data, data, training=True)

    keras.utils.set_random_seed(5)
    with keras.StatelessScope():  # leaves the seed generators as they were
        out = objective()
    keras.utils.set_random_seed(5)
    grads = gradients(lambda: objective()["loss"], model.trainable_variables)
    return model, out, grads


@pytest.mark.parametrize("case", estimator_matrix(), ids=[case[0] for case in estimator_matrix()])
def test_tiling_at_the_latent_gives_the_same_bound_and_gradients(case, binary_data):
    _, make_latent, params_width, model_kwargs = case
    model_kwargs = {**model_kwargs, "num_samples": max(3, model_kwargs.get("num_samples", 1))}
    data = binary_data[:16]

    def build(tile_at):
        return small_vae(
            latent=make_latent(), params_width=params_width, tile_at=tile_at, **model_kwargs
        )

    by_input, out_input, grads_input = _objective_and_gradients(build, "input", data)
    by_latent, out_latent, grads_latent = _objective_and_gradients(build, "auto", data)
    assert by_input.resolved_tile_at == "input"
    assert by_latent.resolved_tile_at == "latent"
    assert out_latent["y_pred"].shape == out_input["y_pred"].shape == (3 * 16, 20)
    for key in ("loss", "elbo", "nll", "kl"):
        np.testing.assert_allclose(float(out_latent[key]), float(out_input[key]), rtol=1e-6)
    for g_latent, g_input in zip(grads_latent, grads_input):
        np.testing.assert_allclose(g_latent, g_input, rtol=1e-4, atol=1e-6)


def test_the_encoder_runs_once_per_example_and_the_decoder_k_times():
    inputs = keras.Input((6,))
    encoder_rows, decoder_rows = RowCounter(), RowCounter()
    params = keras.layers.Dense(4)(encoder_rows(inputs))
    z = kvi.layers.NormalLatent(2, name="z")(params)
    outputs = keras.layers.Dense(6)(decoder_rows(z))
    model = kvi.VariationalModel(inputs, outputs, likelihood="bernoulli", num_samples=5)
    encoder_rows.rows.clear(), decoder_rows.rows.clear()
    x = np.ones((7, 6), "float32")
    model.compute_objective(x, x, training=True)
    assert (encoder_rows.rows, decoder_rows.rows) == ([7], [35])


def test_hierarchical_and_parallel_latents():
    """Only latents fed from before any latent tile; a latent fed by z leaves it as is."""

    def build(tile_at):
        inputs = keras.Input((10,))
        h = keras.layers.Dense(12, activation="tanh")(inputs)
        z1 = kvi.layers.NormalLatent(3, name="z1")(keras.layers.Dense(6)(h))
        z2 = kvi.layers.NormalLatent(2, name="z2")(keras.layers.Dense(4)(h))
        z3 = kvi.layers.NormalLatent(2, name="z3", kl="mc")(keras.layers.Dense(4)(z1))
        outputs = keras.layers.Dense(10)(keras.layers.Concatenate()([z1, z2, z3]))
        return kvi.VariationalModel(
            inputs, outputs, likelihood="bernoulli", num_samples=4, tile_at=tile_at
        )

    data = (np.random.default_rng(0).random((9, 10)) > 0.5).astype("float32")
    by_input, out_input, grads_input = _objective_and_gradients(build, "input", data)
    by_latent, out_latent, grads_latent = _objective_and_gradients(build, "latent", data)
    tiling = {
        layer.name
        for layer in by_latent._latent_layers()
        if id(layer) in by_latent._tiling_plan.latents
    }
    assert tiling == {"z1", "z2"}
    np.testing.assert_allclose(float(out_latent["loss"]), float(out_input["loss"]), rtol=1e-6)
    for g_latent, g_input in zip(grads_latent, grads_input):
        np.testing.assert_allclose(g_latent, g_input, rtol=1e-4, atol=1e-6)


def _dropout_encoder():
    inputs = keras.Input((8,))
    h = keras.layers.Dropout(0.3)(keras.layers.Dense(8)(inputs))
    return inputs, keras.layers.Dense(8)(kvi.layers.NormalLatent(2)(keras.layers.Dense(4)(h)))


def _bayesian_encoder():
    inputs = keras.Input((8,))
    h = kvi.layers.DenseFlipout(8, name="flipout")(inputs)
    return inputs, keras.layers.Dense(8)(kvi.layers.NormalLatent(2)(keras.layers.Dense(4)(h)))


def _conditional_decoder():
    inputs = keras.Input((8,))
    z = kvi.layers.NormalLatent(2)(keras.layers.Dense(4)(inputs))
    joined = keras.layers.Concatenate(name="join")([z, inputs])
    return inputs, keras.layers.Dense(8)(joined)


def _output_without_latent():
    inputs = keras.Input((8,))
    z = kvi.layers.NormalLatent(2)(keras.layers.Dense(4)(inputs))
    return inputs, [keras.layers.Dense(8)(z), keras.layers.Dense(8, name="skip")(inputs)]


def _no_latent():
    inputs = keras.Input((8,))
    return inputs, kvi.layers.DenseReparameterization(8)(inputs)


def _activity_regularized():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(4, activity_regularizer="l2", name="penalised")(inputs)
    return inputs, keras.layers.Dense(8)(kvi.layers.NormalLatent(2)(h))


@pytest.mark.parametrize(
    "graph, reason",
    [
        (_dropout_encoder, "draws random numbers before the first latent"),
        (_bayesian_encoder, "'flipout' draws random numbers"),
        (_conditional_decoder, "'join' combines tensors from before and after a latent"),
        (_output_without_latent, "does not depend on any latent"),
        (_no_latent, "the model has no latent layer"),
        (_activity_regularized, "'penalised' has an activity regularizer"),
    ],
    ids=["dropout", "bayesian", "conditional", "bypass_output", "no_latent", "activity"],
)
def test_graphs_that_need_input_tiling(graph, reason):
    inputs, outputs = graph()
    model = kvi.VariationalModel(inputs, outputs, likelihood="bernoulli", num_samples=2)
    assert model.resolved_tile_at == "input"
    with pytest.raises(ValueError, match=f"tile_at='latent' is not possible: .*{reason}"):
        kvi.VariationalModel(
            inputs, outputs, likelihood="bernoulli", num_samples=2, tile_at="latent"
        )


def test_subclassed_models_tile_the_input_and_bad_values_are_refused():
    class Tiny(kvi.VariationalModel):
        def __init__(self, **kwargs):
            super().__init__(likelihood="bernoulli", num_samples=2, **kwargs)
            self.params = keras.layers.Dense(4)
            self.z = kvi.layers.NormalLatent(2)
            self.out = keras.layers.Dense(8)

        def call(self, x):
            return self.out(self.z(self.params(x)))

    assert Tiny().resolved_tile_at == "input"
    with pytest.raises(ValueError, match="subclassed"):
        Tiny(tile_at="latent")
    with pytest.raises(ValueError, match="`tile_at` must be one of"):
        small_vae(tile_at="encoder")


def test_tile_at_is_saved(tmp_path, binary_data):
    model = small_vae(num_samples=2, objective="iwae", tile_at="input")
    model.compile(optimizer="adam")
    model.fit(binary_data[:32], epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert (loaded.tile_at, loaded.resolved_tile_at) == ("input", "input")
    assert small_vae(num_samples=2).get_config()["tile_at"] == "auto"
