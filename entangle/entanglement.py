"""The entanglement experiment (Springer et al. 2021, section 4): Tables 1/2/5/6, Figures 3/4.

``run_table(exp_cfg, table_cfg) -> TableResult`` plans every artifact the table needs (the
generators of each R_eps, the classifiers of each row, the constructed sets), prints what the
store already holds and an estimate of the rest, builds what is missing with progress and an
ETA, and evaluates every cell. N processes running the same table on one store cooperate:
each builds the next artifact that nobody holds (the store's locks), and all print the table.

Which classifiers are evaluated: the classifier C' of a row is trained independently of the
generator C_eps of a column (same hyperparameters, seed + ``evaluator_seed_offset``), as the
paper's text for Figure 3 says ("C_0's features ... tend not to be shared by C'"). The robust
row is, by default, the generator itself (``robust_row="generator"``): its R_{1/2} cell (86.5)
equals its Test cell in Table 5. ``evaluate_generators=True`` evaluates the generators for
every row.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
from scipy import stats as st

from entangle import data, estimate, paper, pipeline, stats
from entangle import plan as plan_lib
from entangle.plan import PlanItem
from entangle.store import describe_os_error, git_commit

ROWS = ("standard", "robust", "zero_robust", "neg_robust")
ROBUST_ROWS = ("generator", "independent")


@dataclasses.dataclass(frozen=True)
class TableConfig:
    eps: float = 0.5                                # the robust row's eps
    columns: tuple[float, ...] = paper.PAPER_COLUMNS  # eps of each R_eps column
    rows: tuple[str, ...] = ROWS
    evaluate_generators: bool = False
    robust_row: str = "generator"
    evaluator_seed_offset: int = 1
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
        if self.evaluator_seed_offset < 1:
            raise ValueError(f"evaluator_seed_offset must be >= 1; got "
                             f"{self.evaluator_seed_offset}")


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
        self._nowait = dataclasses.replace(exp.cfg.runtime, wait=False)

    # -------------------------------------------------------------- who is evaluated
    def row_model(self, row: str) -> tuple[str, float, int]:
        """(kind, eps, seed offset) of the classifier evaluated in a row."""
        if row == "robust":
            own = self.cfg.evaluate_generators or self.cfg.robust_row == "generator"
            return "robust", self.cfg.eps, 0 if own else self.cfg.evaluator_seed_offset
        if row == "standard":
            return "standard", 0.0, 0 if self.cfg.evaluate_generators else \
                self.cfg.evaluator_seed_offset
        return row, 0.0, 0

    def row_label(self, row: str) -> str:
        return f"robust (eps {self.cfg.eps:g})" if row == "robust" else row

    # -------------------------------------------------------------- plan
    def plan(self, robustified: bool = True) -> list[PlanItem]:
        exp, store = self.exp, self.exp.store
        sp = exp.splits()
        n_fit, n_test = len(sp.train), len(sp.test)
        items: dict[str, PlanItem] = {}
        shape, classes = sp.train.image_shape, sp.train.num_classes
        batch = exp.cfg.runtime.eval_batch_size

        def add_model(kind, eps, offset=0):
            key = exp.model_key(kind, eps, offset)
            if key in items:
                return key
            label = exp.model_name(kind, eps) + (f" (seed +{offset})" if offset else "")
            deps = ()
            n = n_fit
            if kind in ("zero_robust", "neg_robust"):
                deps = (add_constructed(kind),)
                n = n_fit * (10 if kind == "zero_robust" and
                             exp.cfg.construct.targets == "all" else 1)
            cfg = exp.train_config(kind, eps, offset)
            items[key] = plan_lib.training_item(
                label, key, deps, lambda: exp.model(kind, eps, offset, runtime=self._nowait),
                cfg, cfg.epochs * n, shape, classes)
            return key

        def add_constructed(kind):
            key = exp.constructed_key(kind)
            if key not in items:
                src = add_model("standard", 0.0)
                mult = 10 if kind == "zero_robust" and exp.cfg.construct.targets == "all" else 1
                images = n_fit * mult * (exp.cfg.construct.steps + 1)
                items[key] = PlanItem(f"{kind} set", "datasets", key, (src,),
                                      lambda: exp.constructed(kind, runtime=self._nowait),
                                      images, work=plan_lib.attack_work(
                                          (exp.train_config("standard"),), images, batch,
                                          shape, classes))
            return key

        columns = sorted(set(self.cfg.columns))
        for eps in columns:
            add_model(*exp.generator(eps))
        for row in self.cfg.rows:
            add_model(*self.row_model(row))
        for eps in columns if robustified else ():
            key = exp.robustified_key(eps)
            gen = exp.model_key(*exp.generator(eps))
            images = n_test * (exp.cfg.robustify.steps + 3)
            items[key] = PlanItem(f"R_{paper.eps_label(eps)}", "datasets", key, (gen,),
                                  lambda eps=eps: exp.robustified(eps, runtime=self._nowait),
                                  images, work=plan_lib.attack_work(
                                      (exp.train_config(*exp.generator(eps)),), images, batch,
                                      shape, classes, kind="robustify"))
        return plan_lib.mark_present(store, list(items.values()))

    # -------------------------------------------------------------- evaluate
    def evaluate(self) -> tuple[dict, dict, dict, dict, dict]:
        """(cells, row model keys, majority rates, median relative distances, per-image
        correctness) from each row's cached predictions on Test and every R_eps."""
        exp = self.exp
        test = exp.splits().test
        sets = {"Test": test}
        rel = {}
        for eps in self.cfg.columns:
            ds, extra = exp.robustified(eps)
            label = f"R_{paper.eps_label(eps)}"
            sets[label] = ds
            rel[label] = float(np.median(extra["relative_distance"]))
        cells, keys, correct = {}, {}, {}
        for row in self.cfg.rows:
            trained = exp.model(*self.row_model(row))
            label = self.row_label(row)
            keys[label] = trained.key
            cells[label], correct[label] = {}, {}
            for name, ds in sets.items():
                pred = exp.predictions(trained, ds, name)
                cells[label][name] = data.accuracy_report(pred, ds.y, ds.num_classes)
                correct[label][name] = pred == ds.y
            del trained
        majority = {name: float(np.bincount(ds.y).max() / len(ds.y)) for name, ds in sets.items()}
        return cells, keys, majority, rel, correct

    def generators(self, rel: dict) -> list[dict]:
        """Per R_eps column, its generator: clean test accuracy, PGD accuracy at the model's
        own eps (the standard model: at every column's eps, the reference), the R_eps's median
        relative distance, and whether a robust generator is significantly more robust than
        the standard model at its eps (exact McNemar on per-image PGD outcomes)."""
        exp = self.exp
        ecfg = exp.cfg.eval
        attack = (f"L2 PGD, {ecfg.attack_steps} steps of {ecfg.step_size_factor:g} eps / "
                  f"{ecfg.attack_steps}, no random start")
        positive = sorted(e for e in set(self.cfg.columns) if e > 0)
        std = exp.model("standard")
        std_pgd = {e: exp.evaluate(std, e, outcomes=True) for e in positive}
        clean = exp.evaluate(std, 0.0)
        out = [{"column": "R_0", "model": "standard", "eps": 0.0, "key": std.key,
                "test_accuracy": clean["test_accuracy"],
                "pgd_accuracy": {paper.eps_label(e): m["pgd_accuracy"]
                                 for e, m in std_pgd.items()},
                "attack": attack, "median_relative_distance": rel.get("R_0"),
                "epochs_run": std.manifest.get("metrics", {}).get("epochs_run"),
                "batch_norm": std.manifest.get("metrics", {}).get("batch_norm")}]
        del std
        for e in positive:
            gen = exp.model(*exp.generator(e))
            m = exp.evaluate(gen, e, outcomes=True)
            versus = stats.mcnemar_exact(std_pgd[e]["pgd_correct"], m["pgd_correct"])
            robust = versus["p"] <= stats.ALPHA and versus["difference"] > 0
            label = f"R_{paper.eps_label(e)}"
            out.append({"column": label, "model": f"robust (eps {e:g})", "eps": e,
                        "key": gen.key, "test_accuracy": m["test_accuracy"],
                        "pgd_accuracy": m["pgd_accuracy"],
                        "standard_pgd_accuracy": std_pgd[e]["pgd_accuracy"],
                        "more_robust_than_standard": {**versus, "held": robust},
                        "flag": None if robust else "NOT significantly more robust than the "
                        "standard model at its eps", "attack": attack,
                        "median_relative_distance": rel.get(label),
                        "epochs_run": gen.manifest.get("metrics", {}).get("epochs_run"),
                        "batch_norm": gen.manifest.get("metrics", {}).get("batch_norm")})
            del gen
        return out


def default_rate(exp: pipeline.Experiment) -> float:
    """A first guess of forward+backward image passes per second (refined while running):
    ~600/s for ResNet20v2 at 32 px on a 2-core CPU, scaled by depth, width and image area."""
    h = exp.cfg.hparams["standard"]
    try:
        depth = int(h.arch[6:-2])
    except ValueError:
        depth = 56
    size = exp.splits().train.image_shape[0]
    return 600.0 * (20 / depth) * (16 / h.width) ** 2 * (32 / size) ** 2


def run_table(exp_cfg: pipeline.ExperimentConfig, cfg: TableConfig, *,
              results_dir: str | None = None, title: str = "Table",
              log: Callable[[str], None] = print, provenance: dict | None = None
              ) -> TableResult:
    """Plans, builds (cooperating with other processes on the store) and evaluates a table;
    with ``results_dir``, writes it there as Markdown, CSV, JSON and PNG. ``provenance`` (e.g.
    the flags) goes into the JSON beside the commit and the store keys."""
    start = time.time()
    table, built = _prepare(exp_cfg, cfg, True, log)
    return _table_result(table, built, start, results_dir, title, provenance)


def _table_result(table: Table, built: list[str], start: float, results_dir: str | None,
                  title: str, provenance: dict | None = None) -> TableResult:
    """Evaluates a built table: cells, per-image outcomes, generators, findings, files."""
    exp, cfg, exp_cfg = table.exp, table.cfg, table.exp.cfg
    cells, keys, majority, rel, correct = table.evaluate()
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
                         correct=correct, robust_eps=cfg.eps,
                         robust_is_generator=table.row_model("robust")[2] == 0,
                         generators=table.generators(rel) if cfg.generator_report else [],
                         seed=exp_cfg.hparams["standard"].seed,
                         provenance={"commit": git_commit(), "store": exp.store.root,
                                     "artifacts": {it.label: f"{it.kind}/{it.key}"
                                                   for it in table.plan(True)},
                                     **(provenance or {})})
    result.findings = findings(result)
    result.checks = checks(result)
    result.seconds = time.time() - start
    if results_dir:
        from entangle import report

        result.files, result.write_error = write_results(report.write_table, result, results_dir,
                                                  title)
    return result


def write_results(writer, result, results_dir: str, *args) -> tuple[dict, str | None]:
    """(files, None), or ({}, why) when the results folder cannot be written (a read-only
    store): the result was computed and is still returned, for the caller to show."""
    try:
        return writer(result, results_dir, *args), None
    except OSError as e:
        return {}, (f"cannot write the results to {results_dir} ({describe_os_error(e)}); "
                    f"pass --results_dir=DIR to write them elsewhere")


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


def with_seed(exp_cfg: pipeline.ExperimentConfig, seed: int) -> pipeline.ExperimentConfig:
    """The configuration with every model's training seed set to ``seed`` (the data subset,
    the construction and robustification seeds stay: they follow --data_seed)."""
    return dataclasses.replace(exp_cfg, hparams={
        k: dataclasses.replace(v, seed=seed) for k, v in exp_cfg.hparams.items()})


def run_seeds(exp_cfg: pipeline.ExperimentConfig, cfg: TableConfig, seeds: list[int], *,
              results_dir: str | None = None, title: str = "Table",
              log: Callable[[str], None] = print, provenance: dict | None = None
              ) -> SeedsResult:
    """The table for several seeds on one store: one plan over every seed's artifacts (N
    processes cooperate on all of them), then each seed's table (in ``seed<N>/``) and the
    aggregate (per cell mean and sd beside the paper's; per finding, seeds held)."""
    import os

    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers; got {seeds}")
    start = time.time()
    tables = [Table(pipeline.Experiment(with_seed(exp_cfg, s)), cfg) for s in seeds]
    items = {}
    for t in tables:
        items.update({it.key: it for it in t.plan(True)})
    built = build_plan(tables[0].exp, list(items.values()), log, cfg.poll, "table")
    results = {}
    for s, t in zip(seeds, tables):
        results[s] = _table_result(t, built, time.time(), results_dir and os.path.join(
            results_dir, f"seed{s}"), f"{title}, seed {s}", provenance)
    result = SeedsResult(seeds=list(seeds), tables=results,
                         aggregate=aggregate(list(results.values())),
                         findings=findings_over_seeds(results), built=built,
                         seconds=time.time() - start)
    if results_dir:
        from entangle import report

        result.files, result.write_error = write_results(report.write_seeds, result, results_dir,
                                                  title)
    return result


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
                                                  "per_seed": {}})
            entry["per_seed"][seed] = f["held"]
    for entry in out.values():
        entry["held"] = sum(entry["per_seed"].values())
        entry["of"] = len(entry["per_seed"])
    return out


def _match(eps, row: dict):
    """The paper's column for an eps (exact up to float noise), or a key that is absent."""
    if eps is None:
        return None
    for k in row:
        if k is not None and abs(k - eps) < 1e-9:
            return k
    return "absent"


def _prepare(exp_cfg, cfg: TableConfig, robustified: bool, log) -> tuple[Table, list[str]]:
    exp = pipeline.Experiment(exp_cfg)
    table = Table(exp, cfg)
    return table, build_plan(exp, table.plan(robustified), log, cfg.poll, "table")


def build_plan(exp: pipeline.Experiment, items: list, log: Callable[[str], None],
               poll: float, name: str) -> list[str]:
    """Prints the plan with time estimates, then builds what is missing, cooperating with
    other processes on the store; returns the keys this process built."""
    signature = rate_signature(exp, name)
    rate = None
    if any(not it.present for it in items):
        known = estimate.estimate(exp.store, items, probe=False, processes=(1,))
        rate = (plan_lib.Rate(default_rate(exp), 0.0, "op rates measured here (--estimate)",
                              {key: s for _, key, s, _ in known.items}) if known else
                plan_lib.remembered_rate(exp.store, signature) or probe_rate(exp))
    rate = rate or plan_lib.Rate(default_rate(exp))
    log(plan_lib.describe(exp.store, items, rate))
    return plan_lib.build(exp.store, items, rate, log, poll, name, signature)


def rate_signature(exp: pipeline.Experiment, name: str) -> str:
    """What a measured build rate depends on: the host and its CPU, the experiment, and the
    standard model's architecture, batch, precision and image size."""
    import platform
    import socket

    h = exp.cfg.hparams["standard"]
    size = exp.splits().train.image_shape
    return (f"{socket.gethostname()}|{platform.processor() or platform.machine()}|{name}|"
            f"{h.arch}|w{h.width}|b{h.batch_size}|{h.precision}|{size[0]}x{size[1]}|"
            f"{exp.cfg.runtime.strategy}|xla{int(exp.cfg.runtime.jit_compile)}")


def probe_rate(exp: pipeline.Experiment) -> plan_lib.Rate:
    """A timed probe of the standard model's training step on this machine: its image passes
    per second, and the time to build and trace the model as the fixed cost per artifact."""
    from entangle import train

    splits = exp.splits()
    per_second, first = train.probe_throughput(exp.cfg.hparams["standard"],
                                               splits.train.image_shape,
                                               splits.train.num_classes)
    return plan_lib.Rate(per_second, first, "a timed probe of the training step")


@dataclasses.dataclass
class CurveResult:
    """Accuracy against eps (Figures 3/4/7/10): one series per name, eps -> accuracy report."""

    dataset: str
    series: dict
    paper: dict                         # eps -> the paper's % (or empty)
    chance: float
    built: list[str]
    files: dict = dataclasses.field(default_factory=dict)
    title: str = ""


def _write_curve(result: CurveResult, results_dir: str | None, title: str, ylabel: str):
    result.title = title
    if not results_dir:
        return
    import csv
    import os

    from entangle import report
    from entangle.store import atomic_file

    os.makedirs(results_dir, exist_ok=True)
    files = {"png": os.path.join(results_dir, "figure.png"),
             "csv": os.path.join(results_dir, "figure.csv")}
    report.plot_vs_eps({k: {e: r["accuracy"] for e, r in v.items()}
                        for k, v in result.series.items()}, files["png"], title, ylabel,
                       chance=result.chance, paper=result.paper)
    with atomic_file(files["csv"], "w") as f:
        w = csv.writer(f)
        w.writerow(["series", "eps", "accuracy", "balanced_accuracy", "majority_rate", "n",
                    "paper_accuracy_percent"])
        for name, values in result.series.items():
            for e, r in sorted(values.items()):
                w.writerow([name, e, r["accuracy"], r["balanced_accuracy"], r["majority_rate"],
                            r["n"], result.paper.get(e)])
    result.files = files


def _titled(title: str, context: str, test) -> str:
    """A figure title naming what it was computed on: dataset, scale, seed, and n."""
    return f"{title}\n({context + ', ' if context else ''}n={len(test)} test images)"


def run_figure3(exp_cfg: pipeline.ExperimentConfig, cfg: TableConfig, *,
                results_dir: str | None = None, log: Callable[[str], None] = print,
                context: str = "") -> CurveResult:
    """Figure 3 (7 on ImageNet-9): the standard classifier's accuracy on every R_eps."""
    cfg = dataclasses.replace(cfg, rows=("standard",))
    table, built = _prepare(exp_cfg, cfg, True, log)
    exp = table.exp
    trained = exp.model(*table.row_model("standard"))
    series = {"standard on R_eps": {eps: exp.accuracy_on(trained, exp.robustified(eps)[0],
                                                         f"R_{paper.eps_label(eps)}")
                                    for eps in cfg.columns}}
    ref = (paper.reference(exp_cfg.data.dataset) or {}).get("standard", {})
    result = CurveResult(exp_cfg.data.dataset, series,
                         {e: v for e, v in ref.items() if e is not None},
                         1.0 / exp.splits().test.num_classes, built)
    _write_curve(result, results_dir, _titled("Standard classifier on robustified test sets "
                                              "R_eps", context, exp.splits().test),
                 "accuracy on R_eps (%)")
    return result


def run_figure4(exp_cfg: pipeline.ExperimentConfig, cfg: TableConfig, *,
                results_dir: str | None = None, log: Callable[[str], None] = print,
                context: str = "") -> CurveResult:
    """Figure 4 (10 on ImageNet-9): each eps-robust classifier on the original test set
    (eps 0: the standard model); the store's generators, nothing robustified."""
    cfg = dataclasses.replace(cfg, rows=())
    table, built = _prepare(exp_cfg, cfg, False, log)
    exp = table.exp
    test = exp.splits().test
    series = {"eps-robust on test": {}}
    for eps in cfg.columns:
        trained = exp.model(*exp.generator(eps))
        series["eps-robust on test"][eps] = exp.accuracy_on(trained, test, "Test")
        del trained
    result = CurveResult(exp_cfg.data.dataset, series, {}, 1.0 / test.num_classes, built)
    _write_curve(result, results_dir, _titled("eps-robust classifiers on the original test "
                                              "set", context, test), "test accuracy (%)")
    return result


def run_figure2(exp_cfg: pipeline.ExperimentConfig, cfg: TableConfig, *,
                results_dir: str | None = None, num_images: int = 8,
                log: Callable[[str], None] = print, context: str = "") -> dict:
    """Figures 2/11/12: seed images x0, their robustifications for each eps, the originals."""
    import os

    from entangle import report

    cfg = dataclasses.replace(cfg, rows=())
    table, _ = _prepare(exp_cfg, cfg, True, log)
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
    path = os.path.join(results_dir or ".", "figure2.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    report.image_grid(grid, path, _titled("Robustified images: each column starts from the "
                                          "seed on top and matches the representation of "
                                          "the original at the bottom", context, test),
                      class_names=test.class_names, labels=test.y[pick])
    return {"png": path}


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


def wilson_interval(p: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion p observed over n trials (scipy)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = st.binomtest(int(round(p * n)), n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def lower_bound(report: dict) -> float:
    """The 95 % Wilson lower bound of an accuracy report (``accuracy`` over ``n`` images)."""
    return wilson_interval(report["accuracy"], report["n"])[0]


SMALL_EPS = 0.25        # (a): the "small eps > 0" columns are 0 < eps <= 1/4
NEAR_CHANCE = 0.05      # (b): the 95 % upper bound on R_0 within 5 points of chance


def findings(result: TableResult, alpha: float = stats.ALPHA) -> list[dict]:
    """The paper's five findings (section 4), each a test on paired per-image outcomes.

    (a) standard better on R_eps for small eps > 0 than on R_0: exact McNemar of each column
    with 0 < eps <= 1/4 against R_0, Holm across them; held when one improves significantly.
    (b) robust near chance on R_0 (95 % upper bound <= chance + 5 points) and significantly
    better (McNemar, Holm) on every R_eps with eps >= 1/4 except its own (a convergence
    check: the generator sees the inversion of its own representation).
    (c) zero-robust above chance on every R_eps: one-sided test per column, Holm.
    (d) neg-robust above chance on at least two R_eps with eps > 0 (one-sided, Holm). Its
    Test accuracy is Ilyas et al.'s D_det result, reported separately (not a finding here).
    (e) zero-robust accuracy decreases as eps grows over the eps > 0 columns: permutation
    test of the slope, columns permuted within images.
    Chance tests use balanced accuracy where the test set's classes are unbalanced. A
    finding whose rows or columns are absent is not reported.
    """
    out = []
    y, k = result.labels, result.num_classes
    measure = "accuracy" if stats.is_balanced(y, k) else "balanced accuracy"
    cols = {c: column_eps(c) for c in result.columns if c.startswith("R_")}
    positive = [c for c, e in sorted(cols.items(), key=lambda t: t[1]) if e > 0]
    robust = next((r for r in result.rows if r.startswith("robust")), None)

    def correct(row, col):
        return result.correct[row][col]

    def pct(v):
        return f"{100 * v:.1f}"

    def paired(row, cols_):
        return stats.paired_vs(correct(row, "R_0"), {c: correct(row, c) for c in cols_}, alpha)

    def describe(tests, against="R_0"):
        return "; ".join(f"{c} {t['difference'] * 100:+.1f} points vs {against} "
                         f"({t['second_only']}:{t['first_only']} discordant, p {t['p']:.3g}, "
                         f"Holm {t['p_holm']:.3g})" for c, t in tests.items())

    def vs_chance(row, cols_):
        tests = {c: stats.chance_test(correct(row, c), y, k) for c in cols_}
        for c, p in zip(cols_, stats.holm([t["p"] for t in tests.values()])):
            tests[c]["p_holm"] = p
            tests[c]["significant"] = p <= alpha
        return tests

    def describe_chance(tests):
        return "; ".join(f"{c} {pct(t['value'])} % (95 % {pct(t['low'])}-{pct(t['high'])}, "
                         f"p {t['p']:.3g}, Holm {t['p_holm']:.3g})" for c, t in tests.items())

    if "standard" in result.rows and "R_0" in cols:
        small = [c for c in positive if cols[c] <= SMALL_EPS]
        if small:
            tests = paired("standard", small)
            out.append(_finding("a", "standard does better on R_eps (0 < eps <= 1/4) than on "
                                "R_0", "exact McNemar per column vs R_0, Holm",
                                any(t["significant"] for t in tests.values()),
                                describe(tests), "accuracy", tests))
    if robust and "R_0" in cols:
        own = next((c for c in positive if abs(cols[c] - result.robust_eps) < 1e-9), None)
        larger = [c for c in positive if cols[c] >= SMALL_EPS and
                  not (c == own and result.robust_is_generator)]
        if larger:
            near = stats.chance_test(correct(robust, "R_0"), y, k)
            near_ok = near["high"] <= near["chance"] + NEAR_CHANCE
            tests = paired(robust, larger)
            held = near_ok and all(t["significant"] for t in tests.values())
            out.append(_finding(
                "b", "robust is near chance on R_0 and significantly better on R_eps, eps >= "
                "1/4 (its own column excluded)",
                "95 % upper bound on R_0 within 5 points of chance; exact McNemar vs R_0, "
                "Holm", held, f"R_0 {pct(near['value'])} % (95 % upper {pct(near['high'])}, "
                f"chance {pct(near['chance'])}); " + describe(tests), near["measure"],
                {"R_0": near, **tests}))
    if "zero_robust" in result.rows and cols:
        tests = vs_chance("zero_robust", list(cols))
        out.append(_finding("c", "zero-robust is above chance on every R_eps",
                            f"one-sided {next(iter(tests.values()))['test']} per column, Holm",
                            all(t["significant"] for t in tests.values()),
                            describe_chance(tests), measure, tests))
    if "neg_robust" in result.rows and positive:
        tests = vs_chance("neg_robust", positive)
        hits = sum(t["significant"] for t in tests.values())
        out.append(_finding("d", "neg-robust is above chance on R_eps with eps > 0, except "
                            "the largest (at least two columns)",
                            f"one-sided {next(iter(tests.values()))['test']} per column, "
                            f"Holm; held on >= 2 columns", hits >= 2,
                            f"{hits} of {len(positive)} columns: " + describe_chance(tests),
                            measure, tests))
    if "zero_robust" in result.rows and len(positive) >= 2:
        trend = stats.trend_test([correct("zero_robust", c) for c in positive])
        out.append(_finding("e", "zero-robust accuracy decreases as eps grows (eps > 0)",
                            trend["test"], trend["p"] <= alpha,
                            ", ".join(f"{c} {pct(correct('zero_robust', c).mean())}"
                                      for c in positive) +
                            f" %; slope {100 * trend['statistic']:+.2f} points per column, "
                            f"p {trend['p']:.3g}", "accuracy", {"trend": trend}))
    return out


def _finding(name, text, test, held, detail, measure, tests) -> dict:
    return {"finding": name, "text": text, "test": test, "held": bool(held), "detail": detail,
            "measure": measure, "tests": tests}


def checks(result: TableResult) -> list[dict]:
    """Reported beside the findings, not as findings: neg-robust on Test (Ilyas et al.'s
    D_det result) and the robust generator's accuracy on its own R_eps (convergence)."""
    out = []
    y, k = result.labels, result.num_classes
    if "neg_robust" in result.rows:
        t = stats.chance_test(result.correct["neg_robust"]["Test"], y, k)
        out.append({"check": "neg-robust on Test (Ilyas et al.'s D_det result)",
                    "detail": f"{100 * t['value']:.1f} % (95 % {100 * t['low']:.1f}-"
                              f"{100 * t['high']:.1f}, one-sided p {t['p']:.3g} vs chance)",
                    "test": t})
    robust = next((r for r in result.rows if r.startswith("robust")), None)
    own = f"R_{paper.eps_label(result.robust_eps)}"
    if robust and own in result.columns and result.robust_is_generator:
        test, mine = result.cells[robust]["Test"], result.cells[robust][own]
        out.append({"check": f"convergence: the robust generator on its own {own}",
                    "detail": f"{100 * mine['accuracy']:.1f} % on {own} vs {100 * test['accuracy']:.1f} "
                              f"% on Test (equal when robustification converged)"})
    return out


def column_eps(label: str) -> float:
    """The eps of a column label such as R_1/4 (0.25) or R_1 (1.0)."""
    text = label[2:]
    if "/" in text:
        num, den = text.split("/")
        return float(num) / float(den)
    return float(text)
