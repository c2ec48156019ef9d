"""Control variates (baselines) for score-function estimators.

A baseline is a Keras layer (it may own variables or a network, which the latent layer tracks
and saves). `compute(signal, inputs, training)` returns the baseline to subtract from the
learning signal and an auxiliary objective that trains the baseline in the same step.

Shapes: `signal` is `[K, B]` inside a `VariationalModel` (K samples of B examples; `[1, B]`
when all samples share one signal, as under `objective="iwae"`), and `[S, ...]` inside
`kvi.expectation`. `inputs` is the latent layer's input with the gradient stopped, one row
per sample (`[K * B, features]`), or None when there is none.

The auxiliary objective is to be *maximised* (for example minus a squared error); it
reaches only the gradient, never the reported loss.

Baselines compose: `Learned(network, centering=MovingAverage())` subtracts a moving average
first and lets the network predict what is left (NVIL's signal centring).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["Baseline", "MovingAverage", "LeaveOneOut", "Learned", "get"]


class Baseline(keras.layers.Layer):
    """Base class. Subclasses override `compute` (and `apply` to rescale the signal).

    Example:
        >>> class Constant(kvi.estimators.baselines.Baseline):
        ...     def compute(self, signal, inputs, training):
        ...         return keras.ops.convert_to_tensor(-100.0), None
        >>> signal = keras.ops.convert_to_tensor([1.0, 2.0])
        >>> centred, auxiliary = Constant().apply(signal, None, training=True)
        >>> keras.ops.convert_to_numpy(centred), auxiliary  # signal - baseline; nothing to train
        (array([101., 102.], dtype=float32), None)
        >>> est = kvi.estimators.ScoreFunction(baseline=Constant())
    """

    min_num_samples = 1

    def validate(self, *, num_samples: int, objective: str | None = "elbo") -> None:
        """Raises ValueError when the baseline cannot serve this sampling set-up."""
        if num_samples < self.min_num_samples:
            raise ValueError(
                f"baseline={type(self).__name__}() needs num_samples >= {self.min_num_samples} "
                f"(it compares the samples of one example), got num_samples={num_samples}."
            )

    def compute(self, signal: Any, inputs: Any, training: bool):
        """Returns (baseline broadcastable to signal, auxiliary objective or None)."""
        raise NotImplementedError

    def apply(self, signal: Any, inputs: Any, training: bool):
        """Returns (the signal with the baseline removed, auxiliary objective or None).

        The score-function estimator multiplies the first output by the score, so it must not
        depend on the sample whose score it multiplies; only the network's regression target
        is allowed to see that sample, through the auxiliary objective.
        """
        baseline, auxiliary = self.compute(signal, inputs, training)
        return signal - ops.stop_gradient(baseline), auxiliary

    def call(self, inputs):  # Keras needs a call; baselines are driven through compute.
        return inputs

    def _repr_arguments(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_arguments().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_vi")
class MovingAverage(Baseline):
    """An exponential moving average of the learning signal (input independent).

    Args:
        decay: weight of the old average, in [0, 1).

    Example:
        >>> est = kvi.estimators.ScoreFunction(baseline=kvi.estimators.baselines.MovingAverage(0.9))
    """

    def __init__(self, decay: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MovingAverage: `decay` must be in [0, 1), got {decay}.")
        self.decay = float(decay)

    def build(self, input_shape=None):
        if self.built:
            return
        self.average = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="average", aggregation="mean"
        )
        self.initialized = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="initialized", aggregation="mean"
        )
        self.built = True

    def compute(self, signal, inputs, training):
        if not self.built:
            self.build()
        average = ops.copy(self.average)  # the value before this step's update
        if training:
            batch_mean = ops.mean(signal)
            # The first update sets the average to the batch mean instead of decaying from 0.
            decay = self.decay * ops.convert_to_tensor(self.initialized)
            self.average.assign(decay * average + (1.0 - decay) * batch_mean)
            self.initialized.assign(1.0)
        return average, None

    def get_config(self):
        return {**super().get_config(), "decay": self.decay}

    def _repr_arguments(self):
        return {"decay": self.decay}


@keras.saving.register_keras_serializable(package="keras_vi")
class LeaveOneOut(Baseline):
    """REINFORCE leave-one-out (RLOO): sample k's baseline is the mean signal of the others.

    With K samples of one example, b_k = (sum_j f_j - f_k) / (K - 1), which does not depend
    on z_k, so the estimator stays unbiased (Kool et al. 2019). Needs `num_samples >= 2` and
    per-sample signals, so it serves `objective="elbo"`; under `objective="iwae"` every sample
    shares the bound as its signal and `VIMCO()` is the leave-one-out estimator to use.

    Example:
        >>> est = kvi.estimators.ScoreFunction(baseline=kvi.estimators.baselines.LeaveOneOut())
        >>> vae = kvi.VariationalModel(x, logits, likelihood="bernoulli", num_samples=5)
    """

    min_num_samples = 2

    def validate(self, *, num_samples: int, objective: str | None = "elbo") -> None:
        super().validate(num_samples=num_samples, objective=objective)
        if objective is not None and objective != "elbo":
            raise ValueError(
                "baseline=LeaveOneOut() needs a learning signal per sample, but under "
                f"objective={objective!r} the K samples share one signal (the bound). Use "
                "estimator=kvi.estimators.VIMCO(), the leave-one-out estimator of the IWAE bound."
            )

    def compute(self, signal, inputs, training):
        k = ops.cast(ops.shape(signal)[0], signal.dtype)
        total = ops.sum(signal, axis=0, keepdims=True)
        return (total - signal) / (k - 1.0), None


@keras.saving.register_keras_serializable(package="keras_vi")
class Learned(Baseline):
    """NVIL (Mnih & Gregor 2014): an input-dependent baseline network trained in the same step.

    The network maps the latent layer's input (its parameter tensor, gradient stopped, so the
    baseline never sees z) to one number per sample and is trained by regressing the learning
    signal: the auxiliary objective is minus the mean squared error, whose gradient reaches
    only the network's weights.

    Args:
        network: a Keras layer or model mapping `[rows, features] -> [rows, 1]`. It is built
            on the latent layer's input shape. Inside `kvi.expectation` it receives
            `baseline_inputs` (or a column of ones, making it a learned constant).
        centering: optional baseline subtracted first (typically `MovingAverage()`); the
            network then predicts the remainder. The total baseline is `centering + network`.
        normalize: divide the centred signal by max(1, running standard deviation), as Mnih &
            Gregor do. This rescales the score-function gradient of this latent (a step-size
            change, not a direction change); pathwise parts of the gradient are not rescaled.
        decay: decay of the running variance used by `normalize`.

    Example:
        >>> baseline = kvi.estimators.baselines.Learned(
        ...     keras.Sequential([keras.layers.Dense(64, activation="tanh"),
        ...                       keras.layers.Dense(1)]),
        ...     centering=kvi.estimators.baselines.MovingAverage(0.9))
        >>> latent = kvi.layers.BernoulliLatent(
        ...     200, estimator=kvi.estimators.ScoreFunction(baseline=baseline))
    """

    def __init__(
        self,
        network: keras.layers.Layer,
        centering: Baseline | None = None,
        normalize: bool = False,
        decay: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        if not isinstance(network, keras.layers.Layer):
            raise ValueError(
                "Learned: `network` must be a Keras layer or model mapping inputs to one value "
                f"per row, got {type(network).__name__}."
            )
        centering = get(centering)
        if isinstance(centering, Learned):
            raise ValueError("Learned: `centering` must not itself be a Learned baseline.")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"Learned: `decay` must be in [0, 1), got {decay}.")
        self.network = network
        self.centering = centering
        self.normalize = bool(normalize)
        self.decay = float(decay)

    def validate(self, *, num_samples: int, objective: str | None = "elbo") -> None:
        super().validate(num_samples=num_samples, objective=objective)
        if self.centering is not None:
            self.centering.validate(num_samples=num_samples, objective=objective)

    def build(self, input_shape=None):
        if self.built:
            return
        if input_shape is not None and not self.network.built:
            self.network.build(input_shape)
        if self.centering is not None and not self.centering.built:
            self.centering.build(input_shape)
        if self.normalize:
            self.variance = self.add_weight(
                shape=(), initializer="ones", trainable=False, name="variance", aggregation="mean"
            )
            self.initialized = self.add_weight(
                shape=(),
                initializer="zeros",
                trainable=False,
                name="initialized",
                aggregation="mean",
            )
        self.built = True

    def _network_inputs(self, signal, inputs):
        if inputs is None:
            # No context (e.g. kvi.expectation without baseline_inputs): a learned constant.
            return ops.ones((ops.size(signal), 1), dtype=signal.dtype)
        inputs = ops.stop_gradient(ops.cast(inputs, signal.dtype))
        return ops.reshape(inputs, (-1, inputs.shape[-1]))

    def compute(self, signal, inputs, training):
        net_inputs = self._network_inputs(signal, inputs)
        if not self.built:
            self.build(net_inputs.shape)
        centre, auxiliary = ops.zeros((), signal.dtype), None
        if self.centering is not None:
            centre, auxiliary = self.centering.compute(signal, inputs, training)
            centre = ops.stop_gradient(centre)
        prediction = ops.cast(self.network(net_inputs, training=training), signal.dtype)
        # One prediction per sample row: [K * B, 1] -> [K, B] (or [S, ...] in kvi.expectation).
        prediction = ops.reshape(prediction, (-1,) + tuple(ops.shape(signal)[1:]))
        target = ops.stop_gradient(signal - centre)
        regression = -ops.mean(ops.square(target - prediction))
        auxiliary = regression if auxiliary is None else auxiliary + regression
        return centre + prediction, auxiliary

    def apply(self, signal, inputs, training):
        centred, auxiliary = super().apply(signal, inputs, training)
        if not self.normalize:
            return centred, auxiliary
        variance = ops.copy(self.variance)  # the value before this step's update
        if training:
            batch_variance = ops.mean(ops.square(centred))
            decay = self.decay * ops.convert_to_tensor(self.initialized)
            self.variance.assign(decay * variance + (1.0 - decay) * batch_variance)
            self.initialized.assign(1.0)
        scale = ops.maximum(1.0, ops.sqrt(ops.stop_gradient(variance)))
        return centred / scale, auxiliary

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "centering": None
            if self.centering is None
            else keras.saving.serialize_keras_object(self.centering),
            "normalize": self.normalize,
            "decay": self.decay,
        }

    def _repr_arguments(self):
        return {
            "network": _Name(self.network.name),
            "centering": self.centering,
            "normalize": self.normalize,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        if isinstance(config.get("centering"), dict):
            config["centering"] = keras.saving.deserialize_keras_object(config["centering"])
        return cls(**config)


class _Name(str):
    def __repr__(self) -> str:
        return f"<{self}>"


_ALIASES = {"moving_average": MovingAverage, "leave_one_out": LeaveOneOut}


def get(identifier) -> Baseline | None:
    """Resolves None, a Baseline, a config dict, or `"moving_average"` / `"leave_one_out"`."""
    if identifier is None or isinstance(identifier, Baseline):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str) and identifier in _ALIASES:
        return _ALIASES[identifier]()
    raise ValueError(
        f"Unknown `baseline` {identifier!r}; expected None, one of {sorted(_ALIASES)}, or a "
        "keras_vi.estimators.baselines.Baseline such as Learned(network)."
    )
