"""Attacks: Madry's projected gradient descent under L2 or L-infinity, FGM and FGSM, PGD with
restarts, sweeps over radii with success masks, and the multi-model targeted attack.

Each is an ``objectives.Objective`` run by the shared loop (``loop.run_attack``: a ``Norm``'s
step, projection and random start, clip to the input bounds, one ``tf.function`` per model and
configuration). L-infinity is another step (the gradient's sign) and projection (a box), not
another loop. Images and budgets are in the scale of ``bounds``, [0, 1] pixels unless given
(uint8 images are mapped onto it); a ``preprocess`` function sits between the attacked image
and the model; models run in inference mode.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from entangle.core import stand_ins
from entangle.core.loop import cached_attack, check_bounds, check_budget, check_images, run_attack
from entangle.core.norms import UNIT_BOUNDS, norm_of
from entangle.core.objectives import (N_TARGETED_LOSSES, cross_entropy_objective, logits_fn,
                                      multi_margin_objective, multi_model_objective,
                                      with_preprocessing)

Preprocess = Callable[[tf.Tensor], tf.Tensor]


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
    (``run_attack``). On Ampere and newer GPUs TensorFlow computes float32 convolutions in TF32
    unless told not to, which rounds a small perturbation away: for small eps call
    ``entangle.runtime.distribution.configure_tf32(False)`` first (the binaries do).
    """
    geometry = norm_of(norm)
    bounds = check_bounds(bounds)
    check_budget(eps, steps, step_size, random_start)
    x = check_images(x, "x", bounds)
    twin = stand_ins.stand_in(model)
    y = _check_labels(y, "y", len(x), _num_classes(twin))
    fn = cached_attack(
        [twin], ("ce", bool(targeted), bool(random_start), bool(jit_compile), preprocess),
        lambda: with_preprocessing(cross_entropy_objective(twin, targeted), preprocess),
        random_start, jit_compile, norm=geometry, bounds=bounds)
    return run_attack(fn, x, y, eps=eps, steps=steps, step_size=step_size,
                      random_start=random_start, batch_size=batch_size, seed=seed,
                      verbose=verbose, out=out, strategy=strategy, bounds=bounds, owner=model)


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
    x = check_images(x, "x", bounds)
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
    x = check_images(x, "x", bounds)
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
        return check_images(x, "x", bounds).astype(np.float32)
    return pgd_l2(model, x, y, eps=eps, steps=1, step_size=eps, targeted=targeted,
                  batch_size=batch_size, jit_compile=jit_compile, verbose=verbose,
                  bounds=bounds, preprocess=preprocess)


def fgsm(model: keras.Model, x, y, *, eps: float, targeted: bool = False,
         batch_size: int = 256, jit_compile: bool = False, verbose="auto",
         bounds=UNIT_BOUNDS, preprocess: Preprocess | None = None) -> np.ndarray:
    """Fast gradient sign method: one L-infinity step of size eps, clipped to ``bounds``."""
    if eps == 0:
        return check_images(x, "x", bounds).astype(np.float32)
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
    check_budget(eps, steps, step_size, random_start)
    x = check_images(x)
    targets = np.asarray(targets_per_model)
    if targets.ndim != 2 or targets.shape[0] != len(models):
        raise ValueError(f"targets_per_model must have shape (num_models={len(models)}, "
                         f"num_images={len(x)}); got {targets.shape}")
    targets = np.stack([_check_labels(t, f"targets_per_model[{i}]", len(x), _num_classes(m))
                        for i, (t, m) in enumerate(zip(targets, models))], axis=1)
    owner = models[0]
    models = [stand_ins.stand_in(m, slot) for slot, m in enumerate(models)]
    make = (lambda: multi_model_objective(models)) if loss == "ce" else \
        (lambda: multi_margin_objective(models, kappa))
    fn = cached_attack(models, ("multi", loss, float(kappa), len(models), bool(random_start),
                                bool(jit_compile)), make, random_start, jit_compile)
    if not first_hit:
        return run_attack(fn, x, targets, eps=eps, steps=steps, step_size=step_size,
                          random_start=random_start, batch_size=batch_size, seed=seed,
                          verbose=verbose, owner=owner)
    if random_start:
        raise ValueError("first_hit runs the loop step by step: no random start")
    hit = np.full((len(models), len(x)), -1, np.int64)
    forwards = [logits_fn(m) for m in models]   # once: a softmax model builds a sub-model
    x_adv = x.astype(np.float32)
    for step in range(1, steps + 1):
        x_adv = run_attack(fn, x, targets, x0=x_adv, eps=eps, steps=1, step_size=step_size,
                           batch_size=batch_size, seed=seed, verbose=False, owner=owner)
        for i, forward in enumerate(forwards):
            now = _predict_classes(forward, x_adv, batch_size) == targets[:, i]
            hit[i][(hit[i] < 0) & now] = step
    return x_adv, hit


def _predict_classes(forward: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.argmax(forward(tf.constant(x[i:i + batch_size])).numpy(), 1)
                           for i in range(0, len(x), batch_size)])
