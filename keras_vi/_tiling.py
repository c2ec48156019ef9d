"""Where a variational model's K samples per example start: at its input or at its latents.

With `num_samples=K`, the simple way is to tile the batch K times and run the whole model.
Everything a functional model computes before its first latent layer is then computed K
times over identical rows (and differentiated K times). When that part is deterministic and
the outputs reach the inputs only through latent layers, tiling each such latent's
*parameters* instead gives the same samples, the same objective and the same gradients for
a fraction of the work. `plan` decides which is possible by walking the functional graph.
"""

from __future__ import annotations

import dataclasses

import keras

TILE_AT = ("auto", "input", "latent")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Latent layers (by `id`) that tile their inputs, or why tiling at latents is not possible."""

    latents: frozenset = frozenset()
    reason: str | None = None
    # Latent layers (by `id`) whose `prior_params` come from the untiled part of the graph
    prior_params_of: frozenset = frozenset()


def check_tile_at(value) -> str:
    if value not in TILE_AT:
        raise ValueError(f"`tile_at` must be one of {TILE_AT}, got {value!r}.")
    return value


def _why_not_before_latent(layer: keras.layers.Layer, latent_type: type) -> str | None:
    """Why `layer` cannot run once per example for all K copies, or None if it can."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(sub, latent_type):
            return f"layer {layer.name!r} contains the latent layer {sub.name!r}"
        if sub._seed_generators:
            # Dropout, noise, Bayesian weights: the K copies must each draw their own noise.
            return f"layer {sub.name!r} draws random numbers before the first latent layer"
        if getattr(sub, "activity_regularizer", None) is not None:
            return f"layer {sub.name!r} has an activity regularizer, which depends on the rows"
    return None


def plan(model: keras.Model) -> Plan:
    """Which latents of a functional `model` can tile their inputs instead of the batch.

    Tiling at a latent is exact when every path from a model input to a model output passes
    through a latent layer and nothing before the latents is random or row-counting. Returns
    the latents whose inputs come straight from the untiled part of the graph.
    """
    from keras_vi.layers.latent import Latent

    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if nodes_by_depth is None:
        return Plan(reason="the model is subclassed, so its graph cannot be inspected")
    nodes = [node for depth in nodes_by_depth.values() for node in depth]
    if not any(isinstance(node.operation, Latent) for node in nodes):
        return Plan(reason="the model has no latent layer")
    tiled = {id(t): False for t in model.inputs}  # keras tensor -> carries K copies per example
    tile_here: set[int] = set()
    no_tile: set[int] = set()
    tile_prior_params: set[int] = set()
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if node.is_input or node.operation is None:
                continue
            operation = node.operation
            name = getattr(operation, "name", type(operation).__name__)
            prior_params = None
            if isinstance(operation, Latent):
                # A structured latent's prior parameters are tiled on their own (they may come
                # from another latent, or from the untiled inputs: p(z | c)).
                prior_params = node.arguments.kwargs.get("prior_params")
            flags = [tiled[id(t)] for t in node.input_tensors if t is not prior_params]
            if prior_params is not None and not tiled[id(prior_params)]:
                tile_prior_params.add(id(operation))
            if any(flags) and not all(flags):
                return Plan(
                    reason=f"layer {name!r} combines tensors from before and after a latent layer"
                )
            after_latent = all(flags) and bool(flags)
            if isinstance(operation, Latent):
                (no_tile if after_latent else tile_here).add(id(operation))
                out = True
            else:
                if not after_latent and isinstance(operation, keras.layers.Layer):
                    why = _why_not_before_latent(operation, Latent)
                    if why is not None:
                        return Plan(reason=why)
                out = after_latent
            for t in node.outputs:
                tiled[id(t)] = out
    if tile_here & no_tile:
        return Plan(reason="a latent layer is called both before and after another latent")
    for t in model.outputs:
        if not tiled.get(id(t), False):
            return Plan(reason=f"output {t.name!r} does not depend on any latent layer")
    return Plan(latents=frozenset(tile_here), prior_params_of=frozenset(tile_prior_params))
