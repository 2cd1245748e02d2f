"""Tables as Markdown/CSV/JSON and figures as PNG (matplotlib, headless)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import textwrap

import numpy as np

from entangle.runtime.atomic import atomic_file


CONFIGURATION = "configuration.json"


def write_results(writer, result, results_dir: str, *args,
                  configuration: dict | None = None) -> tuple[dict, str | None]:
    """(files, None), or ({}, why) when the results folder cannot be written (a read-only
    store) or holds the results of another ``configuration`` (recorded in its
    configuration.json, which is written first): the result was computed and is still shown
    by the caller, and nothing is overwritten."""
    from entangle.store import config_hash, describe_os_error

    try:
        if configuration is not None:
            why = _claim(results_dir, configuration, config_hash(configuration))
            if why:
                return {}, why
        return writer(result, results_dir, *args), None
    except OSError as e:
        return {}, (f"cannot write the results to {results_dir} ({describe_os_error(e)}); "
                    f"pass --results_dir=DIR to write them elsewhere")


def _claim(results_dir: str, configuration: dict, digest: str) -> str | None:
    """Records ``configuration`` in ``results_dir``, or says why not: the folder holds the
    results of another configuration."""
    path = os.path.join(results_dir, CONFIGURATION)
    try:
        with open(path) as f:
            theirs = json.load(f)
    except FileNotFoundError:
        theirs = None
    except ValueError as e:     # other OSErrors (a file in the way) are write_results'
        return (f"{path} is unreadable ({e}); not writing into {results_dir}: pass "
                f"--results_dir=DIR to write elsewhere, or remove that folder")
    if theirs is not None:
        if theirs.get("sha256") == digest:
            return None
        changed = sorted(k for k in set(configuration) | set(theirs.get("flags", {}))
                         if configuration.get(k) != theirs.get("flags", {}).get(k))
        return (f"{results_dir} holds the results of another configuration (they differ in "
                f"{', '.join('--' + k for k in changed[:6]) or 'their recorded hash'}); not "
                f"overwriting them: pass --results_dir=DIR to write elsewhere")
    os.makedirs(results_dir, exist_ok=True)
    with atomic_file(path, "w") as f:
        json.dump({"sha256": digest, "flags": configuration}, f, indent=1, sort_keys=True,
                  default=json_default)
    return None


def pct(x) -> str:
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
            text = pct(rep["accuracy"])
            if unbalanced:
                text += f" / bal {pct(rep['balanced_accuracy'])}"
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
            if f.get("loose"):
                lo = f["loose"]
                lines.append(f"  - earlier, looser rule ({lo['rule']}): "
                             f"{'held' if lo['held'] else 'not held'}. {lo['detail']}.")
    if getattr(result, "checks", None):
        lines += ["", "Reported beside the findings (not findings):", ""]
        lines += [f"- {c['check']}: {c['detail']}." for c in result.checks]
    if getattr(result, "generators", None):
        strong = result.generators[0].get("strong_attack")
        lines += ["", "Generators of the R_eps columns (PGD: " + result.generators[0]["attack"]
                  + (f"; strong: {strong}" if strong else "") + "):", "",
                  "| column | generator | epochs | test % | PGD % at its eps | strong PGD % "
                  "(PGD on the same images) | standard's PGD % there (strong) | median rel. "
                  "distance | flag |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g in result.generators:
            rel = g.get("median_relative_distance")
            std = pct(g.get("standard_pgd_accuracy"))
            if g.get("standard_strong_pgd_accuracy") is not None:
                std += f" ({pct(g['standard_strong_pgd_accuracy'])})"
            lines.append(f"| {g['column']} | {g['model']} | {g.get('epochs_run')} | "
                         f"{pct(g['test_accuracy'])} | {_pgd_text(g)} | "
                         f"{_strong_text(g)} | {std} | "
                         f"{'' if rel is None else f'{rel:.3f}'} | {g.get('flag') or ''} |")
    return lines


def start_report(directory: str, stem: str, markdown: str,
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
    files = start_report(directory, "table", table_markdown(result, title))
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
        json.dump(table_json(result), f, indent=1, default=json_default)
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
        extra = {} if result.seed_images is None else {"seed_images": result.seed_images}
        np.savez(f, labels=result.labels, **extra,
                 **{f"{r}|{c}": v for r, cols in result.correct.items() for c, v in cols.items()},
                 **{f"{r}|seed control": v for r, v in result.seed_control.items()})
    files["outcomes"] = outcomes
    plot_table(result, files["png"], plot_title or title)
    return files


def table_json(result) -> dict:
    """A TableResult as JSON-ready data (per-image outcomes go to outcomes.npz instead)."""
    return {k: v for k, v in dataclasses.asdict(result).items()
            if k not in ("files", "correct", "labels", "seed_control", "seed_images")}


def json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish_plot(plt, fig, ax, path: str, title: str, ylabel: str, top: float | None = 100,
                note: str = "") -> None:
    """Percent axis (0 to ``top``; None: fitted to the data), title, legend, and ``note`` (what
    the marks are, where the paper has no values) in small print at the foot; saved atomically
    as PNG."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), top)   # below 0 only for signed quantities
    ax.set_title(title if "\n" in title else "\n".join(textwrap.wrap(title, 72)), fontsize=10)
    # outside the axes: inside, it hid the paper's high values (robust row at R_1/2, R_1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    note_lines = textwrap.wrap(note, 110)
    if note_lines:
        fig.text(0.01, 0.01, "\n".join(note_lines), fontsize=7, color="dimgrey", va="bottom")
    fig.tight_layout(rect=(0, 0.05 * len(note_lines), 1, 1) if note_lines else None)
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def plot_table(result, path: str, title: str) -> None:
    """Accuracy vs column (Test, R_0, R_eps...), one line per classifier with 95 % Wilson
    intervals, the paper's values as crosses on dotted lines of the same colour, chance
    dashed."""
    from entangle.stats.findings import wilson_interval

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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    x = np.arange(len(columns))
    # Test (clean images) is not a point of the R_eps curve: drawn apart, not joined to it
    parts = [slice(0, 1), slice(1, None)] if columns[0] == "Test" else [slice(None)]
    for label, values, err, ref in lines:
        color, err = None, np.asarray(err)    # (columns,) symmetric or (2, columns)
        for part in parts:
            line = ax.errorbar(x[part], values[part], yerr=err[..., part], fmt="o-",
                               capsize=3, color=color, label=label if color is None else None)
            color = line.lines[0].get_color()
            if any(v is not None for v in ref[part]):
                ax.plot(x[part], [np.nan if v is None else v for v in ref[part]], ":",
                        marker="x", color=color, alpha=0.7)
    if any(v is not None for *_, ref in lines for v in ref):
        ax.plot([], [], "k:", marker="x", label="paper")
    ax.axhline(100 * chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(x, columns)
    finish_plot(plt, fig, ax, path, title, "accuracy (%)")


def _strong_text(generator: dict) -> str:
    """The stronger attack's accuracy beside the reporting PGD's on the same images."""
    strong, same = generator.get("strong_pgd_accuracy"), generator.get(
        "pgd_accuracy_strong_images")
    if strong is None:
        return ""
    if isinstance(strong, dict):
        return ", ".join(f"{k}: {pct(v)} ({pct(same[k])})" for k, v in strong.items())
    return f"{pct(strong)} ({pct(same)})"


def _pgd_text(generator: dict, sep: str = ": ", key: str = "pgd_accuracy") -> str:
    """A generator's PGD accuracy: one value, or per column eps for the standard model."""
    pgd = generator.get(key)
    if isinstance(pgd, dict):
        return ", ".join(f"{k}{sep}{pct(v)}" for k, v in pgd.items())
    return pct(pgd)


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
              f"{100 * first.chance:.1f} %.", "",
              "| finding | test | held in | per seed | earlier, looser rule: held in |",
              "|---|---|---|---|---|"]
    for name, f in result.findings.items():
        per = ", ".join(f"{s}: {'held' if h else 'not held'}" for s, h in f["per_seed"].items())
        loose = (f"{f['loose_rule']}: {f['loose_held']} of {f['of']}" if f.get("loose_rule")
                 else "")
        lines.append(f"| ({name}) {f['text']} | {f['test']} | {f['held']} of {f['of']} seeds | "
                     f"{per} | {loose} |")
    lines += cross_seed_markdown(getattr(result, "cross_seed", None))
    lines += ["", "Generators per seed (clean test % / PGD % at the model's eps; the standard "
              "model: PGD at each column's eps):", ""]
    for s in result.seeds:
        gens = result.tables[s].generators
        if gens:
            parts = []
            for g in gens:
                parts.append(f"{g['model']} {pct(g['test_accuracy'])} / {_pgd_text(g, ' ')}"
                             + (" [flag]" if g.get("flag") else ""))
            lines.append(f"- seed {s}: " + "; ".join(parts))
    lines.append(f"\nWall time in this process: {result.seconds:.0f} s for all seeds "
                 f"({len(result.built)} artifacts built here).")
    return "\n".join(lines)


def cross_seed_markdown(cross: dict) -> list[str]:
    """The cross-seed matrix: each row's classifier on its own seed's sets and on the other
    seeds' sets, with the paired tests of the difference."""
    if not cross:
        return []
    seeds = cross["seeds"]
    first = next(iter(cross["rows"].values()))
    columns = list(first)
    lines = ["", f"Cross-seed check (no training): each row's classifier of seed i on the sets "
             f"of seed j, seeds {', '.join(map(str, seeds))}. Cell: mean accuracy % on its "
             "own seed's set / on the other seeds' sets (i != j); in brackets the pairs where "
             "the own-seed classifier differs significantly from another seed's on the same "
             "images (exact McNemar, Holm over the pairs). Models that share nothing across "
             "seeds show no gap.", "",
             "| classifier | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row, cols in cross["rows"].items():
        cells = [f"{100 * c['same_mean']:.1f} / {100 * c['cross_mean']:.1f} "
                 f"({c['significant_pairs']} of {len(c['pairs'])})" for c in cols.values()]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def write_seeds(result, directory: str, title: str) -> dict:
    """Writes each seed's table into ``seed<N>/``, then seeds.md, seeds.json (aggregate,
    findings per seed, cross-seed matrix) and seeds.png."""
    for s, table in result.tables.items():
        table.files, table.write_error = write_results(write_table, table,
                                                       os.path.join(directory, f"seed{s}"),
                                                       f"{title}, seed {s}")
    files = start_report(directory, "seeds", seeds_markdown(result, title),
                         kinds=("md", "json", "png"))
    with atomic_file(files["json"], "w") as f:
        json.dump({"seeds": result.seeds, "aggregate": result.aggregate,
                   "findings": result.findings, "seconds": result.seconds,
                   "cross_seed": result.cross_seed,
                   "tables": {s: table_json(t) for s, t in result.tables.items()}}, f,
                  indent=1, default=json_default)
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
                paper: dict | None = None, top: float | None = 100,
                counts: dict | None = None, note: str = "") -> None:
    """The paper's figure form: x = eps on a log axis, eps = 0 drawn at the left edge beyond a
    marked break and not joined to the rest; one line per series ({name: {eps: value in
    [0, 1]}}), with 95 % Wilson intervals where ``counts`` ({name: {eps: n}}) gives the images
    behind each rate; the paper's values (in %) dotted."""
    from entangle.stats.findings import wilson_interval

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    eps_all = sorted({e for s in series.values() for e in s} | set((paper or {}).keys()))
    positive = [e for e in eps_all if e > 0] or [1.0]
    zero_at = min(positive) / 4

    def draw(values: dict, percent: float, n: dict | None = None, paper_style=False, **style):
        """eps = 0 as a lone point, eps > 0 as a line: nothing crosses the axis break."""
        color = "k" if paper_style else None
        for part in ([e for e in values if e == 0], sorted(e for e in values if e > 0)):
            if not part:
                continue
            x = [zero_at if e == 0 else e for e in part]
            y = np.array([percent * values[e] for e in part], float)
            err = None
            if n and all(n.get(e) for e in part):
                ci = 100 * np.array([wilson_interval(values[e], n[e]) for e in part])
                err = [y - ci[:, 0], ci[:, 1] - y]
            line = ax.errorbar(x, y, yerr=err, fmt=":x" if paper_style else "o-", capsize=3,
                               color=color, **style).lines[0]
            color = line.get_color()
            style.pop("label", None)

    for name, values in series.items():
        draw(values, 100, (counts or {}).get(name), label=name)
    if paper:
        draw(paper, 1, paper_style=True, label="paper")
    if chance is not None:
        ax.axhline(100 * chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xscale("log")
    ticks = [zero_at] + positive
    ax.set_xticks(ticks, ["0"] + [_eps_tick(e) for e in positive])
    ax.minorticks_off()
    ax.axvline(zero_at * 1.6, color="lightgrey", lw=0.8)  # break between eps = 0 and the rest
    ax.set_xlabel("ε (log scale; 0 at the left, beyond the break)")
    finish_plot(plt, fig, ax, path, title + (" (bars: 95 % intervals)" if counts else ""),
                ylabel, top, note)


def _eps_tick(e: float) -> str:
    from entangle.stats.paper import eps_label

    return eps_label(e)


def image_grid(rows: dict, path: str, title: str, class_names=None, labels=None,
               max_cols: int = 8) -> None:
    """A grid of images: one row per entry of ``rows`` ({row title: images [0, 1]}).
    ``labels``: class indices titling the top row's images, or {row title: indices} titling
    each image of those rows with its own class."""
    plt = pyplot()
    by_row = labels if isinstance(labels, dict) else (
        {} if labels is None else {next(iter(rows)): labels})
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
            if name in by_row and class_names is not None:
                ax.set_title(class_names[int(by_row[name][c])], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
