"""`VariationalModel`: a `keras.Model` that trains by maximising an ELBO inside `fit`."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.common.symbolic_scope import in_symbolic_scope
from keras.src.models.functional import Functional
from keras.src.saving import object_registration
from keras.src.trainers.trainer import Trainer

from keras_vi import (
    _prediction,
    _scope,
    _serialization,
    _tiling,
    likelihoods,
    objectives,
    schedules,
    validation,
)
from keras_vi.errors import NonFiniteError

__all__ = ["VariationalModel"]

_FIXED_METRICS = ("loss", "elbo", "nll", "kl", "kl_weight", "regularization")
# Which way each reported quantity improves, for monitoring callbacks left on mode="auto".
_METRIC_MODES = {"loss": "min", "elbo": "max", "nll": "min", "kl": "min", "regularization": "min"}
# A log entry that carries the consecutive-skip count out of the compiled step to the guard
# in `make_train_function`, which removes it before callbacks see the logs (reading the
# variable instead would cost an extra eager op per step: +20% step time on tiny models).
_SKIP_COUNT_LOG = "_keras_vi_consecutive_skips"


def _check_kl_weight(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`kl_weight` must be a finite number >= 0, got {value!r}.")
    if value < 0:
        raise ValueError(f"`kl_weight` must be >= 0, got {value!r}.")
    return float(value)


def _tile(structure, k: int):

    def tile(t):
        if t is None:
            return None
        t = tf.convert_to_tensor(t)
        return t if k == 1 else tf.tile(t, [k] + [1] * (t.shape.rank - 1))

    return tf.nest.map_structure(tile, structure)


def _is_functional_call(args, kwargs) -> bool:
    return (
        (len(args) == 2)
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


_FUNCTIONAL_VARIANTS: dict[type, type] = {}


def _functional_variant(cls: type) -> type:
    """`cls` with Keras's Functional mixed in, made once per class.

    Keras's own `Model.__init__` handles `Subclass(inputs, outputs)` by rewriting the
    subclass's `__bases__` in place, which would break every later subclass-style use of
    `VariationalModel`. A separate cached class keeps both styles working side by side.
    """
    if cls not in _FUNCTIONAL_VARIANTS:
        variant = type(cls.__name__, (cls, Functional), {"__module__": cls.__module__})
        # Saved models name the user's class, so loading goes through cls (and back here).
        object_registration.GLOBAL_CUSTOM_NAMES[variant] = keras.saving.get_registered_name(cls)
        _FUNCTIONAL_VARIANTS[cls] = variant
    return _FUNCTIONAL_VARIANTS[cls]


def _all_finite(tensors) -> tf.Tensor:
    flags = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def _agreed_across_replicas(ok: tf.Tensor) -> tf.Tensor:
    """True only if every replica's flag is true, so all replicas take the same branch."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return ok
    bad = context.all_reduce("sum", tf.cast(tf.logical_not(ok), tf.float32))
    return tf.equal(bad, 0.0)


def _apply_if(optimizer, gradients, weights, ok: tf.Tensor) -> None:
    """optimizer.apply(gradients) when `ok`, otherwise nothing (no step, no state change).

    A cond whose branch synchronises replicas (the optimizer's merge_call) must run in
    cross-replica context under strategies that merge, as Keras's LossScaleOptimizer does.
    """
    pairs = [(g, w) for g, w in zip(gradients, weights) if g is not None]
    grads, variables = [g for g, _ in pairs], [w for _, w in pairs]
    context = tf.distribute.get_replica_context()
    if (
        context is None
        or context.num_replicas_in_sync == 1
        or tf.__internal__.distribute.strategy_supports_no_merge_call()
    ):
        tf.cond(ok, lambda: _apply(optimizer, grads, variables), tf.no_op)
        return

    def cross_replica(distribution, grads, ok):
        ok = distribution.experimental_local_results(ok)[0]

        def apply_on_replicas():
            distribution.extended.call_for_each_replica(_apply, args=(optimizer, grads, variables))
            return tf.no_op()

        tf.cond(ok, apply_on_replicas, tf.no_op)

    context.merge_call(cross_replica, args=(grads, ok))


def _apply(optimizer, grads, variables):
    optimizer.apply(grads, variables)
    return tf.no_op()


def _in_multi_worker_mode() -> bool:
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return strategy.extended._in_multi_worker_mode()


def _as_keywords(method, args: tuple, kwargs: dict) -> dict:
    """Keras `fit`/`evaluate` arguments after x and y given by position, as keywords.

    So that `sample_weight`, `batch_size` or `callbacks` passed by position are seen by the
    checks that read them.
    """
    if not args:
        return kwargs
    names = list(inspect.signature(method).parameters)[2:]  # after x and y
    if len(args) > len(names):
        raise TypeError(f"{method.__name__}() got {len(args) + 2} positional arguments.")
    duplicated = sorted(set(names[: len(args)]) & set(kwargs))
    if duplicated:
        raise TypeError(f"{method.__name__}() got multiple values for {duplicated}.")
    return {**dict(zip(names, args)), **kwargs}


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
        num_samples: K Monte Carlo samples per example, drawn in one vectorised pass.
        objective: `"elbo"` or `"iwae"` (needs `num_samples >= 2`).
        kl_weight: a number >= 0 or a `kvi.schedules.Schedule` of the global step; kept in the
            non-trainable variable `model.kl_weight` (saved with the model).
        free_bits: None or lambda >= 0 nats per latent dimension (Kingma et al. 2016).
        num_examples: dataset size N for the 1/N scaling of weight KLs; inferred by `fit`
            from array inputs or a dataset of known cardinality when not given.
        max_consecutive_skips: raise `kvi.NonFiniteError` after this many consecutive
            non-finite steps (None: skip forever).
        tile_at: where the K copies of each example start. `"input"` tiles the batch K times
            and runs the whole model on K*B rows. `"latent"` (functional models only) runs
            everything before the latent layers once on the B rows and tiles each latent's
            parameters instead: the same samples, bound and gradients, without repeating
            the encoder; it needs every input-to-output path to pass through a latent and
            nothing random before the latents (layers drawing through a Keras
            `SeedGenerator`: dropout, noise, Bayesian layers; a custom layer calling
            `tf.random` directly is not detected, so give it `"input"`). `"auto"` (default)
            picks `"latent"` when that holds, else `"input"`; `model.resolved_tile_at` tells.
        prediction: what the model returns outside training and evaluation (`model(x)`,
            `predict`, and the `serve` function of `model.export`, which fixes the setting
            when it is exported). `"sample"` (default): one random draw of the raw output
            (e.g. logits). `"mean"`, deterministic: each latent layer returns the mean of a
            reparameterized q (a `NormalLatent`'s loc) or the mode of any other q (1 where a
            Bernoulli logit is > 0, the one-hot argmax of a categorical), Bayesian layers use
            their posterior-mean weights, and the output is the likelihood's mean: sigmoid
            for `"bernoulli"`, softmax for `"categorical"`, exp for `"poisson"`, the loc for
            `"normal"` (the first half of an output twice as wide as the input),
            `likelihood(y_pred).mean()` for a callable, the output unchanged with a compiled
            loss. Can be set after training (`model.prediction = "mean"`); training,
            evaluation and `kvi.predict_samples` always sample.

    Example:
        >>> x = keras.Input((784,))
        >>> h = keras.layers.Dense(256, activation="relu")(x)
        >>> z = kvi.layers.NormalLatent(16, name="z")(keras.layers.Dense(32)(h))
        >>> logits = keras.layers.Dense(784)(keras.layers.Dense(256, activation="relu")(z))
        >>> vae = kvi.VariationalModel(x, logits, likelihood="bernoulli")
        >>> vae.compile(optimizer="adam")
        >>> history = vae.fit(x_train, epochs=1, verbose=0)  # unsupervised: the target is x
        >>> {"loss", "elbo", "nll", "kl"} <= set(history.history)
        True
        >>> vae.prediction = "mean"
        >>> probabilities = vae.predict(x_test, verbose=0)  # sigmoid(decoder(loc of q))
        >>> bool(np.array_equal(probabilities, vae.predict(x_test, verbose=0)))  # deterministic
        True
    """

    def __new__(cls, *args, **kwargs):
        if _is_functional_call(args, kwargs) and not issubclass(cls, Functional):
            cls = _functional_variant(cls)
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self,
        *args,
        likelihood: Any = None,
        num_samples: int = 1,
        objective: str = "elbo",
        kl_weight: Any = 1.0,
        free_bits: float | None = None,
        num_examples: int | None = None,
        max_consecutive_skips: int | None = 10,
        tile_at: str = "auto",
        prediction: str = "sample",
        **kwargs,
    ):
        if isinstance(self, Functional):
            Trainer.__init__(self)
            Functional.__init__(self, *args, **kwargs)
        else:
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
        if max_consecutive_skips is not None and (
            isinstance(max_consecutive_skips, bool)
            or not isinstance(max_consecutive_skips, int)
            or max_consecutive_skips < 1
        ):
            raise ValueError(
                "`max_consecutive_skips` must be None or a positive integer, got "
                f"{max_consecutive_skips!r}."
            )
        self.max_consecutive_skips = max_consecutive_skips
        self.tile_at = _tiling.check_tile_at(tile_at)
        self.prediction = prediction
        self._tiling_plan = _tiling.plan(self)
        if self.tile_at == "latent" and self._tiling_plan.reason is not None:
            raise ValueError(
                f"tile_at='latent' is not possible: {self._tiling_plan.reason}. "
                "Use tile_at='input' (or 'auto')."
            )

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
        # Non-finite step accounting (same value on every replica, hence first-replica reads).
        self._consecutive_skips = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            name="consecutive_skips",
            dtype="int32",
            aggregation="only_first_replica",
        )
        self._nonfinite_term = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            name="nonfinite_term",
            dtype="int32",
            aggregation="only_first_replica",
        )
        self._skipped_steps = keras.metrics.Sum(name="skipped_steps")
        self._nonfinite_term_names: list[str] = []
        self._resume_skip_steps = 0
        self._trackers = {name: keras.metrics.Mean(name=name) for name in _FIXED_METRICS}
        # `regularization` joins the logs once a step finds `model.losses` (see
        # _regularization); until then a model without regularizers shows no such column.
        self._reports_regularization = False
        # Batches whose targets left the likelihood's support (read after fit / evaluate).
        self._support_violations = keras.metrics.Sum(name="support_violations")
        self._support_expected = "values in the likelihood's support"
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
        if self.likelihood is not None and loss is not None:
            raise ValueError(
                f"compile() got loss={loss!r}, but the model scores its output with "
                f"likelihood={self._likelihood_name()!r}, so that loss would be ignored. Pass "
                "either `likelihood` to the VariationalModel or `loss` to compile(), not both."
            )
        self._check_estimators()
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        self._compiled_nll_loss = loss
        self._create_latent_trackers()

    def _likelihood_name(self) -> str:
        likelihood = self.likelihood
        return likelihood if isinstance(likelihood, str) else getattr(likelihood, "__name__", "?")

    def _check_estimators(self) -> None:
        """Each latent's estimator against the model's objective and K, before any step runs."""
        for layer in self._latent_layers():
            estimator = layer.resolved_estimator
            if estimator is None:  # "auto": resolves to an estimator that suits any objective
                continue
            required = getattr(estimator, "requires_objective", None)
            if required is not None and required != self.objective:
                raise ValueError(
                    f"Latent {layer.name!r}: estimator={type(estimator).__name__}() "
                    f"needs objective={required!r}, but the model has objective="
                    f"{self.objective!r}. Use kvi.VariationalModel(..., objective={required!r}, "
                    "num_samples=K) with K >= 2, or another estimator."
                )
            baseline = getattr(estimator, "baseline", None)
            if baseline is not None and hasattr(baseline, "validate"):
                baseline.validate(num_samples=self.num_samples, objective=self.objective)

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
        trackers = dict(self._trackers)
        if not self._reports_regularization:
            del trackers["regularization"]
        metrics = list(trackers.values()) + list(self._latent_trackers.values())
        if getattr(self, "_compile_metrics", None) is not None:
            metrics.append(self._compile_metrics)
        return metrics

    def get_config(self):
        try:
            config = super().get_config()
        except NotImplementedError:
            config = {"name": self.name, "trainable": self.trainable}
        likelihood = self.likelihood
        owner = f"{type(self).__name__} {self.name!r}"
        if callable(likelihood):
            likelihood = _serialization.serialize(likelihood, "likelihood", owner)
        kl_weight = self._kl_weight_config
        if isinstance(kl_weight, schedules.Schedule):
            kl_weight = _serialization.serialize(kl_weight, "kl_weight", owner)
        config.update(
            {
                "likelihood": likelihood,
                "num_samples": self.num_samples,
                "objective": self.objective,
                "kl_weight": kl_weight,
                "free_bits": self.free_bits,
                "num_examples": self.num_examples,
                "max_consecutive_skips": self.max_consecutive_skips,
                "tile_at": self.tile_at,
                "prediction": self.prediction,
            }
        )
        return config

    def save(self, filepath, *args, **kwargs):
        """`keras.Model.save`, refusing before any file is written when part of the model
        could not be loaded back (an unregistered likelihood, `distribution_fn` or prior)."""
        self.get_config()
        return super().save(filepath, *args, **kwargs)

    @property
    def resolved_tile_at(self) -> str:
        """`"latent"` or `"input"`: where this model's K samples per example start."""
        if self.tile_at == "input" or self._tiling_plan.reason is not None:
            return "input"
        return "latent"

    # ------------------------------------------------------------------ prediction
    @property
    def prediction(self) -> str:
        """`"sample"` or `"mean"`: what calls outside a step return (see the class Args)."""
        return self._prediction_mode

    @prediction.setter
    def prediction(self, value: str) -> None:
        self._prediction_mode = _prediction.check(value)
        # predict() keeps its traced function; the next call must trace the new mode.
        self.predict_function = None

    def __call__(self, *args, **kwargs):
        """Calls the model; with `prediction="mean"` outside a step, deterministically.

        Overriding `__call__` (not `call`) covers functional and subclassed models alike,
        and `predict` and `export` both go through it.
        """
        if (
            getattr(self, "_prediction_mode", "sample") == "sample"
            # Inside another model's prediction, or a sampling pass (kvi.predict_samples).
            or _prediction.current_mode() is not None
            or _scope.in_step()
            or in_symbolic_scope()
            or any(isinstance(t, keras.KerasTensor) for t in tf.nest.flatten((args, kwargs)))
        ):
            return super().__call__(*args, **kwargs)
        with _prediction.mode("mean"):
            outputs = super().__call__(*args, **kwargs)
        inputs = args[0] if args else kwargs.get("inputs")
        return _prediction.likelihood_mean(self.likelihood, outputs, inputs)

    # ------------------------------------------------------------------ the objective
    def _unpack(self, data):
        """(x, y) of a batch; the target is x itself for unsupervised data."""
        x, y, _ = self._unpack_weighted(data)
        return x, y

    def _unpack_weighted(self, data):
        """(x, y, sample_weight) of a batch; sample_weight is None or one weight per example."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            sample_weight = tf.convert_to_tensor(sample_weight)
            rank = sample_weight.shape.rank
            if rank is not None and not (rank == 1 or (rank == 2 and sample_weight.shape[-1] == 1)):
                raise ValueError(
                    "`sample_weight` must hold one weight per example (shape (batch,) or "
                    f"(batch, 1)), got shape {tuple(sample_weight.shape)}: VariationalModel "
                    "weights each example's bound, not individual target entries."
                )
            sample_weight = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        if y is None:
            if isinstance(x, (dict, list, tuple)) and len(tf.nest.flatten(x)) > 1:
                raise ValueError(
                    "Unsupervised fit(x) needs a single input tensor to score against; with "
                    "several inputs pass the target explicitly as fit(x, y)."
                )
            y = x
        return x, y, sample_weight

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
        sample_weight=None,
    ):
        """Runs the model on K copies of each example and builds the bound.

        The copies start at the input or at the latents (see `tile_at`); either way the
        output has K*B rows, copy k of example b in row k*B + b.

        Args:
            x: the batch's inputs.
            y: the batch's targets (x itself for unsupervised data).
            training: whether this is a training step (estimators add their surrogates).
            num_samples: K, default the model's.
            objective: `"elbo"` or `"iwae"`, default the model's.
            kl_weight: default the model's `kl_weight` variable.
            sample_weight: None or one weight per example (shape [B]); see
                `keras_vi.objectives.compute`.

        Returns:
            The dict of `keras_vi.objectives.compute`, plus `y_pred` (all K*B rows),
            `regularization` (the sum of `model.losses`: weight regularizers, activity
            regularizers and `add_loss` terms, already included in `loss` and `loss_value`)
            and `target_in_support` (False when a target value lies outside the named
            likelihood's support; None when that is not checked).
        """
        k = self.num_samples if num_samples is None else num_samples
        objective = self.objective if objective is None else objective
        kl_weight = self.kl_weight if kl_weight is None else kl_weight
        optimizer = getattr(self, "optimizer", None)
        scope = _scope.StepScope(
            objective=objective,
            num_samples=k,
            training=training,
            # The global step, for estimators with a schedule (Gumbel-softmax temperature).
            step=None if optimizer is None else optimizer.iterations,
        )
        if k > 1 and self.resolved_tile_at == "latent":
            scope.tile_inputs_of = self._tiling_plan.latents
            x_tiled = x
        else:
            x_tiled = _tile(x, k)
        needs_path_gradient = any(
            getattr(layer.resolved_estimator, "needs_path_gradient", False)
            for layer in self._latent_layers()
        )
        with contextlib.ExitStack() as stack:
            if needs_path_gradient:
                # DReG needs d log w / dz: a tape watches each such z (Latent -> add_latent)
                # through the forward pass and the objective; objectives.compute reads it.
                scope.path_tape = stack.enter_context(
                    tf.GradientTape(persistent=True, watch_accessed_variables=False)
                )
            with _scope.recording(scope):
                y_pred = self(x_tiled, training=training)
            y_tiled = _tile(y, k)
            log_lik = self._log_likelihood(y_pred, y_tiled)
            regularization = self._regularization()
            out = objectives.compute(
                scope,
                log_lik,
                objective=objective,
                num_samples=k,
                kl_weight=kl_weight,
                free_bits=self.free_bits,
                num_examples=self._num_examples_var,
                training=training,
                sample_weight=sample_weight,
            )
        if regularization is not None:
            out["loss"] = out["loss"] + regularization
            out["loss_value"] = out["loss_value"] + regularization
        out["regularization"] = regularization
        out["target_in_support"] = self._target_in_support(y_pred, y)
        out["y_pred"] = y_pred
        return out

    def _regularization(self):
        """The sum of `self.losses` after a forward pass (None when there are none).

        Keras adds these to a model's loss: weight and activity regularizers and `add_loss`
        terms. They are not part of the bound, so `elbo` leaves them out.
        """
        losses = self.losses
        if not losses:
            return None
        self._reports_regularization = True
        return tf.add_n([tf.cast(loss, tf.float32) for loss in losses])

    def _target_in_support(self, y_pred, y):
        if not isinstance(y, tf.Tensor | np.ndarray) or isinstance(y_pred, (list, tuple, dict)):
            return None
        checked = likelihoods.support(self.likelihood, tuple(y_pred.shape), y)
        if checked is None:
            return None
        self._support_expected = checked[1]
        return tf.reduce_all(checked[0])

    def _support_text(self) -> str:
        return (
            f"the target (a value outside the support of likelihood={self.likelihood!r}: "
            f"expected {self._support_expected})"
        )

    def _update_metrics(self, out, x, y, batch_size, ok=None, sample_weight=None):
        """Epoch means: `loss` (and `kl_weight`, `regularization`) per batch row as Keras
        weighs its loss; the bound's terms by each example's sample weight."""
        weight = tf.cast(batch_size, tf.float32)
        example_weight = out["example_weight"]
        out = dict(out)
        if out["regularization"] is None:
            out["regularization"] = tf.constant(0.0)
        if ok is not None:
            # A skipped (non-finite) step must not poison the epoch means.
            weight = weight * tf.cast(ok, tf.float32)
            example_weight = example_weight * tf.cast(ok, tf.float32)
            for key in ("loss_value", "elbo", "nll", "kl", "regularization"):
                out[key] = tf.where(ok, out[key], 0.0)
            out["kl_per_latent"] = {
                k: tf.where(ok, v, 0.0) for k, v in out["kl_per_latent"].items()
            }
        per_row = {
            "loss": out["loss_value"],
            "kl_weight": tf.convert_to_tensor(self.kl_weight),
            "regularization": out["regularization"],
        }
        per_example = {"elbo": out["elbo"], "nll": out["nll"], "kl": out["kl"]}
        for name, value in per_row.items():
            self._trackers[name].update_state(value, sample_weight=weight)
        for name, value in per_example.items():
            self._trackers[name].update_state(value, sample_weight=example_weight)
        for name, value in out["kl_per_latent"].items():
            if name in self._latent_trackers:
                self._latent_trackers[name].update_state(value, sample_weight=example_weight)
        if out["target_in_support"] is not None:
            self._support_violations.update_state(
                1.0 - tf.cast(out["target_in_support"], tf.float32)
            )
        if getattr(self, "_compile_metrics", None) is not None:
            y_pred = out["y_pred"]
            first = tf.nest.map_structure(lambda t: t[:batch_size], y_pred)
            self._compile_metrics.update_state(y, first, sample_weight)

    def _logs(self, **extra):
        logs = {}
        for metric in self.metrics:
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        logs.update(extra)
        if _in_multi_worker_mode():
            # Keras 3 reduces multi-worker logs with MEAN over axis 0, which fails on scalars
            # (tensorflow/tensorflow#72388). The metrics are already synchronised across
            # workers, so a length-1 vector reduces back to the same scalar.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def train_step(self, data):
        x, y, sample_weight = self._unpack_weighted(data)
        batch_size = _batch_size(x)
        if self._kl_schedule is not None:
            self.kl_weight.assign(tf.cast(self._kl_schedule(self.optimizer.iterations), "float32"))
        state = self._baseline_state()
        saved_state = [tf.identity(v.value) for v in state]
        with tf.GradientTape() as tape:
            out = self.compute_objective(x, y, training=True, sample_weight=sample_weight)
            loss = out["loss"]
            # Mirror Keras's own step: per-replica loss divided by the replica count (so the
            # summed gradients average), then the optimizer's loss scaling (mixed precision).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        trainable_weights = self.trainable_weights
        gradients = tape.gradient(scaled_loss, trainable_weights)

        term_names, term_ok = self._finiteness(out, gradients)
        ok = _agreed_across_replicas(tf.reduce_all(tf.stack(term_ok)))
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # It skips overflowing steps itself and must see them to lower its scale.
            self.optimizer.apply(gradients, trainable_weights)
        else:
            _apply_if(self.optimizer, gradients, trainable_weights, ok)
        for variable, saved in zip(state, saved_state):
            variable.assign(tf.where(ok, variable.value, saved))
        self._record_skip(ok, term_names, term_ok)
        self._update_metrics(out, x, y, batch_size, ok=ok, sample_weight=sample_weight)
        return self._logs(
            skipped_steps=self._skipped_steps.result(),
            **{_SKIP_COUNT_LOG: tf.identity(self._consecutive_skips)},
        )

    def _baseline_state(self) -> list:
        """Non-trainable state of the latents' baselines (restored when a step is skipped)."""
        return [
            v
            for layer in self._latent_layers()
            if layer.baseline is not None
            for v in layer.baseline.non_trainable_variables
        ]

    def _finiteness(self, out, gradients):
        """(names, finite flags) of each term of the step, in the order they are reported."""
        terms = []
        if out["target_in_support"] is not None:
            # A target outside the support gives a finite but meaningless log-likelihood.
            terms.append((self._support_text(), [tf.where(out["target_in_support"], 0.0, np.nan)]))
        terms.append(("the likelihood (nll)", [out["nll"]]))
        terms += [(f"the KL of latent {name!r}", [v]) for name, v in out["kl_per_latent"].items()]
        terms.append(("the total KL (latents and Bayesian layers' weight KL)", [out["kl"]]))
        terms.append(("the loss (bound or an estimator's surrogate)", [out["loss"]]))
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            terms.append(("the gradients", gradients))
        return [name for name, _ in terms], [_all_finite(values) for _, values in terms]

    def _record_skip(self, ok, term_names, term_ok):
        self._nonfinite_term_names = term_names
        first_bad = tf.argmin(tf.cast(tf.stack(term_ok), tf.int32), output_type=tf.int32)
        self._nonfinite_term.assign(tf.where(ok, self._nonfinite_term, first_bad))
        self._consecutive_skips.assign(tf.where(ok, 0, self._consecutive_skips + 1))
        self._skipped_steps.update_state(1.0 - tf.cast(ok, tf.float32))

    def test_step(self, data):
        x, y, sample_weight = self._unpack_weighted(data)
        out = self.compute_objective(x, y, training=False, sample_weight=sample_weight)
        self._update_metrics(out, x, y, _batch_size(x), sample_weight=sample_weight)
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

    def make_train_function(self, force=False):
        super().make_train_function(force=force)
        train_function = self.train_function
        if getattr(train_function, "_keras_vi_guarded", False):
            return train_function

        def guarded(iterator):
            if self._resume_skip_steps > 0:
                # Batches already trained on before a mid-epoch interruption: consume them.
                for _ in range(self.steps_per_execution):
                    next(iterator)
                self._resume_skip_steps -= self.steps_per_execution
                return {m.name: m.result() for m in self._trackers.values()}
            logs = train_function(iterator)
            count = logs.pop(_SKIP_COUNT_LOG, None) if isinstance(logs, dict) else None
            limit = self.max_consecutive_skips
            if limit is not None and count is not None and np.asarray(count).max() >= limit:
                raise NonFiniteError(self._nonfinite_message(limit))
            return logs

        guarded._keras_vi_guarded = True
        self.train_function = guarded
        return guarded

    def _nonfinite_message(self, limit) -> str:
        index = int(self._nonfinite_term.numpy())
        names = self._nonfinite_term_names
        term = names[index] if index < len(names) else "an unknown term"
        return (
            f"Training stopped after {limit} consecutive steps with non-finite values (each was "
            f"skipped: weights, optimizer and baseline state untouched). In the last one, "
            f"{term} was the first non-finite term. Check the data, the learning rate and the "
            "scales of the distributions, or raise `max_consecutive_skips`."
        )

    def _mid_epoch_resume_steps(self, callbacks) -> int:
        """Batches of the interrupted epoch already trained, per a BackupAndRestore backup.

        Keras restores the weights saved mid-epoch but restarts that epoch from its first
        batch; skipping the batches already seen makes the resumed run match an uninterrupted
        one (without shuffling).
        """
        for callback in callbacks or []:
            if not isinstance(callback, keras.callbacks.BackupAndRestore):
                continue
            if not isinstance(callback.save_freq, int) or callback.save_freq is False:
                return 0
            path = getattr(
                callback,
                "_training_metadata_path",
                os.path.join(callback.backup_dir, "training_metadata.json"),
            )
            if not os.path.exists(path):
                return 0
            with open(path) as f:
                metadata = json.load(f)
            return int(metadata.get("batch", -1)) + 1
        return 0

    def fit(self, x=None, y=None, *args, validate_data: bool | None = None, **kwargs):
        """`keras.Model.fit`, plus:

        Args:
            validate_data: check NumPy inputs before training: strings, NaN/Inf, mismatched
                lengths, sample weights that are negative or not one per example, and
                targets outside the named likelihood's support (e.g. 0-255 pixels with
                `"bernoulli"`); a ValueError names the argument, example and batch. Default:
                True for in-memory arrays.

        Monitoring callbacks (`EarlyStopping`, `ModelCheckpoint`, `ReduceLROnPlateau`) left on
        `mode="auto"` learn that `elbo` is maximised and `loss`, `nll`, `kl`, `kl/<latent>`
        and `regularization` minimised. `class_weight` needs `likelihood="categorical"` (or
        a compiled loss) and a target `y`.
        """
        kwargs = _as_keywords(super().fit, args, kwargs)
        if validate_data is None:
            validate_data = validation.is_in_memory(x)
        if validate_data:
            self._validate_arrays(x, y, kwargs.get("sample_weight"), kwargs.get("batch_size"))
        self._check_class_weight(x, y, kwargs.get("class_weight"))
        y = self._unsupervised_target(x, y, kwargs.get("sample_weight"))
        self._set_monitor_modes(kwargs.get("callbacks"))
        self._support_violations.reset_state()
        self._skipped_steps.reset_state()
        self._consecutive_skips.assign(0)
        self._resume_skip_steps = self._mid_epoch_resume_steps(kwargs.get("callbacks"))
        n = self._infer_num_examples(x, kwargs.get("validation_split", 0.0))
        if n is not None:
            self._num_examples_var.assign(float(n))
        else:
            from keras_vi.layers.bayesian import BayesianLayer

            bayesian = [
                layer.name
                for layer in self._flatten_layers(include_self=False)
                if isinstance(layer, BayesianLayer)
            ]
            if bayesian:
                raise ValueError(
                    f"The model has Bayesian layers ({', '.join(bayesian)}) whose weight KL is "
                    "divided by the dataset size N, but N cannot be inferred from this input "
                    "(a generator, a PyDataset, or a tf.data.Dataset of unknown cardinality or "
                    "batch size). Pass num_examples=N to the VariationalModel."
                )
        self._create_latent_trackers()
        try:
            history = super().fit(x, y, **kwargs)
        except Exception:
            # A step that failed while being traced (a shape or support error) leaves a
            # half-traced function behind; the next fit() must trace a fresh one.
            self.train_function = None
            raise
        self._raise_if_outside_support("fit")
        return history

    def evaluate(self, x=None, y=None, *args, validate_data: bool | None = None, **kwargs):
        """`keras.Model.evaluate`, with `fit`'s `validate_data` checks."""
        kwargs = _as_keywords(super().evaluate, args, kwargs)
        if validate_data is None:
            validate_data = validation.is_in_memory(x)
        if validate_data:
            self._validate_arrays(x, y, kwargs.get("sample_weight"), kwargs.get("batch_size"))
        self._create_latent_trackers()
        self._support_violations.reset_state()
        y = self._unsupervised_target(x, y, kwargs.get("sample_weight"))
        try:
            result = super().evaluate(x, y, **kwargs)
        except Exception:
            self.test_function = None  # as in fit(): never reuse a half-traced step
            raise
        self._raise_if_outside_support("evaluate")
        return result

    def _validate_arrays(self, x, y, sample_weight, batch_size) -> None:
        validation.check_arrays(x, y, batch_size)
        target = x if y is None else y
        n = validation.num_examples(target)
        if sample_weight is not None:
            validation.check_sample_weight(sample_weight, n, batch_size)
        outputs = getattr(self, "outputs", None)
        if outputs and len(outputs) == 1 and validation.is_single_array(target):
            validation.check_support(
                self.likelihood,
                tuple(outputs[0].shape),
                target,
                batch_size,
                "x" if y is None else "y",
            )

    @staticmethod
    def _unsupervised_target(x, y, sample_weight):
        """y for fit/evaluate: x itself when unsupervised arrays come with sample weights.

        Keras packs in-memory data as (x,) when y is None and drops `sample_weight` there.
        """
        if y is None and sample_weight is not None and validation.is_in_memory(x):
            return x
        return y

    def _check_class_weight(self, x, y, class_weight) -> None:
        if class_weight is None:
            return
        if y is None and validation.is_in_memory(x):
            raise ValueError(
                "`class_weight` weighs examples by their class in the target `y`, but fit() got "
                "no `y` (unsupervised data). Pass per-example `sample_weight` instead."
            )
        if self.likelihood is not None and self.likelihood != "categorical":
            raise ValueError(
                f"`class_weight` needs a categorical target, but the model has likelihood="
                f"{self._likelihood_name()!r}. Use likelihood='categorical' or pass "
                "per-example `sample_weight`."
            )

    def _set_monitor_modes(self, callbacks) -> None:
        """Gives monitoring callbacks on mode="auto" the direction of keras_vi's metrics."""
        for callback in callbacks or []:
            monitor = getattr(callback, "monitor", None)
            if not isinstance(monitor, str):
                continue
            name = monitor.removeprefix("val_")
            direction = _METRIC_MODES.get(name)
            if direction is None and name.startswith("kl/"):
                direction = "min"
            if direction is None:
                continue
            if hasattr(callback, "mode"):
                if callback.mode == "auto":
                    callback.mode = direction  # read when training begins
            elif direction == "max" and getattr(callback, "monitor_op", None) is np.less:
                # Keras before 3.11's MonitorCallback fixes the comparison in the constructor
                # and keeps no `mode`: "auto" there minimises every name without "acc".
                raise ValueError(
                    f"{type(callback).__name__}(monitor={monitor!r}) would keep the lowest "
                    f"{monitor}, but {name!r} is better when higher. With Keras "
                    f"{keras.__version__} pass mode='max' to it."
                )

    def _raise_if_outside_support(self, method: str) -> None:
        count = int(self._support_violations.result())
        if count:
            raise ValueError(
                f"{method}(): {count} batch(es) had target values outside the support of "
                f"likelihood={self.likelihood!r} (expected {self._support_expected}); their "
                "log-likelihood is meaningless (training steps on them were skipped). Fix the "
                "data, e.g. scale 0-255 pixels to [0, 1] for 'bernoulli'."
            )
