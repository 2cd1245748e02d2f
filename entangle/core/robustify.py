"""Representation inversion: robustified datasets (Ilyas et al. 2019; Springer et al. 2021, 3.3).

For each (x, y), start from x0, another image of the same split drawn independently of y (a
seeded derangement: no image seeds itself), and minimise ||rep(x_r) - rep(x)||_2 by
normalised gradient descent with no norm bound (Table 4: CIFAR 400 steps of 0.05, ImageNet-9
200 of 0.1), clipping to [0, 1]; x_r is labelled y. With rep from an eps-robust model, x_r
carries the robust features of x and little else: R_eps. It is the attack loop of
``entangle.core.loop`` with another objective (``objectives.feature_matching_objective``),
not a copy.

Each image also gets its relative distance ||rep(x_r) - rep(x)|| / ||rep(x0) - rep(x)||, so
users can see convergence (tables report the median).
"""

from __future__ import annotations

import dataclasses
import math
import weakref

import keras
import numpy as np
import tensorflow as tf

from entangle.core import loop, models, norms, objectives, stand_ins

# Bump when a change here alters the robustified images built from the same configuration.
VERSION = 1


@dataclasses.dataclass(frozen=True)
class RobustifyConfig:
    """Table 4: CIFAR 400 steps of 0.05, ImageNet-9 200 of 0.1, no bound on the change."""

    steps: int = 400
    step_size: float = 0.05
    eps: float = float("inf")       # max L2 change from the seed image
    seed: int = 0                   # of the seed-image derangement
    layer: str = models.REPRESENTATION_LAYER
    # Step lengths (norms.STEP_SCHEDULES: constant, or falling linearly to step_size /
    # steps) and whether each image keeps its closest iterate rather than its last.
    schedule: str = "constant"
    keep_best: bool = False

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"robustify steps must be >= 1; got {self.steps}")
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"robustify step_size must be a finite number > 0; got "
                             f"{self.step_size}")
        if not self.eps > 0:
            raise ValueError(f"robustify eps must be > 0 (inf: unbounded); got {self.eps}")
        if self.schedule not in norms.STEP_SCHEDULES:
            raise ValueError(f"robustify schedule must be one of {norms.STEP_SCHEDULES}; "
                             f"got {self.schedule!r}")

    def key_fields(self) -> dict:
        fields = dataclasses.asdict(self)
        if self.schedule == "constant" and not self.keep_best:  # keys of the paper's loop stay
            del fields["schedule"], fields["keep_best"]
        return {**fields, "version": VERSION}


@dataclasses.dataclass
class Robustified:
    x: np.ndarray                   # robustified images, float
    seeds: np.ndarray | None        # index of each image's seed x0 in the split, if known
    relative_distance: np.ndarray   # ||rep(x_r) - rep(x)|| / ||rep(x0) - rep(x)||


def seed_indices(n: int, seed: int = 0) -> np.ndarray:
    """A seeded derangement of range(n): image i starts from image seeds[i] != i.

    Drawn without looking at labels, so a seed is of the same class only by chance.
    """
    if n < 2:
        raise ValueError(f"robustification needs at least 2 images to draw seeds from; got {n}")
    perm = np.random.default_rng([seed, 4242]).permutation(n)
    for i in np.flatnonzero(perm == np.arange(n)):
        if perm[i] == i:  # swap with the next position: neither becomes a fixed point
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return perm


_REPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _representation(model: keras.Model, layer) -> keras.Model:
    """``models.representation_model``, built once per (model, layer) so that its compiled
    attack is reused across chunks; held weakly by the model."""
    per_model = _REPS.setdefault(model, {})
    if layer not in per_model:
        per_model[layer] = models.representation_model(model, layer)
    return per_model[layer]


def representations(rep_model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """rep(x) as float32 (n, d), batched, inference mode, on float or uint8 images."""
    from entangle import data

    out = [tf.reshape(tf.cast(rep_model(tf.constant(data.to_float(x[i:i + batch_size])),
                                        training=False), tf.float32),
                      [min(batch_size, len(x) - i), -1]).numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def robustify(model: keras.Model, x: np.ndarray, x0: np.ndarray, cfg: RobustifyConfig, *,
              batch_size: int = 256, jit_compile: bool = False, verbose="auto",
              strategy=None) -> Robustified:
    """Robustifies images ``x`` (float [0, 1] or uint8) from seeds ``x0`` w.r.t. ``model``.

    ``model`` is a classifier whose ``cfg.layer`` gives rep(x) (or a representation model
    itself, with ``layer`` naming its output layer). Returns float32 images.
    """
    from entangle import data

    rep = _representation(stand_ins.stand_in(model), cfg.layer)
    xf, x0f = data.to_float(x), data.to_float(x0)
    if xf.shape != x0f.shape:
        raise ValueError(f"x0 must have the shape of x {xf.shape}; got {x0f.shape}")
    target = representations(rep, xf, batch_size)
    fn = loop.cached_attack([rep], ("features", bool(jit_compile)),
                               lambda: objectives.feature_matching_objective(rep), False,
                               jit_compile, cfg.schedule, cfg.keep_best)
    out = loop.run_attack(fn, x0f, target, eps=cfg.eps, steps=cfg.steps,
                             step_size=cfg.step_size, batch_size=batch_size, verbose=verbose,
                             strategy=strategy, owner=model)
    start = np.linalg.norm(representations(rep, x0f, batch_size) - target, axis=1)
    end = np.linalg.norm(representations(rep, out, batch_size) - target, axis=1)
    return Robustified(out, None, end / np.maximum(start, 1e-12))


def robustify_split(model: keras.Model, x: np.ndarray, cfg: RobustifyConfig, *,
                    batch_size: int = 256, jit_compile: bool = False,
                    verbose="auto") -> Robustified:
    """Robustifies a whole split, each image seeded by another (``seed_indices``)."""
    seeds = seed_indices(len(x), cfg.seed)
    result = robustify(model, x, x[seeds], cfg, batch_size=batch_size,
                       jit_compile=jit_compile, verbose=verbose)
    result.seeds = seeds
    return result
