"""The process's random state, set for a block or kept as it was: every model build that
must not move a caller's draws (Python, NumPy, TensorFlow and Keras generators).

TensorFlow's part is set and restored as ``tf.random.set_seed`` sets it (the global seed and
the sequence of op seeds drawn from it) but without the eager kernel-cache clear that comes
with it. Why: that clear also drops every compiled function's instantiated graph, so each
``tf.function`` of the process is optimised again on its next call (0.5 s for a smoke
train step, 3.5 s for ResNet56v2's), after every model build. The clear exists to restart
the counters of TensorFlow's stateful random kernels (``tf.random.uniform`` and kin); this
package and Keras 3's initializers draw only from stateless ops with explicit seeds, so they
need no restart. Code that does draw from stateful kernels (a user's model builder may)
asks for it with ``seeded(seed, restart_tf_streams=True)``.
"""

from __future__ import annotations

import contextlib
import random

import keras
import numpy as np
from keras.src.backend.common import global_state
from keras.src.random import seed_generator
from keras.src.utils import rng_utils
from tensorflow.python.eager import context


def _tf_seed_state() -> tuple:
    """TensorFlow's eager global seed and the state of its op-seed generator."""
    ctx = context.context()
    rng = getattr(ctx, "_rng", None)      # made by the first set_seed
    return ctx._seed, (None if rng is None else rng.getstate())


def _set_tf_seed_state(seed, rng_state) -> None:
    """TensorFlow's eager global seed and op-seed generator, as ``tf.random.set_seed`` leaves
    them (``context._set_global_seed``), its kernel-cache clear aside."""
    ctx = context.context()
    ctx._seed = seed
    if rng_state is None:
        ctx._rng = None
    else:
        ctx._rng = random.Random()
        ctx._rng.setstate(rng_state)


def set_random_seed(seed: int, restart_tf_streams: bool = False) -> None:
    """What ``keras.utils.set_random_seed(seed)`` sets (Python, NumPy, Keras' global seed
    generator, TensorFlow's global seed), TensorFlow's without clearing its kernel cache
    unless ``restart_tf_streams`` (module docstring)."""
    if restart_tf_streams:
        keras.utils.set_random_seed(seed)
        return
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an integer; got {seed!r} ({type(seed).__name__})")
    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    _set_tf_seed_state(seed, random.Random(seed).getstate())


@contextlib.contextmanager
def preserved_random_state():
    """Whatever the block draws, the caller's Python, NumPy, TensorFlow and Keras seed state
    is as it was afterwards; TensorFlow's stateful kernels and compiled functions are kept
    (unless the block restarts them)."""
    saved = (random.getstate(), np.random.get_state(), _tf_seed_state(),
             global_state.get_global_attribute(rng_utils.GLOBAL_RANDOM_SEED),
             global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR))
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        _set_tf_seed_state(*saved[2])
        global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, saved[3])
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, saved[4])


@contextlib.contextmanager
def seeded(seed: int, restart_tf_streams: bool = False):
    """``set_random_seed(seed)`` inside the block (``restart_tf_streams``: for code that draws
    from TensorFlow's stateful random kernels); the caller's seed state is restored
    afterwards (``preserved_random_state``), so nothing leaks."""
    with preserved_random_state():
        set_random_seed(seed, restart_tf_streams)
        yield
