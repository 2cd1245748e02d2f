"""The different-mistakes study's report (Waseda et al. section 4): its Tables 1 and 2 with the
leakage control and the finding, as Markdown, CSV, JSON and a PNG."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

from entangle.report import finish_plot, pct, pyplot, start_report
from entangle.runtime.atomic import atomic_file


def mistakes_markdown(result) -> str:
    """Waseda et al.'s Tables 1 and 2 for one model pair, and the finding."""
    second = ("standard, another seed" if result.config["second_model"] == "seed"
              else result.config["second_model"])
    c = result.config
    lines = [f"**Different mistakes (Waseda et al. section 4): F1 standard (seed {result.seed}), "
             f"F2 {second}**", "",
             f"N-targeted attack: L2 eps {c['eps']:g}, {c['steps']} steps of {c['step_size']:g}, "
             f"targets {c['targets']}.", "",
             "| Set | F1(X') = Y1 | F2(X') = Y2 | both | images |", "|---|---|---|---|---|"]
    for part, s in result.success.items():
        lines.append(f"| {part} | {pct(s['F1 hits Y1'])} | {pct(s['F2 hits Y2'])} | "
                     f"{pct(s['both'])} | {s['n']} |")
    lines += ["", "| Trained on | Test accuracy | 95 % interval | Chance |", "|---|---|---|---|"]
    for by, r in result.relabelled.items():
        lines.append(f"| (X', {by}) | {pct(r['accuracy'])} | {pct(r['lower'])}-"
                     f"{pct(r['upper'])} | {100 * result.chance:.1f} |")
    lk = result.leakage
    if lk:
        lines += ["", f"Leakage control (Goh 2019): a linear probe on the representation of "
                  f"the robust model at eps {lk['eps']:g}, trained on each set, scored on the "
                  "same test images.", "",
                  "| Probe trained on | Test accuracy | 95 % interval | Model minus probe "
                  "(points) | McNemar p (Holm) |", "|---|---|---|---|---|"]
        for name in ("Y1", "Y2", "clean"):
            r = lk[name]
            t = r.get("model_vs_probe")
            label = "(X, y): clean, true labels" if name == "clean" else f"(X', {name})"
            lines.append(f"| {label} | {pct(r['accuracy'])} | {pct(r['lower'])}-"
                         f"{pct(r['upper'])} | "
                         + (f"{100 * t['difference']:+.1f} | {t['p_holm']:.3g} |" if t
                            else "(ceiling) | |"))
    lines.append("")
    for f in result.findings:
        lines.append(f"- {f['text']}: {'held' if f['held'] else 'did NOT hold'} "
                     f"({f['detail']})")
    return "\n".join(lines)


def write_mistakes(result, directory: str) -> dict:
    """Writes mistakes.md, mistakes.csv, mistakes.json and mistakes.png into ``directory``."""
    files = start_report(directory, "mistakes", mistakes_markdown(result))
    with atomic_file(files["csv"], "w") as f:
        w = csv.writer(f)
        w.writerow(["table", "row", "column", "value"])
        for part, s in result.success.items():
            for k, v in s.items():
                w.writerow(["success", part, k, v])
        for by, r in result.relabelled.items():
            for k in ("accuracy", "lower", "upper", "balanced_accuracy", "n"):
                w.writerow(["relabelled_test", by, k, r[k]])
        for name, r in result.leakage.items():
            if isinstance(r, dict):
                for k in ("accuracy", "lower", "upper", "n"):
                    w.writerow(["leakage_probe_test", name, k, r[k]])
    with atomic_file(files["json"], "w") as f:
        json.dump({k: v for k, v in dataclasses.asdict(result).items() if k != "files"}, f,
                  indent=1, default=str)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    hits = ("F1 hits Y1", "F2 hits Y2", "both")
    evals = [(f"test acc.\n(X', {by})", r, "C2") for by, r in result.relabelled.items()]
    evals += [(f"probe\n(X', {by})", result.leakage[by], "C1") for by in ("Y1", "Y2")
              if by in result.leakage]
    vals = [100 * result.success["train"][k] for k in hits] + \
        [100 * r["accuracy"] for _, r, _ in evals]
    err = [[0, 0, 0] + [100 * (r["accuracy"] - r["lower"]) for _, r, _ in evals],
           [0, 0, 0] + [100 * (r["upper"] - r["accuracy"]) for _, r, _ in evals]]
    ax.bar(range(len(vals)), vals, color=["C0"] * 3 + [c for _, _, c in evals], yerr=err,
           capsize=3)
    ax.axhline(100 * result.chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(vals)), [*hits, *(label for label, _, _ in evals)], fontsize=7)
    where = os.path.basename(result.dataset.rstrip("/").split(":")[-1])
    n = next(iter(result.relabelled.values()))["n"]
    finish_plot(plt, fig, ax, files["png"],
                f"Different mistakes ({where}, seed {result.seed}, eps {result.config['eps']:g}, "
                f"test n = {n}): attack success (blue), models trained on relabelled examples "
                "(green), robust-feature leakage probes (orange)", "%", top=105)
    return files
