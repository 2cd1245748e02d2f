"""The planted study's report: Markdown, CSV, JSON, the verdict figure and the leakage figure."""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from entangle.data import planted
from entangle.report import finish_plot, pct, pyplot, start_report, write_table
from entangle.runtime.atomic import atomic_file
from entangle.studies.planted_study import budget_label

NON_ROBUST = "BCD"


def _mark(flag: bool) -> str:
    return "yes" if flag else "no"


def _types(r) -> str:
    return "".join(t for t in planted.TYPES if t in r.features)


def markdown(result) -> str:
    """Premise, what is there, the protocol against the truth per budget, the detectors and
    the confusion tables with every error's mechanism."""
    chance = 100 * result.chance
    cols = result.columns
    lines = ["**The paper's test on planted ground truth**", "",
             f"Chance {chance:.1f} %. Worlds: A robust shape, B its texture (entangled), C an "
             "artifact anywhere, D noise on A's shape (co-located, not entangled).", "",
             "*Premise* per R_eps: median relative distance, the generator's accuracy on its own "
             "R_eps, the share of images where the detector finds the label's A (met: "
             "significantly above another class's A on the same images).", "",
             "| World | Seed | " + " | ".join(f"{c}: distance, generator, carries A"
                                              for c in cols) + " | Premise |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for r in result.runs:
        cells = [f"{p['relative_distance']:.2f}, {pct(p['generator_accuracy'])}, "
                 f"{pct(p['carries_A'])}" for p in (r.premise[c] for c in cols)]
        lines.append(f"| {r.features} | {r.seed} | " + " | ".join(cells)
                     + f" | {'met' if r.premise_met else 'NOT met'} |")
    lines += ["", "*What is there*: probe accuracy (%, one pattern type of the label only, "
              "A/B/C/D) of each generator, and which types each R_eps carries (detector: "
              "label's rate vs another class's, exact McNemar).", "",
              "| World | Seed | Standard uses A/B/C/D | Robust uses A/B/C/D | "
              + " | ".join(f"{c} carries" for c in ["Test"] + cols) + " |",
              "|---|---|---|---|" + "---|" * (len(cols) + 1)]
    for r in result.runs:
        robust = max((k for k in r.probes if k.startswith("robust")),
                     key=lambda k: float(k.split()[-1].rstrip(")")))
        carried = [",".join(t for t in planted.TYPES if r.carries[c][t]["carried"]) or "-"
                   for c in ["Test"] + cols]
        lines.append(f"| {r.features} | {r.seed} | {_probes(r.probes['standard'])} | "
                     f"{_probes(r.probes[robust])} | " + " | ".join(carried) + " |")
    for b in result.budgets:
        lines += ["", f"*Protocol against truth, {budget_label(b)}*: zero- and neg-robust "
                  "accuracy on each R_eps (95 % lower bound); the protocol says B at a column "
                  "when both are above chance; the truth is B carried by that R_eps and used by "
                  "the zero-robust model (B-only probe above chance). Leakage: Goh's linear "
                  "probe on template projections, trained on the constructed set, accuracy on "
                  "clean test images (%).", "",
                  "| World | Seed | " + " | ".join(f"{c}: zero, neg, says / truth" for c in cols)
                  + " | Zero-robust uses A/B/C/D | Neg-robust uses A/B/C/D | Leakage D_zero "
                  "A/B/C/D | Leakage D_neg A/B/C/D |",
                  "|---|---|" + "---|" * len(cols) + "---|---|---|---|"]
        for r in result.runs:
            cells = []
            for c in cols:
                p, t = r.protocol[b][c], r.truth[b][c]
                cells.append(f"{pct(r.tables[b].cells['zero_robust'][c]['accuracy'])} "
                             f"({pct(p['zero_low'])}), "
                             f"{pct(r.tables[b].cells['neg_robust'][c]['accuracy'])} "
                             f"({pct(p['neg_low'])}), {_mark(p['says_b'])} / {_mark(t['b'])}")
            lk = r.leakage[b]
            lines.append(f"| {r.features} | {r.seed} | " + " | ".join(cells)
                         + f" | {_probes(r.probes[f'zero_robust ({budget_label(b)})'])} | "
                         f"{_probes(r.probes[f'neg_robust ({budget_label(b)})'])} | "
                         + "/".join(pct(lk["zero_robust"][t]["accuracy"]) for t in planted.TYPES)
                         + " | "
                         + "/".join(pct(lk["neg_robust"][t]["accuracy"]) for t in planted.TYPES)
                         + " |")
    lines += ["", "*Detectors* (range over runs): threshold at a false-positive rate of "
              "5 % on world images without the type; measured false-positive rate and "
              "sensitivity with the label's pattern inserted at 1/4, 1/2 and 1 times its norm, "
              "on held-out images.", "",
              "| Type | False positives | Sensitivity x1/4 | x1/2 | x1 |", "|---|---|---|---|---|"]
    for t in planted.TYPES:
        ds = [r.detectors[t] for r in result.runs]
        row = [_range([d["fpr"] for d in ds])]
        for a in sorted(ds[0]["sensitivity"]):
            row.append(_range([d["sensitivity"][a] for d in ds]))
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    lines += ["", "*Verdict*: the protocol's answer against the truth over scored runs "
              "(premise met).", "",
              "| Budget | Column | Right | False positives | False negatives | Unscored | "
              "Errors and their mechanism |", "|---|---|---|---|---|---|---|"]
    for b, per in result.verdict.items():
        for c, v in per.items():
            errs = "; ".join(f"{e['world']} s{e['seed']} {e['kind']}: {e['why']}"
                             for e in v["errors"]) or "-"
            lines.append(f"| {b:g} | {c} | {v['tp'] + v['tn']} (TP {v['tp']}, TN {v['tn']}) | "
                         f"{v['fp']} | {v['fn']} | {len(v['unscored'])} | {errs} |")
    lines += ["", f"**Verdict.** {result.summary}"]
    return "\n".join(lines)


def _probes(reports: dict) -> str:
    return "/".join(pct(reports[f"{t}-absent"]["accuracy"]) for t in planted.TYPES)


def _range(v) -> str:
    lo, hi = 100 * min(v), 100 * max(v)
    return f"{lo:.0f} %" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f} %"


OUTCOME_COLOURS = {"TP": "#2e7d32", "TN": "#a5d6a7", "FP": "#c62828", "FN": "#ef9a9a",
                   "unscored": "#bdbdbd"}


def plot_verdict(result, path: str) -> None:
    """One cell per run (rows) and budget x column (columns), coloured by the protocol's
    outcome against the measured truth, labelled 'says / truth'."""
    plt = pyplot()
    runs = result.runs
    keys = [(b, c) for b in result.budgets for c in result.columns]
    fig, ax = plt.subplots(figsize=(3.2 + 1.5 * len(keys), 1.6 + 0.36 * len(runs)), dpi=100)
    for i, r in enumerate(runs):
        for j, (b, c) in enumerate(keys):
            says, true = r.protocol[b][c]["says_b"], r.truth[b][c]["b"]
            kind = ("unscored" if not r.premise_met else
                    ("T" if says == true else "F") + ("P" if says else "N"))
            ax.add_patch(plt.Rectangle((j, i), 1, 1, color=OUTCOME_COLOURS[kind], ec="white"))
            ax.text(j + 0.5, i + 0.5, f"{_mark(says)} / {_mark(true)}", ha="center",
                    va="center", fontsize=8)
    ax.set_xlim(0, len(keys))
    ax.set_ylim(len(runs), 0)
    ax.set_xticks(np.arange(len(keys)) + 0.5, [f"{c}\nbudget {b:g}" for b, c in keys],
                  fontsize=8)
    ax.set_yticks(np.arange(len(runs)) + 0.5, [f"{r.features} s{r.seed}" for r in runs],
                  fontsize=8)
    for kind, colour in OUTCOME_COLOURS.items():
        ax.bar(0, 0, color=colour, label=kind)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Protocol says Type B / measured truth (B carried by R_eps and used)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def plot_leakage(result, path: str) -> None:
    """Goh's leakage per world (mean over seeds; whiskers: range) for each pattern type, in
    D_zero and D_neg at every budget; chance dashed."""
    plt = pyplot()
    panels = [(b, kind) for b in result.budgets for kind in ("zero_robust", "neg_robust")]
    worlds = list(dict.fromkeys(r.features for r in result.runs))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.6), dpi=100,
                             sharey=True, squeeze=False)
    x = np.arange(len(worlds))
    width = 0.8 / len(planted.TYPES)
    for ax, (b, kind) in zip(axes[0], panels):
        for j, t in enumerate(planted.TYPES):
            vals = [[100 * r.leakage[b][kind][t]["accuracy"] for r in result.runs
                     if r.features == w] for w in worlds]
            mean = np.array([np.mean(v) for v in vals])
            ax.bar(x + (j - 1.5) * width, mean, width, label=t,
                   yerr=[mean - [min(v) for v in vals], [max(v) for v in vals] - mean],
                   capsize=2)
        ax.axhline(100 * result.chance, color="grey", ls="--", lw=1)
        ax.set_xticks(x, worlds)
        ax.set_title(f"D_{kind.split('_')[0]}, {budget_label(b)}", fontsize=9)
    axes[0][0].set_ylabel("linear probe on template projections,\nclean test accuracy (%)")
    seeds = sorted({r.seed for r in result.runs})
    finish_plot(plt, fig, axes[0][-1], path, f"D_{panels[-1][1].split('_')[0]}, "
                f"{budget_label(panels[-1][0])}", "", top=100,
                note=f"Bars: mean over seeds {', '.join(map(str, seeds))}; whiskers: the range "
                     f"(lowest to highest seed), not an interval. Dashed: chance.")


def write_study(result, directory: str) -> dict:
    """Writes study.md, study.csv, study.json, study.png (verdict) and leakage.png, and each
    run's tables into tables/<features>-seed<seed>/<budget>/."""
    for r in result.runs:
        for b, table in r.tables.items():
            write_table(table, os.path.join(directory, "tables", f"{r.features}-seed{r.seed}",
                                            budget_label(b).replace(" ", "-")),
                        f"Planted {r.features}, seed {r.seed}, {budget_label(b)}")
    files = start_report(directory, "study", markdown(result))
    files["leakage_png"] = files["png"].replace("study.png", "leakage.png")
    with atomic_file(files["csv"], "w") as f:
        w = csv.writer(f)
        w.writerow(["features", "seed", "budget", "kind", "name", "column", "value"])
        for r in result.runs:
            for name, reports in r.probes.items():
                for p, rep in reports.items():
                    w.writerow([r.features, r.seed, "", "probe_accuracy", name, p,
                                rep["accuracy"]])
            for name, per in r.carries.items():
                for t, v in per.items():
                    w.writerow([r.features, r.seed, "", "carry_rate", t, name, v["rate"]])
                    w.writerow([r.features, r.seed, "", "carry_control", t, name, v["control"]])
            for c, p in r.premise.items():
                for k in ("relative_distance", "generator_accuracy", "carries_A"):
                    w.writerow([r.features, r.seed, "", "premise", k, c, p[k]])
            for b in result.budgets:
                for row, cells in r.tables[b].cells.items():
                    for c, rep in cells.items():
                        w.writerow([r.features, r.seed, b, "accuracy", row, c, rep["accuracy"]])
                for kind, per in r.leakage[b].items():
                    for t, v in per.items():
                        w.writerow([r.features, r.seed, b, "leakage", kind, t, v["accuracy"]])
                for c in result.columns:
                    w.writerow([r.features, r.seed, b, "protocol_says_b", "", c,
                                int(r.protocol[b][c]["says_b"])])
                    w.writerow([r.features, r.seed, b, "truth_b", "", c, int(r.truth[b][c]["b"])])
    with atomic_file(files["json"], "w") as f:
        json.dump({"chance": result.chance, "columns": result.columns,
                   "budgets": result.budgets, "verdict": result.verdict,
                   "summary": result.summary,
                   "runs": [{"features": r.features, "seed": r.seed, "probes": r.probes,
                             "detectors": r.detectors, "carries": r.carries,
                             "premise": r.premise, "premise_met": r.premise_met,
                             "leakage": r.leakage, "protocol": r.protocol, "truth": r.truth,
                             "tables": {b: {"cells": t.cells, "models": t.models}
                                        for b, t in r.tables.items()}}
                            for r in result.runs]}, f, indent=1, default=str)
    plot_verdict(result, files["png"])
    plot_leakage(result, files["leakage_png"])
    return files
