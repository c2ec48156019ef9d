"""Stateless seeds for TFP, drawn from Keras seed generators."""

from __future__ import annotations

import keras
import tensorflow as tf


def make_seed_generator(seed: int | None, name: str) -> keras.random.SeedGenerator:
    return keras.random.SeedGenerator(seed, name=f"{name}_seed_generator")


def draw_tfp_seed(generator) -> tf.Tensor:
    """Returns an int32[2] stateless seed for TFP.

    Each call advances the generator, so every training step gets fresh noise. Under a
    distribution strategy the replica id is folded in, so replicas draw independent noise
    while the generator state (a mirrored variable) stays identical on all of them.
    """
    if generator is None:
        generator = keras.random.SeedGenerator()
    if isinstance(generator, int):
        return tf.constant([generator, 0], dtype=tf.int32)
    if not isinstance(generator, keras.random.SeedGenerator):
        seed = tf.convert_to_tensor(generator)
        if seed.shape != (2,) or not seed.dtype.is_integer:
            raise ValueError(
                "`seed` must be None, an int, an integer tensor of shape [2] or a "
                f"keras.random.SeedGenerator; got {generator!r}."
            )
        return tf.cast(seed, tf.int32)
    seed = tf.cast(generator.next(), tf.int32)
    replica_context = tf.distribute.get_replica_context()
    if replica_context is not None and replica_context.num_replicas_in_sync > 1:
        replica_id = tf.cast(replica_context.replica_id_in_sync_group, tf.int32)
        seed = tf.random.experimental.stateless_fold_in(seed, replica_id)
    return seed


def split_seed(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    return list(tf.unstack(tf.random.experimental.stateless_split(seed, n)))


_SEED_STATE_KEY = "seed_generator_state"


class SeedStateMixin:
    """Saves a layer's `seed_generator` state with its weights.

    Keras checkpoints (`save_weights`, `BackupAndRestore`, `.keras` files) store a layer's own
    variables but not its seed generators', so a restored run would replay old noise. Layers
    with this mixin write the generator state beside their weights and read it back (files
    without it still load).
    """

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[_SEED_STATE_KEY] = self.seed_generator.state.numpy()

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _SEED_STATE_KEY in keys:
            self.seed_generator.state.assign(store[_SEED_STATE_KEY])
        super().load_own_variables({k: store[k] for k in keys if k != _SEED_STATE_KEY})
