"""The attack loop every attack and robustification share: the input gradient of an
``objectives.Objective``, steepest ascent under a ``Norm`` with clipping to the input bounds
and projection onto the ball, compiled into one ``tf.function`` per model and configuration
(the loop runs in the graph, optionally under XLA; traced functions are reused across batches
and calls), and the batched runner ``run_attack`` over one device or a host's replicas.

Mixed precision: the input gradient is taken in two parts. The objective's gradient with
respect to the model outputs is computed in float32 and rescaled per example to unit norm,
then back-propagated through the (possibly float16) network. Each step is normalised per
example anyway, so the scale changes no direction, but it keeps a confidently classified
input's gradient (softmax tails of 1e-9) from underflowing to zero in float16.
"""

from __future__ import annotations

import math
import weakref
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from entangle import data
from entangle.core.norms import (NORM_FLOOR, NORMS, STEP_SCHEDULES, UNIT_BOUNDS, Norm, clip_to,
                                 norm_of, step_at)
from entangle.core import tracing
from entangle.core.objectives import Objective
from entangle.runtime import preempt, progress


def value_and_input_gradient(objective: Objective, x: tf.Tensor, labels
                             ) -> tuple[tf.Tensor, tf.Tensor]:
    """The objective per example at ``x``, and the gradient of their sum w.r.t. ``x`` up to a
    positive factor per example.

    The output gradient is rescaled per example to unit norm (one factor for all outputs of
    an example, so multi-output objectives keep their balance) before back-propagation.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), objective.forward(x))
    with tf.GradientTape() as head:
        head.watch(outputs)
        values = objective.loss(outputs, labels)
        value = tf.reduce_sum(values)
    grads = head.gradient(value, outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    flat = tf.nest.flatten(grads)
    sq = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), 1)
                   for g in flat])
    scale = 1.0 / tf.maximum(tf.sqrt(sq), NORM_FLOOR)
    grads = tf.nest.pack_sequence_as(grads, [
        g * tf.reshape(scale, tf.concat([[-1], tf.ones([tf.rank(g) - 1], tf.int32)], 0))
        for g in flat])
    return values, tape.gradient(outputs, x, output_gradients=grads)


def input_gradient(objective: Objective, x: tf.Tensor, labels) -> tf.Tensor:
    """The gradient of the summed objective w.r.t. ``x``, up to a positive factor per example
    (see ``value_and_input_gradient``)."""
    return value_and_input_gradient(objective, x, labels)[1]


def pgd_loop(objective: Objective, x, labels, x_start, eps, steps, step_size,
             schedule: str = "constant", keep_best: bool = False, norm: Norm = NORMS["2"],
             bounds=UNIT_BOUNDS):
    """``steps`` of: ascend the objective by ``norm``'s step (its length by ``schedule``),
    clip to ``bounds``, project onto the ball. ``keep_best`` returns, per example, the
    iterate with the highest objective seen (the last one included) instead of the last."""
    if schedule not in STEP_SCHEDULES:
        raise ValueError(f"schedule must be one of {STEP_SCHEDULES}; got {schedule!r}")

    def body(i, x_adv, best_x, best_v):
        value, grad = value_and_input_gradient(objective, x_adv, labels)
        if keep_best:
            better = value > best_v
            best_x = tf.where(better[:, None, None, None], x_adv, best_x)
            best_v = tf.maximum(value, best_v)
        grad = tf.cast(grad, x_adv.dtype)
        x_new = clip_to(norm.step(x_adv, grad, step_at(step_size, i, steps, schedule)), bounds)
        return i + 1, x + norm.project(x_new - x, eps), best_x, best_v

    lowest = tf.fill(tf.shape(x)[:1], tf.constant(-np.inf, tf.float32))
    _, x_adv, best_x, best_v = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), x_start, x_start, lowest),
        maximum_iterations=steps)
    if not keep_best:
        return x_adv
    last = objective.loss(tf.nest.map_structure(lambda t: tf.cast(t, tf.float32),
                                                objective.forward(x_adv)), labels)
    return tf.where((last >= best_v)[:, None, None, None], x_adv, best_x)


# ---------------------------------------------------------------------------- compiled attacks

_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compile_attack(objective: Objective, *, random_start: bool = False,
                   jit_compile: bool = False, schedule: str = "constant",
                   keep_best: bool = False, norm="2", bounds=UNIT_BOUNDS) -> Callable:
    """The whole loop as one traced function (``tracing.Traced``): (x, labels, x_start, eps,
    steps, step, seed)."""
    geometry = norm_of(norm)
    bounds = check_bounds(bounds)

    def attack(x, labels, x_start, eps, steps, step_size, seed):
        if random_start:
            x_start = clip_to(geometry.random_start(x, eps, seed), bounds)
        return pgd_loop(objective, x, labels, x_start, eps, steps, step_size, schedule,
                        keep_best, geometry, bounds)

    return tracing.Traced(attack, jit_compile=jit_compile)


def cached_attack(owners: Sequence[keras.Model], config: tuple, make_objective: Callable,
                  random_start: bool, jit_compile: bool, schedule: str = "constant",
                  keep_best: bool = False, norm="2", bounds=UNIT_BOUNDS) -> Callable:
    """A compiled attack cached on ``owners[0]`` for as long as every owner lives.

    The cache holds models only weakly (objectives close over weak references), so
    ``del model; gc.collect()`` frees a model that was attacked.
    """
    per_model = _COMPILED.setdefault(owners[0], {})
    bounds = check_bounds(bounds)
    config = (*config, schedule, bool(keep_best), norm_of(norm).name, bounds)
    entry = per_model.get(config)
    if entry is not None and all(r() is m for r, m in zip(entry[0], owners)):
        return entry[1]
    fn = compile_attack(make_objective(), random_start=random_start, jit_compile=jit_compile,
                        schedule=schedule, keep_best=keep_best, norm=norm, bounds=bounds)
    per_model[config] = (tuple(weakref.ref(m) for m in owners), fn)
    return fn


def check_budget(eps, steps, step_size, random_start):
    """A radius (inf allowed), a step count and a step size an attack can run with."""
    if not isinstance(eps, (int, float, np.floating, np.integer)) or math.isnan(eps) or eps < 0:
        raise ValueError(f"eps must be a number >= 0 (float('inf') for no projection; "
                         f"attacks.sweep takes several radii); got {eps!r}")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if (not isinstance(step_size, (int, float, np.floating, np.integer))
            or not math.isfinite(step_size) or step_size <= 0):
        raise ValueError(f"step_size must be a finite number > 0; got {step_size!r}")
    if random_start and not math.isfinite(eps):
        raise ValueError("random_start needs a finite eps (a ball to sample from); got eps=inf")


def check_bounds(bounds) -> tuple[float, float]:
    """``bounds`` as (low, high) floats, finite with low < high: the attack's input domain."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high) of numbers; got {bounds!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"bounds must be finite with low < high; got {bounds!r}")
    return low, high


def check_images(x, name: str = "x", bounds=UNIT_BOUNDS) -> np.ndarray:
    """Images inside ``bounds``: uint8 pixels are mapped onto them (``data.to_float``, the
    library's one dtype rule); floats are kept as they are (a float16 memmap is read batch by
    batch, never copied whole)."""
    low, high = check_bounds(bounds)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        try:
            x = data.to_float(x, (low, high))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    if x.ndim != 4:
        raise ValueError(f"{name} must have rank 4 (batch, height, width, channels); got shape "
                         f"{x.shape}")
    if x.size and (np.isnan(x).any() or x.min() < low or x.max() > high):
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}] (bounds); got values in "
                         f"[{np.nanmin(x)}, {np.nanmax(x)}]")
    return x


def _local_replicas(strategy) -> int:
    """This host's replicas of ``strategy`` (the default strategy: one)."""
    try:
        return len(strategy.extended.worker_devices)
    except (RuntimeError, AttributeError, NotImplementedError):
        return 1


def _on_replicas(fn: Callable, strategy) -> Callable:
    """``fn`` (a compiled attack) on every replica of ``strategy``, each on its share of the
    batch (the last rows repeated to a multiple of the replicas, then dropped); returns the
    adversarial batch as numpy, in order. Attacks are per example, so the result is the
    single-device one; a random start draws from a seed of its replica's own."""
    replicas = _local_replicas(strategy)

    def run(xb, labels, start, eps, steps, step_size, seed):
        n = len(xb)
        per = -(-n // replicas)
        pad = per * replicas - n
        parts = [np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a
                 for a in (xb, labels, start)]

        def shard(a):
            return strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant(a[ctx.replica_id_in_sync_group * per:
                                          (ctx.replica_id_in_sync_group + 1) * per]))
        seeds = strategy.experimental_distribute_values_from_function(
            lambda ctx: seed + tf.constant([0, 1_000_003 * ctx.replica_id_in_sync_group],
                                           tf.int32))
        # one exact trace per shard shape: the shards' outputs are every replica's own
        got = strategy.run(getattr(fn, "exact", fn),
                           args=(*(shard(a) for a in parts), eps, steps, step_size, seeds))
        return np.concatenate([t.numpy() for t in
                               strategy.experimental_local_results(got)])[:n]
    return run


def run_attack(attack: Objective | Callable, x, labels, *, eps: float = float("inf"),
               steps: int, step_size: float, x0=None, random_start: bool = False,
               batch_size: int = 256, seed: int = 0, jit_compile: bool = False,
               verbose="auto", out: np.ndarray | None = None, strategy=None,
               norm="2", bounds=UNIT_BOUNDS, owner=None) -> np.ndarray:
    """The generic attack runner: steepest ascent on any objective, batched.

    ``attack`` is an ``Objective`` (compiled here, once per call, for ``norm`` and ``bounds``)
    or a function from ``compile_attack`` (compiled with the same ``bounds``). ``x`` (float in
    ``bounds``, or uint8) is the centre of the ball of radius ``eps`` (``inf``: no bound); the
    loop starts from ``x0`` (default ``x``, or a random point of the ball). ``labels`` has one
    entry per image along axis 0: class indices, per-example float targets (feature
    matching), or (batch, num_models) targets. Results go to ``out`` (any writable array,
    e.g. a float16 memmap) or a new float32 array. ``owner``: the model a compiled attack
    that several models share (``stand_ins``) runs for now, traced as its own (``tracing``).
    """
    check_budget(eps, steps, step_size, random_start)
    x = check_images(x, "x", bounds)
    if x0 is not None:
        x0 = check_images(x0, "x0", bounds)
        if x0.shape != x.shape:
            raise ValueError(f"x0 must have the shape of x {x.shape}; got {x0.shape}")
    labels = np.asarray(labels)
    if labels.shape[:1] != x.shape[:1]:
        raise ValueError(f"labels must have one entry per image ({len(x)}) along axis 0; got "
                         f"shape {labels.shape}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    fn = (compile_attack(attack, random_start=random_start, jit_compile=jit_compile, norm=norm,
                         bounds=bounds)
          if isinstance(attack, Objective) else attack)
    n = len(x)
    if out is None:
        out = np.empty(x.shape, np.float32)
    if n == 0:
        return out
    num_batches = -(-n // batch_size)
    show = (num_batches > 1 and steps * n >= 20_000) if verbose == "auto" else bool(verbose)
    bar = progress.progbar(n, enabled=show, unit_name="image")
    eps_t = tf.constant(eps, tf.float32)
    step_t = tf.constant(step_size, tf.float32)
    steps_t = tf.constant(steps, tf.int32)
    replicated = strategy is not None and _local_replicas(strategy) > 1
    run = _on_replicas(fn, strategy) if replicated else None
    for b in range(num_batches):
        sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
        seed_b = tf.constant([seed, b], tf.int32)
        if replicated:
            xb = np.asarray(x[sl], np.float32)
            out[sl] = run(xb, labels[sl], xb if x0 is None else np.asarray(x0[sl], np.float32),
                          eps_t, steps_t, step_t, seed_b)
        else:
            xb = tf.constant(x[sl], tf.float32)
            start = xb if x0 is None else tf.constant(x0[sl], tf.float32)
            args = (xb, tf.constant(labels[sl]), start, eps_t, steps_t, step_t, seed_b)
            out[sl] = (fn(*args, owner=owner) if isinstance(fn, tracing.Traced)
                       else fn(*args)).numpy()
        bar.update(sl.stop, finalize=sl.stop == n)
        if sl.stop < n:
            preempt.check("in an attack (the current chunk will be redone)")
    return out
