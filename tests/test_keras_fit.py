"""Adversarial training through model.fit: each update is the gradient at the batch's PGD
examples, and Keras' callbacks, tf.data and arrays work as with any Keras model."""

import os

import keras
import numpy as np
import tensorflow as tf

from entangle.core import attacks
from entangle.core.adversarial import AdversarialModel


def _net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                             keras.layers.ReLU(), keras.layers.Flatten(),
                             keras.layers.Dense(3)])


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.clip(rng.normal(0.2 + 0.3 * y[:, None, None, None], 0.1, (n, 8, 8, 1)), 0, 1)
    return x.astype(np.float32), y.astype(np.int64)


def _compiled(model, lr=0.5):
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _step_by_hand(net, x, y, lr):
    """One SGD step on the mean cross-entropy of ``x``: the weights after it."""
    clone = keras.models.clone_model(net)
    clone.set_weights(net.get_weights())
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            y, clone(x, training=True), from_logits=True))
    grads = tape.gradient(loss, clone.trainable_variables)
    return [w.numpy() - lr * g.numpy() for w, g in zip(clone.trainable_variables, grads)]


def test_fit_updates_on_the_pgd_examples_of_each_batch():
    """One batch, no random start: the update equals an SGD step at pgd_l2's examples of
    the same weights (steps and step size as given), and differs from a step at x."""
    x, y = _data()
    net = _net()
    adv_x = attacks.pgd_l2(net, x, y, eps=0.5, steps=3, step_size=0.2, batch_size=len(x),
                           verbose=False)
    assert np.max(np.sqrt(np.sum((adv_x - x) ** 2, axis=(1, 2, 3)))) <= 0.5 + 1e-4
    expected, clean = _step_by_hand(net, adv_x, y, 0.5), _step_by_hand(net, x, y, 0.5)
    robust = _compiled(AdversarialModel(net, eps=0.5, steps=3, step_size=0.2))
    robust.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    got = [w.numpy() for w in net.trainable_variables]
    for g, e, c in zip(got, expected, clean):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    assert max(np.max(np.abs(g - c)) for g, c in zip(got, clean)) > 1e-3


def test_fit_takes_tf_data_one_hot_labels_and_keras_callbacks(tmp_path):
    """tf.data with one-hot labels, EarlyStopping, ModelCheckpoint (the .keras file loads
    and predicts as the trained model), BackupAndRestore and TensorBoard (event files)."""
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(3, dtype=np.float32)[y])).batch(16)
    net = _net()
    robust = AdversarialModel(net, eps=0.3, steps=2, step_size=0.2, random_start=True)
    robust.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    saved = str(tmp_path / "robust.keras")
    history = robust.fit(ds, validation_data=ds, epochs=3, verbose=0, callbacks=[
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=1),
        keras.callbacks.ModelCheckpoint(saved),
        keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
        keras.callbacks.TensorBoard(str(tmp_path / "tb"))])
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    assert int(robust.batches.numpy()) == 3 * len(history.history["loss"])
    loaded = keras.models.load_model(saved)
    assert isinstance(loaded, AdversarialModel) and loaded.eps == 0.3
    np.testing.assert_allclose(loaded.predict(x, verbose=0), net.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    events = [f for _, _, fs in os.walk(tmp_path / "tb") for f in fs if "tfevents" in f]
    assert events
