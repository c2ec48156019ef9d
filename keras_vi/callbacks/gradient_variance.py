"""Logs the variance of the training gradient to TensorBoard every N steps."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vi import _serialization, diagnostics
from keras_vi.backend import random as backend_random
from keras_vi.callbacks import _summary

_RUN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass
class _Run:
    """One estimator's TensorBoard run and the variables its in-graph estimates land in."""

    run: str
    spec: Any
    extra_state: list
    total_variance: keras.Variable
    variance: keras.Variable
    mean_norm: keras.Variable
    snr: keras.Variable
    step: keras.Variable
    written: int = -1  # the last step written, so a result is never written twice

    @property
    def state(self) -> list:
        """Every variable the step hook writes for this run, in the order it writes them."""
        results = [self.total_variance, self.variance, self.mean_norm, self.snr, self.step]
        return [*results, *self.extra_state]


@dataclasses.dataclass
class _Compiled:
    """The step hook built for one model and its train functions, reused across `fit` calls."""

    model: Any
    hook: Any
    runs: list
    original: Any  # the model's train function without the hook
    wrapped: Any  # the train function built with the hook


@keras.saving.register_keras_serializable(package="keras_vi")
class GradientVarianceLogger(keras.callbacks.Callback):
    """Writes the spread of the ELBO's gradient estimates to TensorBoard every N steps.

    At every step that is a multiple of `every_n_steps` (the optimizer's iteration count,
    step 0 included), inside the compiled training step and before the weights are updated,
    the callback draws `num_estimates` independent gradient estimates of the training loss on
    that step's batch and writes, with that step as the x axis:

    * `gradients/total_variance`: sum over all weights of the per-weight gradient variance;
    * `gradients/mean_norm`: mean global L2 norm of the estimates;
    * `gradients/snr`: `||mean gradient|| / sqrt(total_variance)`;
    * `gradient_variance/<variable path>`: the variance summed over one variable's weights.

    The model's own estimators are written to the `log_dir/train` run (beside
    `keras.callbacks.TensorBoard`'s scalars); each entry of `estimators` to its own run
    `log_dir/train_<name>`, on the same batches and the same noise, so the curves overlay.

    Logging does not change training: the estimates use noise from the callback's own
    stateless seeds (derived from `seed` and the step), and every piece of model state the
    forward passes touch (seed generators, moving-average baselines, batch-norm statistics)
    is restored, so the weights after `fit` are bit-identical with and without the logger.
    The work is one extra forward and backward pass per estimate, on logged steps only.
    With `steps_per_execution` above `every_n_steps`, only the last logged step of each
    execution is written.

    The estimates run in a step hook (`kvi.VariationalModel.add_step_hook`) registered for
    the duration of `fit`. The train functions with and without the hook are kept, so later
    `fit` calls with the same logger and model do not trace the step again; after `fit` the
    model has its own train function and no hook. (A `fit` stopped by an exception leaves
    the hook registered until this logger's next `fit`.)

    Args:
        log_dir: the TensorBoard log directory (share it with `keras.callbacks.TensorBoard`).
        every_n_steps: log on every step that is a multiple of this (>= 1).
        num_estimates: independent estimates per logged step (>= 2).
        estimators: None, or a dict `{name: estimator}` of alternative estimators to log
            side by side; each value is an estimator or alias applied to every latent, or a
            dict `{latent_name: estimator}`. Names become run names (letters, digits, `_.-`).
            A swapped-in estimator's own state (e.g. a `MovingAverage` baseline) is updated
            once per logged step from the batch; a `Learned` baseline is not trained.
        seed: int for reproducible logging noise; None draws a fresh one.

    Example:
        >>> logger = kvi.callbacks.GradientVarianceLogger(
        ...     "logs", every_n_steps=100, num_estimates=8,
        ...     estimators={"score_function": "score_function"})
        >>> history = vae.fit(x_train, epochs=1, verbose=0,
        ...                   callbacks=[keras.callbacks.TensorBoard("logs"), logger])
        >>> sorted(tf.io.gfile.listdir("logs"))  # step 0 was logged, in two runs
        ['train', 'train_score_function']
    """

    def __init__(
        self,
        log_dir,
        every_n_steps: int = 100,
        num_estimates: int = 8,
        estimators: dict | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        owner = "GradientVarianceLogger"
        self.log_dir = _summary.check_log_dir(log_dir, owner)
        self.every_n_steps = diagnostics.check_int(every_n_steps, "every_n_steps", owner)
        self.num_estimates = diagnostics.check_int(num_estimates, "num_estimates", owner, 2)
        if estimators is not None and not isinstance(estimators, dict):
            raise ValueError(
                f"{owner}: `estimators` must be None or a dict {{name: estimator}}, got "
                f"{type(estimators).__name__}."
            )
        self.estimators = {}
        for name, spec in (estimators or {}).items():
            if not isinstance(name, str) or not _RUN_NAME.match(name):
                raise ValueError(
                    f"{owner}: `estimators` names become TensorBoard run names and must match "
                    f"[A-Za-z0-9_.-]+, got {name!r}."
                )
            self.estimators[name] = diagnostics.resolve_estimators(spec, owner)
        self.seed = diagnostics.check_seed(seed, owner)
        self._writers = _summary.Writers(self.log_dir)
        self._compiled = None
        self._attached = None  # the model whose step hook is registered, during `fit`
        self._pending = False

    # ------------------------------------------------------------------ set-up
    def _make_runs(self, model) -> list[_Run]:
        n = len(model.trainable_variables)
        specs = [(_summary.TRAIN, None)] + [
            (f"{_summary.TRAIN}_{name}", spec) for name, spec in self.estimators.items()
        ]
        runs = []
        for run, spec in specs:
            diagnostics.check_latent_names(model, spec, "GradientVarianceLogger")
            runs.append(
                _Run(
                    run=run,
                    spec=spec,
                    extra_state=diagnostics.prepare_estimators(model, spec),
                    total_variance=_variable(0.0),
                    variance=_variable(np.zeros([n], "float32")),
                    mean_norm=_variable(0.0),
                    snr=_variable(0.0),
                    step=_variable(-1, "int64"),
                )
            )
        return runs

    def _make_hook(self, model, runs):
        """The step hook: on logged steps, the gradient estimates on the step's batch."""
        every, num_estimates = self.every_n_steps, self.num_estimates
        base_seed = backend_random.draw_seed(self.seed)

        def log_step(x, y, step):
            kl_weight = None
            schedule = getattr(model, "_kl_schedule", None)
            if schedule is not None:  # what the step is about to assign for this step
                kl_weight = ops.cast(schedule(step), "float32")
            seed = backend_random.fold_in(base_seed, step)
            values = []
            for run in runs:  # the same seed for every run: common random numbers
                with diagnostics.estimator_override(model, run.spec):
                    out = diagnostics.gradient_moments(
                        model,
                        x,
                        y,
                        num_estimates=num_estimates,
                        seed=seed,
                        kl_weight=kl_weight,
                        extra_state=run.extra_state,
                    )
                values += [out["total_variance"], out["variance"], out["mean_norm"], out["snr"]]
                values += [ops.cast(step, run.step.dtype), *out["extra_state"]]
            return values

        return _StepHook(every, log_step, [v for run in runs for v in run.state])

    def _attach(self, model) -> None:
        """Registers the step hook and installs the train function built with it."""
        if model.train_function is None:
            model.make_train_function()
        cached = self._compiled
        if (
            cached is None
            or cached.model is not model
            or cached.original is not model.train_function
        ):
            # The model was recompiled, its train function rebuilt, or it is another model.
            runs = self._make_runs(model)
            hook = self._make_hook(model, runs)
            original = model.train_function
            model.add_step_hook(hook)
            model.make_train_function()
            cached = self._compiled = _Compiled(model, hook, runs, original, model.train_function)
        else:
            model.add_step_hook(cached.hook)
            model.train_function = cached.wrapped
        self._attached = model

    def _detach(self) -> None:
        """Removes the step hook and puts back the train function built without it."""
        model, cached, self._attached = self._attached, self._compiled, None
        if model is None or cached is None:
            return
        current = model.train_function
        try:
            model.remove_step_hook(cached.hook)
        except ValueError:  # already removed by someone else
            return
        if current is cached.wrapped:
            model.train_function = cached.original
        else:  # rebuilt by another callback while the hook was registered
            model.make_train_function()

    def on_train_begin(self, logs=None):
        model = self.model
        diagnostics.check_variational(model, "GradientVarianceLogger")
        if _num_replicas(model) > 1:
            raise ValueError("GradientVarianceLogger supports single-replica training only.")
        if not model.trainable_variables:
            raise ValueError("GradientVarianceLogger: the model has no trainable variables.")
        if self._attached is not None:  # a previous fit stopped by an error
            self._detach()
        self._attach(model)
        self._steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
        self._step = _summary.global_step(model)
        self._next_log = -(-self._step // self.every_n_steps) * self.every_n_steps
        self._pending = False

    # ------------------------------------------------------------------ per step
    def on_train_batch_begin(self, batch, logs=None):
        # Python-side bookkeeping only: the estimates run inside the compiled step; their
        # results are read back once, after a logged step has run.
        if self._pending:
            self._write()
        end = self._step + self._steps_per_execution
        if self._next_log < end:
            self._pending = True
            self._next_log = -(-end // self.every_n_steps) * self.every_n_steps
        self._step = end

    def _write(self):
        self._pending = False
        # `self.model` first: on JAX it syncs the step's state (the hook's variables with it)
        # back into the variables, which the state leaves without values mid-epoch.
        names = diagnostics.variable_names(self.model.trainable_variables)
        for run in self._compiled.runs:
            step = int(ops.convert_to_numpy(run.step))
            if step == run.written:
                continue
            run.written = step
            values = {
                "gradients/total_variance": ops.convert_to_numpy(run.total_variance),
                "gradients/mean_norm": ops.convert_to_numpy(run.mean_norm),
                "gradients/snr": ops.convert_to_numpy(run.snr),
            }
            for name, value in zip(names, ops.convert_to_numpy(run.variance)):
                values[f"gradient_variance/{name}"] = value
            _summary.scalars(self._writers[run.run], values, step)

    def on_epoch_end(self, epoch, logs=None):
        if self._pending:
            self._write()
        self._writers.flush()

    def on_train_end(self, logs=None):
        if self._pending:
            self._write()
        self._detach()
        self._writers.close()

    def get_config(self):
        return {
            "log_dir": self.log_dir,
            "every_n_steps": self.every_n_steps,
            "num_estimates": self.num_estimates,
            "estimators": {
                name: (
                    {k: _serialize_estimator(k, v) for k, v in spec.items()}
                    if isinstance(spec, dict)
                    else _serialize_estimator(name, spec)
                )
                for name, spec in self.estimators.items()
            }
            or None,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict) -> GradientVarianceLogger:
        return cls(**config)


class _StepHook:
    """`hook(x, y, step)` for `kvi.VariationalModel.add_step_hook`: runs `log_step` on every
    step that is a multiple of `every` and writes its values to `variables`.

    `variables` (an attribute a step hook may have) lists every variable the hook writes, so
    that a stateless training step (JAX) carries them through the step as state. The branch
    returns values and the variables are assigned after it, on every step (their current
    values when the step is not logged): a traced branch cannot carry writes out of it.
    """

    def __init__(self, every: int, log_step, variables: list):
        self.every = every
        self.log_step = log_step
        self.variables = variables

    def __call__(self, x, y, step):
        step = ops.cast(step, "int64")
        values = ops.cond(
            ops.equal(step % self.every, 0),
            lambda: self.log_step(x, y, step),
            lambda: [ops.copy(v) for v in self.variables],
        )
        for variable, value in zip(self.variables, values):
            variable.assign(value)


def _serialize_estimator(name: str, estimator):
    if isinstance(estimator, str):
        return estimator
    return _serialization.serialize(estimator, f"estimators[{name!r}]", "GradientVarianceLogger")


def _num_replicas(model) -> int:
    """How many replicas train the model on slices of each batch: a tf.distribute
    strategy's (TensorFlow), or the devices along the batch axis of the active
    `keras.distribution` (JAX's `DataParallel`, `ModelParallel`)."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None:
        return int(strategy.num_replicas_in_sync)
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    axis = getattr(distribution, "batch_dim_name", None)
    if axis in mesh.axis_names:
        return int(mesh.shape[mesh.axis_names.index(axis)])
    return int(np.size(mesh.devices))


def _variable(value, dtype: str = "float32") -> keras.Variable:
    return keras.Variable(value, dtype=dtype, trainable=False)
