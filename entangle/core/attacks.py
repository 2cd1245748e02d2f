"""Attacks: Madry's projected gradient descent under L2 or L-infinity, FGM and FGSM, the
multi-model targeted attack, and the generic runner they (and robustification) share.

Built from small pieces (an ``objectives.Objective``, a ``Norm``'s step, projection and random
start, clip to the input bounds) that compose into one ``tf.function`` per model and configuration: the
loop runs in the graph (optionally under XLA), and the traced function is reused across
batches and calls. L-infinity is another step (the gradient's sign) and projection (a box),
not another loop. Images and budgets are in the scale of ``bounds``, [0, 1] pixels unless
given (uint8 images are mapped onto it); a ``preprocess`` function sits between the attacked
image and the model; models run in inference mode.

Mixed precision: the input gradient is taken in two parts. The objective's gradient with
respect to the model outputs is computed in float32 and rescaled per example to unit norm,
then back-propagated through the (possibly float16) network. Each step is normalised per
example anyway, so the scale changes no direction, but it keeps a confidently classified
input's gradient (softmax tails of 1e-9) from underflowing to zero in float16.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from entangle import data
from entangle.core.norms import (NORM_FLOOR, NORMS, STEP_SCHEDULES, UNIT_BOUNDS, Norm, clip_to,
                                 norm_of, step_at)
from entangle.core.objectives import (N_TARGETED_LOSSES, Objective, cross_entropy_objective,
                                      logits_fn, multi_margin_objective, multi_model_objective,
                                      with_preprocessing)
from entangle.runtime import preempt, progress

Preprocess = Callable[[tf.Tensor], tf.Tensor]

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
    """One tf.function running the whole loop: (x, labels, x_start, eps, steps, step, seed)."""
    geometry = norm_of(norm)
    bounds = check_bounds(bounds)

    def attack(x, labels, x_start, eps, steps, step_size, seed):
        if random_start:
            x_start = clip_to(geometry.random_start(x, eps, seed), bounds)
        return pgd_loop(objective, x, labels, x_start, eps, steps, step_size, schedule,
                        keep_best, geometry, bounds)

    return tf.function(attack, jit_compile=jit_compile, reduce_retracing=True)


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


def _check_budget(eps, steps, step_size, random_start):
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


def _check_images(x, name: str = "x", bounds=UNIT_BOUNDS) -> np.ndarray:
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


def _check_labels(y, name: str, n: int, num_classes: int) -> np.ndarray:
    """Class indices of shape (n,), from (n,), (n, 1) or one-hot (n, classes) labels."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape == (n, 1):
        y = y[:, 0]
    elif y.ndim == 2 and y.shape == (n, num_classes) and num_classes > 1:
        if not (np.isin(y, (0, 1)).all() and (y.sum(1) == 1).all()):
            raise ValueError(f"{name} of shape {y.shape} must be one-hot rows (one 1 each)")
        y = y.argmax(1)
    if y.ndim != 1 or y.shape != (n,):
        raise ValueError(f"{name} must be {n} class indices, shape ({n},) or ({n}, 1), or "
                         f"one-hot of shape ({n}, {num_classes}); got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer class indices; got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}); got values in "
                         f"[{y.min()}, {y.max()}]")
    return y.astype(np.int32, copy=False)


def _num_classes(model: keras.Model) -> int:
    return int(model.output_shape[-1])


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
        got = strategy.run(fn, args=(*(shard(a) for a in parts), eps, steps, step_size,
                                     seeds))
        return np.concatenate([t.numpy() for t in
                               strategy.experimental_local_results(got)])[:n]
    return run


def run_attack(attack: Objective | Callable, x, labels, *, eps: float = float("inf"),
               steps: int, step_size: float, x0=None, random_start: bool = False,
               batch_size: int = 256, seed: int = 0, jit_compile: bool = False,
               verbose="auto", out: np.ndarray | None = None, strategy=None,
               norm="2", bounds=UNIT_BOUNDS) -> np.ndarray:
    """The generic attack runner: steepest ascent on any objective, batched.

    ``attack`` is an ``Objective`` (compiled here, once per call, for ``norm`` and ``bounds``)
    or a function from ``compile_attack`` (compiled with the same ``bounds``). ``x`` (float in
    ``bounds``, or uint8) is the centre of the ball of radius ``eps`` (``inf``: no bound); the
    loop starts from ``x0`` (default ``x``, or a random point of the ball). ``labels`` has one
    entry per image along axis 0: class indices, per-example float targets (feature
    matching), or (batch, num_models) targets. Results go to ``out`` (any writable array,
    e.g. a float16 memmap) or a new float32 array.
    """
    _check_budget(eps, steps, step_size, random_start)
    x = _check_images(x, "x", bounds)
    if x0 is not None:
        x0 = _check_images(x0, "x0", bounds)
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
            out[sl] = fn(xb, tf.constant(labels[sl]), start, eps_t, steps_t, step_t,
                         seed_b).numpy()
        bar.update(sl.stop, finalize=sl.stop == n)
        if sl.stop < n:
            preempt.check("in an attack (the current chunk will be redone)")
    return out


def pgd(model: keras.Model, x, y, *, eps: float, steps: int, step_size: float,
        norm="2", targeted: bool = False, random_start: bool = False, batch_size: int = 256,
        seed: int = 0, jit_compile: bool = False, verbose="auto",
        out: np.ndarray | None = None, strategy=None, bounds=UNIT_BOUNDS,
        preprocess: Preprocess | None = None) -> np.ndarray:
    """Madry's PGD under ``norm`` (2 or "inf"); returns the adversarial images (float32).

    Untargeted ascends CE(y); targeted (``y`` holds the targets) descends CE(y). Each step
    moves by ``step_size`` along the steepest-ascent direction of the norm (L2: the
    per-example normalised gradient; L-infinity: its sign), clips to ``bounds`` and projects
    the perturbation onto the ball of radius ``eps`` (``float('inf')``: none). Images and
    budgets are in the scale of ``bounds`` (default [0, 1], as ART's clip_values and foolbox's
    bounds); uint8 images are mapped onto it. The model sees ``preprocess(x)`` when given (a
    tf function or Keras layer, e.g. a normalisation; pass the same object again to reuse the
    compiled attack). Labels are class indices ((n,) or (n, 1)) or one-hot. A model ending in
    a softmax is attacked through its logits. ``strategy``: replicas that share each batch
    (``run_attack``).
    """
    geometry = norm_of(norm)
    bounds = check_bounds(bounds)
    _check_budget(eps, steps, step_size, random_start)
    x = _check_images(x, "x", bounds)
    y = _check_labels(y, "y", len(x), _num_classes(model))
    fn = cached_attack(
        [model], ("ce", bool(targeted), bool(random_start), bool(jit_compile), preprocess),
        lambda: with_preprocessing(cross_entropy_objective(model, targeted), preprocess),
        random_start, jit_compile, norm=geometry, bounds=bounds)
    return run_attack(fn, x, y, eps=eps, steps=steps, step_size=step_size,
                      random_start=random_start, batch_size=batch_size, seed=seed,
                      verbose=verbose, out=out, strategy=strategy, bounds=bounds)


def pgd_l2(model: keras.Model, x, y, **kwargs) -> np.ndarray:
    """``pgd`` under L2: the paper's attack throughout."""
    return pgd(model, x, y, norm="2", **kwargs)


def _classifier(model: keras.Model, preprocess: Preprocess | None) -> Callable:
    """x -> logits of ``model`` on ``preprocess(x)``: what the attacks' success is judged on."""
    forward = logits_fn(model)
    return forward if preprocess is None else (lambda t: forward(preprocess(t)))


@dataclasses.dataclass
class Sweep:
    """An attack at several radii: per eps the adversarial images and whether the attack
    succeeded on each image (untargeted: the prediction left y; targeted: it reached y)."""
    eps: list
    adversarial: dict       # eps -> images
    success: dict           # eps -> bool per image

    def success_rate(self) -> dict:
        return {e: float(np.mean(s)) for e, s in self.success.items()}


def sweep(model: keras.Model, x, y, epsilons: Sequence[float], *, steps: int,
          relative_step: float = 2.5, norm="2", targeted: bool = False,
          random_start: bool = False, batch_size: int = 256, seed: int = 0,
          jit_compile: bool = False, verbose="auto", bounds=UNIT_BOUNDS,
          preprocess: Preprocess | None = None) -> Sweep:
    """``pgd`` at each radius of ``epsilons`` with step size ``relative_step * eps / steps``
    (MadryLab robustness' default 2.5), and the success mask of each (foolbox's return)."""
    epsilons = [float(e) for e in np.atleast_1d(epsilons)]
    if not epsilons:
        raise ValueError("epsilons must hold at least one radius")
    x = _check_images(x, "x", bounds)
    y = _check_labels(y, "y", len(x), _num_classes(model))
    forward = _classifier(model, preprocess)
    adversarial, success = {}, {}
    for e in epsilons:
        adv = (x.astype(np.float32) if e == 0 else
               pgd(model, x, y, eps=e, steps=steps, step_size=relative_step * e / steps,
                   norm=norm, targeted=targeted, random_start=random_start,
                   batch_size=batch_size, seed=seed, jit_compile=jit_compile, verbose=verbose,
                   bounds=bounds, preprocess=preprocess))
        hit = _predict_classes(forward, adv, batch_size) == y
        adversarial[e], success[e] = adv, hit if targeted else ~hit
    return Sweep(epsilons, adversarial, success)


def pgd_l2_restarts(model: keras.Model, x, y, *, eps: float, steps: int, step_size: float,
                    restarts: int, batch_size: int = 256, seed: int = 0,
                    jit_compile: bool = False, verbose="auto", bounds=UNIT_BOUNDS,
                    preprocess: Preprocess | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Untargeted L2 PGD with random restarts: the first run starts at x, each further one
    from a random point of the ball, and attacks only the images still classified right.
    Returns (adversarial images, still right after every run): the per-image worst case, the
    robust accuracy a gradient-masked model cannot hide behind one start."""
    if not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1; got {restarts!r}")
    x = _check_images(x, "x", bounds)
    y = _check_labels(y, "y", len(x), _num_classes(model))
    forward = _classifier(model, preprocess)
    adv = x.astype(np.float32)
    right = np.ones(len(x), bool)
    for r in range(restarts):
        rows = np.flatnonzero(right)
        if not len(rows):
            break
        adv[rows] = pgd_l2(model, x[rows], y[rows], eps=eps, steps=steps, step_size=step_size,
                           random_start=r > 0, batch_size=batch_size, seed=seed + r,
                           jit_compile=jit_compile, verbose=verbose, bounds=bounds,
                           preprocess=preprocess)
        right[rows] = _predict_classes(forward, adv[rows], batch_size) == y[rows]
    return adv, right


def fgm_l2(model: keras.Model, x, y, *, eps: float, targeted: bool = False,
           batch_size: int = 256, jit_compile: bool = False, verbose="auto",
           bounds=UNIT_BOUNDS, preprocess: Preprocess | None = None) -> np.ndarray:
    """Fast gradient method, L2: one normalised gradient step of size eps, clipped to
    ``bounds``."""
    if eps == 0:
        return _check_images(x, "x", bounds).astype(np.float32)
    return pgd_l2(model, x, y, eps=eps, steps=1, step_size=eps, targeted=targeted,
                  batch_size=batch_size, jit_compile=jit_compile, verbose=verbose,
                  bounds=bounds, preprocess=preprocess)


def fgsm(model: keras.Model, x, y, *, eps: float, targeted: bool = False,
         batch_size: int = 256, jit_compile: bool = False, verbose="auto",
         bounds=UNIT_BOUNDS, preprocess: Preprocess | None = None) -> np.ndarray:
    """Fast gradient sign method: one L-infinity step of size eps, clipped to ``bounds``."""
    if eps == 0:
        return _check_images(x, "x", bounds).astype(np.float32)
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, norm="inf", targeted=targeted,
               batch_size=batch_size, jit_compile=jit_compile, verbose=verbose,
               bounds=bounds, preprocess=preprocess)


def multi_targeted_pgd_l2(models: Sequence[keras.Model], x, targets_per_model, *, eps: float,
                          steps: int, step_size: float, random_start: bool = False,
                          batch_size: int = 256, seed: int = 0, jit_compile: bool = False,
                          verbose="auto", loss: str = "ce", kappa: float = 0.0,
                          first_hit: bool = False):
    """The N-targeted attack of Waseda et al.: descend sum_i CE(model_i(x), t_i), or with
    ``loss="margin"`` the clipped margins of ``multi_margin_objective``.

    ``targets_per_model`` has shape (len(models), len(x)): model i is pushed towards t_i.
    With ``first_hit``, returns (images, first_hit) where first_hit[i, n] is the first step
    after which model i predicted its target on image n (-1: never): the loop is run one step
    at a time (PGD without momentum continues exactly from where it stopped).
    """
    if loss not in N_TARGETED_LOSSES:
        raise ValueError(f"loss must be one of {N_TARGETED_LOSSES}; got {loss!r}")
    if not (kappa >= 0 and math.isfinite(kappa)):
        raise ValueError(f"kappa must be a finite number >= 0; got {kappa!r}")
    models = list(models)
    if not models:
        raise ValueError("models must hold at least one model")
    _check_budget(eps, steps, step_size, random_start)
    x = _check_images(x)
    targets = np.asarray(targets_per_model)
    if targets.ndim != 2 or targets.shape[0] != len(models):
        raise ValueError(f"targets_per_model must have shape (num_models={len(models)}, "
                         f"num_images={len(x)}); got {targets.shape}")
    targets = np.stack([_check_labels(t, f"targets_per_model[{i}]", len(x), _num_classes(m))
                        for i, (t, m) in enumerate(zip(targets, models))], axis=1)
    make = (lambda: multi_model_objective(models)) if loss == "ce" else \
        (lambda: multi_margin_objective(models, kappa))
    fn = cached_attack(models, ("multi", loss, float(kappa), len(models), bool(random_start),
                                bool(jit_compile)), make, random_start, jit_compile)
    if not first_hit:
        return run_attack(fn, x, targets, eps=eps, steps=steps, step_size=step_size,
                          random_start=random_start, batch_size=batch_size, seed=seed,
                          verbose=verbose)
    if random_start:
        raise ValueError("first_hit runs the loop step by step: no random start")
    hit = np.full((len(models), len(x)), -1, np.int64)
    forwards = [logits_fn(m) for m in models]   # once: a softmax model builds a sub-model
    x_adv = x.astype(np.float32)
    for step in range(1, steps + 1):
        x_adv = run_attack(fn, x, targets, x0=x_adv, eps=eps, steps=1, step_size=step_size,
                           batch_size=batch_size, seed=seed, verbose=False)
        for i, forward in enumerate(forwards):
            now = _predict_classes(forward, x_adv, batch_size) == targets[:, i]
            hit[i][(hit[i] < 0) & now] = step
    return x_adv, hit


def _predict_classes(forward: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.argmax(forward(tf.constant(x[i:i + batch_size])).numpy(), 1)
                           for i in range(0, len(x), batch_size)])
