"""What an attack ascends: an ``Objective`` pairs a forward pass (the model's logits, several
models' logits, or a representation) with a per-example loss on it. Cross-entropy drives PGD
and FGM, the multi-model losses the N-targeted attack, feature matching robustification;
``loop.run_attack`` runs any of them in the same loop."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Objective:
    """What an attack ascends: ``loss(forward(x), labels)``, one value per example.

    ``forward`` maps images to model outputs (a tensor or a tuple of them); ``loss`` maps those
    outputs (cast to float32) and the labels to per-example values. Keeping them apart lets
    the runner rescale the output gradient per example (see the module docstring).
    """

    forward: Callable[[tf.Tensor], Any]
    loss: Callable[[Any, tf.Tensor], tf.Tensor]


def with_preprocessing(objective: Objective, preprocess: Callable | None) -> Objective:
    """``objective`` on ``preprocess(x)``: the attack moves x in its own domain (say [0, 1]
    pixels) while the model sees, e.g., normalised or 0-255 inputs (MadryLab robustness puts
    the normalisation inside the model the same way)."""
    if preprocess is None:
        return objective
    return Objective(lambda x: objective.forward(preprocess(x)), objective.loss)


# ---------------------------------------------------------------------------- pieces


def logits_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """x -> logits of ``model`` in inference mode, looking through a final softmax.

    keras.applications classifiers end in a softmax by default; cross-entropy on such
    probabilities (as if they were logits) is nearly flat, which silently weakens an attack.
    A final ``Softmax``/``Activation('softmax')`` layer or a ``Dense(activation='softmax')``
    is detected and its pre-softmax values are used instead. The model is held weakly, so
    cached attacks never keep it alive.
    """
    ref = weakref.ref(model)
    last = model.layers[-1] if getattr(model, "layers", None) else None
    act = getattr(last, "activation", None)
    if last is None or not _is_softmax(last, act):
        return lambda x: ref()(x, training=False)
    features = keras.Model(model.inputs, last.input)
    if isinstance(last, keras.layers.Dense):
        def dense_logits(x):
            layer, h = ref().layers[-1], tf.cast(features(x, training=False), tf.float32)
            out = tf.matmul(h, tf.cast(layer.kernel, tf.float32))
            return out + tf.cast(layer.bias, tf.float32) if layer.use_bias else out
        return dense_logits
    return lambda x: features(x, training=False)


def _is_softmax(layer, activation) -> bool:
    if isinstance(layer, keras.layers.Softmax):
        return True
    return activation is keras.activations.softmax or getattr(activation, "__name__", "") == \
        "softmax"


def ends_in_softmax(model: keras.Model) -> bool:
    """Whether ``model``'s last layer is a softmax (its outputs are probabilities, not logits)."""
    last = model.layers[-1] if getattr(model, "layers", None) else None
    return last is not None and _is_softmax(last, getattr(last, "activation", None))


def cross_entropy_objective(model: keras.Model, targeted: bool) -> Objective:
    """Ascend CE(model(x), y) untargeted, -CE(model(x), t) targeted."""
    sign = -1.0 if targeted else 1.0

    def loss(logits, labels):
        return sign * tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                     logits=logits)

    return Objective(logits_fn(model), loss)


def multi_model_objective(models: Sequence[keras.Model]) -> Objective:
    """Objective of the N-targeted attack (Waseda et al.): -sum_i CE(model_i(x), t_i).

    ``labels`` has shape (num_models, batch): one target per model and example.
    """
    forwards = [logits_fn(m) for m in models]

    def loss(outputs, labels):
        return -tf.add_n([tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels[:, i],
                                                                        logits=logits)
                          for i, logits in enumerate(outputs)])

    return Objective(lambda x: tuple(f(x) for f in forwards), loss)


N_TARGETED_LOSSES = ("ce", "margin")


def multi_margin_objective(models: Sequence[keras.Model], kappa: float) -> Objective:
    """The N-targeted attack with a clipped margin per model (Carlini-Wagner style):
    -sum_i max(max_{j != t_i} z_ij - z_i,t_i, -kappa). A model that already predicts its
    target with margin kappa contributes nothing (its term is constant), so no model's target
    gets more of the budget than it needs, unlike cross-entropy, which keeps pulling."""
    forwards = [logits_fn(m) for m in models]

    def loss(outputs, labels):
        terms = []
        for i, logits in enumerate(outputs):
            target = tf.one_hot(labels[:, i], tf.shape(logits)[1], dtype=logits.dtype)
            z_target = tf.reduce_sum(logits * target, axis=1)
            z_other = tf.reduce_max(logits - 1e9 * target, axis=1)
            terms.append(tf.maximum(z_other - z_target, -kappa))
        return -tf.add_n(terms)

    return Objective(lambda x: tuple(f(x) for f in forwards), loss)


def feature_matching_objective(feature_model: keras.Model) -> Objective:
    """Ascend -||f(x) - target||_2, ``labels`` holding each example's target features.

    With an unbounded budget and a start x0, this is representation inversion
    (robustification, Ilyas et al. 2019): x moves until f(x) matches f of another image.
    """
    ref = weakref.ref(feature_model)

    def forward(x):
        out = ref()(x, training=False)
        return tf.reshape(out, [tf.shape(out)[0], -1])

    def loss(features, targets):
        diff = features - tf.reshape(tf.cast(targets, tf.float32), tf.shape(features))
        return -tf.sqrt(tf.reduce_sum(tf.square(diff), axis=1) + 1e-12)

    return Objective(forward, loss)
