"""Zero-robust and negative-robust training sets (Springer et al. 2021, section 3.2, A.2).

Both relabel targeted adversarial examples of a *standard* model with their target class:

* zero-robust: CIFAR-10 makes one example per image and class (``targets="all"``, ten times
  the data); ImageNet-9 one example per image with a uniformly random target
  (``targets="random"``). The label carries no robust information about the image.
* negative-robust: one example per image, target y + 1 mod C: the robust features now point
  at the wrong class, consistently.

No augmentation when training on them (Table 3). Images are kept as float16 in [0, 1]: the
perturbations (L2 0.5 over 3,072 pixels, about 2 grey levels each) would not survive uint8.

Construction streams: chunks of images are converted to float, attacked and written to disk
one at a time (a kill loses at most one chunk), then assembled into one ``.npy`` file that
training reads memory-mapped. Host memory stays near one chunk beyond the uint8 source images,
whatever the size of the set (CIFAR's zero-robust set is 500,000 float16 images, 3 GB).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import keras
import numpy as np

from entangle.core import attacks
from entangle.data import Dataset
from entangle.runtime import atomic, progress

KINDS = ("zero_robust", "neg_robust")
TARGET_MODES = ("all", "random")
# The standard model the sets are built on: one trained for the purpose ("own"), or the
# generator of R_0 ("generator", whose non-robust features R_0 then also carries).
SOURCES = ("own", "generator")
# Bump when a change here alters the constructed set built from the same configuration.
VERSION = 2


@dataclasses.dataclass(frozen=True)
class ConstructConfig:
    """Table 4: max L2 change 0.5, 200 steps of 0.1 for both constructed datasets."""

    eps: float = 0.5
    steps: int = 200
    step_size: float = 0.1
    targets: str = "all"          # zero-robust only: "all" (CIFAR) or "random" (ImageNet-9)
    seed: int = 0
    source: str = "own"           # SOURCES

    def __post_init__(self):
        if self.targets not in TARGET_MODES:
            raise ValueError(f"targets must be one of {TARGET_MODES}; got {self.targets!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}; got {self.source!r}")

    @property
    def source_role(self) -> str:
        """The role (``train_config.role_seed``) of the standard model the sets are built on."""
        return "source" if self.source == "own" else "generator"

    def key_fields(self, kind: str) -> dict:
        """What determines the ``kind`` set: targets (and their seed) matter for zero-robust
        only, and the seed only for random targets."""
        fields = {"eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                  "version": VERSION}
        if kind == "zero_robust":
            fields["targets"] = self.targets
            if self.targets == "random":
                fields["seed"] = self.seed
        return fields


def construct_targets(kind: str, y: np.ndarray, num_classes: int, cfg: ConstructConfig):
    """(source indices, target labels) of the constructed dataset, in order."""
    n = len(y)
    if kind == "neg_robust":
        return np.arange(n), (np.asarray(y) + 1) % num_classes
    if kind != "zero_robust":
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    if cfg.targets == "all":
        return np.tile(np.arange(n), num_classes), np.repeat(np.arange(num_classes), n)
    rng = np.random.default_rng([cfg.seed, 17])
    return np.arange(n), rng.integers(0, num_classes, n)


def chunk_maker(source: keras.Model, ds: Dataset, index: np.ndarray, targets: np.ndarray,
                cfg: ConstructConfig, *, batch_size: int = 256, jit_compile: bool = False,
                strategy=None) -> Callable[[np.ndarray], dict]:
    """rows -> {"x": float16 targeted adversarial examples of ``ds.x[index[rows]]`` towards
    ``targets[rows]``}: one chunk of a constructed set, for ``atomic.build_chunks``;
    ``strategy``: replicas that share each batch."""
    def make(rows):
        x = ds.x[index[rows]]
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        adv = attacks.pgd_l2(source, x, targets[rows], eps=cfg.eps, steps=cfg.steps,
                             step_size=cfg.step_size, targeted=True, batch_size=batch_size,
                             jit_compile=jit_compile, verbose=False, strategy=strategy)
        return {"x": adv.astype(np.float16)}
    return make


def build_chunks(kind: str, source: keras.Model, ds: Dataset, cfg: ConstructConfig,
                 workdir: str, *, chunk_size: int = 1024, batch_size: int = 256,
                 jit_compile: bool = False, verbose: bool = True,
                 on_chunk: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Attacks ``ds`` chunk by chunk into ``workdir`` (float16, ``atomic.build_chunks``:
    resumable). Returns (source indices, targets) of the whole set."""
    index, targets = construct_targets(kind, ds.y, ds.num_classes, cfg)
    atomic.build_chunks(workdir, len(index), chunk_size,
                        chunk_maker(source, ds, index, targets, cfg, batch_size=batch_size,
                                    jit_compile=jit_compile), on_chunk=on_chunk,
                        bar=progress.progbar(len(index), enabled=verbose, unit_name="image"))
    return index, targets


def construct_dataset(kind: str, source: keras.Model, ds: Dataset, cfg: ConstructConfig,
                      *, batch_size: int = 256, jit_compile: bool = False,
                      verbose="auto", workdir: str | None = None,
                      chunk_size: int = 1024) -> Dataset:
    """Targeted PGD on ``source`` (a standard model) for every (image, target) pair.

    Streams through ``workdir`` (a temporary directory if None); the images come back as a
    float16 memmap of ``workdir/x.npy``.
    """
    import tempfile

    workdir = workdir or tempfile.mkdtemp(prefix="entangle-construct-")
    show = len(ds) * (10 if kind == "zero_robust" and cfg.targets == "all" else 1) * \
        cfg.steps >= 20_000 if verbose == "auto" else bool(verbose)
    _, targets = build_chunks(kind, source, ds, cfg, os.path.join(workdir, "chunks"),
                              chunk_size=chunk_size, batch_size=batch_size,
                              jit_compile=jit_compile, verbose=show)
    x = atomic.assemble_chunks(os.path.join(workdir, "chunks"), "x",
                               os.path.join(workdir, "x.npy"))
    return Dataset(x, targets.astype(np.int64), ds.class_names, f"{ds.name}:{kind}")
