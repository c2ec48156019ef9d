"""`VariationalModel`: a `keras.Model` that trains by maximising an ELBO inside `fit`."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_vi import _scope, likelihoods, objectives, schedules

__all__ = ["VariationalModel"]

_FIXED_METRICS = ("loss", "elbo", "nll", "kl", "kl_weight")


def _check_kl_weight(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`kl_weight` must be a finite number >= 0, got {value!r}.")
    if value < 0:
        raise ValueError(f"`kl_weight` must be >= 0, got {value!r}.")
    return float(value)


def _tile(structure, k: int):
    if k == 1:
        return structure

    def tile(t):
        if t is None:
            return None
        t = tf.convert_to_tensor(t)
        return tf.tile(t, [k] + [1] * (t.shape.rank - 1))

    return tf.nest.map_structure(tile, structure)


def _batch_size(structure) -> tf.Tensor:
    first = next(t for t in tf.nest.flatten(structure) if t is not None)
    return tf.shape(first)[0]


@keras.saving.register_keras_serializable(package="keras_vi")
class VariationalModel(keras.Model):
    """A Keras model whose `fit` maximises an evidence lower bound.

    Latent layers (`kvi.layers.*Latent`) draw z with their gradient estimator; the model
    scores its output against the target with `likelihood`, adds the KL terms of its latents
    (and of Bayesian layers, scaled by 1/`num_examples`), and optimises the ELBO or the IWAE
    bound. Works with the functional API and with subclassing.

    Args:
        likelihood: `"bernoulli"` (logits), `"normal"` (loc; or loc and raw scale when the
            output is twice the target's width), `"categorical"` (logits), `"poisson"`
            (log-rate), a callable `y_pred -> tfd.Distribution`, or None to use the compiled
            Keras `loss` as the negative log-likelihood.
        num_samples: K Monte Carlo samples per example, drawn by tiling the batch.
        objective: `"elbo"` or `"iwae"` (needs `num_samples >= 2`).
        kl_weight: a number >= 0 or a `kvi.schedules.Schedule` of the global step; kept in the
            non-trainable variable `model.kl_weight` (saved with the model).
        free_bits: None or lambda >= 0 nats per latent dimension (Kingma et al. 2016).
        num_examples: dataset size N for the 1/N scaling of weight KLs; inferred by `fit`
            from array inputs or a dataset of known cardinality when not given.

    Example:
        >>> x = keras.Input((784,))
        >>> h = keras.layers.Dense(256, activation="relu")(x)
        >>> z = kvi.layers.NormalLatent(16, name="z")(keras.layers.Dense(32)(h))
        >>> logits = keras.layers.Dense(784)(keras.layers.Dense(256, activation="relu")(z))
        >>> vae = kvi.VariationalModel(x, logits, likelihood="bernoulli")
        >>> vae.compile(optimizer="adam")
        >>> vae.fit(x_train, epochs=10)  # unsupervised: the target is x itself
    """

    def __init__(
        self,
        *args,
        likelihood: Any = None,
        num_samples: int = 1,
        objective: str = "elbo",
        kl_weight: Any = 1.0,
        free_bits: float | None = None,
        num_examples: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.likelihood = likelihoods.check(
            keras.saving.deserialize_keras_object(likelihood)
            if isinstance(likelihood, dict)
            else likelihood
        )
        self.num_samples = objectives.check_num_samples(num_samples)
        self.objective = objectives.check_objective(objective, self.num_samples)
        if free_bits is not None:
            if (
                isinstance(free_bits, bool)
                or not isinstance(free_bits, (int, float))
                or not (math.isfinite(free_bits) and free_bits >= 0)
            ):
                raise ValueError(
                    f"`free_bits` must be None or a finite number >= 0, got {free_bits!r}."
                )
            if self.objective == "iwae":
                raise ValueError("`free_bits` applies to objective='elbo' only, not 'iwae'.")
            free_bits = float(free_bits)
        self.free_bits = free_bits
        if num_examples is not None and (
            isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1
        ):
            raise ValueError(f"`num_examples` must be a positive integer, got {num_examples!r}.")
        self.num_examples = num_examples

        if isinstance(kl_weight, dict):
            kl_weight = keras.saving.deserialize_keras_object(kl_weight)
        if isinstance(kl_weight, schedules.Schedule):
            self._kl_schedule = kl_weight
            initial = float(kl_weight(0))
        elif callable(kl_weight):
            raise ValueError(
                "`kl_weight` must be a number or a kvi.schedules.Schedule (evaluated inside the "
                "compiled step). For an arbitrary Python callable use "
                "kvi.callbacks.KLAnnealing(schedule)."
            )
        else:
            self._kl_schedule = None
            initial = _check_kl_weight(kl_weight)
        self._kl_weight_config = kl_weight
        self.kl_weight = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(initial),
            trainable=False,
            name="kl_weight",
            dtype="float32",
        )
        self._num_examples_var = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(float(num_examples or 1)),
            trainable=False,
            name="num_examples",
            dtype="float32",
        )
        self._trackers = {name: keras.metrics.Mean(name=name) for name in _FIXED_METRICS}
        self._latent_trackers: dict[str, keras.metrics.Mean] = {}
        self._compiled_nll_loss = None

    # ------------------------------------------------------------------ configuration
    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        if self.likelihood is None and loss is None:
            raise ValueError(
                "VariationalModel has no `likelihood` and compile() got no `loss`: pass "
                "likelihood='bernoulli' | 'normal' | 'categorical' | 'poisson' (or a callable) "
                "to the model, or a Keras loss to compile() to use as the negative log-likelihood."
            )
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        self._compiled_nll_loss = loss
        self._create_latent_trackers()

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def _latent_layers(self):
        from keras_vi.layers.latent import Latent

        return [
            layer for layer in self._flatten_layers(include_self=False) if isinstance(layer, Latent)
        ]

    def _create_latent_trackers(self):
        for layer in self._latent_layers():
            if layer.prior is not None and layer.name not in self._latent_trackers:
                self._latent_trackers[layer.name] = keras.metrics.Mean(name=f"kl/{layer.name}")

    @property
    def metrics(self):
        metrics = list(self._trackers.values()) + list(self._latent_trackers.values())
        if getattr(self, "_compile_metrics", None) is not None:
            metrics.append(self._compile_metrics)
        return metrics

    def get_config(self):
        try:
            config = super().get_config()
        except NotImplementedError:
            config = {"name": self.name, "trainable": self.trainable}
        likelihood = self.likelihood
        if callable(likelihood):
            likelihood = keras.saving.serialize_keras_object(likelihood)
        kl_weight = self._kl_weight_config
        if isinstance(kl_weight, schedules.Schedule):
            kl_weight = keras.saving.serialize_keras_object(kl_weight)
        config.update(
            {
                "likelihood": likelihood,
                "num_samples": self.num_samples,
                "objective": self.objective,
                "kl_weight": kl_weight,
                "free_bits": self.free_bits,
                "num_examples": self.num_examples,
            }
        )
        return config

    # ------------------------------------------------------------------ the objective
    def _unpack(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError(
                "VariationalModel does not support `sample_weight`; weight the likelihood "
                "inside a callable `likelihood` instead."
            )
        if y is None:
            if isinstance(x, (dict, list, tuple)) and len(tf.nest.flatten(x)) > 1:
                raise ValueError(
                    "Unsupervised fit(x) needs a single input tensor to score against; with "
                    "several inputs pass the target explicitly as fit(x, y)."
                )
            y = x
        return x, y

    def _log_likelihood(self, y_pred, y):
        if self.likelihood is not None:
            return likelihoods.log_prob(self.likelihood, y_pred, y)
        if self._compiled_nll_loss is None:
            raise ValueError(
                "VariationalModel has no `likelihood` and was not compiled with a `loss`."
            )
        return -likelihoods.keras_loss_nll(self._compiled_nll_loss, y_pred, y)

    def compute_objective(
        self,
        x,
        y,
        *,
        training: bool,
        num_samples: int | None = None,
        objective: str | None = None,
        kl_weight=None,
    ):
        """Runs the model on K tiled copies of the batch and builds the bound.

        Returns the dict of `keras_vi.objectives.compute` plus `y_pred` (all K*B rows).
        """
        k = self.num_samples if num_samples is None else num_samples
        objective = self.objective if objective is None else objective
        kl_weight = self.kl_weight if kl_weight is None else kl_weight
        scope = _scope.StepScope(objective=objective, num_samples=k, training=training)
        x_tiled = _tile(x, k)
        with _scope.recording(scope):
            y_pred = self(x_tiled, training=training)
        y_tiled = _tile(y, k)
        log_lik = self._log_likelihood(y_pred, y_tiled)
        out = objectives.compute(
            scope,
            log_lik,
            objective=objective,
            num_samples=k,
            kl_weight=kl_weight,
            free_bits=self.free_bits,
            num_examples=self._num_examples_var,
            training=training,
        )
        out["y_pred"] = y_pred
        return out

    def _update_metrics(self, out, x, y, batch_size):
        weight = tf.cast(batch_size, tf.float32)
        values = {
            "loss": out["loss_value"],
            "elbo": out["elbo"],
            "nll": out["nll"],
            "kl": out["kl"],
            "kl_weight": tf.convert_to_tensor(self.kl_weight),
        }
        for name, value in values.items():
            self._trackers[name].update_state(value, sample_weight=weight)
        for name, value in out["kl_per_latent"].items():
            if name in self._latent_trackers:
                self._latent_trackers[name].update_state(value, sample_weight=weight)
        if getattr(self, "_compile_metrics", None) is not None:
            y_pred = out["y_pred"]
            first = tf.nest.map_structure(lambda t: t[:batch_size], y_pred)
            self._compile_metrics.update_state(y, first)

    def _logs(self):
        logs = {}
        for metric in self.metrics:
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        return logs

    def train_step(self, data):
        x, y = self._unpack(data)
        batch_size = _batch_size(x)
        if self._kl_schedule is not None:
            self.kl_weight.assign(tf.cast(self._kl_schedule(self.optimizer.iterations), "float32"))
        with tf.GradientTape() as tape:
            out = self.compute_objective(x, y, training=True)
            loss = out["loss"]
            # Mirror Keras's own step: per-replica loss divided by the replica count (so the
            # summed gradients average), then the optimizer's loss scaling (mixed precision).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        trainable_weights = self.trainable_weights
        gradients = tape.gradient(scaled_loss, trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, trainable_weights))
        self._update_metrics(out, x, y, batch_size)
        return self._logs()

    def test_step(self, data):
        x, y = self._unpack(data)
        out = self.compute_objective(x, y, training=False)
        self._update_metrics(out, x, y, _batch_size(x))
        return self._logs()

    # ------------------------------------------------------------------ fit conveniences
    def _infer_num_examples(self, x, validation_split):
        if self.num_examples is not None:
            return self.num_examples
        n = None
        if isinstance(x, (np.ndarray, tf.Tensor)) or hasattr(x, "shape"):
            try:
                n = int(x.shape[0])
            except (TypeError, IndexError):
                n = None
            if n is not None and validation_split:
                n = int(n * (1.0 - validation_split))
        elif isinstance(x, tf.data.Dataset):
            cardinality = int(x.cardinality())
            batch_dim = tf.nest.flatten(x.element_spec)[0].shape
            batch = batch_dim[0] if batch_dim.rank else None
            if batch is None:
                batch = getattr(x, "_batch_size", None)
                batch = None if batch is None else int(batch)
            if cardinality > 0 and batch:
                n = cardinality * batch
        return n

    def fit(self, x=None, y=None, *args, **kwargs):
        n = self._infer_num_examples(x, kwargs.get("validation_split", 0.0))
        if n is not None:
            self._num_examples_var.assign(float(n))
        self._create_latent_trackers()
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._create_latent_trackers()
        return super().evaluate(*args, **kwargs)
