"""Tables as Markdown/CSV/JSON and figures as PNG (matplotlib, headless)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import textwrap

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
    bracket = any(v is not None for r in result.paper.values() for v in r.values())
    note = " (the paper's in brackets)" if bracket else ""
    lines.append(f"Accuracy in %{note} over n = {result.cells[result.rows[0]]['Test']['n']} images. "
                 f"Chance {100 * result.chance:.1f} %; "
                 f"majority-class rate of the test set {100 * result.majority_rate['Test']:.1f} %"
                 + ("; 'bal' = balanced accuracy (mean per-class recall, chance "
                    f"{100 * result.chance:.1f} %)" if unbalanced else "") + ".")
    if result.median_relative_distance:
        lines.append("Median relative representation distance of each R_eps "
                     "(||rep(x_r) - rep(x)|| / ||rep(x0) - rep(x)||): " + ", ".join(
                         f"{k} {v:.3f}" for k, v in result.median_relative_distance.items()) + ".")
    lines += findings_markdown(result)
    return "\n".join(lines)


def findings_markdown(result) -> list[str]:
    """The findings (each with its test, measure and verdict), the checks reported beside
    them, and the generators' clean and PGD accuracies, as Markdown lines."""
    lines = []
    if getattr(result, "findings", None):
        lines += ["", "The paper's findings on this table (each a test on per-image outcomes; "
                  "alpha 0.05):", ""]
        for f in result.findings:
            lines.append(f"- ({f['finding']}) {f['text']}: **{'held' if f['held'] else 'NOT held'}**"
                         f". Test: {f['test']}, on {f['measure']}. {f['detail']}.")
    if getattr(result, "checks", None):
        lines += ["", "Reported beside the findings (not findings):", ""]
        lines += [f"- {c['check']}: {c['detail']}." for c in result.checks]
    if getattr(result, "generators", None):
        lines += ["", "Generators of the R_eps columns (PGD: " + result.generators[0]["attack"]
                  + "):", "", "| column | generator | epochs | test % | PGD % at its eps | "
                  "standard's PGD % there | median rel. distance | flag |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in result.generators:
            pgd = _pgd_text(g)
            rel = g.get("median_relative_distance")
            lines.append(f"| {g['column']} | {g['model']} | {g.get('epochs_run')} | "
                         f"{_pct(g['test_accuracy'])} | {pgd} | "
                         f"{_pct(g.get('standard_pgd_accuracy'))} | "
                         f"{'' if rel is None else f'{rel:.3f}'} | {g.get('flag') or ''} |")
    return lines


def _start_report(directory: str, stem: str, markdown: str,
                  kinds=("md", "csv", "json", "png")) -> dict:
    """Creates ``directory``, writes ``<stem>.md`` atomically and returns the paths of
    ``<stem>.<kind>`` for every kind (the caller writes the rest)."""
    os.makedirs(directory, exist_ok=True)
    files = {k: os.path.join(directory, f"{stem}.{k}") for k in kinds}
    with atomic_file(files["md"], "w") as f:
        f.write(markdown + "\n")
    return files


def write_table(result, directory: str, title: str, plot_title: str | None = None) -> dict:
    """Writes table.md, table.csv, table.json and table.png into ``directory``."""
    files = _start_report(directory, "table", table_markdown(result, title))
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
        json.dump(table_json(result), f, indent=1, default=_json_default)
    if result.generators:
        files["generators_csv"] = os.path.join(directory, "generators.csv")
        with atomic_file(files["generators_csv"], "w") as f:
            w = csv.writer(f)
            w.writerow(["column", "generator", "eps", "epochs_run", "test_accuracy",
                        "pgd_eps", "pgd_accuracy", "standard_pgd_accuracy",
                        "median_relative_distance", "flag", "attack", "model_key"])
            for g in result.generators:
                pgd = g["pgd_accuracy"] if isinstance(g["pgd_accuracy"], dict) else \
                    {g["column"][2:]: g["pgd_accuracy"]}
                for e, v in pgd.items():
                    w.writerow([g["column"], g["model"], g["eps"], g.get("epochs_run"),
                                g["test_accuracy"], e, v, g.get("standard_pgd_accuracy"),
                                g.get("median_relative_distance"), g.get("flag") or "",
                                g["attack"], g["key"]])
    outcomes = os.path.join(directory, "outcomes.npz")
    with atomic_file(outcomes) as f:
        np.savez(f, labels=result.labels, **{f"{r}|{c}": v for r, cols in result.correct.items()
                                            for c, v in cols.items()})
    files["outcomes"] = outcomes
    plot_table(result, files["png"], plot_title or title)
    return files


def table_json(result) -> dict:
    """A TableResult as JSON-ready data (per-image outcomes go to outcomes.npz instead)."""
    return {k: v for k, v in dataclasses.asdict(result).items()
            if k not in ("files", "correct", "labels")}


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path: str, title: str, ylabel: str, top: float | None = 100) -> None:
    """Percent axis (0 to ``top``; None: fitted to the data), title, legend; saved atomically
    as PNG."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), top)   # below 0 only for signed quantities
    ax.set_title(title if "\n" in title else "\n".join(textwrap.wrap(title, 72)), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def plot_table(result, path: str, title: str) -> None:
    """Accuracy vs column (Test, R_0, R_eps...), one line per classifier with 95 % Wilson
    intervals, the paper's values as crosses on dotted lines of the same colour, chance
    dashed."""
    from entangle.entanglement import wilson_interval

    lines = []
    for row in result.rows:
        reps = [result.cells[row][c] for c in result.columns]
        acc = np.array([100 * r["accuracy"] for r in reps])
        ci = np.array([wilson_interval(r["accuracy"], r["n"]) for r in reps]) * 100
        lines.append((row, acc, [acc - ci[:, 0], ci[:, 1] - acc],
                      [result.paper[row].get(c) for c in result.columns]))
    _plot_columns(result.columns, lines, result.chance, path,
                  title + " (bars: 95 % intervals)")


def _plot_columns(columns, lines, chance, path: str, title: str) -> None:
    """One line per (label, values %, error bars, paper's values or None) over the table's
    columns; the paper's values dotted in the same colour; chance dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    x = np.arange(len(columns))
    for label, values, err, ref in lines:
        line = ax.errorbar(x, values, yerr=err, fmt="o-", capsize=3, label=label)
        if any(v is not None for v in ref):
            ax.plot(x, [np.nan if v is None else v for v in ref], ":", marker="x",
                    color=line.lines[0].get_color(), alpha=0.7)
    ax.plot([], [], "k:", marker="x", label="paper")
    ax.axhline(100 * chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(x, columns)
    _finish(plt, fig, ax, path, title, "accuracy (%)")


def _pgd_text(generator: dict, sep: str = ": ") -> str:
    """A generator's PGD accuracy: one value, or per column eps for the standard model."""
    pgd = generator["pgd_accuracy"]
    if isinstance(pgd, dict):
        return ", ".join(f"{k}{sep}{_pct(v)}" for k, v in pgd.items())
    return _pct(pgd)


def seeds_markdown(result, title: str) -> str:
    """Per cell mean ± sd over seeds beside the paper's value; per finding, seeds held."""
    first = result.tables[result.seeds[0]]
    head = ["Classifier"] + first.columns
    lines = [f"**{title}: seeds {', '.join(map(str, result.seeds))}**", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in first.rows:
        cells = []
        for c in first.columns:
            a = result.aggregate[row][c]
            sd = "" if np.isnan(a["sd"]) else f" ± {100 * a['sd']:.1f}"
            cells.append(f"{100 * a['mean']:.1f}{sd}" + (f" ({a['paper']:g})" if a["paper"]
                                                          is not None else ""))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"Accuracy in %, mean ± sd over {len(result.seeds)} seeds (the paper's in "
              f"brackets); n = {len(first.labels)} test images, chance "
              f"{100 * first.chance:.1f} %.", "", "| finding | test | held in | per seed |",
              "|---|---|---|---|"]
    for name, f in result.findings.items():
        per = ", ".join(f"{s}: {'held' if h else 'not held'}" for s, h in f["per_seed"].items())
        lines.append(f"| ({name}) {f['text']} | {f['test']} | {f['held']} of {f['of']} seeds | "
                     f"{per} |")
    lines += ["", "Generators per seed (clean test % / PGD % at the model's eps; the standard "
              "model: PGD at each column's eps):", ""]
    for s in result.seeds:
        gens = result.tables[s].generators
        if gens:
            parts = []
            for g in gens:
                parts.append(f"{g['model']} {_pct(g['test_accuracy'])} / {_pgd_text(g, ' ')}"
                             + (" [flag]" if g.get("flag") else ""))
            lines.append(f"- seed {s}: " + "; ".join(parts))
    lines.append(f"\nWall time in this process: {result.seconds:.0f} s for all seeds "
                 f"({len(result.built)} artifacts built here).")
    return "\n".join(lines)


def write_seeds(result, directory: str, title: str) -> dict:
    """Writes seeds.md, seeds.json (aggregate and findings per seed) and seeds.png."""
    files = _start_report(directory, "seeds", seeds_markdown(result, title),
                          kinds=("md", "json", "png"))
    with atomic_file(files["json"], "w") as f:
        json.dump({"seeds": result.seeds, "aggregate": result.aggregate,
                   "findings": result.findings, "seconds": result.seconds,
                   "tables": {s: table_json(t) for s, t in result.tables.items()}}, f,
                  indent=1, default=_json_default)
    plot_seeds(result, files["png"], title)
    return files


def plot_seeds(result, path: str, title: str) -> None:
    """Mean accuracy per column over seeds (bars: sd), one line per classifier, the paper's
    values as crosses on dotted lines of the same colour, chance dashed."""
    first = result.tables[result.seeds[0]]
    lines = []
    for row in first.rows:
        agg = [result.aggregate[row][c] for c in first.columns]
        lines.append((row, np.array([100 * a["mean"] for a in agg]),
                      np.nan_to_num(np.array([100 * a["sd"] for a in agg])),
                      [a["paper"] for a in agg]))
    _plot_columns(first.columns, lines, first.chance, path, f"{title}: mean ± sd over seeds "
                  f"{', '.join(map(str, result.seeds))}")


def plot_vs_eps(series: dict, path: str, title: str, ylabel: str, chance: float | None = None,
                paper: dict | None = None, top: float | None = 100) -> None:
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
    _finish(plt, fig, ax, path, title, ylabel, top)


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


# ------------------------------------------------------------------------------ transfer

CLASS_AWARE = (("unfooled", "un-fooled", "#4c9a2a"), ("different", "different mistake",
                                                       "#f0a030"),
               ("same", "same mistake", "#c0392b"))


def _eps_col(e) -> str:
    from entangle.paper import eps_label

    return "all" if e is None else eps_label(e)


def transfer_markdown(result, title: str) -> str:
    """Figure 5/6 numbers (rows: models, columns: source eps), the class-aware ratios, the
    clean accuracies and the paper's direction, as Markdown."""
    lines = [f"**{title}**", ""]
    if result.victim_weights == "none":
        lines += ["Victims trained from scratch (`--victim_weights=none`), not fine-tuned "
                  "from ImageNet weights as in the paper.", ""]
    models_ = [r["model"] for r in result.records]
    models_ = list(dict.fromkeys(models_))
    eps = sorted({r["source_eps"] for r in result.records if r["source_eps"] is not None})

    def grid(attack, field, caption, fmt=_pct):
        rows = [m for m in models_ if any(r["attack"] == attack and r["model"] == m
                                          and r.get(field) is not None
                                          and r["source_eps"] is not None
                                          for r in result.records)]
        if not rows:
            return
        lines.extend([caption, "", "| model | " + " | ".join(f"ε {_eps_col(e)}" for e in eps)
                      + " |", "|" + "---|" * (len(eps) + 1)])
        for m in rows:
            cells = []
            for e in eps:
                hit = [r for r in result.records if r["attack"] == attack and r["model"] == m
                       and r["source_eps"] == e]
                cells.append(fmt(hit[0][field]) if hit else "")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")

    if result.mode == "n_targeted":
        grid("n_targeted", "target_hit_rate", "N-targeted attack: hit rate of each source's "
             "target (%), per source ε (columns); first hit: the source said it at some step")
        both = [r for r in result.records if r["model"] == "all sources"]
        if both:
            lines += [f"All sources hit their own targets at once: "
                      f"{_pct(both[0]['target_hit_rate'])} %.", ""]
    else:
        grid("untargeted", "error_rate", "Untargeted, all images (the paper's view): error "
             "rate (%) on adversarial examples of each source ε (Figure 5/8)")
        grid("untargeted", "excess_error", "Untargeted, conditioned: error in excess of the "
             "model's own clean error (points)")
        grid("untargeted", "error_rate_victim_right", "Untargeted, conditioned: error rate (%) "
             "over the images the model classifies correctly when clean")
        grid("targeted", "target_hit_rate", "Targeted, all images (the paper's view): target "
             "hit rate (%) (Figure 6/9)")
        grid("targeted", "target_hit_rate_victim_right", "Targeted, conditioned: target hit "
             "rate (%) over the images the model classifies correctly when clean")
    grid("n_targeted", "first_hit_median_step", "N-targeted: median step at which each "
         "source first predicted its own target (over the images where it did)",
         fmt=lambda v: f"{v:g}")
    for attack in dict.fromkeys(r["attack"] for r in result.records):
        rows = [r for r in result.records if r["attack"] == attack and r["model"] not in
                ("source (white-box)", "all sources", "first hit")]
        for prefix, view in (("class_aware_", "over D'_F1 (Waseda's definition)"),
                             ("class_aware_victim_right_", "over D'_F1 restricted to the "
                              "images the victim classifies correctly when clean")):
            if not rows or f"{prefix}n" not in rows[0]:
                continue
            lines.extend([f"Class-aware ({attack}): un-fooled / different mistake / same "
                          f"mistake (%) {view} (n)", "",
                          "| model | " + " | ".join(f"ε {_eps_col(e)}" for e in eps) + " |",
                          "|" + "---|" * (len(eps) + 1)])
            for m in dict.fromkeys(r["model"] for r in rows):
                cells = []
                for e in eps:
                    hit = [r for r in rows if r["model"] == m and r["source_eps"] == e]
                    cells.append(" / ".join(_pct(hit[0][f"{prefix}{k}"]) for k, _, _ in
                                            CLASS_AWARE) + f" ({hit[0][prefix + 'n']})"
                                 if hit else "")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
    lines.append("Clean test accuracy (%): " + ", ".join(
        f"{k} {_pct(v)}" for k, v in result.clean_accuracy.items())
        + f"; chance {100 * result.chance:.1f} %.")
    for f in result.findings:
        sign = f["sign_test"]
        detail = "; ".join(f"{v}: {'held' if d['held'] else 'not held'} (ε 0 "
                           f"{_pct(d['eps0'])} %, small ε minus ε 0 "
                           f"{100 * d['small_minus_eps0']:+.1f} points, n {d['n']})"
                           for v, d in f["per_victim"].items())
        lines += ["", f"**{f['finding']}**: {f['text']}: "
                  f"{'held' if f['held'] else 'did NOT hold'} (sign test {sign['positive']} "
                  f"up, {sign['negative']} down, p {sign['p']:.3g}; {f['victims_held']} of "
                  f"{f['victims']} victims held alone: {f['test']}). {detail}."]
    return "\n".join(lines)


def plot_class_aware(result, path: str, title: str) -> None:
    """Stacked bars of Waseda's ratios: one panel per attack, a group of bars per victim, one
    bar per source eps (un-fooled, different mistake, same mistake)."""
    plt = _plt()
    attacks = list(dict.fromkeys(r["attack"] for r in result.records
                                 if r.get("class_aware_n") is not None))
    victims = list(result.victims)
    eps = sorted({r["source_eps"] for r in result.records if r["source_eps"] is not None})
    fig, axes = plt.subplots(len(attacks), 1, figsize=(max(6, 1.1 * len(victims) * len(eps)
                                                           / 2.5), 3.2 * len(attacks)),
                             dpi=100, squeeze=False)
    width = 0.8 / max(1, len(eps))
    for ax, attack in zip(axes[:, 0], attacks):
        for vi, v in enumerate(victims):
            for ei, e in enumerate(eps):
                hit = [r for r in result.records if r["attack"] == attack and r["model"] == v
                       and r["source_eps"] == e]
                if not hit or not hit[0]["class_aware_n"]:
                    continue
                x = vi + (ei - (len(eps) - 1) / 2) * width
                bottom = 0.0
                for k, label, color in CLASS_AWARE:
                    h = 100 * hit[0][f"class_aware_{k}"]
                    ax.bar(x, h, width * 0.9, bottom=bottom, color=color,
                           label=label if vi == 0 and ei == 0 else None)
                    bottom += h
                ax.text(x, 101, _eps_col(e), ha="center", va="bottom", fontsize=6,
                        rotation=90)
        ax.set_xticks(range(len(victims)), victims, fontsize=8)
        ax.set_ylim(0, 115)
        ax.set_ylabel("% of D'_F1")
        ax.set_title(f"{attack}: class-aware transfer by source ε (label above each bar)",
                     fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def write_transfer(result, grids: dict, test, directory: str) -> dict:
    """Writes transfer.md/.csv/.json, the paper's figures and the class-aware bars as PNG."""
    from entangle.paper import eps_label

    ds = "ImageNet-9" if result.dataset == "imagenet9" else "CIFAR-10" \
        if result.dataset in ("cifar10",) or result.dataset.startswith("folder:") else \
        result.dataset
    scratch = " (victims from scratch)" if result.victim_weights == "none" else ""
    title = f"Transfer from robust sources, {ds}{scratch}"
    files = _start_report(directory, "transfer", transfer_markdown(result, title),
                          ("md", "csv", "json"))
    fields = list(dict.fromkeys(k for r in result.records for k in r))
    with atomic_file(files["csv"], "w") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in result.records:
            w.writerow(r)
    with atomic_file(files["json"], "w") as f:
        json.dump({k: v for k, v in dataclasses.asdict(result).items()
                   if k not in ("files", "outcomes")}, f, indent=1, default=_json_default)
    if result.outcomes:
        files["outcomes"] = os.path.join(directory, "outcomes.npz")
        with atomic_file(files["outcomes"]) as f:
            np.savez_compressed(f, **result.outcomes)

    def series(attack, field):
        out = {}
        for r in result.records:
            if r["attack"] == attack and r.get(field) is not None and r["source_eps"] is not None \
                    and r["model"] != "source (white-box)":
                out.setdefault(r["model"], {})[r["source_eps"]] = r[field]
        return out

    if result.mode == "per_source":
        figs = (("untargeted", "error_rate", "untargeted_error",
                 "Untargeted transfer: victims' error rate, all images" + scratch,
                 "error rate (%)"),
                ("untargeted", "excess_error", "untargeted_excess_error",
                 "Untargeted transfer, conditioned: error in excess of the victim's clean "
                 "error" + scratch, "excess error (points)"),
                ("targeted", "target_hit_rate", "targeted_hit_rate",
                 "Targeted transfer: victims' target hit rate, all images" + scratch,
                 "target hit rate (%)"),
                ("targeted", "target_hit_rate_victim_right", "targeted_hit_rate_victim_right",
                 "Targeted transfer, conditioned: hit rate over images the victim gets right"
                 + scratch, "target hit rate (%)"))
        for attack, field, name, t, ylabel in figs:
            files[name] = os.path.join(directory, f"{name}.png")
            plot_vs_eps(series(attack, field), files[name], t, ylabel,
                        chance=result.chance if attack == "targeted" else None, top=None)
        original = grids.get("_original")
        for attack in ("untargeted", "targeted"):
            if attack not in grids:
                continue
            rows = {"original": original, **{f"source ε {eps_label(e)}": v
                                             for e, v in sorted(grids[attack].items())}}
            labels, head = test.y[:len(original)], "true class"
            if attack == "targeted" and "_targets" in grids:
                labels, head = grids["_targets"], "target class"
            files[f"adversarial_{attack}"] = os.path.join(directory,
                                                          f"adversarial_{attack}.png")
            image_grid(rows, files[f"adversarial_{attack}"],
                       f"{attack.capitalize()} adversarial examples by source ε (titles: "
                       f"{head})", class_names=test.class_names, labels=labels)
    files["class_aware"] = os.path.join(directory, "class_aware.png")
    plot_class_aware(result, files["class_aware"], title)
    return files


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
        lines.append(f"| {part} | {_pct(s['F1 hits Y1'])} | {_pct(s['F2 hits Y2'])} | "
                     f"{_pct(s['both'])} | {s['n']} |")
    lines += ["", "| Trained on | Test accuracy | 95 % interval | Chance |", "|---|---|---|---|"]
    for by, r in result.relabelled.items():
        lines.append(f"| (X', {by}) | {_pct(r['accuracy'])} | {_pct(r['lower'])}-"
                     f"{_pct(r['upper'])} | {100 * result.chance:.1f} |")
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
            lines.append(f"| {label} | {_pct(r['accuracy'])} | {_pct(r['lower'])}-"
                         f"{_pct(r['upper'])} | "
                         + (f"{100 * t['difference']:+.1f} | {t['p_holm']:.3g} |" if t
                            else "(ceiling) | |"))
    lines.append("")
    for f in result.findings:
        lines.append(f"- {f['text']}: {'held' if f['held'] else 'did NOT hold'} "
                     f"({f['detail']})")
    return "\n".join(lines)


def write_mistakes(result, directory: str) -> dict:
    """Writes mistakes.md, mistakes.csv, mistakes.json and mistakes.png into ``directory``."""
    files = _start_report(directory, "mistakes", mistakes_markdown(result))
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
    plt = _plt()
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
    _finish(plt, fig, ax, files["png"], f"Different mistakes ({where}, seed {result.seed}, eps "
            f"{result.config['eps']:g}, test n = {n}): attack success (blue), models trained on "
            "relabelled examples (green), robust-feature leakage probes (orange)", "%", top=105)
    return files
