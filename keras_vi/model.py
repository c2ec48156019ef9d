"""`VariationalModel`: a `keras.Model` that trains by maximising an ELBO inside `fit`."""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.models.functional import Functional
from keras.src.saving import object_registration
from keras.src.trainers.trainer import Trainer

from keras_vi import _scope, _tiling, likelihoods, objectives, schedules, validation
from keras_vi.errors import NonFiniteError

__all__ = ["VariationalModel"]

_FIXED_METRICS = ("loss", "elbo", "nll", "kl", "kl_weight")
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

    Example:
        >>> x = keras.Input((784,))
        >>> h = keras.layers.Dense(256, activation="relu")(x)
        >>> z = kvi.layers.NormalLatent(16, name="z")(keras.layers.Dense(32)(h))
        >>> logits = keras.layers.Dense(784)(keras.layers.Dense(256, activation="relu")(z))
        >>> vae = kvi.VariationalModel(x, logits, likelihood="bernoulli")
        >>> vae.compile(optimizer="adam")
        >>> vae.fit(x_train, epochs=10)  # unsupervised: the target is x itself
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
                "max_consecutive_skips": self.max_consecutive_skips,
                "tile_at": self.tile_at,
            }
        )
        return config

    @property
    def resolved_tile_at(self) -> str:
        """`"latent"` or `"input"`: where this model's K samples per example start."""
        if self.tile_at == "input" or self._tiling_plan.reason is not None:
            return "input"
        return "latent"

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
        """Runs the model on K copies of each example and builds the bound.

        The copies start at the input or at the latents (see `tile_at`); either way the
        output has K*B rows, copy k of example b in row k*B + b.

        Returns the dict of `keras_vi.objectives.compute` plus `y_pred` (all K*B rows).
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

    def _update_metrics(self, out, x, y, batch_size, ok=None):
        weight = tf.cast(batch_size, tf.float32)
        if ok is not None:
            # A skipped (non-finite) step must not poison the epoch means.
            weight = weight * tf.cast(ok, tf.float32)
            out = dict(out)
            for key in ("loss_value", "elbo", "nll", "kl"):
                out[key] = tf.where(ok, out[key], 0.0)
            out["kl_per_latent"] = {
                k: tf.where(ok, v, 0.0) for k, v in out["kl_per_latent"].items()
            }
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
        x, y = self._unpack(data)
        batch_size = _batch_size(x)
        if self._kl_schedule is not None:
            self.kl_weight.assign(tf.cast(self._kl_schedule(self.optimizer.iterations), "float32"))
        state = self._baseline_state()
        saved_state = [tf.identity(v.value) for v in state]
        with tf.GradientTape() as tape:
            out = self.compute_objective(x, y, training=True)
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
        self._update_metrics(out, x, y, batch_size, ok=ok)
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
        terms = [("the likelihood (nll)", [out["nll"]])]
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
            validate_data: check NumPy inputs for strings, NaN/Inf and mismatched lengths
                before training (a ValueError names the argument, example and batch).
                Default: True for in-memory arrays.
        """
        if validate_data is None:
            validate_data = validation.is_in_memory(x)
        if validate_data:
            validation.check_arrays(x, y, kwargs.get("batch_size"))
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
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._create_latent_trackers()
        return super().evaluate(*args, **kwargs)
