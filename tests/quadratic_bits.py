"""The Bernoulli test problem of the DisARM and RELAX tests: f(b) = sum_i c_i b_i +
sum_{i<j} d_ij b_i b_j with fixed small c, d, whose expected gradient has a closed form."""

from __future__ import annotations

import numpy as np
from keras import ops


class QuadraticBits:
    """`dim` Bernoulli bits with fixed logits, and f with product terms (NumPy seed `seed`)."""

    def __init__(self, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.logits = rng.normal(0.0, 0.5, dim).astype("float32")
        self.linear = rng.normal(0.0, 0.5, dim).astype("float32")
        upper = np.triu(rng.normal(0.0, 0.5, (dim, dim)), 1)
        self.pairwise = (upper + upper.T).astype("float32")  # symmetric, zero diagonal

    def f(self, b):
        return ops.sum(b * self.linear, axis=-1) + 0.5 * ops.sum(
            b * ops.matmul(b, self.pairwise), axis=-1
        )

    def exact_gradient(self):
        """d E[f(b)] / d logits: E f = c.p + 1/2 p.D.p with p = sigmoid(a), in float64."""
        p = 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))
        return p * (1.0 - p) * (self.linear + self.pairwise.astype(np.float64) @ p)
