"""Seeding a model build: every generator keras.utils.set_random_seed sets, the caller's state
kept, and TensorFlow's compiled functions and stateful streams left running."""

import random

import numpy as np
import pytest

from entangle.core import seeding
from entangle.core.train_config import TrainConfig

TINY = TrainConfig(arch="resnet11v2", width=2, pooling="global", epochs=1, seed=3)


def _state():
    """Everything a seed sets: Python, NumPy, Keras' global seed and generator, and the
    next draws of TensorFlow's op seeds and of Keras' unseeded random ops."""
    import keras
    from keras.src.backend.common import global_state
    from tensorflow.python.framework import random_seed

    return {"python": random.getstate(), "numpy": np.random.get_state()[1].tolist(),
            "keras_seed": global_state.get_global_attribute("global_random_seed"),
            "tf_op_seeds": [random_seed.get_seed(None) for _ in range(3)],
            "keras_draw": keras.random.normal((4,)).numpy().tolist()}


def test_set_random_seed_sets_what_keras_sets():
    import keras

    with seeding.preserved_random_state():
        keras.utils.set_random_seed(17)
        expected = _state()
        seeding.set_random_seed(17)
        assert _state() == expected
        with pytest.raises(ValueError, match="seed must be an integer"):
            seeding.set_random_seed(1.5)


def test_a_seeded_build_keeps_the_callers_tensorflow_streams_and_compiled_functions():
    """tf.random.set_seed (inside keras.utils.set_random_seed) clears TensorFlow's kernel
    cache: every compiled function was optimised again after each model build, and a
    caller's stateful random stream restarted. A seeded build now leaves both running."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    from entangle.core import train

    def draw():
        return tf.random.uniform([3], seed=1)     # a stateful kernel inside a function

    compiled, twin = tf.function(draw), tf.function(draw)
    eager_before = tf.random.uniform([3], seed=2).numpy()
    first = compiled().numpy()
    seed_before = context.global_seed()
    train.build_for_training(TINY, tf.distribute.get_strategy(), (8, 8, 3), 3)
    assert context.global_seed() == seed_before
    after = compiled().numpy()
    fresh = [twin().numpy() for _ in range(2)]     # a new function's stream, from its start
    np.testing.assert_array_equal(first, fresh[0])
    # the function's instance was kept, so its stream went on instead of starting over
    np.testing.assert_array_equal(after, fresh[1])
    # the eager kernel was kept too: its next draw is not the first again
    assert not np.array_equal(tf.random.uniform([3], seed=2).numpy(), eager_before)


def test_a_users_builder_that_draws_from_stateful_kernels_builds_the_same_model_twice():
    """A user's builder may draw from TensorFlow's stateful kernels (tf.random.normal with no
    seed); its builds restart them as keras.utils.set_random_seed does, so one seed gives
    one model however many were built before it in the process."""
    import keras
    import tensorflow as tf

    from entangle.core import train

    class StatefulNormal(keras.initializers.Initializer):
        def __call__(self, shape, dtype=None):
            return tf.random.normal(shape, dtype=dtype)

    def model_fn():
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Flatten()(inputs)
        return keras.Model(inputs, keras.layers.Dense(3, kernel_initializer=StatefulNormal())(x))

    builds = [train.build_for_training(TINY, tf.distribute.get_strategy(), (8, 8, 3), 3,
                                       model_fn)[0].get_weights() for _ in range(2)]
    for a, b in zip(*builds):
        np.testing.assert_array_equal(a, b)
