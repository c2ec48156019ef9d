"""Stateless seeds and draws for JAX, in TFP's JAX seed format (uint32[2] key data).

As on TensorFlow, keras_vi derives one seed per draw from each layer's `SeedGenerator`.
JAX runs a data-parallel step as one program over sharded arrays (no replica threads), so
no replica id is folded in: every shard's rows already get their own noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras


def draw_seed(generator) -> jax.Array:
    """A uint32[2] stateless seed from a `SeedGenerator` (advancing it), an int or a seed.

    Each call with a generator advances it, so every training step gets fresh noise. An int
    gives the same seed on every call.
    """
    if generator is None:
        generator = keras.random.SeedGenerator()
    if isinstance(generator, int) and not isinstance(generator, bool):
        return jnp.array([generator & 0xFFFFFFFF, 0], dtype=jnp.uint32)
    if not isinstance(generator, keras.random.SeedGenerator):
        seed = jnp.asarray(generator)
        if seed.shape not in ((), (2,)) or not jnp.issubdtype(seed.dtype, jnp.integer):
            raise ValueError(
                "`seed` must be None, an int, an integer array of shape [] or [2] or a "
                f"keras.random.SeedGenerator; got {generator!r}."
            )
        if seed.shape == ():  # an int traced by jax.jit: as the int itself
            return jnp.stack([seed.astype(jnp.uint32), jnp.zeros((), jnp.uint32)])
        return seed.astype(jnp.uint32)
    return jnp.asarray(generator.next()).astype(jnp.uint32)


def fold_in(seed, data) -> jax.Array:
    """A new seed from `seed` and an integer: independent of `seed` itself."""
    if isinstance(data, int):
        data = data & 0xFFFFFFFF  # -1 and other negative tags, as TensorFlow takes them
    else:
        data = jnp.asarray(data).astype(jnp.uint32)
    return jax.random.fold_in(_key(seed), data)


def split(seed, n: int) -> list:
    """`n` independent seeds from one."""
    return list(jax.random.split(_key(seed), n))


def normal(shape, seed, dtype="float32"):
    """Standard normal draws."""
    return jax.random.normal(_key(seed), tuple(shape), dtype=dtype)


def uniform(shape, seed, dtype="float32", minval=0.0, maxval=1.0):
    """Uniform draws on [minval, maxval) (integers for an integer dtype)."""
    if jnp.issubdtype(jnp.dtype(dtype), jnp.integer):
        return jax.random.randint(_key(seed), tuple(shape), minval, maxval, dtype=dtype)
    return jax.random.uniform(_key(seed), tuple(shape), dtype=dtype, minval=minval, maxval=maxval)


def _key(seed) -> jax.Array:
    """Raw uint32[2] key data (TFP's JAX seeds), from any integer seed of shape [2]."""
    return jnp.asarray(seed).astype(jnp.uint32)
