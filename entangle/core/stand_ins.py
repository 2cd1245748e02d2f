"""Stand-ins: one Keras model per architecture whose traced functions every model of that
architecture reuses, its weights copied in before each use.

Why: every model of a table is a new Keras object, and the forward pass, the attack loops
and robustification each trace a graph per model and have it optimised on its first call.
At test and quick sizes that costs more than the arithmetic (docs/performance.md,
"Tracing"). Two models built from one configuration compute the same graph, so the traces
of one serve the other; copying the weights costs a few milliseconds. The outputs are the
model's own, bit for bit (``tests/test_stand_ins.py``).

Only models whose whole graph their configuration states get a stand-in: Keras functional
or sequential models made of Keras' and entangle's own layers, with ordinary (not
``tf.distribute``) variables. Anything else, a user's own layer class included, is used as
it is. One thread at a time: a stand-in holds the weights of whichever model used it last.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import keras
import tensorflow as tf

from entangle.core import models
from entangle.core.seeding import preserved_random_state

_STAND_INS: dict = {}       # (architecture, slot) -> stand-in, or None: cannot be cloned
_LOCK = threading.RLock()
_ENABLED = [True]
_ARCHITECTURES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_OWN_LAYERS = ("keras.", "entangle.")


def stand_in(model: keras.Model, slot: int = 0) -> keras.Model:
    """A model of ``model``'s architecture holding ``model``'s weights now, shared with
    every earlier model of that architecture (``slot`` keeps models used together apart);
    ``model`` itself where no stand-in applies. Callers use it for the call at hand only:
    the next ``stand_in`` of the same architecture and slot overwrites its weights."""
    if not _ENABLED[0] or getattr(model, "_entangle_stand_in", False):
        return model
    key = architecture(model)
    if key is None:
        return model
    with _LOCK:
        if (key, slot) not in _STAND_INS:
            _STAND_INS[(key, slot)] = _clone(model)
        twin = _STAND_INS[(key, slot)]
    if twin is None:
        return model
    copy(twin.weights, model.weights)
    return twin


def copy(destinations, sources) -> None:
    """Assigns each of ``sources`` (variables) to its variable of ``destinations``, in one
    traced function per list of shapes: 4x faster than one eager assign per variable, and
    traced once for every pair of models of one architecture."""
    def tf_variable(v):
        return v.value if isinstance(v, keras.Variable) else v

    _assign_all([tf_variable(v) for v in destinations], [tf_variable(v) for v in sources])


@tf.function
def _assign_all(destinations, sources):
    for mine, theirs in zip(destinations, sources):
        mine.assign(theirs)


@contextlib.contextmanager
def disabled():
    """Every model is used and trained as itself inside the block (for comparisons and
    debugging)."""
    before = _ENABLED[0]
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = before


def architecture(model: keras.Model):
    """What another model must share with ``model`` to compute its graph (a hashable key),
    or None where the configuration may not say everything (or inside ``disabled``);
    computed again only when which weights train changes (a configuration is a tenth of a
    second at ResNet56v2)."""
    if not _ENABLED[0]:
        return None
    trainable = tuple(w.trainable for w in model.weights)
    known = _ARCHITECTURES.get(model)
    if known is None or known[0] != trainable:
        _ARCHITECTURES[model] = known = (trainable, _architecture(model))
    return known[1]


def _architecture(model: keras.Model):
    if type(model).__name__ not in ("Functional", "Sequential"):
        return None
    layers_ = list(model._flatten_layers(include_self=False))
    if any(not type(layer).__module__.startswith(_OWN_LAYERS)
           or (type(layer).__name__ not in ("Functional", "Sequential")
               and isinstance(layer, keras.Model))
           for layer in layers_):
        return None
    if any(isinstance(w.value, tf.distribute.DistributedValues) for w in model.weights):
        return None
    try:
        config = models.architecture_signature(model)
    except (NotImplementedError, TypeError, ValueError):
        return None
    weights = tuple((tuple(w.shape), str(w.dtype), w.trainable) for w in model.weights)
    return (type(model).__name__, config, weights, str(model.dtype_policy.name))


def _clone(model: keras.Model):
    """A new model of ``model``'s configuration (None if it cannot be made), built without
    moving the caller's random state."""
    try:
        with preserved_random_state():
            twin = keras.models.clone_model(model)
    except Exception:   # noqa: BLE001 - whatever stops a clone, the model serves as itself
        return None
    if [(tuple(a.shape), str(a.dtype)) for a in twin.weights] != \
            [(tuple(b.shape), str(b.dtype)) for b in model.weights]:
        return None
    twin._entangle_stand_in = True
    return twin
