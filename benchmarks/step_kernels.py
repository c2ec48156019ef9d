"""What XLA compiles for one JAX training step: keras_vi against hand-written Keras-JAX.

Builds `vae_step_jax.py`'s two models (the MNIST-shaped 784-512-512-32 Bernoulli VAE), trains
each one step on a batch of 128 (which builds the optimizer and the metrics), then lowers and
compiles each model's `train_step` with `jax.jit` exactly as Keras's JAX `fit` does (the
state `(trainable, non-trainable, optimizer, metrics)` and one batch) and prints, with no
timing (the numbers are deterministic for a given JAX, XLA and device):

* fused operations: the `fusion` instructions of the optimized HLO's entry computation (each
  is one kernel launch on a GPU; counted from `compiled.as_text()`), and the entry's other
  instructions that launch work (dots, custom calls, copies...: everything but parameters,
  tuples, constants, bitcasts and get-tuple-element);
* state arrays: how many arrays the step takes in and returns, per group (trainable,
  non-trainable, optimizer, metrics);
* XLA's cost analysis of the compiled step: bytes accessed and flops.

Run:  KERAS_BACKEND=jax python benchmarks/step_kernels.py [batch]
"""

from __future__ import annotations

import os
import re
import sys

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import keras  # noqa: E402
from vae_step_jax import hand_written_vae, keras_vi_vae, mnist_shaped  # noqa: E402

# Entry-computation instructions that launch no work of their own.
FREE = {"parameter", "tuple", "get-tuple-element", "constant", "bitcast"}
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][\w\-]*)\(")


def entry_opcodes(hlo_text: str) -> list[str]:
    """The opcode of every instruction in the optimized module's ENTRY computation."""
    opcodes, inside = [], False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY"):
            inside = True
            continue
        if inside:
            if line.startswith("}"):
                break
            match = INSTRUCTION.match(line)
            if match:
                opcodes.append(match.group(1))
    return opcodes


def measure(model: keras.Model, data, supervised: bool) -> dict:
    batch = data[: len(data)]
    y = batch if supervised else None
    model.fit(batch, y, batch_size=len(batch), epochs=1, verbose=0, shuffle=False)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    step_data = (batch, batch) if supervised else (batch,)
    compiled = jax.jit(model.train_step).lower(state, step_data).compile()
    opcodes = entry_opcodes(compiled.as_text())
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older JAX: one dict per device
        cost = cost[0]
    return {
        "fusions": opcodes.count("fusion"),
        "other kernels": sum(op not in FREE and op != "fusion" for op in opcodes),
        "state": [len(group) for group in state],
        "MB accessed": cost.get("bytes accessed", float("nan")) / 1e6,
        "MFLOP": cost.get("flops", float("nan")) / 1e6,
    }


def main(batch: int = 128) -> dict:
    keras.utils.set_random_seed(0)
    data = mnist_shaped(batch)
    results = {
        "hand-written Keras-JAX": measure(hand_written_vae(), data, supervised=True),
        "keras_vi": measure(keras_vi_vae(), data, supervised=False),
    }
    device = jax.devices()[0]
    print(f"device {device.platform} ({device.device_kind}), jax {jax.__version__}, batch {batch}")
    print(
        f"{'step':24} {'fusions':>7} {'other':>6} {'state (train, non-train, opt, metrics)':>40}"
        f" {'MB accessed':>11} {'MFLOP':>8}"
    )
    for name, r in results.items():
        state = f"{sum(r['state'])} = " + " + ".join(str(n) for n in r["state"])
        print(
            f"{name:24} {r['fusions']:7d} {r['other kernels']:6d} {state:>40}"
            f" {r['MB accessed']:11.1f} {r['MFLOP']:8.1f}"
        )
        print(
            "RESULT",
            name.replace(" ", "_"),
            f"fusions={r['fusions']}",
            f"other={r['other kernels']}",
            "state=" + ",".join(str(n) for n in r["state"]),
            f"MB={r['MB accessed']:.1f}",
            f"MFLOP={r['MFLOP']:.1f}",
        )
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 128)
