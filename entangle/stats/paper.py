"""The paper's reported numbers (Springer et al. 2021, Tables 1, 2, 5, 6), as reference data.

Printed beside our measurements; never used to compute anything. Keys: row kind -> column
(None = the original test set, else the eps of R_eps) -> accuracy in percent.
"""

from __future__ import annotations

_EXT = (None, 0.0, 1 / 256, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def _rows(table: dict) -> dict:
    return {kind: dict(zip(_EXT, values)) for kind, values in table.items()}


# Table 5 (CIFAR-10, extended; Table 1 is its Test, R_0, R_1/16, R_1/4, R_1/2, R_1 columns).
CIFAR10 = _rows({
    "standard": (94.1, 58.3, 77.3, 81.4, 82.2, 83.7, 79.9, 79.0, 75.1, 69.2, 56.3),
    "robust": (86.5, 9.93, 9.97, 9.96, 10.0, 11.1, 18.2, 44.5, 70.5, 86.5, 70.0),
    "zero_robust": (46.8, 38.8, 35.1, 26.1, 27.2, 26.2, 23.3, 22.6, 22.1, 23.4, 21.4),
    "neg_robust": (21.9, 31.8, 15.8, 14.6, 16.6, 11.3, 11.1, 11.0, 12.8, 14.3, 13.2),
})
# Table 6 (ImageNet-9, extended; Table 2 its subset). Table 2's robust row differs from Table 6
# in R_0..R_1/4 (44.1, 46.1, 49.0 vs 41.9, 44.1, 49.0): we quote Table 6 throughout.
IMAGENET9 = _rows({
    "standard": (94.8, 51.9, 68.3, 71.5, 75.5, 76.7, 76.3, 72.1, 63.4, 54.6, 47.2),
    "robust": (82.9, 41.9, 42.1, 42.5, 42.5, 42.5, 44.1, 46.1, 49.0, 51.7, 56.0),
    "zero_robust": (49.2, 24.8, 28.3, 30.5, 29.3, 27.5, 24.3, 24.2, 24.6, 28.6, 31.4),
    "neg_robust": (38.3, 25.4, 18.8, 18.4, 19.2, 20.2, 23.2, 23.6, 21.8, 24.4, 23.7),
})
# The paper's robust rows: CIFAR-10 eps 0.5 (Table 5), ImageNet-9 eps 1.0 (Table 6).
ROBUST_ROW_EPS = {"cifar10": 0.5, "imagenet9": 1.0}
PAPER_COLUMNS = (0.0, 1 / 16, 1 / 4, 1 / 2, 1.0)
EXTENDED_COLUMNS = _EXT[1:]


def reference(dataset: str) -> dict | None:
    """The paper's table for a dataset name (folders of CIFAR-10 count as cifar10)."""
    if dataset == "imagenet9":
        return IMAGENET9
    if dataset == "cifar10" or "cifar" in dataset.lower():
        return CIFAR10
    return None


def plots_only_note(figures: str) -> str:
    """A figure's foot where the paper gives ``figures`` as plots, with no numbers to draw."""
    return f"No paper values drawn: the paper gives {figures} as plots only, without numbers."


def eps_label(eps: float) -> str:
    """0.0625 -> '1/16', 0.5 -> '1/2', 1.0 -> '1', 0.3 -> '0.3'."""
    if eps == 0 or eps >= 1 and float(eps).is_integer():
        return f"{eps:g}"
    inv = 1 / eps
    return f"1/{inv:g}" if abs(inv - round(inv)) < 1e-9 else f"{eps:g}"
