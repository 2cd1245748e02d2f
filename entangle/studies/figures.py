"""Figures 2, 3 and 4 (Springer et al. 2021): robustified images, a standard classifier on
R_eps against eps, and eps-robust classifiers on the original test set; each built through
the same plan as the tables."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from entangle.stats import paper
from entangle.studies import entanglement, pipeline


@dataclasses.dataclass
class CurveResult:
    """Accuracy against eps (Figures 3/4/7/10): one series per name, eps -> accuracy report."""

    dataset: str
    series: dict
    paper: dict                         # eps -> the paper's % (or empty)
    chance: float
    built: list[str]
    title: str = ""
    ylabel: str = ""
    note: str = ""                      # printed at the figure's foot
    files: dict = dataclasses.field(default_factory=dict)
    write_error: str | None = None


@dataclasses.dataclass
class GridResult:
    """Figures 2/11/12: rows of images (row label -> images) under one title."""

    grid: dict
    title: str
    class_names: tuple
    labels: dict                        # row title -> the class of each of its images
    files: dict = dataclasses.field(default_factory=dict)
    write_error: str | None = None


def _titled(title: str, context: str, test) -> str:
    """A figure title naming what it was computed on: dataset, scale, seed, and n."""
    return f"{title}\n({context + ', ' if context else ''}n={len(test)} test images)"


def run_figure3(exp_cfg: pipeline.ExperimentConfig, cfg: entanglement.TableConfig, *,
                log: Callable[[str], None] = print, context: str = "") -> CurveResult:
    """Figure 3 (7 on ImageNet-9): the standard classifier's accuracy on every R_eps."""
    cfg = dataclasses.replace(cfg, rows=("standard",))
    table, built = entanglement.prepare(exp_cfg, cfg, True, log)
    exp = table.exp
    trained = exp.model(*table.row_model("standard"))
    series = {"standard on R_eps": {eps: exp.accuracy_on(trained, exp.robustified(eps)[0],
                                                         f"R_{paper.eps_label(eps)}")
                                    for eps in cfg.columns}}
    ref = (paper.reference(exp_cfg.data.dataset) or {}).get("standard", {})
    return CurveResult(exp_cfg.data.dataset, series,
                       {e: v for e, v in ref.items() if e is not None},
                       1.0 / exp.splits().test.num_classes, built,
                       _titled("Standard classifier on robustified test sets R_eps", context,
                               exp.splits().test), "accuracy on R_eps (%)")


def run_figure4(exp_cfg: pipeline.ExperimentConfig, cfg: entanglement.TableConfig, *,
                log: Callable[[str], None] = print, context: str = "") -> CurveResult:
    """Figure 4 (10 on ImageNet-9): each eps-robust classifier on the original test set
    (eps 0: the standard model); the store's generators, nothing robustified."""
    cfg = dataclasses.replace(cfg, rows=())
    table, built = entanglement.prepare(exp_cfg, cfg, False, log)
    exp = table.exp
    test = exp.splits().test
    series = {"eps-robust on test": {}}
    for eps in cfg.columns:
        trained = exp.model(*exp.generator_spec(eps))
        series["eps-robust on test"][eps] = exp.accuracy_on(trained, test, "Test")
        del trained
    return CurveResult(exp_cfg.data.dataset, series, {}, 1.0 / test.num_classes, built,
                       _titled("eps-robust classifiers on the original test set", context,
                               test), "test accuracy (%)",
                       note=paper.plots_only_note("Figure 4 (10 on ImageNet-9)"))


def run_figure2(exp_cfg: pipeline.ExperimentConfig, cfg: entanglement.TableConfig, *,
                num_images: int = 8, log: Callable[[str], None] = print,
                context: str = "") -> GridResult:
    """Figures 2/11/12: seed images x0, their robustifications for each eps, the originals."""
    cfg = dataclasses.replace(cfg, rows=())
    table, _ = entanglement.prepare(exp_cfg, cfg, True, log)
    exp = table.exp
    test = exp.splits().test
    pick = distinct_class_images(test.y, num_images)
    seeds = None
    rows = {}
    for eps in sorted(cfg.columns):
        ds, extra = exp.robustified(eps)
        seeds = extra["seeds"]
        rows[f"R_{paper.eps_label(eps)}"] = np.asarray(ds.x[pick], np.float32)
    grid = {"seed x0": test.float_images()[seeds[pick]], **rows,
            "original x": test.float_images()[pick]}
    return GridResult(grid, _titled("Robustified images: each column starts from the seed on "
                                    "top and matches the representation of the original at "
                                    "the bottom", context, test),
                      tuple(test.class_names),
                      {"seed x0": np.asarray(test.y[seeds[pick]]),
                       "original x": np.asarray(test.y[pick])})


def distinct_class_images(y: np.ndarray, n: int) -> np.ndarray:
    """Indices of up to ``n`` images, the first of each class in class order, then (with
    fewer classes than ``n``) the next of each class in turn: a grid of distinct classes."""
    y = np.asarray(y)
    order = []
    for rank in range(len(y)):
        added = False
        for c in np.unique(y):
            hits = np.flatnonzero(y == c)
            if rank < len(hits):
                order.append(hits[rank])
                added = True
                if len(order) == n:
                    return np.array(order)
        if not added:
            break
    return np.array(order, dtype=np.int64)
