"""Tables as Markdown/CSV/JSON and figures as PNG (matplotlib, headless)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from entangle.store import atomic_file


def _pct(x) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def table_markdown(result, title: str) -> str:
    """Each cell: our accuracy % (the paper's % in brackets); balanced accuracy follows when
    some set is unbalanced (majority rate above 1.5x chance)."""
    unbalanced = max(result.majority_rate.values()) > 1.5 * result.chance
    head = ["Classifier"] + result.columns
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result.rows:
        cells = []
        for c in result.columns:
            rep = result.cells[row][c]
            text = _pct(rep["accuracy"])
            if unbalanced:
                text += f" / bal {_pct(rep['balanced_accuracy'])}"
            ref = result.paper[row].get(c)
            if ref is not None:
                text += f" ({ref:g})"
            cells.append(text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Accuracy in % (the paper's in brackets). Chance {100 * result.chance:.1f} %; "
                 f"majority-class rate of the test set {100 * result.majority_rate['Test']:.1f} %"
                 + ("; 'bal' = balanced accuracy (mean per-class recall, chance "
                    f"{100 * result.chance:.1f} %)" if unbalanced else "") + ".")
    if result.median_relative_distance:
        lines.append("Median relative representation distance of each R_eps "
                     "(||rep(x_r) - rep(x)|| / ||rep(x0) - rep(x)||): " + ", ".join(
                         f"{k} {v:.3f}" for k, v in result.median_relative_distance.items()) + ".")
    if getattr(result, "findings", None):
        lines.append("")
        lines.append("The paper's findings on this table:")
        for f in result.findings:
            lines.append(f"- ({f['finding']}) {f['text']}: "
                         f"{'held' if f['held'] else 'did NOT hold'} ({f['detail']})")
    return "\n".join(lines)


def write_table(result, directory: str, title: str, plot_title: str | None = None) -> dict:
    """Writes table.md, table.csv, table.json and table.png into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    files = {k: os.path.join(directory, f"table.{k}") for k in ("md", "csv", "json", "png")}
    with atomic_file(files["md"], "w") as f:
        f.write(table_markdown(result, title) + "\n")
    with atomic_file(files["csv"], "w") as f:
        w = csv.writer(f)
        w.writerow(["classifier", "column", "accuracy", "balanced_accuracy", "majority_rate",
                    "n", "paper_accuracy_percent", "model_key"])
        for row in result.rows:
            for c in result.columns:
                rep = result.cells[row][c]
                w.writerow([row, c, rep["accuracy"], rep["balanced_accuracy"],
                            rep["majority_rate"], rep["n"], result.paper[row].get(c),
                            result.models[row]])
    with atomic_file(files["json"], "w") as f:
        json.dump({k: v for k, v in dataclasses.asdict(result).items() if k != "files"}, f,
                  indent=1, default=str)
    plot_table(result, files["png"], plot_title or title)
    return files


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path: str, title: str, ylabel: str) -> None:
    """Percent axis, title, legend; saved atomically as PNG."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def plot_table(result, path: str, title: str) -> None:
    """Accuracy vs column (Test, R_0, R_eps...), one line per classifier, chance dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    x = np.arange(len(result.columns))
    for row in result.rows:
        ax.plot(x, [100 * result.cells[row][c]["accuracy"] for c in result.columns], "o-",
                label=row)
    ax.axhline(100 * result.chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(x, result.columns)
    _finish(plt, fig, ax, path, title, "accuracy (%)")


def plot_vs_eps(series: dict, path: str, title: str, ylabel: str, chance: float | None = None,
                paper: dict | None = None) -> None:
    """The paper's figure form: x = eps on a log axis, eps = 0 drawn at the left edge and
    marked; one line per series ({name: {eps: value in [0, 1]}}); the paper's values dotted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    eps_all = sorted({e for s in series.values() for e in s} | set((paper or {}).keys()))
    positive = [e for e in eps_all if e > 0] or [1.0]
    zero_at = min(positive) / 4

    def xs(values):
        return [zero_at if e == 0 else e for e in values]

    for name, s in series.items():
        e = sorted(s)
        ax.plot(xs(e), [100 * s[k] for k in e], "o-", label=name)
    if paper:
        e = sorted(paper)
        ax.plot(xs(e), [paper[k] for k in e], "k:", marker="x", label="paper")
    if chance is not None:
        ax.axhline(100 * chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xscale("log")
    ticks = [zero_at] + positive
    ax.set_xticks(ticks, ["0"] + [_eps_tick(e) for e in positive])
    ax.minorticks_off()
    ax.axvline(zero_at * 1.6, color="lightgrey", lw=0.8)  # break between eps = 0 and the rest
    ax.set_xlabel("ε (log scale; 0 at the left)")
    _finish(plt, fig, ax, path, title, ylabel)


def _eps_tick(e: float) -> str:
    from entangle.paper import eps_label

    return eps_label(e)


def image_grid(rows: dict, path: str, title: str, class_names=None, labels=None,
               max_cols: int = 8) -> None:
    """A grid of images: one row per entry of ``rows`` ({row title: images [0, 1]})."""
    plt = _plt()
    names = list(rows)
    cols = min(max_cols, min(len(v) for v in rows.values()))
    fig, axes = plt.subplots(len(names), cols, figsize=(1.2 * cols, 1.25 * len(names) + 0.4),
                             dpi=100, squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(np.clip(np.asarray(rows[name][c], np.float32), 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0 and labels is not None and class_names is not None:
                ax.set_title(class_names[int(labels[c])], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
