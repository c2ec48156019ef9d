"""Stateless seeds for TFP, drawn from Keras seed generators (see `keras_vi.backend.random`)."""

from __future__ import annotations

import keras

from keras_vi.backend import random as backend_random


def make_seed_generator(seed: int | None, name: str) -> keras.random.SeedGenerator:
    return keras.random.SeedGenerator(seed, name=f"{name}_seed_generator")


def draw_tfp_seed(generator):
    """A stateless seed for TFP from a generator, an int or a seed (`backend.random.draw_seed`)."""
    return backend_random.draw_seed(generator)


def split_seed(seed, n: int) -> list:
    return backend_random.split(seed, n)


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
        store[_SEED_STATE_KEY] = keras.ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _SEED_STATE_KEY in keys:
            self.seed_generator.state.assign(store[_SEED_STATE_KEY])
        super().load_own_variables({k: store[k] for k in keys if k != _SEED_STATE_KEY})
