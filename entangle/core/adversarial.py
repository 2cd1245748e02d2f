"""Adversarial training through ``model.fit``: a Keras model whose ``train_step`` replaces each
batch by its PGD examples (``steps.pgd_training_attack``, the attack of the store's trainer)
before the usual update, so that Keras' callbacks (EarlyStopping, ModelCheckpoint,
BackupAndRestore, TensorBoard), ``tf.data`` and arrays all work as with any Keras model.

    robust = AdversarialModel(my_model, eps=0.5, steps=7, step_size=0.1)
    robust.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    robust.fit(ds, epochs=10, callbacks=[keras.callbacks.EarlyStopping(patience=2)])
    my_model.predict(x)         # the trained classifier: the wrapper shares its weights

The store's trainer (``train.fit``) keeps its own loop: it resumes mid-epoch bit for bit from
a checkpoint in the store, which Keras' fit cannot. Both run the same attack.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from entangle.core.steps import pgd_training_attack


@keras.saving.register_keras_serializable(package="entangle")
class AdversarialModel(keras.Model):
    """``model`` trained by ``fit`` on untargeted L2 PGD examples of radius ``eps`` (Madry et
    al.): ``steps`` steps of length ``step_size``, from ``x`` or (``random_start``) a random
    point of the ball of ``start_radius`` x eps; no gradient through the attack. Inputs are
    images in [0, 1]; labels are class indices or one-hot. Evaluation and prediction are the
    wrapped model's, on clean inputs. Single-device (the default strategy)."""

    def __init__(self, model: keras.Model, eps: float, steps: int = 7, step_size: float = 0.1,
                 random_start: bool = False, start_radius: float = 1.0, seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        if not eps >= 0 or steps < 1 or not step_size > 0:
            raise ValueError(f"AdversarialModel needs eps >= 0, steps >= 1 and step_size > 0; "
                             f"got eps={eps!r}, steps={steps!r}, step_size={step_size!r}")
        self.model = model
        self.eps, self.steps, self.step_size = float(eps), int(steps), float(step_size)
        self.random_start, self.start_radius = bool(random_start), float(start_radius)
        self.seed = int(seed)
        self._attack = pgd_training_attack(model, self.eps, self.steps, self.step_size,
                                           self.random_start, self.start_radius)
        # counts attacked batches: each random start draws from its own stateless seed
        self.batches = keras.Variable(0, dtype="int32", trainable=False, name="pgd_batches")
        if model.built:         # BackupAndRestore and summary() need a built model up front
            self.build(model.input_shape)

    def build(self, input_shape):
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def call(self, x, training=False):
        return self.model(x, training=training)

    def adversarial_examples(self, x, y):
        """The PGD examples the next training step would use for (x, y)."""
        labels = _class_indices(y)
        seed = tf.stack([tf.constant(self.seed, tf.int32), tf.cast(self.batches, tf.int32)])
        return self._attack(tf.convert_to_tensor(x, tf.float32), labels, seed)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x_adv = self.adversarial_examples(x, y) if self.eps > 0 else x
        self.batches.assign_add(1)
        with tf.GradientTape() as tape:
            y_pred = self(x_adv, training=True)
            loss = self.compute_loss(x=x_adv, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                     training=True)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return self.compute_metrics(x_adv, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start, "start_radius": self.start_radius,
                "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def _class_indices(y) -> tf.Tensor:
    """int32 class indices from indices of shape (n,) or (n, 1), or from one-hot (n, k)."""
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2 and y.shape[-1] is not None and y.shape[-1] > 1:
        return tf.argmax(y, -1, output_type=tf.int32)
    return tf.cast(tf.reshape(y, [-1]), tf.int32)
