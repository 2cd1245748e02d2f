"""Tests for the paper's findings on per-image outcomes, built on scipy.stats.

Columns of an entanglement table are paired: image i of R_0 and of every R_eps comes from the
same original x_i and seed x0_i, so columns are compared with the exact McNemar test on
per-image correctness, and an ordered trend with a permutation test that permutes the
columns within each image. Several columns are corrected with Holm's step-down method.
Against chance, plain accuracy is tested with the exact binomial test; where the classes of
the evaluated set are unbalanced, balanced accuracy (mean per-class recall) is tested
against 1/C with a normal approximation, since a classifier that always names the majority
class would pass a test of plain accuracy.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as st

ALPHA = 0.05


def mcnemar_exact(first: np.ndarray, second: np.ndarray, alternative: str = "two-sided"
                  ) -> dict:
    """Exact (binomial) McNemar test of paired per-image correctness, two-sided, or
    one-sided that ``second`` is right more often (``alternative="greater"``).

    ``first_only``: images right in ``first`` only; ``second_only``: right in ``second`` only.
    Under the null each discordant image is equally likely to fall either way.
    """
    a, b = _bools(first), _bools(second)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must have one shape; got {a.shape} and {b.shape}")
    first_only, second_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = first_only + second_only
    p = st.binomtest(second_only, n, 0.5, alternative=alternative).pvalue if n else 1.0
    side = "two-sided" if alternative == "two-sided" else "one-sided"
    return {"test": f"exact McNemar ({side})", "first_only": first_only,
            "second_only": second_only, "difference": float(b.mean() - a.mean()) if a.size
            else float("nan"), "p": float(p)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down; reject where adjusted <= alpha), input order kept."""
    p = np.asarray(pvalues, float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def paired_vs(baseline: np.ndarray, columns: dict, alpha: float = ALPHA) -> dict:
    """Each column of per-image outcomes against ``baseline`` on the same images: exact
    McNemar, Holm over the columns; ``significant`` where the Holm p <= alpha and the column
    is the higher. Returns {label: mcnemar_exact's dict + p_holm, significant}."""
    tests = {c: mcnemar_exact(baseline, o) for c, o in columns.items()}
    for c, p in zip(tests, holm([t["p"] for t in tests.values()])):
        tests[c]["p_holm"] = p
        tests[c]["significant"] = p <= alpha and tests[c]["difference"] > 0
    return tests


def sign_test(differences: Sequence[float]) -> dict:
    """One-sided sign test that differences tend to be positive (zeros dropped): exact
    binomial on the number of positive signs."""
    d = np.asarray([v for v in differences if v is not None and not math.isnan(v)], float)
    positive, negative = int(np.sum(d > 0)), int(np.sum(d < 0))
    n = positive + negative
    p = st.binomtest(positive, n, 0.5, alternative="greater").pvalue if n else 1.0
    return {"test": "sign test (one-sided, exact binomial)", "positive": positive,
            "negative": negative, "zero": int(len(d) - n), "p": float(p)}


def is_balanced(y: np.ndarray, num_classes: int) -> bool:
    """Whether every class has the same number of images in ``y``."""
    counts = np.bincount(np.asarray(y), minlength=num_classes)
    return bool(counts.min() == counts.max())


def balanced_accuracy(correct: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``y``."""
    c, y = _bools(correct), np.asarray(y)
    return float(np.mean([c[y == k].mean() for k in range(num_classes) if np.any(y == k)]))


def chance_test(correct: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """One-sided test that accuracy exceeds chance 1/C, with a 95 % two-sided interval.

    Balanced classes: exact binomial test and Wilson interval of plain accuracy. Unbalanced:
    balanced accuracy, its standard error sqrt(sum_k r_k (1 - r_k) / n_k) / C', a z-test and
    a normal interval.
    """
    c, y = _bools(correct), np.asarray(y)
    chance = 1.0 / num_classes
    if is_balanced(y, num_classes):
        k, n = int(c.sum()), len(c)
        res = st.binomtest(k, n, chance, alternative="greater")
        ci = st.binomtest(k, n, chance).proportion_ci(0.95, method="wilson")
        return {"test": "exact binomial, accuracy", "measure": "accuracy", "value": k / n,
                "chance": chance, "p": float(res.pvalue), "low": float(ci.low),
                "high": float(ci.high)}
    present = [k for k in range(num_classes) if np.any(y == k)]
    recalls = np.array([c[y == k].mean() for k in present])
    sizes = np.array([np.sum(y == k) for k in present])
    value = float(recalls.mean())
    se = float(np.sqrt(np.sum(recalls * (1 - recalls) / sizes)) / len(present))
    se = max(se, 0.5 / len(c))  # no zero-width interval at recall 0 or 1
    z = (value - chance) / se
    return {"test": "z-test, balanced accuracy", "measure": "balanced accuracy",
            "value": value, "chance": chance, "p": float(st.norm.sf(z)),
            "low": value - 1.96 * se, "high": value + 1.96 * se}


def above_chance_and_control(correct: np.ndarray, control: np.ndarray, y: np.ndarray,
                             num_classes: int) -> dict:
    """One-sided test that accuracy exceeds both nulls of a robustified set: chance 1/C, and
    the seed control (the same model on each image's seed x0, labelled y: what a model that
    reads only x0 scores). An intersection-union test: p is the larger of the chance test's
    p and the exact one-sided McNemar p against the control on the same images."""
    chance = chance_test(correct, y, num_classes)
    versus = mcnemar_exact(control, correct, alternative="greater")
    return {**chance, "test": f"{chance['test']} and {versus['test']} vs the seed control",
            "p_chance": chance["p"], "p_control": versus["p"],
            "control": float(_bools(control).mean()), "control_test": versus,
            "p": max(chance["p"], versus["p"])}


def trend_test(outcomes: Sequence[np.ndarray], n_resamples: int = 9999, seed: int = 0,
               alternative: str = "less") -> dict:
    """Permutation test of a monotone trend in accuracy over ordered, paired columns.

    The statistic is the slope of column accuracy on the column's rank (reported as accuracy
    per column step); each resample permutes the columns within every image, which keeps the
    pairing.
    ``alternative="less"``: accuracy decreases with the rank.
    """
    cols = [_bools(o).astype(np.int64) for o in outcomes]
    if len(cols) < 2:
        raise ValueError(f"a trend needs at least two columns; got {len(cols)}")
    k, n = len(cols), len(cols[0])
    ranks = 2 * np.arange(k) - (k - 1)      # centred, integer: the statistic is exact

    def score(*columns, axis=-1):
        return np.tensordot(ranks, np.stack([np.sum(c, axis=axis) for c in columns]), 1)

    res = st.permutation_test(cols, score, permutation_type="samples", vectorized=True,
                              alternative=alternative, n_resamples=n_resamples,
                              random_state=seed)
    slope = float(res.statistic) / float(n * np.sum(ranks ** 2) / 2)
    return {"test": "permutation test of the slope (columns permuted within images)",
            "statistic": slope, "p": float(res.pvalue)}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan with fewer than two values)."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def _bools(x) -> np.ndarray:
    return np.asarray(x).astype(bool)
