"""One trace of a ``tf.function`` for every batch size it will see.

Why: a function traced on its first batch's exact shape is traced again for the last, shorter
batch (``reduce_retracing`` relaxes the shape only on that second trace). A trace of a
model's forward pass or attack costs 0.1-1 s, more than a small model's whole evaluation, and
every model of a table pays it. Tracing the first call with the batch axis unknown serves
every later batch size from one trace.
"""

from __future__ import annotations

import tensorflow as tf


def any_batch(fn, *args):
    """``fn`` (a ``tf.function``) traced for ``args``' shapes with axis 0 of every non-scalar
    tensor unknown, so that calls with any batch size reuse that trace; returns ``fn``. Once
    traced, a call is a cache lookup (about 60 us), cheap enough to make before every batch.
    A plain Python function is returned as it is."""
    if not hasattr(fn, "get_concrete_function"):
        return fn
    specs = [tf.TensorSpec([None, *a.shape[1:]] if a.shape.rank else a.shape, a.dtype)
             for a in map(tf.convert_to_tensor, args)]
    fn.get_concrete_function(*specs)
    return fn
