"""The entanglement experiment (Springer et al. 2021, section 4): Tables 1/2/5/6, Figures 3/4.

``run_table(exp_cfg, table_cfg) -> TableResult`` plans every artifact the table needs (the
generators of each R_eps, the classifiers of each row, the constructed sets), prints what the
store already holds and an estimate of the rest, builds what is missing with progress and an
ETA, and evaluates every cell. N processes running the same table on one store cooperate:
each builds the next artifact that nobody holds (the store's locks), and all print the table.

Which classifiers are evaluated: the classifier C' of a row is trained independently of the
generator C_eps of a column (same hyperparameters, its own seed: the role "row"), as the
paper's text for Figure 3 says ("C_0's features ... tend not to be shared by C'"). The robust
row is, by default, the generator itself (``robust_row="generator"``): its R_{1/2} cell (86.5)
equals its Test cell in Table 5. ``evaluate_generators=True`` evaluates the generators for
every row. Every model of a table has its own seed (``train_config.role_seed``): no two
start from the same weights or see the same batches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np

from entangle import data, stats
from entangle.stats import findings as table_findings, paper
from entangle.store import git_commit
from entangle.store.plan import PlanItem
from entangle.studies import graph as graph_lib, pipeline, runner

ROWS = ("standard", "robust", "zero_robust", "neg_robust")
ROBUST_ROWS = ("generator", "independent")


@dataclasses.dataclass(frozen=True)
class TableConfig:
    eps: float = 0.5                                # the robust row's eps
    columns: tuple[float, ...] = paper.PAPER_COLUMNS  # eps of each R_eps column
    rows: tuple[str, ...] = ROWS
    evaluate_generators: bool = False
    robust_row: str = "generator"
    generator_report: bool = True                   # clean and PGD accuracy of each generator
    poll: float = 5.0                               # seconds between looks when all is busy

    def __post_init__(self):
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps (the robust row's) must be a finite number > 0; got "
                             f"{self.eps}")
        if any(e < 0 or not math.isfinite(e) for e in self.columns):
            raise ValueError(f"columns must be eps values >= 0; got {self.columns}")
        bad = set(self.rows) - set(ROWS)
        if bad:
            raise ValueError(f"rows must be a subset of {ROWS}; got {self.rows}")
        if self.robust_row not in ROBUST_ROWS:
            raise ValueError(f"robust_row must be one of {ROBUST_ROWS}; got {self.robust_row!r}")


@dataclasses.dataclass
class TableResult:
    dataset: str
    rows: list[str]                     # row labels
    columns: list[str]                  # "Test", "R_0", "R_1/16", ...
    cells: dict                         # row label -> column label -> accuracy report
    paper: dict                         # row label -> column label -> paper's % (or None)
    chance: float
    majority_rate: dict                 # column label -> majority-class rate of that set
    median_relative_distance: dict      # column label -> median over its images
    models: dict                        # row label -> store key of the evaluated classifier
    built: list[str]                    # artifacts this process built
    seconds: float
    labels: np.ndarray = None           # the test labels (every R_eps keeps them)
    num_classes: int = 0
    correct: dict = dataclasses.field(default_factory=dict)  # row -> column -> per-image bool
    # row -> per-image bool: the row's classifier on each image's seed x0, scored on y (what a
    # model that reads only x0 scores: the null of a robustified set beside chance)
    seed_control: dict = dataclasses.field(default_factory=dict)
    seed_images: np.ndarray = None      # index of each test image's seed x0
    pairing: dict = dataclasses.field(default_factory=dict)  # same-class fraction, seed, mode
    neg_target_rate: dict = dataclasses.field(default_factory=dict)  # column -> rate of y + 1
    constructed: dict = dataclasses.field(default_factory=dict)  # kind -> its set's metrics
    row_metrics: dict = dataclasses.field(default_factory=dict)  # row -> epochs, best val
    robust_eps: float = 0.0             # the robust row's eps
    robust_is_generator: bool = True    # the robust row evaluates R_{its eps}'s own generator
    generators: list = dataclasses.field(default_factory=list)  # see Table.generators
    seed: int | None = None
    # what it was computed from: the code's commit, every artifact's store key, and what the
    # caller adds (the binaries: their flags and flagfiles)
    provenance: dict = dataclasses.field(default_factory=dict)
    files: dict = dataclasses.field(default_factory=dict)
    write_error: str | None = None      # why results_dir could not be written, if it could not
    findings: list = dataclasses.field(default_factory=list)
    checks: list = dataclasses.field(default_factory=list)


class Table:
    """The plan and evaluation of one table on one Experiment."""

    def __init__(self, exp: pipeline.Experiment, cfg: TableConfig):
        self.exp, self.cfg = exp, cfg

    # -------------------------------------------------------------- who is evaluated
    def row_model(self, row: str) -> tuple[str, float, str]:
        """(kind, eps, role) of the classifier evaluated in a row."""
        if row == "robust":
            own = self.cfg.evaluate_generators or self.cfg.robust_row == "generator"
            return "robust", self.cfg.eps, "generator" if own else "row"
        if row == "standard":
            return "standard", 0.0, "generator" if self.cfg.evaluate_generators else "row"
        return row, 0.0, "row"

    def radii(self) -> dict[str, float]:
        """The table's L2 radii, named as the flags that set them."""
        return {"eps (--eps)": self.cfg.eps, "columns (--columns)": max(self.cfg.columns)}

    def row_label(self, row: str) -> str:
        return f"robust (eps {self.cfg.eps:g})" if row == "robust" else row

    # -------------------------------------------------------------- plan
    def plan(self, robustified: bool = True) -> list[PlanItem]:
        """Every artifact the table needs (``graph.Graph``), each marked present or not."""
        return self.graph(robustified).plan()

    def items(self, robustified: bool = True) -> list[PlanItem]:
        """Every artifact the table needs, with its dependencies (nothing read from the store
        but the data's content hashes)."""
        return list(self.graph(robustified).items.values())

    def graph(self, robustified: bool = True) -> graph_lib.Graph:
        """The table's artifacts: each column's generator (and its R_eps), each row's
        classifier, with their dependencies."""
        g = graph_lib.Graph(self.exp)
        columns = sorted(set(self.cfg.columns))
        for eps in columns:
            g.generator(eps)
        for row in self.cfg.rows:
            g.model(*self.row_model(row))
        for eps in columns if robustified else ():
            g.robustified(eps)
        return g

    # -------------------------------------------------------------- evaluate
    def evaluate(self) -> dict:
        """Every row's cached predictions on Test and every R_eps: cells, row model keys,
        majority rates, median relative distances, per-image correctness, the seed control
        (each row on the seed images x0 with the labels y), the pairing's same-class
        fraction, and how often neg-robust names its training target y + 1."""
        exp = self.exp
        test = exp.splits().test
        sets, rel = self.sets()
        seeds = exp.seed_images()
        y = np.asarray(test.y)
        out = {"cells": {}, "keys": {}, "correct": {}, "seed_control": {},
               "majority": {name: float(np.bincount(ds.y).max() / len(ds.y))
                            for name, ds in sets.items()},
               "rel": rel, "seeds": seeds,
               "pairing": {"same_class_fraction": float(np.mean(y[seeds] == y)),
                           "seed": exp.robustify_config().seed, "mode": exp.cfg.pairing},
               "neg_target_rate": {}, "row_metrics": {}}
        for row in self.cfg.rows:
            trained = exp.model(*self.row_model(row))
            label = self.row_label(row)
            out["keys"][label] = trained.key
            metrics = trained.manifest.get("metrics", {})
            out["row_metrics"][label] = {k: metrics.get(k) for k in ("epochs_run", "best_val")}
            out["cells"][label], out["correct"][label] = {}, {}
            for name, ds in sets.items():
                pred = exp.predictions(trained, ds, name)
                out["cells"][label][name] = data.accuracy_report(pred, ds.y, ds.num_classes)
                out["correct"][label][name] = pred == ds.y
                if name == "Test":
                    out["seed_control"][label] = pred[seeds] == y
                if row == "neg_robust":
                    out["neg_target_rate"][name] = float(np.mean(pred == (y + 1) %
                                                                 test.num_classes))
            del trained
        return out

    def sets(self) -> tuple[dict, dict]:
        """({"Test": the test set, "R_eps": each robustified set}, {"R_eps": its median
        relative representation distance})."""
        sets, rel = {"Test": self.exp.splits().test}, {}
        for eps in self.cfg.columns:
            ds, extra = self.exp.robustified(eps)
            label = f"R_{paper.eps_label(eps)}"
            sets[label] = ds
            rel[label] = float(np.median(extra["relative_distance"]))
        return sets, rel

    def constructed_metrics(self) -> dict:
        """Per constructed set of the table's rows: its build metrics (the targeted success
        of its PGD on the source model, per part)."""
        exp = self.exp
        return {kind: exp.store.manifest(pipeline.DATASET_KIND,
                                         exp.constructed_key(kind)).get("metrics", {})
                for kind in ("zero_robust", "neg_robust") if kind in self.cfg.rows}

    def generators(self, rel: dict) -> list[dict]:
        """Per R_eps column, its generator: clean test accuracy, PGD accuracy at the model's
        own eps (the standard model: at every column's eps, the reference), the R_eps's median
        relative distance, and whether a robust generator is significantly more robust than
        the standard model at its eps (exact McNemar on per-image PGD outcomes)."""
        exp = self.exp
        ecfg = exp.cfg.eval
        attack = (f"L2 PGD, {ecfg.attack_steps} steps of {ecfg.step_size_factor:g} eps / "
                  f"{ecfg.attack_steps}, no random start")
        strong = exp.strong_attack_label()

        def strong_of(trained, e):
            """(strong accuracy, the reporting PGD's on the same images), or Nones."""
            if not strong:
                return None, None
            m = exp.evaluate_strong(trained, e)
            same = exp.evaluate(trained, e, outcomes=True)["pgd_correct"][:m["images"]]
            return m["strong_pgd_accuracy"], float(same.mean())

        positive = sorted(e for e in set(self.cfg.columns) if e > 0)
        std = exp.model("standard")
        std_pgd = {e: exp.evaluate(std, e, outcomes=True) for e in positive}
        clean = exp.evaluate(std, 0.0)
        out = [{"column": "R_0", "model": "standard", "eps": 0.0, "key": std.key,
                "test_accuracy": clean["test_accuracy"],
                "pgd_accuracy": {paper.eps_label(e): m["pgd_accuracy"]
                                 for e, m in std_pgd.items()},
                "strong_pgd_accuracy": {paper.eps_label(e): strong_of(std, e)[0]
                                        for e in positive} if strong else None,
                "pgd_accuracy_strong_images": {paper.eps_label(e): strong_of(std, e)[1]
                                               for e in positive} if strong else None,
                "attack": attack, "strong_attack": strong,
                "median_relative_distance": rel.get("R_0"),
                "epochs_run": std.manifest.get("metrics", {}).get("epochs_run"),
                "batch_norm": std.manifest.get("metrics", {}).get("batch_norm")}]
        del std
        for e in positive:
            gen = exp.model(*exp.generator_spec(e))
            m = exp.evaluate(gen, e, outcomes=True)
            versus = stats.mcnemar_exact(std_pgd[e]["pgd_correct"], m["pgd_correct"])
            robust = versus["p"] <= stats.ALPHA and versus["difference"] > 0
            label = f"R_{paper.eps_label(e)}"
            out.append({"column": label, "model": f"robust (eps {e:g})", "eps": e,
                        "key": gen.key, "test_accuracy": m["test_accuracy"],
                        "pgd_accuracy": m["pgd_accuracy"],
                        "strong_pgd_accuracy": strong_of(gen, e)[0],
                        "pgd_accuracy_strong_images": strong_of(gen, e)[1],
                        "strong_attack": strong,
                        "standard_pgd_accuracy": std_pgd[e]["pgd_accuracy"],
                        "standard_strong_pgd_accuracy": (out[0]["strong_pgd_accuracy"] or {})
                        .get(paper.eps_label(e)),
                        "more_robust_than_standard": {**versus, "held": robust},
                        "flag": None if robust else "NOT significantly more robust than the "
                        "standard model at its eps", "attack": attack,
                        "median_relative_distance": rel.get(label),
                        "epochs_run": gen.manifest.get("metrics", {}).get("epochs_run"),
                        "batch_norm": gen.manifest.get("metrics", {}).get("batch_norm")})
            del gen
        return out


def run_table(exp: pipeline.Experiment | pipeline.ExperimentConfig, cfg: TableConfig, *,
              log: Callable[[str], None] = print, provenance: dict | None = None
              ) -> TableResult:
    """Plans, builds (cooperating with other processes on the store) and evaluates a table on
    an Experiment (or on a new one of a configuration). ``provenance`` (e.g. the flags) is
    recorded beside the commit and the store keys."""
    start = time.time()
    table, built = prepare(exp, cfg, True, log)
    return _table_result(table, built, start, provenance)


def _table_result(table: Table, built: list[str], start: float,
                  provenance: dict | None = None) -> TableResult:
    """Evaluates a built table: cells, per-image outcomes, generators, findings, files."""
    exp, cfg, exp_cfg = table.exp, table.cfg, table.exp.cfg
    ev = table.evaluate()
    cells, keys, majority, rel, correct = (ev["cells"], ev["keys"], ev["majority"], ev["rel"],
                                           ev["correct"])
    dataset = exp_cfg.data.dataset
    ref = paper.reference(dataset) or {}
    columns = list(next(iter(cells.values())).keys())
    col_eps = {"Test": None, **{f"R_{paper.eps_label(e)}": e for e in cfg.columns}}
    paper_cells = {}
    for row in cfg.rows:
        kind, eps, _ = table.row_model(row)
        same_row = row != "robust" or eps == paper.ROBUST_ROW_EPS.get(
            "imagenet9" if dataset == "imagenet9" else "cifar10")
        paper_cells[table.row_label(row)] = {
            c: (ref.get(row, {}).get(_match(col_eps[c], ref.get(row, {})))
                if same_row and ref else None) for c in columns}
    test = exp.splits().test
    result = TableResult(dataset=dataset, rows=[table.row_label(r) for r in cfg.rows],
                         columns=columns, cells=cells, paper=paper_cells,
                         chance=1.0 / test.num_classes, majority_rate=majority,
                         median_relative_distance=rel, models=keys, built=built,
                         seconds=0.0, labels=np.asarray(test.y), num_classes=test.num_classes,
                         correct=correct, seed_control=ev["seed_control"],
                         seed_images=ev["seeds"], pairing=ev["pairing"],
                         neg_target_rate=ev["neg_target_rate"],
                         constructed=table.constructed_metrics(),
                         row_metrics=ev["row_metrics"], robust_eps=cfg.eps,
                         robust_is_generator=table.row_model("robust")[2] == "generator",
                         generators=table.generators(rel) if cfg.generator_report else [],
                         seed=exp_cfg.hparams["standard"].seed,
                         provenance={"commit": git_commit(), "store": exp.store.root,
                                     "artifacts": {it.label: f"{it.kind}/{it.key}"
                                                   for it in table.items(True)},
                                     **(provenance or {})})
    result.findings = table_findings.findings(result)
    result.checks = table_findings.checks(result)
    result.seconds = time.time() - start
    return result


@dataclasses.dataclass
class SeedsResult:
    """One table per seed, and per cell and finding their summary over seeds."""

    seeds: list[int]
    tables: dict                        # seed -> TableResult
    aggregate: dict                     # row -> column -> {mean, sd, values, paper}
    findings: dict                      # finding -> {text, test, held, of, per_seed}
    built: list[str]
    seconds: float
    files: dict = dataclasses.field(default_factory=dict)
    write_error: str | None = None      # why results_dir could not be written, if it could not
    cross_seed: dict = dataclasses.field(default_factory=dict)  # see ``cross_seed``


def with_seed(exp_cfg: pipeline.ExperimentConfig, seed: int) -> pipeline.ExperimentConfig:
    """The configuration with the run's training seed set to ``seed``: every model derives its
    own seed from it (``train_config.role_seed``), and so does the x0 pairing unless
    ``pairing="data_seed"``; the data subset and the construction's targets follow
    --data_seed."""
    return dataclasses.replace(exp_cfg, hparams={
        k: dataclasses.replace(v, seed=seed) for k, v in exp_cfg.hparams.items()})


def run_seeds(exp_cfg: pipeline.ExperimentConfig, cfg: TableConfig, seeds: list[int], *,
              log: Callable[[str], None] = print, provenance: dict | None = None
              ) -> SeedsResult:
    """The table for several seeds on one store: one plan over every seed's artifacts (N
    processes cooperate on all of them), then each seed's table, the aggregate (per cell mean
    and sd beside the paper's; per finding, seeds held) and the cross-seed matrix."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers; got {seeds}")
    start = time.time()
    base = pipeline.Experiment(exp_cfg)
    tables = [Table(base.with_config(with_seed(exp_cfg, s)), cfg) for s in seeds]
    items = {}
    for t in tables:
        items.update({it.key: it for it in t.plan(True)})
    built = runner.build_plan(tables[0].exp, list(items.values()), log, cfg.poll, "table",
                              tables[0].radii())
    results = {}
    for s, t in zip(seeds, tables):
        results[s] = _table_result(t, built, time.time(), provenance)
    result = SeedsResult(seeds=list(seeds), tables=results,
                         aggregate=aggregate(list(results.values())),
                         findings=findings_over_seeds(results), built=built,
                         seconds=time.time() - start,
                         cross_seed=cross_seed(dict(zip(seeds, tables)))
                         if len(seeds) > 1 else {})
    return result


def cross_seed(tables: dict) -> dict:
    """Every row's classifier of seed i scored on every set of seed j (no training): the
    check that models of one seed share nothing a model of another seed lacks. Per row and
    column: the same-seed accuracies (i = j), the cross-seed ones (i != j), and per set j and
    other seed i the exact McNemar test of seed j's own classifier against seed i's on the
    same images, Holm over those pairs."""
    seeds = list(tables)
    first = tables[seeds[0]]
    sets = {s: t.sets()[0] for s, t in tables.items()}
    acc, correct = {}, {}
    for row in first.cfg.rows:
        label = first.row_label(row)
        acc[label], correct[label] = {}, {}
        for i, t in tables.items():
            trained = t.exp.model(*t.row_model(row))
            for j in seeds:
                for name, ds in sets[j].items():
                    pred = t.exp.predictions(trained, ds, name)
                    correct[label][(i, j, name)] = pred == ds.y
            del trained
    out = {"seeds": seeds, "rows": {}}
    columns = list(sets[seeds[0]])
    for label, outcomes in correct.items():
        out["rows"][label] = {}
        for name in columns:
            same = [float(outcomes[(s, s, name)].mean()) for s in seeds]
            pairs = [(i, j) for j in seeds for i in seeds if i != j]
            cross = [float(outcomes[(i, j, name)].mean()) for i, j in pairs]
            tests = [stats.mcnemar_exact(outcomes[(i, j, name)], outcomes[(j, j, name)])
                     for i, j in pairs]
            holm = stats.holm([t["p"] for t in tests]) if tests else []
            out["rows"][label][name] = {
                "same_seed": same, "cross_seed": {f"{i}->{j}": a for (i, j), a in
                                                  zip(pairs, cross)},
                "same_mean": float(np.mean(same)),
                "cross_mean": float(np.mean(cross)) if cross else float("nan"),
                "pairs": [{"model_seed": i, "set_seed": j, "difference": t["difference"],
                           "p": t["p"], "p_holm": h} for (i, j), t, h in
                          zip(pairs, tests, holm)],
                "significant_pairs": int(sum(h <= stats.ALPHA for h in holm))}
    return out


def aggregate(tables: list[TableResult]) -> dict:
    """Per row and column: accuracies over seeds, their mean and sd, and the paper's value."""
    first = tables[0]
    out = {}
    for row in first.rows:
        out[row] = {}
        for c in first.columns:
            values = [t.cells[row][c]["accuracy"] for t in tables]
            mean, sd = stats.mean_sd(values)
            out[row][c] = {"values": values, "mean": mean, "sd": sd,
                           "paper": first.paper[row].get(c)}
    return out


def findings_over_seeds(results: dict) -> dict:
    """Per finding: its text and test, and the seeds for which it held."""
    out = {}
    for seed, t in results.items():
        for f in t.findings:
            entry = out.setdefault(f["finding"], {"text": f["text"], "test": f["test"],
                                                  "per_seed": {}, "loose_per_seed": {},
                                                  "loose_rule": (f.get("loose") or {}).get(
                                                      "rule")})
            entry["per_seed"][seed] = f["held"]
            if f.get("loose"):
                entry["loose_per_seed"][seed] = f["loose"]["held"]
    for entry in out.values():
        entry["held"] = sum(entry["per_seed"].values())
        entry["of"] = len(entry["per_seed"])
        entry["loose_held"] = sum(entry["loose_per_seed"].values())
    return out


def _match(eps, row: dict):
    """The paper's column for an eps (exact up to float noise), or a key that is absent."""
    if eps is None:
        return None
    for k in row:
        if k is not None and abs(k - eps) < 1e-9:
            return k
    return "absent"


def prepare(exp: pipeline.Experiment | pipeline.ExperimentConfig, cfg: TableConfig,
            robustified: bool, log) -> tuple[Table, list[str]]:
    """The table on ``exp`` (an Experiment, or a new one of a configuration), its plan
    built."""
    if not isinstance(exp, pipeline.Experiment):
        exp = pipeline.Experiment(exp)
    table = Table(exp, cfg)
    return table, runner.build_plan(exp, table.plan(robustified), log, cfg.poll, "table",
                                    table.radii())
