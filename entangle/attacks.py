"""L2 attacks: Madry's projected gradient descent, FGM, and the multi-model targeted attack.

Built from small pieces (objective, normalised step, L2 projection, clip to [0, 1]) that
compose into one ``tf.function`` per model and configuration: the whole step loop runs in
the graph (optionally under XLA), and the traced function is reused across batches and calls.
All budgets are L2 norms in the [0, 1] pixel scale; the model runs in inference mode.
"""

from __future__ import annotations

import math
import weakref
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from entangle import progress

_NORM_FLOOR = 1e-12

# ---------------------------------------------------------------------------- pieces


def cross_entropy_objective(model: keras.Model, targeted: bool) -> Callable:
    """Objective to *ascend*: CE(model(x), y) untargeted, -CE(model(x), t) targeted (summed)."""
    sign = -1.0 if targeted else 1.0

    def objective(x, labels):
        logits = tf.cast(model(x, training=False), tf.float32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        return sign * tf.reduce_sum(ce)

    return objective


def multi_model_objective(models: Sequence[keras.Model]) -> Callable:
    """Objective of the N-targeted attack (Waseda et al.): -sum_i CE(model_i(x), t_i).

    ``labels`` has shape (num_models, batch): one target per model and example.
    """
    def objective(x, labels):
        total = 0.0
        for i, model in enumerate(models):
            logits = tf.cast(model(x, training=False), tf.float32)
            total += tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels[i], logits=logits))
        return -total

    return objective


def l2_norm(v: tf.Tensor) -> tf.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``v`` (batch, 1, 1, 1)."""
    axes = list(range(1, len(v.shape)))
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True))


def normalized_step(x: tf.Tensor, grad: tf.Tensor, step_size) -> tf.Tensor:
    """x + a * g / ||g||_2 per example; a zero gradient gives a zero step, never NaN."""
    return x + step_size * grad / tf.maximum(l2_norm(grad), _NORM_FLOOR)


def project_l2(delta: tf.Tensor, eps) -> tf.Tensor:
    """Scales each delta into the L2 ball of radius eps (eps = inf leaves it unchanged)."""
    norm = tf.maximum(l2_norm(delta), _NORM_FLOOR)
    return delta * tf.minimum(1.0, eps / norm)


def clip01(x: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(x, 0.0, 1.0)


def random_l2_start(x: tf.Tensor, eps, seed) -> tf.Tensor:
    """A point drawn uniformly from the L2 ball of radius eps around x, clipped to [0, 1]."""
    d = int(np.prod(x.shape[1:]))
    direction = tf.random.stateless_normal(tf.shape(x), seed=seed)
    direction /= tf.maximum(l2_norm(direction), _NORM_FLOOR)
    u = tf.random.stateless_uniform(tf.concat([tf.shape(x)[:1], [1, 1, 1]], 0),
                                    seed=seed + 1)
    return clip01(x + direction * eps * u ** (1.0 / d))


def pgd_loop(objective: Callable, x, labels, x_start, eps, steps, step_size):
    """``steps`` of: ascend the objective by a normalised step, clip, project onto the ball."""
    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            value = objective(x_adv, labels)
        grad = tape.gradient(value, x_adv)
        x_new = clip01(normalized_step(x_adv, grad, step_size))
        return i + 1, x + project_l2(x_new - x, eps)

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x_start),
                             maximum_iterations=steps)
    return x_adv


# ---------------------------------------------------------------------------- compiled attacks

_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled_attack(key_obj, config: tuple, objective: Callable, random_start: bool,
                     jit_compile: bool):
    """One traced tf.function per (model, configuration), cached for the model's lifetime."""
    per_model = _COMPILED.setdefault(key_obj, {})
    if config in per_model:
        return per_model[config]

    def attack(x, labels, eps, steps, step_size, seed):
        x_start = random_l2_start(x, eps, seed) if random_start else x
        return pgd_loop(objective, x, labels, x_start, eps, steps, step_size)

    fn = tf.function(attack, jit_compile=jit_compile, reduce_retracing=True)
    per_model[config] = fn
    return fn


def _check_budget(eps, steps, step_size, random_start):
    if not isinstance(eps, (int, float, np.floating, np.integer)) or math.isnan(eps) or eps < 0:
        raise ValueError(f"eps must be a number >= 0 (float('inf') for no projection); got {eps!r}")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    if (not isinstance(step_size, (int, float, np.floating, np.integer))
            or not math.isfinite(step_size) or step_size <= 0):
        raise ValueError(f"step_size must be a finite number > 0; got {step_size!r}")
    if random_start and not math.isfinite(eps):
        raise ValueError("random_start needs a finite eps (a ball to sample from); got eps=inf")


def _check_images(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"x must be a floating-point array in [0, 1] (convert uint8 images "
                         f"with entangle.data.to_float); got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"x must have rank 4 (batch, height, width, channels); got shape "
                         f"{x.shape}")
    if x.size and (np.nanmin(x) < 0.0 or np.nanmax(x) > 1.0 or np.isnan(x).any()):
        raise ValueError(f"x must lie in [0, 1]; got values in [{x.min()}, {x.max()}]")
    return x.astype(np.float32, copy=False)


def _check_labels(y, name: str, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer class indices; got dtype {y.dtype}")
    if y.shape[-1:] != (n,):
        raise ValueError(f"{name} must have one label per image ({n}); got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}); got values in "
                         f"[{y.min()}, {y.max()}]")
    return y.astype(np.int32, copy=False)


def _num_classes(model: keras.Model) -> int:
    return int(model.output_shape[-1])


def _run_batched(fn, x: np.ndarray, labels: np.ndarray, label_axis: int, *, eps, steps,
                 step_size, batch_size: int, seed: int, verbose) -> np.ndarray:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    n = len(x)
    out = np.empty_like(x)
    if n == 0:
        return out
    num_batches = -(-n // batch_size)
    show = (num_batches > 1 and steps * n >= 20_000) if verbose == "auto" else bool(verbose)
    bar = progress.progbar(n, enabled=show, unit_name="image")
    eps_t = tf.constant(eps, tf.float32)
    step_t = tf.constant(step_size, tf.float32)
    steps_t = tf.constant(steps, tf.int32)
    for b in range(num_batches):
        sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
        lab = labels[sl] if label_axis == 0 else labels[:, sl]
        out[sl] = fn(tf.constant(x[sl]), tf.constant(lab), eps_t, steps_t, step_t,
                     tf.constant([seed, b], tf.int32)).numpy()
        bar.update(sl.stop, finalize=sl.stop == n)
    return out


def pgd_l2(model: keras.Model, x, y, *, eps: float, steps: int, step_size: float,
           targeted: bool = False, random_start: bool = False, batch_size: int = 256,
           seed: int = 0, jit_compile: bool = False, verbose="auto") -> np.ndarray:
    """Madry's L2 PGD on [0, 1] images; returns the adversarial images (float32 numpy).

    Untargeted ascends CE(y); targeted (``y`` holds the targets) descends CE(y). Each step
    moves by ``step_size`` along the per-example L2-normalised gradient, clips to [0, 1] and
    projects the perturbation onto the L2 ball of radius ``eps`` (``float('inf')``: none).
    """
    _check_budget(eps, steps, step_size, random_start)
    x = _check_images(x)
    y = _check_labels(y, "y", len(x), _num_classes(model))
    objective = cross_entropy_objective(model, targeted)
    fn = _compiled_attack(model, ("ce", bool(targeted), bool(random_start), bool(jit_compile)),
                          objective, random_start, jit_compile)
    return _run_batched(fn, x, y, 0, eps=eps, steps=steps, step_size=step_size,
                        batch_size=batch_size, seed=seed, verbose=verbose)


def fgm_l2(model: keras.Model, x, y, *, eps: float, targeted: bool = False,
           batch_size: int = 256, jit_compile: bool = False, verbose="auto") -> np.ndarray:
    """Fast gradient method, L2: one normalised gradient step of size eps, clipped to [0, 1]."""
    if eps == 0:
        return _check_images(x).copy()
    return pgd_l2(model, x, y, eps=eps, steps=1, step_size=eps, targeted=targeted,
                  batch_size=batch_size, jit_compile=jit_compile, verbose=verbose)


def multi_targeted_pgd_l2(models: Sequence[keras.Model], x, targets_per_model, *, eps: float,
                          steps: int, step_size: float, random_start: bool = False,
                          batch_size: int = 256, seed: int = 0, jit_compile: bool = False,
                          verbose="auto") -> np.ndarray:
    """The N-targeted attack of Waseda et al.: descend sum_i CE(model_i(x), t_i).

    ``targets_per_model`` has shape (len(models), len(x)): model i is pushed towards t_i.
    """
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
                        for i, (t, m) in enumerate(zip(targets, models))])
    objective = multi_model_objective(models)
    fn = _compiled_attack(models[0], ("multi", tuple(id(m) for m in models),
                                      bool(random_start), bool(jit_compile)),
                          objective, random_start, jit_compile)
    return _run_batched(fn, x, targets, 1, eps=eps, steps=steps, step_size=step_size,
                        batch_size=batch_size, seed=seed, verbose=verbose)
