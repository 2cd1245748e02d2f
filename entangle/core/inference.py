"""Inference on numpy images (predictions, accuracy, one traced function per model) and
precise batch norm: moving statistics recomputed from batches after training."""

from __future__ import annotations

import weakref
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf

from entangle import data
from entangle.core import stand_ins, tracing


def predict_logits(model: keras.Model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """float32 outputs of ``model`` (inference mode) on [0, 1] float or uint8 images."""
    predict = _predictor(stand_ins.stand_in(model))
    out = []
    for i in range(0, len(x), batch_size):
        xb = tf.constant(data.to_float(x[i:i + batch_size]))
        out.append(predict(xb, owner=model).numpy())
    return (np.concatenate(out).astype(np.float32) if out
            else np.zeros((0, int(model.output_shape[-1])), np.float32))


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Per-example predicted classes (int64) of ``model`` on [0, 1] float or uint8 images."""
    return np.argmax(predict_logits(model, x, batch_size), -1).astype(np.int64)


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (inference mode) on [0, 1] or uint8 images."""
    if len(y) == 0:
        return float("nan")
    return float(np.mean(predict(model, x, batch_size) == np.asarray(y)))


def batch_norm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of ``model``, those of nested models included."""
    found: dict[int, keras.layers.Layer] = {}

    def walk(layer):
        for sub in getattr(layer, "layers", None) or []:
            if isinstance(sub, keras.layers.BatchNormalization):
                found.setdefault(id(sub), sub)
            walk(sub)

    walk(model)
    return list(found.values())


def recompute_bn_statistics(model: keras.Model, batches: Iterable[np.ndarray]) -> int:
    """Precise batch norm: every batch norm's moving mean and variance become the
    size-weighted average of its batch statistics over ``batches`` ([0, 1] images), from
    training-mode forward passes without a weight update. Returns the number of layers set.

    Why: at momentum 0.99, a model trained for a few hundred steps keeps much of the initial
    0/1 statistics (0.99^117 = 0.31), and inference-mode accuracy falls far below what the
    weights can do.
    """
    layers_ = [l for l in batch_norm_layers(model) if l.trainable]
    if not layers_:
        return 0
    twin = stand_ins.stand_in(model)
    forward, keep = _bn_pass(twin)
    layers_ = [l for l in batch_norm_layers(twin) if l.trainable]
    saved = [l.momentum for l in layers_]
    seen = 0
    try:
        for l in layers_:
            l.momentum = keep
        for xb in batches:
            n = len(xb)
            if n == 0:
                continue
            keep.assign(seen / (seen + n))
            xb = tf.constant(data.to_float(np.asarray(xb)))
            forward(xb, owner=model)
            seen += n
    finally:
        for l, m in zip(layers_, saved):
            l.momentum = m
    if twin is not model:
        stand_ins.copy(model.weights, twin.weights)
    return len(layers_) if seen else 0


_BN_PASSES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _bn_pass(model):
    """(training-mode forward pass, the weight of the running average its batch norms use
    as momentum while it runs): traced once per model (per stand-in: once per
    architecture), holding the model weakly."""
    if model not in _BN_PASSES:
        ref = weakref.ref(model)
        keep = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        _BN_PASSES[model] = (tracing.Traced(lambda x: ref()(x, training=True)), keep)
    return _BN_PASSES[model]


_PREDICTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _predictor(model):
    """One traced inference function per model, reused across calls; holds the model weakly
    so that ``del model`` frees it."""
    if model not in _PREDICTORS:
        ref = weakref.ref(model)
        _PREDICTORS[model] = tracing.Traced(lambda x: tf.cast(ref()(x, training=False),
                                                              tf.float32))
    return _PREDICTORS[model]
