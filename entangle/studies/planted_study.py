"""Ground truth for the paper's inference: its answer beside what is measurably there.

The paper argues that a zero-robust classifier scores above chance on a robustified set R_eps
only if R_eps carries non-robust features entangled with robust ones (Type B), with the
neg-robust classifier as a control. On planted data (``entangle/planted.py``) the patterns
are known: A robust, B its entangled texture, C an artifact, D co-located noise. For every
world (ABC, AB, AD, AC, A), seed and construction budget, ``run_planted_study`` runs the
Table 1 protocol (``entanglement.run_table``) and measures the truth:

* which patterns each classifier uses (probe sets carrying one pattern type only);
* which patterns each R_eps carries (a detector per type, calibrated on images with the
  pattern inserted at known amplitudes; label vs another class on the same images, McNemar);
* the premise per R_eps: relative distance, the generator's accuracy on it, and whether it
  carries the label's A (a run whose R_eps does not is "premise not met", not scored);
* robust-feature leakage into the constructed sets, Goh's way (a linear classifier on
  template projections, trained on the set, scored on clean test images).

The truth per R_eps column: B planted, carried by R_eps and used by the zero-robust model.
The verdict is a confusion table of the protocol's answer against it, per column and budget,
with the mechanism of every error.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from entangle import data, stats
from entangle.core import linear_probe as probe_lib
from entangle.data import planted
from entangle.stats import findings as table_findings, paper
from entangle.store import plan as plan_lib
from entangle.studies import entanglement, pipeline

WORLDS = ("ABC", "AB", "AD", "AC", "A")
DECOYS = 19             # unplanted pattern sets per type: the carry test's null (p >= 1/20)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    feature_sets: tuple[str, ...] = WORLDS
    seeds: tuple[int, ...] = (0, 1)
    table: entanglement.TableConfig = entanglement.TableConfig(eps=1.0, columns=(0.0, 0.25, 1.0))
    probe_size: int = 1000
    construct_eps: tuple[float, ...] = (0.5, 1.5)   # Table 4's, and above B, C, D's norm
    detector_fpr: float = 0.05
    probe_l2: float = 1e-3

    def __post_init__(self):
        if not self.feature_sets:
            raise ValueError("feature_sets must name at least one planted world")
        for s in self.feature_sets:
            planted.check_features(s, "feature sets")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one; got {self.seeds}")
        if self.probe_size < 1:
            raise ValueError(f"probe_size must be >= 1; got {self.probe_size}")
        if not any(e > 0 for e in self.table.columns):
            raise ValueError("the study needs at least one R_eps column with eps > 0")
        missing = {"zero_robust", "neg_robust"} - set(self.table.rows)
        if missing:
            raise ValueError(f"the study needs the rows {sorted(missing)}")
        if not self.construct_eps or any(e <= 0 for e in self.construct_eps) or \
                len(set(self.construct_eps)) != len(self.construct_eps):
            raise ValueError(f"construct_eps must be distinct budgets > 0; got "
                             f"{self.construct_eps}")
        if not 0 < self.detector_fpr < 0.5:
            raise ValueError(f"detector_fpr must be in (0, 0.5); got {self.detector_fpr}")


@dataclasses.dataclass
class RunResult:
    """One world and seed, every budget: tables, probes, detectors, premise, leakage, truth."""

    features: str
    seed: int
    tables: dict        # budget -> TableResult
    probes: dict        # classifier -> "A-absent", ... -> accuracy report
    detectors: dict     # pattern type -> threshold, fpr, sensitivity
    carries: dict       # set (Test, R_0, ...) -> pattern type -> rate, control, p, carried
    premise: dict       # R_eps (eps > 0) -> relative distance, generator accuracy, carries A
    leakage: dict       # budget -> constructed set -> pattern type -> accuracy, low, leaks
    protocol: dict      # budget -> R_eps -> zero/neg lower bounds, says_b; "all": overall
    truth: dict         # budget -> R_eps -> b, and the routes (pattern carried and used)

    @property
    def premise_met(self) -> bool:
        return all(p["met"] for p in self.premise.values())


@dataclasses.dataclass
class StudyResult:
    runs: list[RunResult]
    chance: float
    columns: list[str]            # the scored R_eps columns
    budgets: list[float]
    verdict: dict                 # budget -> column -> confusion counts and errors
    summary: str
    files: dict = dataclasses.field(default_factory=dict)
    write_error: str | None = None      # why results_dir could not be written, if it could not


def planted_config(exp_cfg: pipeline.ExperimentConfig, features: str, seed: int
                   ) -> pipeline.ExperimentConfig:
    """``exp_cfg`` on the planted data with these features, its planted world (patterns),
    data, construction, robustification and every model seed moved by ``seed``."""
    world = dataclasses.replace(exp_cfg.data.planted or planted.PlantedConfig(),
                                features=features, seed=seed)
    return dataclasses.replace(
        exp_cfg,
        data=dataclasses.replace(exp_cfg.data, dataset="planted", planted=world, seed=seed),
        hparams={k: dataclasses.replace(h, seed=h.seed + seed)
                 for k, h in exp_cfg.hparams.items()},
        construct=dataclasses.replace(exp_cfg.construct, seed=seed),
        robustify=dataclasses.replace(exp_cfg.robustify, seed=seed))


def with_budget(exp_cfg: pipeline.ExperimentConfig, eps: float) -> pipeline.ExperimentConfig:
    """The constructed sets at L2 budget ``eps``, the step size scaled with it (same steps)."""
    c = exp_cfg.construct
    return dataclasses.replace(exp_cfg, construct=dataclasses.replace(
        c, eps=eps, step_size=c.step_size * eps / c.eps))


def budget_label(eps: float) -> str:
    return f"construct {eps:g}"


def _above(report: dict, chance: float) -> bool:
    return table_findings.lower_bound(report) > chance


def carry_test(detector: planted.Detector, decoys: list, x: np.ndarray, y: np.ndarray,
               cfg: planted.PlantedConfig) -> dict:
    """Whether images carry their label's pattern: the detector's rate on the label's class
    against the same rate for decoys (the patterns of unplanted worlds, each with its own
    calibrated detector) on the same images. A permutation test at the level of whole
    pattern sets, so that class-level structure of the images cannot fake it: carried when
    p = (1 + decoys at or above the rate) / (1 + decoys) <= alpha."""
    rate = float(detector.detects(x, y, cfg).mean())
    null = [float(d.detects(x, y, cfg).mean()) for d in decoys]
    p = (1 + sum(v >= rate for v in null)) / (1 + len(null))
    return {"rate": rate, "control": float(np.mean(null)), "p": p,
            "carried": bool(p <= stats.ALPHA)}


def template_leakage(train_x, train_y, test: data.Dataset, cfg: planted.PlantedConfig,
                     t: str, l2: float = 1e-3) -> dict:
    """Goh's leakage measure on template directions: a linear classifier on the images'
    projections onto the classes' ``t`` patterns, trained on (train_x, train_y), e.g. a
    constructed set with its target labels, scored on clean ``test`` images. Above chance:
    the set's labels are predictable from ``t``, so a model trained on it can learn ``t``."""
    fit = probe_lib.fit_linear(planted.projections(train_x, cfg, t), np.asarray(train_y),
                               cfg.num_classes, l2)
    correct = fit.predict(planted.projections(test.x, cfg, t)) == np.asarray(test.y)
    t_ = stats.chance_test(correct, test.y, cfg.num_classes)
    return {"accuracy": t_["value"], "low": t_["low"], "p": t_["p"],
            "leaks": bool(t_["p"] <= stats.ALPHA)}


def study_run(exp_cfg: pipeline.ExperimentConfig, cfg: StudyConfig, features: str, seed: int,
              *, log: Callable[[str], None] = print) -> RunResult:
    """Every budget's Table 1 protocol and the measured truth for one planted world."""
    base = planted_config(exp_cfg, features, seed)
    world = base.data.planted
    tables, exps = {}, {}
    first = pipeline.Experiment(with_budget(base, cfg.construct_eps[0]))
    for b in cfg.construct_eps:
        exps[b] = first.with_config(with_budget(base, b))   # one data load for both budgets
        tables[b] = entanglement.run_table(exps[b], cfg.table, log=log)
    exp = exps[cfg.construct_eps[0]]
    chance = tables[cfg.construct_eps[0]].chance
    cols = {e: f"R_{paper.eps_label(e)}" for e in sorted(set(cfg.table.columns))}
    positive = [c for e, c in cols.items() if e > 0]
    probes = _probes(exps, cfg, world, [e for e in cols if e > 0])
    detectors, carries, premise = _carries_and_premise(exp, cfg, world, cols)
    test = exp.splits().test
    leakage, protocol, truth = {}, {}, {}
    for b, e in exps.items():
        leakage[b] = {kind: {p: template_leakage(*_xy(e.constructed(kind)[0]), test, world, p,
                                                 cfg.probe_l2) for p in planted.TYPES}
                      for kind in ("zero_robust", "neg_robust")}
        protocol[b] = _protocol(tables[b].cells, positive, chance)
        used = probes[f"zero_robust ({budget_label(b)})"]
        truth[b] = {}
        for c in positive:
            routes = {p: p in features and carries[c][p]["carried"]
                      and _above(used[f"{p}-absent"], chance) for p in "BCD"}
            truth[b][c] = {"b": routes["B"], "routes": routes}
    return RunResult(features, seed, tables, probes, detectors, carries, premise, leakage,
                     protocol, truth)


def _xy(ds: data.Dataset) -> tuple:
    return ds.x, ds.y


def _probes(exps: dict, cfg: StudyConfig, world: planted.PlantedConfig,
            robust_eps: list[float]) -> dict:
    """Accuracy on every probe set of the standard model, the robust generator at each of
    ``robust_eps`` and, per budget, the zero- and neg-robust models."""
    exp = next(iter(exps.values()))
    t = entanglement.Table(exp, cfg.table)
    probe_sets = {f"{p}-{o}": data.make_planted_probe(world, p, o, cfg.probe_size)
                  for p in planted.TYPES for o in planted.PROBE_OTHERS}
    who = [("standard", exp, ("standard", 0.0, 0))]
    who += [(f"robust (eps {e:g})", exp, ("robust", e, 0)) for e in robust_eps]
    who += [(f"{row} ({budget_label(b)})", e, t.row_model(row))
            for b, e in exps.items() for row in ("zero_robust", "neg_robust")]
    out = {}
    for name, e, spec in who:
        trained = e.model(*spec)
        out[name] = {p: e.accuracy_on(trained, ds, f"probe {p}") for p, ds in probe_sets.items()}
        del trained
    return out


def _carries_and_premise(exp: pipeline.Experiment, cfg: StudyConfig,
                         world: planted.PlantedConfig, cols: dict) -> tuple[dict, dict, dict]:
    """(detectors, what Test and each R_eps carry, the premise per R_eps with eps > 0);
    ``cols`` maps each column's eps to its label."""
    detectors = {p: planted.calibrate(world, p, target_fpr=cfg.detector_fpr)
                 for p in planted.TYPES}
    decoys = {p: [planted.calibrate(world, p, target_fpr=cfg.detector_fpr, decoy=i)
                  for i in range(1, DECOYS + 1)] for p in planted.TYPES}
    sets, extras = {"Test": exp.splits().test}, {}
    for e, c in cols.items():
        sets[c], extras[c] = exp.robustified(e)
    carries = {name: {p: carry_test(d, decoys[p], ds.x, ds.y, world)
                      for p, d in detectors.items()} for name, ds in sets.items()}
    premise = {}
    for e, c in cols.items():
        if e <= 0:
            continue
        gen = exp.model(*exp.generator_spec(e))
        own = exp.accuracy_on(gen, sets[c], f"generator on {c}")
        premise[c] = {"relative_distance": float(np.median(extras[c]["relative_distance"])),
                      "generator_accuracy": own["accuracy"],
                      "carries_A": carries[c]["A"]["rate"], "met": carries[c]["A"]["carried"]}
        del gen
    return {p: dataclasses.asdict(d) for p, d in detectors.items()}, carries, premise


def _protocol(cells: dict, columns: list[str], chance: float) -> dict:
    """The protocol's answer per R_eps column (zero- and neg-robust both above chance) and
    overall (zero-robust on every column, neg-robust on one)."""
    zero = {c: table_findings.lower_bound(cells["zero_robust"][c]) for c in columns}
    neg = {c: table_findings.lower_bound(cells["neg_robust"][c]) for c in columns}
    out = {c: {"zero_low": zero[c], "neg_low": neg[c],
               "says_b": zero[c] > chance and neg[c] > chance} for c in columns}
    out["all"] = all(v > chance for v in zero.values()) and any(v > chance for v in neg.values())
    return out


def explain(r: RunResult, b: float, column: str, chance: float) -> str:
    """Why the protocol's answer at ``column`` differs from the truth, by mechanism."""
    says = r.protocol[b][column]["says_b"]
    why = []
    if says:
        uses_a = r.probes[f"zero_robust ({budget_label(b)})"]["A-absent"]
        lk = r.leakage[b]["zero_robust"]["A"]
        leak = ([f"zero-robust uses A ({100 * uses_a['accuracy']:.0f} % on A-only probes)"]
                if _above(uses_a, chance) else [])
        leak += [f"Goh's linear probe {100 * lk['accuracy']:.0f} %"] if lk["leaks"] else []
        if leak:
            why.append("A leaks into D_zero: " + ", ".join(leak))
        why += [f"{p} carried and used" for p in "CD" if r.truth[b][column]["routes"][p]]
        if "B" in r.features:
            c = r.carries[column]["B"]
            why.append(f"B {'carried' if c['carried'] else 'not carried'} "
                       f"({100 * c['rate']:.0f} % vs {100 * c['control']:.0f} %)")
        return "; ".join(why) or "no mechanism measured"
    p = r.protocol[b][column]
    if p["zero_low"] <= chance:
        why.append("zero-robust at chance")
    if p["neg_low"] <= chance:
        why.append("neg-robust at chance")
    return "; ".join(why)


def verdict(runs: list[RunResult], chance: float) -> tuple[dict, str]:
    """Per budget and R_eps column: the confusion table of the protocol's answer against the
    measured truth over the runs whose premise holds, the unscored runs and every error with
    its mechanism; plus a summary."""
    out = {}
    lines = []
    for b in runs[0].protocol:
        out[b] = {}
        for column in runs[0].truth[b]:
            v = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "unscored": [], "errors": []}
            for r in runs:
                if not r.premise_met:
                    v["unscored"].append(f"{r.features} seed {r.seed}")
                    continue
                says, true = r.protocol[b][column]["says_b"], r.truth[b][column]["b"]
                v[("t" if says == true else "f") + ("p" if says else "n")] += 1
                if says != true:
                    v["errors"].append({"world": r.features, "seed": r.seed,
                                        "kind": "false positive" if says else "false negative",
                                        "why": explain(r, b, column, chance)})
            out[b][column] = v
            scored = v["tp"] + v["fp"] + v["fn"] + v["tn"]
            lines.append(f"{budget_label(b)}, {column}: {v['tp'] + v['tn']} of {scored} scored "
                         f"runs right ({v['fp']} false positives, {v['fn']} false negatives, "
                         f"{len(v['unscored'])} unscored)")
    return out, "; ".join(lines) + "."


def run_planted_study(exp_cfg: pipeline.ExperimentConfig, cfg: StudyConfig, *,
                      log: Callable[[str], None] = print) -> StudyResult:
    """Every world x seed x budget (Table 1 runs on one store), the measured truth, the
    verdict (each run keeps its tables)."""
    runs = []
    total = len(cfg.feature_sets) * len(cfg.seeds)
    start = time.time()
    for features in cfg.feature_sets:
        for seed in cfg.seeds:
            log(f"[study] {len(runs) + 1}/{total}: planted {features}, seed {seed}")
            runs.append(study_run(exp_cfg, cfg, features, seed, log=log))
            spent = time.time() - start
            log(f"[study] {len(runs)}/{total} done after {plan_lib.fmt_seconds(spent)}; ETA "
                f"{plan_lib.fmt_seconds(spent / len(runs) * (total - len(runs)))} for the rest")
    chance = runs[0].tables[cfg.construct_eps[0]].chance
    v, summary = verdict(runs, chance)
    return StudyResult(runs, chance, list(runs[0].premise), list(cfg.construct_eps), v,
                       summary)
