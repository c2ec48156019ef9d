"""`VariationalModel`: a `keras.Model` that trains by maximising an ELBO inside `fit`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops, tree

from keras_vi import (
    _checks,
    _fit,
    _functional,
    _layout,
    _nonfinite,
    _prediction,
    _reporting,
    _scope,
    _serialization,
    _tiling,
    backend,
    likelihoods,
    objectives,
    schedules,
    validation,
)
from keras_vi.callbacks.non_finite import NonFiniteStop
from keras_vi.errors import NonFiniteError

__all__ = ["VariationalModel"]


def _check_kl_weight(value) -> float:
    return _checks.finite_number(value, "kl_weight", minimum=0)


@keras.saving.register_keras_serializable(package="keras_vi")
class VariationalModel(backend.VariationalTrainer, keras.Model):
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
        objective: `"elbo"`, `"iwae"` or `kvi.objectives.Renyi(alpha)` (the last two need
            `num_samples >= 2`).
        kl_weight: a number >= 0 or a `kvi.schedules.Schedule` of the global step; kept in the
            non-trainable variable `model.kl_weight` (saved with the model).
        free_bits: None or lambda >= 0 nats per latent dimension (Kingma et al. 2016).
        num_examples: dataset size N for the 1/N scaling of weight KLs; inferred by `fit`
            from array inputs or a dataset of known cardinality when not given.
        max_consecutive_skips: raise `kvi.NonFiniteError` after this many consecutive
            non-finite steps (None: skip forever). Once reached, every later step is
            skipped too until `fit` raises (or `train_on_batch`, which then starts the
            count again), so the model is left as the step reaching it left it.
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
        if _functional.is_functional_call(args, kwargs):
            cls = _functional.variant(cls)
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self,
        *args,
        likelihood: Any = None,
        num_samples: int = 1,
        objective: str | objectives.Renyi = "elbo",
        kl_weight: Any = 1.0,
        free_bits: float | None = None,
        num_examples: int | None = None,
        max_consecutive_skips: int | None = 10,
        tile_at: str = "auto",
        prediction: str = "sample",
        **kwargs,
    ):
        if _functional.is_functional(self):
            _functional.init(self, args, kwargs)
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
            if not (_checks.is_number(free_bits) and math.isfinite(free_bits) and free_bits >= 0):
                raise ValueError(
                    f"`free_bits` must be None or a finite number >= 0, got {free_bits!r}."
                )
            free_bits = float(free_bits)
            if objectives.is_multi_sample(self.objective):
                raise ValueError(
                    f"`free_bits` applies to objective='elbo' only, not {self.objective!r}."
                )
        self.free_bits = free_bits
        if num_examples is not None:
            _checks.positive_int(num_examples, "num_examples")
        self.num_examples = num_examples
        if max_consecutive_skips is not None and not (
            _checks.is_int(max_consecutive_skips) and max_consecutive_skips >= 1
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
        _nonfinite.add_state(self)
        self._trackers = _reporting.trackers()
        # `regularization` joins the logs once a step finds `model.losses` (see
        # _regularization); until then a model without regularizers shows no such column.
        self._reports_regularization = False
        # Batches whose targets left the likelihood's support (read after fit / evaluate).
        self._support_violations = keras.metrics.Sum(name="support_violations")
        self._support_expected = "values in the likelihood's support"
        self._latent_trackers: dict[str, keras.metrics.Mean] = {}
        self._compiled_nll_loss = None
        self._step_hooks: list[Callable] = []

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
        names = {layer.name for layer in self._flatten_layers(include_self=False)}
        for layer in self._latent_layers():
            conditioned_by = getattr(layer, "conditioned_by", None)
            if conditioned_by is not None and conditioned_by not in names:
                raise ValueError(
                    f"Latent {layer.name!r} gets its prior from ConditionalPrior "
                    f"{conditioned_by!r}, which is not part of this model (its output must "
                    "feed the model's outputs); without it the latent would keep its own prior."
                )
            estimator = layer.resolved_estimator
            if estimator is None:  # "auto": resolves to an estimator that suits any objective
                continue
            required = estimator.objective
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
        compiled = _reporting.compiled_metrics(self)
        if compiled is not None:
            metrics.append(compiled)
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
                "objective": objectives.serialize_objective(self.objective),
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
            or _scope.in_symbolic_scope()
            or any(isinstance(t, keras.KerasTensor) for t in tree.flatten((args, kwargs)))
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
            sample_weight = ops.convert_to_tensor(sample_weight)
            shape = tuple(sample_weight.shape)
            if not (len(shape) == 1 or (len(shape) == 2 and shape[-1] == 1)):
                raise ValueError(
                    "`sample_weight` must hold one weight per example (shape (batch,) or "
                    f"(batch, 1)), got shape {shape}: VariationalModel "
                    "weights each example's bound, not individual target entries."
                )
            sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        if y is None:
            if isinstance(x, (dict, list, tuple)) and len(tree.flatten(x)) > 1:
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
        sample_tape=None,
    ):
        """Runs the model on K copies of each example and builds the bound.

        The copies start at the input or at the latents (see `tile_at`); either way the
        output has K*B rows, copy k of example b in row k*B + b.

        Args:
            x: the batch's inputs.
            y: the batch's targets (x itself for unsupervised data).
            training: whether this is a training step (estimators add their surrogates).
            num_samples: K, default the model's.
            objective: `"elbo"`, `"iwae"` or a `kvi.objectives.Renyi`, default the model's.
            kl_weight: default the model's `kl_weight` variable.
            sample_weight: None or one weight per example (shape [B]); see
                `keras_vi.objectives.compute`.
            sample_tape: the backend's `SampleTape` for d log w / dz, already open (given
                by `backend.gradients.with_sample_tape`; by default one is opened here).

        Returns:
            The dict of `keras_vi.objectives.compute`, plus `y_pred` (all K*B rows),
            `regularization` (the sum of `model.losses`: weight regularizers, activity
            regularizers and `add_loss` terms, already included in `loss` and `loss_value`)
            and `target_in_support` (False when a target value lies outside the named
            likelihood's support; None when that is not checked).
        """
        reparameterized = any(
            getattr(layer.resolved_estimator, "reparameterized", False)
            for layer in self._latent_layers()
        )
        if training and reparameterized and sample_tape is None:
            # Estimators may ask for d log w / dz (DReG): a tape watches each reparameterized
            # z through the forward pass and the objective (on JAX, by running them again
            # over the same state). Taken only on request: unused, it adds nothing.
            optimizer = getattr(self, "optimizer", None)
            return backend.gradients.with_sample_tape_over(
                # Everything the pass reads: the model's variables and the step count.
                list(self.variables) + ([optimizer.iterations] if optimizer else []),
                lambda tape: self.compute_objective(
                    x,
                    y,
                    training=training,
                    num_samples=num_samples,
                    objective=objective,
                    kl_weight=kl_weight,
                    sample_weight=sample_weight,
                    sample_tape=tape,
                ),
            )
        k = self.num_samples if num_samples is None else num_samples
        if objective is None:
            objective = self.objective
        elif objective != "iwae":  # kvi.log_likelihood's "iwae" may come with any K >= 1
            objective = objectives.check_objective(objective, k)
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
            scope.tile_prior_params_of = self._tiling_plan.prior_params_of
            x_tiled = x
        else:
            x_tiled = _layout.tile(x, k)
        if training and reparameterized:
            scope.path_tape = sample_tape
        with _scope.recording(scope):
            y_pred = self(x_tiled, training=training)
        y_tiled = _layout.tile(y, k)
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
        total = ops.cast(losses[0], "float32")
        for loss in losses[1:]:
            total = total + ops.cast(loss, "float32")
        return total

    def _target_in_support(self, y_pred, y):
        if not (ops.is_tensor(y) or isinstance(y, np.ndarray)) or isinstance(
            y_pred, (list, tuple, dict)
        ):
            return None
        checked = likelihoods.batch_in_support(self.likelihood, tuple(y_pred.shape), y)
        if checked is None:
            return None
        self._support_expected = checked[1]
        return checked[0]

    def _support_text(self) -> str:
        return (
            f"the target (a value outside the support of likelihood={self.likelihood!r}: "
            f"expected {self._support_expected})"
        )

    # ------------------------------------------------------------------ the training step
    # The per-backend trainer (keras_vi.backend) defines train_step and test_step over
    # compute_objective and the three methods below.
    def add_step_hook(self, hook: Callable) -> None:
        """Runs `hook(x, y, step)` at the start of every training step, before the update.

        `x` and `y` are the step's batch (y is x for unsupervised data), `step` the
        optimizer's iteration count. The hook runs inside the compiled step (traced once, as
        the step is), so it computes with `keras.ops` and writes results to variables. The
        train function is rebuilt when hooks change. `kvi.callbacks.GradientVarianceLogger`
        uses it to take its gradient estimates on the batch being trained on.

        A hook that writes variables other than the model's must list them in a `variables`
        attribute: a stateless step (JAX) carries those through the step as state (with the
        metrics' variables) and drops writes to any other variable. Write them outside
        traced branches and loops (e.g. assign the outputs of `keras.ops.cond`).
        """
        if not callable(hook):
            raise ValueError(f"add_step_hook() needs a callable, got {hook!r}.")
        if hook not in self._step_hooks:
            self._step_hooks.append(hook)
            self.train_function = None

    def remove_step_hook(self, hook: Callable) -> None:
        """Removes a hook added by `add_step_hook` (ValueError if it was not added)."""
        if hook not in self._step_hooks:
            raise ValueError(f"remove_step_hook(): {hook!r} is not a step hook of this model.")
        self._step_hooks.remove(hook)
        self.train_function = None

    def _begin_train_step(self, x, y, sample_weight) -> None:
        if self._step_hooks:
            step = ops.convert_to_tensor(self.optimizer.iterations)
            for hook in list(self._step_hooks):
                hook(x, y, step)
        if self._kl_schedule is not None:
            self.kl_weight.assign(ops.cast(self._kl_schedule(self.optimizer.iterations), "float32"))

    def _step_state(self) -> list:
        """Non-trainable state a skipped step must leave untouched: the baselines'."""
        return [
            v
            for layer in self._latent_layers()
            if layer.baseline is not None
            for v in layer.baseline.non_trainable_variables
        ]

    # ------------------------------------------------------------------ fit and evaluate
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
        a compiled loss) and a target `y`. With `max_consecutive_skips` set, training stops
        with `kvi.NonFiniteError` after that many consecutive skipped (non-finite) steps.
        """
        kwargs = _fit.as_keywords(super().fit, args, kwargs)
        if validate_data is None:
            validate_data = validation.is_in_memory(x)
        if validate_data:
            _fit.validate_arrays(self, x, y, kwargs.get("sample_weight"), kwargs.get("batch_size"))
        _fit.check_class_weight(self, x, y, kwargs.get("class_weight"))
        y = _fit.unsupervised_target(x, y, kwargs.get("sample_weight"))
        callbacks = list(kwargs.get("callbacks") or [])
        _fit.set_monitor_modes(callbacks)
        self._support_violations.reset_state()
        self._skipped_steps.reset_state()
        self._consecutive_skips.assign(0)
        if self.num_examples is not None:
            n = self.num_examples
        else:
            n = _fit.dataset_size(x, kwargs.get("validation_split", 0.0))
        if n is not None:
            self._num_examples_var.assign(float(n))
        else:
            _fit.check_num_examples_known(self)
        self._create_latent_trackers()
        if self.max_consecutive_skips is not None:
            callbacks.append(NonFiniteStop(self.max_consecutive_skips))
        resume_steps = _fit.mid_epoch_resume_steps(callbacks)
        if resume_steps:
            callbacks.append(_fit.MidEpochResume(resume_steps))
        kwargs["callbacks"] = callbacks
        try:
            history = super().fit(x, y, **kwargs)
        except Exception:
            # A step that failed while being traced (a shape or support error) leaves a
            # half-traced function behind; the next fit() must trace a fresh one.
            self.train_function = None
            raise
        self._raise_if_outside_support("fit")
        return history

    def train_on_batch(self, *args, **kwargs):
        """`keras.Model.train_on_batch`; raises `kvi.NonFiniteError` when this step made
        `max_consecutive_skips` consecutive skipped (non-finite) steps, and starts the count
        again (a step past the limit would be skipped, see `max_consecutive_skips`)."""
        result = super().train_on_batch(*args, **kwargs)
        limit = self.max_consecutive_skips
        if limit is not None and _nonfinite.consecutive_skips(self) >= limit:
            self._consecutive_skips.assign(0)
            raise NonFiniteError(_nonfinite.message(self, limit))
        return result

    def evaluate(self, x=None, y=None, *args, validate_data: bool | None = None, **kwargs):
        """`keras.Model.evaluate`, with `fit`'s `validate_data` checks."""
        kwargs = _fit.as_keywords(super().evaluate, args, kwargs)
        if validate_data is None:
            validate_data = validation.is_in_memory(x)
        if validate_data:
            _fit.validate_arrays(self, x, y, kwargs.get("sample_weight"), kwargs.get("batch_size"))
        self._create_latent_trackers()
        self._support_violations.reset_state()
        y = _fit.unsupervised_target(x, y, kwargs.get("sample_weight"))
        try:
            result = super().evaluate(x, y, **kwargs)
        except Exception:
            self.test_function = None  # as in fit(): never reuse a half-traced step
            raise
        self._raise_if_outside_support("evaluate")
        return result

    def _raise_if_outside_support(self, method: str) -> None:
        count = int(self._support_violations.result())
        if count:
            raise ValueError(
                f"{method}(): {count} batch(es) had target values outside the support of "
                f"likelihood={self.likelihood!r} (expected {self._support_expected}); their "
                "log-likelihood is meaningless (training steps on them were skipped). Fix the "
                "data, e.g. scale 0-255 pixels to [0, 1] for 'bernoulli'."
            )
