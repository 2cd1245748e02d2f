"""A function that every model of one architecture shares (``stand_ins``), traced for each
model as that model's own ``tf.function`` would be.

Why: oneDNN sums a graph traced on a batch's exact shape in another order than one traced
with the batch axis unknown, and at quick scale that moves a few images' outcomes
(docs/performance.md, "Tracing"). A model's own function made with ``reduce_retracing`` is
traced on the exact shapes of its first call and relaxed for every other shape. A function
shared by many models would follow whichever model happened to call it first, and a model's
outputs would depend on what ran before it in the process. ``Traced`` keeps the exact traces
and the relaxed ones apart and picks by the calling model's own first call.
"""

from __future__ import annotations

import weakref

import tensorflow as tf


class Traced:
    """``fn`` as two ``tf.function``s: ``exact`` (one trace per shape) for each owner's
    first shapes, ``relaxed`` (the axes that differ from those unknown) for any other."""

    def __init__(self, fn, jit_compile: bool = False):
        self.exact = tf.function(fn, jit_compile=jit_compile)
        self.relaxed = tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)
        self._first: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __call__(self, *args, owner=None):
        """``fn(*args)`` for ``owner`` (the model the call is made for; None: this function
        itself), traced on the exact shapes of ``owner``'s first call or relaxed."""
        args = [tf.convert_to_tensor(a) for a in args]
        shapes = tuple(tuple(a.shape) for a in args)
        first = self._first.setdefault(self if owner is None else owner, shapes)
        if shapes == first:
            return self.exact(*args)
        specs = [tf.TensorSpec(_relaxed(shape, was), a.dtype)
                 for a, shape, was in zip(args, shapes, first)]
        return self.relaxed.get_concrete_function(*specs)(*args)

    def experimental_get_tracing_count(self) -> int:
        """Traces made so far, exact and relaxed (``tf.function``'s name for the count)."""
        return (self.exact.experimental_get_tracing_count()
                + self.relaxed.experimental_get_tracing_count())


def _relaxed(shape: tuple, first: tuple) -> list:
    """``shape`` with every axis that differs from ``first`` unknown (all of them where the
    ranks differ): the shape ``reduce_retracing`` would trace for a second call."""
    if len(shape) != len(first):
        return [None] * len(shape)
    return [d if d == f else None for d, f in zip(shape, first)]
