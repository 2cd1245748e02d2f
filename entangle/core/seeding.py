"""The process's random state, set for a block or kept as it was: every model build that
must not move a caller's draws (Python, NumPy, TensorFlow and Keras generators)."""

from __future__ import annotations

import contextlib
import random

import keras
import numpy as np
import tensorflow as tf


@contextlib.contextmanager
def preserved_random_state():
    """Whatever the block draws, the caller's Python, NumPy, TensorFlow and Keras seed state
    is as it was afterwards."""
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from tensorflow.python.eager import context

    saved = (random.getstate(), np.random.get_state(), context.global_seed(),
             global_state.get_global_attribute("global_random_seed"),
             global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR))
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        tf.random.set_seed(saved[2])
        global_state.set_global_attribute("global_random_seed", saved[3])
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, saved[4])


@contextlib.contextmanager
def seeded(seed: int):
    """``keras.utils.set_random_seed(seed)`` inside the block; the caller's seed state is
    restored afterwards (``preserved_random_state``), so nothing leaks."""
    with preserved_random_state():
        keras.utils.set_random_seed(seed)
        yield
