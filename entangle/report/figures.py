"""Figures 2, 3 and 4 from their study results: curves as PNG and CSV, image grids as PNG."""

from __future__ import annotations

import csv
import os

from entangle.report import image_grid, plot_vs_eps
from entangle.runtime.atomic import atomic_file


def write_curve(result, directory: str) -> dict:
    """figure.png (accuracy against eps, with the paper's values) and figure.csv."""
    os.makedirs(directory, exist_ok=True)
    files = {"png": os.path.join(directory, "figure.png"),
             "csv": os.path.join(directory, "figure.csv")}
    plot_vs_eps({k: {e: r["accuracy"] for e, r in v.items()}
                 for k, v in result.series.items()}, files["png"], result.title,
                result.ylabel, chance=result.chance, paper=result.paper,
                counts={k: {e: r["n"] for e, r in v.items()} for k, v in result.series.items()},
                note=result.note)
    with atomic_file(files["csv"], "w") as f:
        w = csv.writer(f)
        w.writerow(["series", "eps", "accuracy", "balanced_accuracy", "majority_rate", "n",
                    "paper_accuracy_percent"])
        for name, values in result.series.items():
            for e, r in sorted(values.items()):
                w.writerow([name, e, r["accuracy"], r["balanced_accuracy"], r["majority_rate"],
                            r["n"], result.paper.get(e)])
    return files


def write_grid(result, directory: str) -> dict:
    """figure2.png: the grid of seed images, robustified images and originals."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "figure2.png")
    image_grid(result.grid, path, result.title, class_names=result.class_names,
               labels=result.labels)
    return {"png": path}
