"""The planted world: synthetic images whose robust and non-robust features are known by
construction, with the detector and leakage probe that measure them.

Each class c owns four patterns, added to a grey background (brightness U(0.45, 0.55) plus
pixel noise N(0, 0.01) truncated at 2.5 sd):

* ``A_c`` robust: a shape of 4x4-pixel cells (about 30 % of the image) in a class colour, L2
  norm ``robust_norm``. Shapes are drawn so that every two classes' A have cosine < 0.5.
* ``B_c`` entangled, non-robust: the fine texture of A_c itself, a one-pixel checkerboard in
  A_c's colour on A_c's support, L2 norm ``entangled_norm``. It is a fixed function of A_c's
  geometry and rides on A_c's amplitude: present exactly when A_c is (so a world with B has
  A). It is orthogonal to every A (the checkerboard sums to zero on each cell).
* ``C_c`` artifact, non-robust: +-1 pixel noise anywhere, independent of A, ``artifact_norm``.
* ``D_c`` co-located, non-robust: +-1 pixel noise on A_c's support that is *not* a function of
  A_c (the B of the first study; the issue's B'), ``entangled_norm``. The world "AD" separates
  "co-located" from "entangled".

Every present pattern of the label's class is added with an amplitude jitter U(0.9, 1.1).
With ``robust_reliability`` p < 1, a fraction 1 - p of the images is *confused*: its shape
is a 50/50 blend of the label's A and another class's A (the silhouette only, without that
class's texture), so that A alone decides only about p + (1 - p) / 2 of the images while the
label's B, C or D decide them all: non-robust features are useful beyond robust ones, as on
real data. The configuration is rejected if any pixel could leave [0, 1] before rounding.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

TYPES = "ABCD"
NEEDS_A = "BD"               # patterns that live on A's support
CELL = 4                     # pixels per side of a shape cell
SHAPE_FRACTION = 0.3         # of the cells
MAX_COSINE = 0.5             # between two classes' A
BACKGROUND = (0.45, 0.55)
NOISE_SD, NOISE_CLIP = 0.01, 2.5
JITTER = (0.9, 1.1)
BLEND = 0.5                  # the label's share of a confused image's shape
PROBE_OTHERS = ("absent", "other")


def check_features(features: str, what: str = "planted features") -> str:
    """``features`` if it is a valid world (distinct letters of ABCD; B and D need A)."""
    if not features or not set(features) <= set(TYPES) or len(set(features)) != len(features):
        raise ValueError(f"{what} must be distinct letters of ABCD (e.g. ABC, AB, AD, AC, A); "
                         f"got {features!r}")
    if set(features) & set(NEEDS_A) and "A" not in features:
        raise ValueError(f"{what} {features!r}: B and D live on A's shape, so they need A")
    return features


@dataclasses.dataclass(frozen=True)
class PlantedConfig:
    """Parameters of the planted world (see the module docstring)."""

    image_size: int = 16
    num_classes: int = 10
    train_size: int = 5000
    test_size: int = 1000
    features: str = "ABC"
    robust_norm: float = 4.0
    entangled_norm: float = 1.0      # B and D
    artifact_norm: float = 1.0       # C
    robust_reliability: float = 1.0  # fraction of images whose shape is the label's alone
    seed: int = 0

    def __post_init__(self):
        check_features(self.features)
        if self.image_size < 16 or self.image_size % CELL:
            raise ValueError(f"planted image_size must be a multiple of {CELL} and >= 16 "
                             f"(distinct shapes need 4x4 cells); got {self.image_size}")
        if self.num_classes < 2:
            raise ValueError(f"planted num_classes must be >= 2; got {self.num_classes}")
        for f in ("robust_norm", "entangled_norm", "artifact_norm"):
            if getattr(self, f) < 0:
                raise ValueError(f"planted {f} must be >= 0; got {getattr(self, f)}")
        if not 0 < self.robust_reliability <= 1:
            raise ValueError("planted robust_reliability must be in (0, 1]; got "
                             f"{self.robust_reliability}")
        worst = max_excursion(self)
        room = 0.5 - (BACKGROUND[1] - BACKGROUND[0]) / 2 - NOISE_SD * NOISE_CLIP
        if worst > room:
            raise ValueError(
                f"planted patterns would saturate: up to {worst:.3f} from grey but only {room:.3f} "
                f"fits in [0, 1]; lower --planted_robust_norm ({self.robust_norm:g}), "
                f"--planted_entangled_norm or --planted_artifact_norm, or raise "
                f"--planted_image_size ({self.image_size})")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _shape_params(cfg: PlantedConfig) -> tuple:
    """What the patterns depend on (not sizes, features or reliability)."""
    return cfg.image_size, cfg.num_classes, cfg.robust_norm, cfg.entangled_norm, \
        cfg.artifact_norm, cfg.seed


def patterns(cfg: PlantedConfig) -> dict[str, np.ndarray]:
    """The class patterns A, B, C, D, each (num_classes, s, s, 3) float32, read-only."""
    return _patterns(*_shape_params(cfg))


@functools.lru_cache(maxsize=32)
def _patterns(s, k, robust_norm, entangled_norm, artifact_norm, seed):
    masks, colours = _shapes(s, k, seed)
    checker = np.where(np.add.outer(np.arange(s), np.arange(s)) % 2 == 0, 1.0, -1.0)
    noise_c = np.random.default_rng([seed, 7919, 1]).choice([-1.0, 1.0], (k, s, s, 3))
    noise_d = np.random.default_rng([seed, 7919, 2]).choice([-1.0, 1.0], (k, s, s, 3))
    out = {t: np.zeros((k, s, s, 3), np.float32) for t in TYPES}
    for c in range(k):
        shape = masks[c][..., None] * colours[c]
        out["A"][c] = _unit(shape) * robust_norm
        out["B"][c] = _unit(shape * checker[..., None]) * entangled_norm
        out["C"][c] = _unit(noise_c[c]) * artifact_norm
        out["D"][c] = _unit(masks[c][..., None] * noise_d[c]) * entangled_norm
    for v in out.values():
        v.flags.writeable = False
    return out


def _shapes(s: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class a set of cells and a colour (a sign vector / sqrt(3)) such that every two
    classes' shapes have cosine below MAX_COSINE; (masks (k, s, s) bool, colours (k, 3))."""
    rng = np.random.default_rng([seed, 7919])
    cells = s // CELL
    size = max(3, round(SHAPE_FRACTION * cells * cells))
    palette = np.array([[a, b, c] for a in (1, -1) for b in (1, -1) for c in (1, -1)],
                       float) / np.sqrt(3)
    chosen, colours = [], []
    for _ in range(k):
        for _attempt in range(20000):
            m = np.zeros(cells * cells, bool)
            m[rng.choice(cells * cells, size, replace=False)] = True
            col = palette[rng.integers(len(palette))]
            if all(np.sum(m & o) / size * float(col @ oc) < MAX_COSINE
                   for o, oc in zip(chosen, colours)):
                chosen.append(m)
                colours.append(col)
                break
        else:
            raise ValueError(f"cannot draw {k} shapes of {size} cells at {s} px with pairwise "
                             f"cosine < {MAX_COSINE}: raise --planted_image_size or lower "
                             "--planted_num_classes")
    masks = np.stack([np.kron(m.reshape(cells, cells), np.ones((CELL, CELL))).astype(bool)
                      for m in chosen])
    return masks, np.stack(colours)


def max_excursion(cfg: PlantedConfig) -> float:
    """The largest distance from the grey level any pixel of any image or probe can get from
    its patterns: each type at its largest over classes (probes mix classes), jitter at its
    top; a confused shape is a convex blend, so never larger."""
    pats = patterns(cfg)
    total = sum(np.abs(pats[t]).max(axis=0) for t in cfg.features)
    return float(JITTER[1] * np.max(total))


def other_class(rng: np.random.Generator, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Per label, a class drawn uniformly from the other ``num_classes - 1``."""
    return (np.asarray(y) + rng.integers(1, num_classes, len(y))) % num_classes


def _background(rng, n: int, s: int) -> np.ndarray:
    noise = np.clip(rng.standard_normal((n, s, s, 3)), -NOISE_CLIP, NOISE_CLIP)
    return rng.uniform(*BACKGROUND, (n, 1, 1, 1)) + NOISE_SD * noise


def _labels(rng, n: int, k: int) -> np.ndarray:
    y = np.arange(n) % k
    rng.shuffle(y)
    return y


def images(cfg: PlantedConfig, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The world's ``split`` before rounding: (float images, labels, confused mask);
    deterministic for a configuration."""
    n = cfg.train_size if split == "train" else cfg.test_size
    stream = 0 if split == "train" else 1
    rng = np.random.default_rng([cfg.seed, stream])
    y = _labels(rng, n, cfg.num_classes)
    x = _background(rng, n, cfg.image_size)
    pats = patterns(cfg)
    mix_rng = np.random.default_rng([cfg.seed, stream, 11])
    confused = mix_rng.random(n) >= cfg.robust_reliability
    other = other_class(mix_rng, y, cfg.num_classes)
    share = np.where(confused, BLEND, 1.0)[:, None, None, None]
    amp = {t: rng.uniform(*JITTER, (n, 1, 1, 1)) for t in TYPES}
    amp["B"] = amp["A"]          # B is A's texture: it rides on A's amplitude
    for t in cfg.features:
        if t == "A":
            x += amp[t] * (share * pats["A"][y] + (1 - share) * pats["A"][other])
        else:
            x += amp[t] * pats[t][y]
    return x.astype(np.float32), y.astype(np.int64), confused


def probe(cfg: PlantedConfig, feature: str, others: str = "absent", n: int | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """Test images carrying one pattern type of their class only, ``feature`` of class y on
    the background, labelled y; the world's other types are absent (``"absent"``) or each
    of another, random class (``"other"``: a conflict probe; a B probe leaves D out and a D
    probe B). Float images, labels."""
    if feature not in TYPES:
        raise ValueError(f"probe feature must be one of {', '.join(TYPES)}; got {feature!r}")
    if others not in PROBE_OTHERS:
        raise ValueError(f"probe others must be one of {PROBE_OTHERS}; got {others!r}")
    n = cfg.test_size if n is None else n
    rng = np.random.default_rng([cfg.seed, 2, TYPES.index(feature), PROBE_OTHERS.index(others)])
    y = _labels(rng, n, cfg.num_classes)
    x = _background(rng, n, cfg.image_size)
    pats = patterns(cfg)
    x += rng.uniform(*JITTER, (n, 1, 1, 1)) * pats[feature][y]
    if others == "other":            # B and D both on A's support could clip: one of them
        rival = {"B": "D", "D": "B"}.get(feature, "")
        for t in (f for f in cfg.features if f not in feature + rival):
            wrong = other_class(rng, y, cfg.num_classes)
            x += rng.uniform(*JITTER, (n, 1, 1, 1)) * pats[t][wrong]
    return x.astype(np.float32), y.astype(np.int64)


# ---------------------------------------------------------------------------- measuring patterns


def _as_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return (x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32))


def projections(x: np.ndarray, cfg: PlantedConfig, t: str, decoy: int = 0) -> np.ndarray:
    """(n, num_classes): each image projected on each class's pattern of type ``t``, made
    orthogonal to every other type's patterns (all classes) and to constant colour, then
    normalised: a matched filter per class that the other pattern types cannot move.
    ``decoy`` > 0 uses the type-``t`` patterns of another, unplanted world instead (a null)."""
    x = _as_float(x).reshape(len(x), -1)
    return x @ _filters(*_shape_params(cfg), t, decoy).T


def _decoy_seed(seed: int, decoy: int) -> int:
    return seed + 100003 * decoy


@functools.lru_cache(maxsize=512)
def _filters(s, k, robust_norm, entangled_norm, artifact_norm, seed, t, decoy):
    pats = _patterns(s, k, robust_norm, entangled_norm, artifact_norm, seed)
    others = [pats[o].reshape(k, -1) for o in TYPES if o != t]
    others.append(np.kron(np.ones((1, s * s)), np.eye(3)))   # constant colour per channel
    q, _ = np.linalg.qr(np.concatenate(others).astype(np.float64).T)
    target = _patterns(s, k, robust_norm, entangled_norm, artifact_norm,
                       _decoy_seed(seed, decoy)) if decoy else pats
    p = target[t].reshape(k, -1).astype(np.float64)
    p = p - (p @ q) @ q.T
    p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    return p.astype(np.float32)


def _round(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255) / 255.0


@functools.lru_cache(maxsize=8)
def _rounded_test(cfg: PlantedConfig) -> tuple[np.ndarray, np.ndarray]:
    """A world's test split as stored (rounded), shared by the calibrations of its decoys."""
    x, y, _ = images(cfg, "test")
    return _round(x), y


@dataclasses.dataclass(frozen=True)
class Detector:
    """Says whether an image carries pattern ``t`` of a given class: its projection on that
    class's pattern exceeds ``threshold`` (set at a false-positive rate on images without
    ``t``). ``fpr`` and ``sensitivity`` (inserted amplitude -> detection rate) are measured on
    held-out images."""

    t: str
    threshold: float
    fpr: float
    sensitivity: dict
    decoy: int = 0

    def detects(self, x: np.ndarray, classes: np.ndarray, cfg: PlantedConfig) -> np.ndarray:
        proj = projections(x, cfg, self.t, self.decoy)
        return proj[np.arange(len(proj)), np.asarray(classes)] > self.threshold


def calibrate(cfg: PlantedConfig, t: str, *, n: int = 1000, target_fpr: float = 0.05,
              amplitudes: tuple[float, ...] = (0.25, 0.5, 1.0), decoy: int = 0) -> Detector:
    """A detector for pattern ``t`` in this world. Null: world images that carry ``t`` of
    their own class (every shape unconfused), scored on another, random class's ``t``, so
    that cross-talk between classes' patterns counts as a false positive. The threshold is
    the (1 - target_fpr) quantile on half of them; the other half gives the measured
    false-positive rate. Sensitivity: the label's ``t`` inserted at each amplitude (times its
    norm) into held-out world images without ``t``, rounded to uint8 as stored images are.
    ``decoy`` > 0: the same for a decoy's patterns (see ``projections``)."""
    with_t = {*cfg.features, t, *("A" if t in NEEDS_A else "")}
    if {"B", "D"} <= with_t:              # both on A's support may saturate: keep t's kind
        with_t.discard("B" if t == "D" else "D")
    with_t = "".join(f for f in TYPES if f in with_t)
    x, y = _rounded_test(dataclasses.replace(cfg, features=with_t, test_size=2 * n,
                                             robust_reliability=1.0))
    wrong = other_class(np.random.default_rng([cfg.seed, 5]), y, cfg.num_classes)
    scores = projections(x, cfg, t, decoy)[np.arange(2 * n), wrong]
    threshold = float(np.quantile(scores[:n], 1 - target_fpr))
    fpr = float(np.mean(scores[n:] > threshold))
    drop = t + (NEEDS_A if t == "A" else "")
    rest = "".join(f for f in cfg.features if f not in drop)
    if rest:
        held_x, held_y = _rounded_test(dataclasses.replace(cfg, features=rest, test_size=n))
    else:
        rng = np.random.default_rng([cfg.seed, 6])
        held_y = _labels(rng, n, cfg.num_classes)
        held_x = _background(rng, n, cfg.image_size)
    pat = patterns(dataclasses.replace(cfg, seed=_decoy_seed(cfg.seed, decoy)))[t]
    sensitivity = {}
    for a in amplitudes:
        xi = _round(held_x + a * pat[held_y])
        score = projections(xi, cfg, t, decoy)[np.arange(n), held_y]
        sensitivity[a] = float(np.mean(score > threshold))
    return Detector(t, threshold, fpr, sensitivity, decoy)
