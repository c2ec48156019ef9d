"""The bad-input matrix: each case raises a ValueError naming the argument and what was expected.

Data problems (NaN/Inf, strings, lengths) are in test_reliability.py; property-based
sweeps over shapes and arguments in test_reliability_properties.py.
"""

import keras
import pytest

import keras_vi as kvi

from conftest import small_vae

pytestmark = pytest.mark.backends("tensorflow", "jax")


def test_error_reparameterization_on_discrete_q(binary_data):
    latent = kvi.layers.BernoulliLatent(4, estimator=kvi.estimators.Reparameterization())
    model = small_vae(latent=latent, params_width=4)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"estimator=Reparameterization\(\).*reparameterizable"):
        model.fit(binary_data, epochs=1, verbose=0)


def test_error_iwae_needs_several_samples():
    with pytest.raises(ValueError, match=r"objective='iwae' needs num_samples >= 2"):
        small_vae(objective="iwae", num_samples=1)


def test_error_analytic_kl_without_closed_form_names_both_types(binary_data):
    latent = kvi.layers.NormalLatent(
        4, prior=kvi.priors.MixtureOfGaussians([-1.0, 1.0], [0.5, 0.5]), kl="analytic"
    )
    model = small_vae(latent=latent, params_width=8)
    model.compile(optimizer="adam")
    match = r"kl='analytic'.*Independent\(Normal\).*MixtureSameFamily"
    with pytest.raises(ValueError, match=match):
        model.fit(binary_data, epochs=1, verbose=0)


def test_error_unknown_likelihood():
    with pytest.raises(ValueError, match=r"Unknown `likelihood` 'gaussian'"):
        small_vae(likelihood="gaussian")


def test_error_target_shape_mismatch(binary_data):
    model = small_vae()
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"target's shape .*10.* does not match .*20"):
        model.fit(binary_data, binary_data[:, :10], epochs=1, verbose=0)


def test_error_no_likelihood_and_no_loss():
    model = small_vae(likelihood=None)
    with pytest.raises(ValueError, match=r"no `likelihood` and compile\(\) got no `loss`"):
        model.compile(optimizer="adam")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_error_num_samples(bad):
    with pytest.raises(ValueError, match=r"`num_samples` must be a positive integer"):
        small_vae(num_samples=bad)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_error_kl_weight(bad):
    with pytest.raises(ValueError, match=r"`kl_weight`"):
        small_vae(kl_weight=bad)


def test_error_free_bits_negative():
    with pytest.raises(ValueError, match=r"`free_bits` must be None or a finite number >= 0"):
        small_vae(free_bits=-1.0)


def test_error_latent_width_mismatch():
    with pytest.raises(ValueError, match=r"NormalLatent 'z' expects an input of width 16"):
        kvi.layers.NormalLatent(8, name="z")(keras.Input((10,)))


def test_error_unknown_estimator_and_kl_mode():
    with pytest.raises(ValueError, match=r"Unknown `estimator` 'reinforce'"):
        kvi.layers.NormalLatent(2, estimator="reinforce")
    with pytest.raises(ValueError, match=r"Unknown `kl` 'exact'"):
        kvi.layers.NormalLatent(2, kl="exact")


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: kvi.schedules.Linear(warmup_steps=0), r"`warmup_steps` must be a positive"),
        (lambda: kvi.schedules.Linear(10, start=-1.0), r"`start` must be >= 0"),
        (lambda: kvi.schedules.Cyclical(100, ratio=0.0), r"`ratio` must be > 0"),
        (lambda: kvi.schedules.Cyclical(100, ratio=1.5), r"`ratio` must be in \(0, 1\]"),
        (lambda: kvi.schedules.Sigmoid(10, steepness=0.0), r"`steepness` must be > 0"),
        (lambda: kvi.schedules.Constant(float("nan")), r"`value` must be a finite number"),
        (lambda: kvi.schedules.get("linear"), r"must be a number, a kvi.schedules.Schedule"),
    ],
)
def test_schedule_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "make_latent,width,kwargs,match",
    [
        (
            lambda: kvi.layers.BernoulliLatent(4, estimator="vimco"),
            4,
            {},
            r"estimator=VIMCO\(\) needs objective='iwae'",
        ),
        (lambda: kvi.layers.NormalLatent(2, estimator="dreg"), 4, {}, r"needs objective='iwae'"),
        (
            lambda: kvi.layers.BernoulliLatent(
                4, estimator=kvi.estimators.ScoreFunction(kvi.estimators.baselines.LeaveOneOut())
            ),
            4,
            {},
            r"LeaveOneOut\(\) needs num_samples >= 2",
        ),
        (
            lambda: kvi.layers.NormalLatent(2, estimator="gumbel_softmax"),
            4,
            {},
            r"relaxes a categorical q",
        ),
    ],
)
def test_error_estimator_attached_to_incompatible_setup(
    binary_data, make_latent, width, kwargs, match
):
    model = small_vae(latent=make_latent(), params_width=width, **kwargs)
    with pytest.raises(ValueError, match=match):  # at compile() where the setup is known
        model.compile(optimizer="adam")
        model.fit(binary_data[:32], epochs=1, verbose=0)
