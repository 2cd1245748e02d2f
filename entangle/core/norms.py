"""The geometry of the attacks: per norm, the steepest-ascent step, the projection onto the
ball and a random point of it (``Norm``), clipping to the input domain, and step schedules.
L2 is the paper's; L-infinity (Madry et al.'s original) is another ``Norm``, not another
loop."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

NORM_FLOOR = 1e-30


def l2_norm(v: tf.Tensor) -> tf.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``v`` (batch, 1, 1, 1)."""
    axes = list(range(1, len(v.shape)))
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True))


def normalized_step(x: tf.Tensor, grad: tf.Tensor, step_size) -> tf.Tensor:
    """x + a * g / ||g||_2 per example; a zero gradient gives a zero step, never NaN."""
    return x + step_size * grad / tf.maximum(l2_norm(grad), NORM_FLOOR)


def project_l2(delta: tf.Tensor, eps) -> tf.Tensor:
    """Scales each delta into the L2 ball of radius eps (eps = inf leaves it unchanged)."""
    norm = tf.maximum(l2_norm(delta), NORM_FLOOR)
    return delta * tf.minimum(1.0, eps / norm)


UNIT_BOUNDS = (0.0, 1.0)


def clip01(x: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(x, 0.0, 1.0)


def clip_to(x: tf.Tensor, bounds=UNIT_BOUNDS) -> tf.Tensor:
    """x clipped to the input domain ``bounds`` = (low, high)."""
    return tf.clip_by_value(x, bounds[0], bounds[1])


def random_l2_start(x: tf.Tensor, eps, seed) -> tf.Tensor:
    """A point drawn uniformly from the L2 ball of radius eps around x (the caller clips it
    to the input domain)."""
    d = int(np.prod(x.shape[1:]))
    direction = tf.random.stateless_normal(tf.shape(x), seed=seed)
    direction /= tf.maximum(l2_norm(direction), NORM_FLOOR)
    u = tf.random.stateless_uniform(tf.concat([tf.shape(x)[:1], [1, 1, 1]], 0),
                                    seed=seed + 1)
    return x + direction * eps * u ** (1.0 / d)


def sign_step(x: tf.Tensor, grad: tf.Tensor, step_size) -> tf.Tensor:
    """x + a * sign(g): the steepest ascent step under L-infinity."""
    return x + step_size * tf.sign(grad)


def project_linf(delta: tf.Tensor, eps) -> tf.Tensor:
    """Clips each delta into the L-infinity ball (the box) of radius eps."""
    return tf.clip_by_value(delta, -eps, eps)


def random_linf_start(x: tf.Tensor, eps, seed) -> tf.Tensor:
    """A point drawn uniformly from the box of radius eps around x (the caller clips it)."""
    noise = tf.random.stateless_uniform(tf.shape(x), seed=seed, minval=-1.0, maxval=1.0)
    return x + eps * noise


@dataclasses.dataclass(frozen=True)
class Norm:
    """The geometry of an attack: its steepest-ascent step, its projection onto the ball and
    a random point of the ball; everything else of the loop is shared."""
    name: str
    step: Callable
    project: Callable
    random_start: Callable


NORMS = {"2": Norm("2", normalized_step, project_l2, random_l2_start),
         "inf": Norm("inf", sign_step, project_linf, random_linf_start)}


def norm_of(norm) -> Norm:
    """A ``Norm`` from its name: 2 or "2" (L2), "inf" or np.inf (L-infinity)."""
    if isinstance(norm, Norm):
        return norm
    name = "inf" if norm in ("inf", "linf", np.inf) else "2" if norm in (2, "2", "l2") else None
    if name is None:
        raise ValueError(f"norm must be 2 or 'inf'; got {norm!r}")
    return NORMS[name]


STEP_SCHEDULES = ("constant", "linear")


def step_at(step_size, i, steps, schedule: str = "constant"):
    """The length of step ``i`` (0-based) of ``steps``: ``step_size`` throughout, or falling
    linearly from ``step_size`` to ``step_size / steps`` (the loop's last steps refine instead
    of jumping about the optimum)."""
    if schedule == "constant":
        return step_size
    return step_size * (1.0 - tf.cast(i, tf.float32) / tf.cast(steps, tf.float32))
