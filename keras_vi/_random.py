"""Stateless seeds for TFP, drawn from Keras seed generators."""

from __future__ import annotations

import keras
import tensorflow as tf


def make_seed_generator(seed: int | None, name: str) -> keras.random.SeedGenerator:
    return keras.random.SeedGenerator(seed, name=f"{name}_seed_generator")


def draw_tfp_seed(generator: keras.random.SeedGenerator | int | None) -> tf.Tensor:
    """Returns an int32[2] stateless seed for TFP.

    Each call advances the generator, so every training step gets fresh noise. Under a
    distribution strategy the replica id is folded in, so replicas draw independent noise
    while the generator state (a mirrored variable) stays identical on all of them.
    """
    if generator is None:
        generator = keras.random.SeedGenerator()
    if isinstance(generator, int):
        return tf.constant([generator, 0], dtype=tf.int32)
    if isinstance(generator, tf.Tensor) and generator.shape == (2,):
        return tf.cast(generator, tf.int32)
    seed = tf.cast(generator.next(), tf.int32)
    replica_context = tf.distribute.get_replica_context()
    if replica_context is not None and replica_context.num_replicas_in_sync > 1:
        replica_id = tf.cast(replica_context.replica_id_in_sync_group, tf.int32)
        seed = tf.random.experimental.stateless_fold_in(seed, replica_id)
    return seed


def split_seed(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    return list(tf.unstack(tf.random.experimental.stateless_split(seed, n)))
