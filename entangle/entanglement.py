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

from entangle import paper, pipeline
from entangle import plan as plan_lib
from entangle.plan import PlanItem

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
    poll: float = 5.0                               # seconds between looks when all is busy

    def __post_init__(self):
        if not self.eps > 0:
            raise ValueError(f"eps (the robust row's) must be > 0; got {self.eps}")
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
    files: dict = dataclasses.field(default_factory=dict)
    findings: list = dataclasses.field(default_factory=list)


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

        def train_passes(kind, eps, n):
            h = exp.cfg.hparams[kind]
            return h.epochs * n * (2.0 + (h.attack_steps if eps > 0 else 0))

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
            items[key] = PlanItem(label, "models", key, deps,
                                  lambda: exp.model(kind, eps, offset, runtime=self._nowait),
                                  train_passes(kind, eps, n))
            return key

        def add_constructed(kind):
            key = exp.constructed_key(kind)
            if key not in items:
                src = add_model("standard", 0.0)
                mult = 10 if kind == "zero_robust" and exp.cfg.construct.targets == "all" else 1
                items[key] = PlanItem(f"{kind} set", "datasets", key, (src,),
                                      lambda: exp.constructed(kind, runtime=self._nowait),
                                      n_fit * mult * (exp.cfg.construct.steps + 1))
            return key

        columns = sorted(set(self.cfg.columns))
        for eps in columns:
            add_model(*exp.generator(eps))
        for row in self.cfg.rows:
            add_model(*self.row_model(row))
        for eps in columns if robustified else ():
            key = exp.robustified_key(eps)
            gen = exp.model_key(*exp.generator(eps))
            items[key] = PlanItem(f"R_{paper.eps_label(eps)}", "datasets", key, (gen,),
                                  lambda eps=eps: exp.robustified(eps, runtime=self._nowait),
                                  n_test * (exp.cfg.robustify.steps + 3))
        return plan_lib.mark_present(store, list(items.values()))

    # -------------------------------------------------------------- evaluate
    def evaluate(self) -> tuple[dict, dict, dict, dict]:
        exp = self.exp
        test = exp.splits().test
        sets = {"Test": test}
        rel = {}
        for eps in self.cfg.columns:
            ds, extra = exp.robustified(eps)
            label = f"R_{paper.eps_label(eps)}"
            sets[label] = ds
            rel[label] = float(np.median(extra["relative_distance"]))
        cells, keys = {}, {}
        for row in self.cfg.rows:
            trained = exp.model(*self.row_model(row))
            keys[self.row_label(row)] = trained.key
            cells[self.row_label(row)] = {name: exp.accuracy_on(trained, ds, name)
                                          for name, ds in sets.items()}
            del trained
        majority = {name: float(np.bincount(ds.y).max() / len(ds.y)) for name, ds in sets.items()}
        return cells, keys, majority, rel


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
              log: Callable[[str], None] = print) -> TableResult:
    """Plans, builds (cooperating with other processes on the store) and evaluates a table;
    with ``results_dir``, writes it there as Markdown, CSV, JSON and PNG."""
    start = time.time()
    table, built = _prepare(exp_cfg, cfg, True, log)
    exp = table.exp
    cells, keys, majority, rel = table.evaluate()
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
    result = TableResult(dataset=dataset, rows=[table.row_label(r) for r in cfg.rows],
                         columns=columns, cells=cells, paper=paper_cells,
                         chance=1.0 / exp.splits().test.num_classes, majority_rate=majority,
                         median_relative_distance=rel, models=keys, built=built,
                         seconds=time.time() - start)
    result.findings = findings(result)
    if results_dir:
        from entangle import report

        result.files = report.write_table(result, results_dir, title)
    return result


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
    rate = default_rate(exp)
    log(plan_lib.describe(exp.store, items, rate))
    return plan_lib.build(exp.store, items, rate, log, poll, name)


@dataclasses.dataclass
class CurveResult:
    """Accuracy against eps (Figures 3/4/7/10): one series per name, eps -> accuracy report."""

    dataset: str
    series: dict
    paper: dict                         # eps -> the paper's % (or empty)
    chance: float
    built: list[str]
    files: dict = dataclasses.field(default_factory=dict)


def _write_curve(result: CurveResult, results_dir: str | None, title: str, ylabel: str):
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


def run_figure3(exp_cfg: pipeline.ExperimentConfig, cfg: TableConfig, *,
                results_dir: str | None = None, log: Callable[[str], None] = print
                ) -> CurveResult:
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
    _write_curve(result, results_dir, "Standard classifier on robustified test sets R_eps",
                 "accuracy on R_eps (%)")
    return result


def run_figure4(exp_cfg: pipeline.ExperimentConfig, cfg: TableConfig, *,
                results_dir: str | None = None, log: Callable[[str], None] = print
                ) -> CurveResult:
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
    _write_curve(result, results_dir, "eps-robust classifiers on the original test set",
                 "test accuracy (%)")
    return result


def run_figure2(exp_cfg: pipeline.ExperimentConfig, cfg: TableConfig, *,
                results_dir: str | None = None, num_images: int = 8,
                log: Callable[[str], None] = print) -> dict:
    """Figures 2/11/12: seed images x0, their robustifications for each eps, the originals."""
    import os

    from entangle import report

    cfg = dataclasses.replace(cfg, rows=())
    table, _ = _prepare(exp_cfg, cfg, True, log)
    exp = table.exp
    test = exp.splits().test
    pick = np.arange(min(num_images, len(test)))
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
    report.image_grid(grid, path, "Robustified images: each column starts from the seed on "
                      "top and matches the representation of the original at the bottom",
                      class_names=test.class_names, labels=test.y[pick])
    return {"png": path}


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a binomial proportion p observed over n trials."""
    if n == 0:
        return float("nan"), float("nan")
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def lower_bound(report: dict) -> float:
    """The 95 % Wilson lower bound of an accuracy report (``accuracy`` over ``n`` images)."""
    return wilson_interval(report["accuracy"], report["n"])[0]


def findings(result: TableResult) -> list[dict]:
    """The paper's four qualitative findings (section 4), checked on a measured table.

    (a) the standard classifier does better on R_eps for some small eps > 0 (<= 1/4) than on
    R_0; (b) the robust classifier is near chance on R_0 (below chance + 10 points) and clearly
    higher (+10 points) on R_{its eps}; (c) the zero-robust classifier is above chance on every
    R_eps (95 % Wilson lower bound); (d) the neg-robust classifier is above chance on the test
    set (same bound). A finding whose rows or columns are absent is not reported.
    """
    out = []

    def acc(row, col):
        return result.cells[row][col]["accuracy"]

    def lower(row, col):
        return lower_bound(result.cells[row][col])

    cols = {c: e for c in result.columns if c.startswith("R_")
            for e in [column_eps(c)]}
    robust = next((r for r in result.rows if r.startswith("robust")), None)
    if "standard" in result.rows and "R_0" in cols:
        small = [c for c, e in cols.items() if 0 < e <= 0.25]
        best = max(small, key=lambda c: acc("standard", c)) if small else None
        out.append({"finding": "a", "text": "standard does better on R_eps (small eps > 0) "
                    "than on R_0", "held": bool(best and acc("standard", best) >
                                                acc("standard", "R_0")),
                    "detail": f"R_0 {100 * acc('standard', 'R_0'):.1f} %, best small "
                    f"{best} {100 * acc('standard', best):.1f} %" if best else "no column"})
    if robust and "R_0" in cols:
        own = next((c for c, e in cols.items() if e > 0 and abs(
            e - float(robust.split("eps ")[1].rstrip(")"))) < 1e-9), None)
        if own:
            r0, rown = acc(robust, "R_0"), acc(robust, own)
            out.append({"finding": "b", "text": "robust is near chance on R_0 and high on "
                        "R_{its eps}", "held": r0 < result.chance + 0.1 and rown > r0 + 0.1,
                        "detail": f"R_0 {100 * r0:.1f} %, {own} {100 * rown:.1f} %, chance "
                        f"{100 * result.chance:.1f} %"})
    if "zero_robust" in result.rows and cols:
        lows = {c: lower("zero_robust", c) for c in cols}
        out.append({"finding": "c", "text": "zero-robust is above chance on every R_eps",
                    "held": all(v > result.chance for v in lows.values()),
                    "detail": "95 % lower bounds " + ", ".join(
                        f"{c} {100 * v:.1f}" for c, v in lows.items()) + " %"})
    if "neg_robust" in result.rows:
        lo = lower("neg_robust", "Test")
        out.append({"finding": "d", "text": "neg-robust is above chance on the test set",
                    "held": lo > result.chance,
                    "detail": f"{100 * acc('neg_robust', 'Test'):.1f} %, 95 % interval from "
                    f"{100 * lo:.1f} %, chance {100 * result.chance:.1f} %"})
    return out


def column_eps(label: str) -> float:
    """The eps of a column label such as R_1/4 (0.25) or R_1 (1.0)."""
    text = label[2:]
    if "/" in text:
        num, den = text.split("/")
        return float(num) / float(den)
    return float(text)
