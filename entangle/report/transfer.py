"""The transfer study's report: Markdown tables with their findings, class-aware bars and
error curves as PNG, CSV and JSON beside them."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from entangle.report import image_grid, json_default, pct, plot_vs_eps, pyplot, start_report
from entangle.runtime.atomic import atomic_file


CLASS_AWARE = (("unfooled", "un-fooled", "#4c9a2a"), ("different", "different mistake",
                                                      "#f0a030"),
               ("same", "same mistake", "#c0392b"))


def _eps_col(e) -> str:
    from entangle.stats.paper import eps_label

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

    def grid(attack, field, caption, fmt=pct):
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
                      f"{pct(both[0]['target_hit_rate'])} %.", ""]
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
                    cells.append(" / ".join(pct(hit[0][f"{prefix}{k}"]) for k, _, _ in
                                            CLASS_AWARE) + f" ({hit[0][prefix + 'n']})"
                                 if hit else "")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
    lines.append("Clean test accuracy (%): " + ", ".join(
        f"{k} {pct(v)}" for k, v in result.clean_accuracy.items())
        + f"; chance {100 * result.chance:.1f} %.")
    for f in result.findings:
        sign = f["sign_test"]
        if f["finding"].startswith("untargeted peak"):
            detail = "; ".join(f"{v}: best small ε {d['best_small']} {pct(d['best_small_rate'])}"
                               f" % vs ε 1 {pct(d['eps1_rate'])} % "
                               f"({100 * d['difference']:+.1f} points, n {d['n']})"
                               for v, d in f["per_victim"].items())
        else:
            detail = "; ".join(f"{v}: {'held' if d['held'] else 'not held'} (ε 0 "
                               f"{pct(d['eps0'])} %, small ε minus ε 0 "
                               f"{100 * d['small_minus_eps0']:+.1f} points, n {d['n']})"
                               for v, d in f["per_victim"].items())
        lines += ["", f"**{f['finding']}**: {f['text']}: "
                  f"{'held' if f['held'] else 'did NOT hold'} (sign test {sign['positive']} "
                  f"up, {sign['negative']} down, p {sign['p']:.3g}; {f['victims_held']} of "
                  f"{f['victims']} victims {'point that way' if 'peak' in f['finding'] else 'held alone'}"
                  f": {f['test']}). {detail}."]
    return "\n".join(lines)


def plot_class_aware(result, path: str, title: str) -> None:
    """Stacked bars of Waseda's ratios: one panel per attack, a group of bars per victim, one
    bar per source eps (un-fooled, different mistake, same mistake)."""
    plt = pyplot()
    attacks = list(dict.fromkeys(r["attack"] for r in result.records
                                 if r.get("class_aware_n") is not None))
    victims = list(result.victims)
    eps = sorted({r["source_eps"] for r in result.records if r["source_eps"] is not None})
    fig, axes = plt.subplots(len(attacks), 1, figsize=(max(6, 1.1 * len(victims) * len(eps)
                                                           / 2.5) + 1.5, 3.2 * len(attacks)),
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
        # outside the axes: inside, it covered a victim's bars
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def write_transfer(result, directory: str) -> dict:
    """Writes transfer.md/.csv/.json, the paper's figures and the class-aware bars as PNG."""
    from entangle.stats.paper import eps_label, plots_only_note

    ds = "ImageNet-9" if result.dataset == "imagenet9" else "CIFAR-10" \
        if result.dataset in ("cifar10",) or result.dataset.startswith("folder:") else \
        result.dataset
    scratch = " (victims from scratch)" if result.victim_weights == "none" else ""
    title = f"Transfer from robust sources, {ds}{scratch}"
    files = start_report(directory, "transfer", transfer_markdown(result, title),
                         ("md", "csv", "json"))
    fields = list(dict.fromkeys(k for r in result.records for k in r))
    with atomic_file(files["csv"], "w") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in result.records:
            w.writerow(r)
    with atomic_file(files["json"], "w") as f:
        json.dump({k: v for k, v in dataclasses.asdict(result).items()
                   if k not in ("files", "outcomes", "grids", "labels")}, f, indent=1,
                  default=json_default)
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
            # rates get intervals from their images; the excess error is a difference
            n_field = (None if field == "excess_error" else
                       "victim_right_n" if field.endswith("_victim_right") else "n")
            plot_vs_eps(series(attack, field), files[name], t, ylabel,
                        chance=result.chance if attack == "targeted" else None, top=None,
                        counts=series(attack, n_field) if n_field else None,
                        note=plots_only_note("Figures 5 and 6 (9 and 8 on ImageNet-9)")
                        + ("" if n_field else " The excess error is a difference of two rates: "
                           "no interval drawn."))
        grids = result.grids
        original = grids.get("_original")
        for attack in ("untargeted", "targeted"):
            if attack not in grids:
                continue
            rows = {"original": original, **{f"source ε {eps_label(e)}": v
                                             for e, v in sorted(grids[attack].items())}}
            labels, head = result.labels[:len(original)], "true class"
            if attack == "targeted" and "_targets" in grids:
                labels, head = grids["_targets"], "target class"
            files[f"adversarial_{attack}"] = os.path.join(directory,
                                                          f"adversarial_{attack}.png")
            image_grid(rows, files[f"adversarial_{attack}"],
                       f"{attack.capitalize()} adversarial examples by source ε (titles: "
                       f"{head})", class_names=result.class_names, labels=labels)
    files["class_aware"] = os.path.join(directory, "class_aware.png")
    plot_class_aware(result, files["class_aware"], title)
    return files
