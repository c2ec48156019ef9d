"""Per-step recording of what stochastic layers drew.

A `VariationalModel` opens a `StepScope` around its forward pass. Every `Latent` and
Bayesian layer called inside it appends what the objective needs (q, z, prior, weight-KL).
The stack is thread-local because TensorFlow's `MirroredStrategy` runs replicas in threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

# Whether Keras is tracing layers symbolically (shape inference in a scratch graph): no public
# API tells, and draws there must not be recorded. `tests/test_architecture.py::
# test_private_keras_apis_in_place` fails if a Keras release moves it.
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

_state = threading.local()


@dataclasses.dataclass
class Site:
    """One latent variable's draw in a step: what the objective and its estimator read.

    `key` names the site in the step's signals: the latent layer's name, with `#2`, `#3`...
    appended when one layer is called several times in a forward pass.
    """

    name: str  # the latent layer's name (its `kl/<name>` metric)
    q: Any
    z: Any
    prior: Any
    estimator: Any
    inputs: Any  # the layer's input (gradient stopped), for input-dependent baselines
    seed: Any
    kl: str = "auto"  # the layer's KL setting ("auto", "analytic", "mc")
    kl_samples: int = 1
    key: str = ""
    # prior_params -> the prior of this draw, for a `ConditionalPrior` later in the pass.
    prior_from: Any = None
    # The name of the ConditionalPrior that replaced `prior`, if one did.
    conditioned_by: str | None = None


@dataclasses.dataclass
class StepScope:
    """Collects the records of one forward pass of a variational model."""

    objective: Any = "elbo"  # "elbo", "iwae" or a kvi.objectives.Renyi
    num_samples: int = 1
    training: bool = False
    latents: list = dataclasses.field(default_factory=list)
    weight_kls: list = dataclasses.field(default_factory=list)
    # A backend `SampleTape` watching reparameterized z, for estimators that ask for
    # d log w / dz (`Signals.path_gradient`); None outside training steps.
    path_tape: Any = None
    step: Any = None  # the training step (optimizer.iterations) for scheduled estimators
    # ids of the latent layers that tile their inputs K times (the model's batch is untiled)
    tile_inputs_of: frozenset = frozenset()
    # ids of the latent layers that tile their `prior_params` K times
    tile_prior_params_of: frozenset = frozenset()

    def add_latent(self, site: Site) -> None:
        calls = sum(1 for other in self.latents if other.name == site.name)
        site.key = site.name if calls == 0 else f"{site.name}#{calls + 1}"
        self.latents.append(site)
        if self.path_tape is not None and site.estimator.reparameterized:
            site.z = self.path_tape.watch(site.z)

    def add_weight_kl(self, layer: Any, kl: Any) -> None:
        self.weight_kls.append((layer, kl))


def current_scope() -> StepScope | None:
    """The innermost active step scope, or None.

    Keras traces layers symbolically (in a scratch graph) to infer output shapes, for example
    when a subclassed model is first called; nothing drawn there belongs to the step.
    """
    stack = getattr(_state, "stack", None)
    if not stack or in_symbolic_scope():
        return None
    return stack[-1]


def in_step() -> bool:
    """Whether any step scope is open in this thread, symbolic shape inference included."""
    return bool(getattr(_state, "stack", None))


@contextlib.contextmanager
def recording(scope: StepScope):
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(scope)
    try:
        yield scope
    finally:
        stack.pop()
