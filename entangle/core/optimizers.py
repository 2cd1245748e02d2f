"""Adam as Keras computes it, in fewer traced ops: the same arithmetic, bit for bit.

Why our own: tracing Keras 3's ``Adam.update_step`` builds the step's scalar factor (learning
rate times the bias corrections, about a dozen ops) once per variable, each op through
``keras.ops``' dispatch. For ResNet56v2's 170 variables that was 58 % of a training step's
tracing time, and tracing, not arithmetic, is most of a small model's cost (every model of a
table traces its own step). Here the factor is built once per step and dtype, and the
per-variable update uses TensorFlow's ops directly, in Keras' order and with Keras' constants,
so the weights equal Keras Adam's exactly (``tests/test_train.py``).
"""

from __future__ import annotations

import keras
import tensorflow as tf


class Adam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` (no AMSGrad) with one bias-corrected step size per step."""

    _alphas: dict | None = None

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._alphas = {}        # (dtype, device) -> this step's factor, for this apply only
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._alphas = None

    def _alpha(self, learning_rate, variable):
        """lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), as Keras builds it for ``variable``."""
        key = (variable.dtype, variable.device)
        if key not in self._alphas:
            dtype = variable.dtype
            lr = tf.cast(learning_rate, dtype)
            local_step = tf.cast(self.iterations.value + 1, dtype)
            beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), local_step)
            beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), local_step)
            self._alphas[key] = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        return self._alphas[key]

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or self._alphas is None:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        alpha = self._alpha(learning_rate, variable)
        gradient = tf.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index].value, self._velocities[index].value
        m.assign_add(tf.multiply(tf.subtract(gradient, m), tf.cast(1 - self.beta_1, dtype)))
        v.assign_add(tf.multiply(tf.subtract(tf.square(gradient), v),
                                 tf.cast(1 - self.beta_2, dtype)))
        variable.assign_sub(tf.divide(tf.multiply(m, alpha),
                                      tf.add(tf.sqrt(v), tf.cast(self.epsilon, dtype))))
