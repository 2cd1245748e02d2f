"""Zero-robust and negative-robust training sets (Springer et al. 2021, section 3.2, A.2).

Both relabel targeted adversarial examples of a *standard* model with their target class:

* zero-robust: CIFAR-10 makes one example per image and class (``targets="all"``, ten times
  the data); ImageNet-9 one example per image with a uniformly random target
  (``targets="random"``). The label carries no robust information about the image.
* negative-robust: one example per image, target y + 1 mod C: the robust features now point
  at the wrong class, consistently.

No augmentation when training on them (Table 3). Images are kept as float16 in [0, 1]: the
perturbations (L2 0.5 over 3,072 pixels, about 2 grey levels each) would not survive uint8.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from entangle import attacks
from entangle.data import Dataset

KINDS = ("zero_robust", "neg_robust")
TARGET_MODES = ("all", "random")


@dataclasses.dataclass(frozen=True)
class ConstructConfig:
    """Table 4: max L2 change 0.5, 200 steps of 0.1 for both constructed datasets."""

    eps: float = 0.5
    steps: int = 200
    step_size: float = 0.1
    targets: str = "all"          # zero-robust only: "all" (CIFAR) or "random" (ImageNet-9)
    seed: int = 0

    def __post_init__(self):
        if self.targets not in TARGET_MODES:
            raise ValueError(f"targets must be one of {TARGET_MODES}; got {self.targets!r}")


def construct_targets(kind: str, y: np.ndarray, num_classes: int, cfg: ConstructConfig):
    """(source indices, target labels) of the constructed dataset, in order."""
    n = len(y)
    if kind == "neg_robust":
        return np.arange(n), (y + 1) % num_classes
    if kind != "zero_robust":
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    if cfg.targets == "all":
        return np.tile(np.arange(n), num_classes), np.repeat(np.arange(num_classes), n)
    rng = np.random.default_rng([cfg.seed, 17])
    return np.arange(n), rng.integers(0, num_classes, n)


def construct_dataset(kind: str, source: keras.Model, ds: Dataset, cfg: ConstructConfig,
                      *, batch_size: int = 256, jit_compile: bool = False,
                      verbose="auto") -> Dataset:
    """Targeted PGD on ``source`` (a standard model) for every (image, target) pair."""
    index, targets = construct_targets(kind, ds.y, ds.num_classes, cfg)
    x = ds.float_images()
    out = np.empty((len(index),) + ds.image_shape, np.float16)
    chunk = max(batch_size, 4096)
    for start in range(0, len(index), chunk):
        sl = slice(start, start + chunk)
        out[sl] = attacks.pgd_l2(source, x[index[sl]], targets[sl], eps=cfg.eps, steps=cfg.steps,
                                 step_size=cfg.step_size, targeted=True, batch_size=batch_size,
                                 jit_compile=jit_compile, verbose=verbose)
    return Dataset(out, targets.astype(np.int64), ds.class_names, f"{ds.name}:{kind}")
