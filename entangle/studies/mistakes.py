"""Waseda et al. (2023), section 4: do adversarial examples carry non-robust features of two
classes at once?

Two standard models F1 and F2 (one architecture with two seeds, or a second architecture)
are attacked together on the training set with the N-targeted attack: F1 towards Y1, F2
towards Y2, two random target sequences. The success table (their Table 1) says how often
each model lands on its target. The examples are then relabelled once by Y1 and once by Y2;
a fresh model is trained on each (the constructed-set rules of the zero-robust model: no
augmentation, early stopping on a held-out part of the same construction) and scored on the
original test set. Both above chance means the same images carry features of both classes.

The targets are uniform over all classes (the original one included) so that, like the
zero-robust labels, each sequence alone is independent of the true class; with
``targets="distinct"`` Y2 is uniform over the classes other than Y1.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import numpy as np

from entangle import data, stats
from entangle.core import attacks, inference, linear_probe, train
from entangle.data import planted
from entangle.runtime import atomic
from entangle.stats import findings as table_findings
from entangle.store import plan as plan_lib, training
from entangle.store.plan import PlanItem
from entangle.studies import graph as graph_lib, pipeline, runner

TARGET_MODES = ("distinct", "independent")
KIND = "datasets"
# Bump when a change here alters the adversarial set built from the same configuration.
VERSION = 1


@dataclasses.dataclass(frozen=True)
class MistakesConfig:
    second_model: str = "seed"          # "seed" (the table's standard row model) or a victim
    eps: float = 0.1                    # Waseda 4.2: L2 0.1, 100 steps of 0.1
    steps: int = 100
    step_size: float = 0.1
    targets: str = "distinct"
    target_seed: int = 0
    relabel_kind: str = "zero_robust"   # whose hyperparameters train the relabelled models
    relabel_init: str = "own"           # relabelled models: own initial weights, or F1's ("f1")
    leakage_eps: float = 0.5            # robust model of the leakage probe; 0: no control
    probe_l2: float = 1e-3              # L2 penalty of the probe's logistic regression

    def __post_init__(self):
        if self.targets not in TARGET_MODES:
            raise ValueError(f"targets must be one of {TARGET_MODES}; got {self.targets!r}")
        if not self.eps > 0 or self.steps < 1 or not self.step_size > 0:
            raise ValueError(f"the attack needs eps > 0, steps >= 1 and step_size > 0; got "
                             f"{self.eps}, {self.steps}, {self.step_size}")
        if self.leakage_eps < 0 or self.probe_l2 < 0:
            raise ValueError(f"leakage_eps and probe_l2 must be >= 0; got {self.leakage_eps}, "
                             f"{self.probe_l2}")
        if self.relabel_init not in ("own", "f1"):
            raise ValueError(f"relabel_init must be 'own' or 'f1'; got {self.relabel_init!r}")
        if self.relabel_kind not in pipeline.KINDS:
            raise ValueError(f"relabel_kind must be one of {pipeline.KINDS}; got "
                             f"{self.relabel_kind!r}")


def draw_target_pair(n: int, num_classes: int, mode: str = "distinct", seed: int = 0
                     ) -> np.ndarray:
    """(2, n) targets Y1, Y2, each uniform over all classes and independent of the images;
    ``distinct``: Y2 != Y1 per image (Y2 uniform over the other classes)."""
    if mode not in TARGET_MODES:
        raise ValueError(f"targets must be one of {TARGET_MODES}; got {mode!r}")
    rng = np.random.default_rng([seed, 4242])
    y1 = rng.integers(0, num_classes, n)
    if mode == "distinct":
        y2 = planted.other_class(rng, y1, num_classes)
    else:
        y2 = rng.integers(0, num_classes, n)
    return np.stack([y1, y2]).astype(np.int64)


@dataclasses.dataclass
class MistakesResult:
    dataset: str
    models: dict                # "F1"/"F2" -> store key
    success: dict               # part -> {"F1 hits Y1", "F2 hits Y2", "both", "n"}
    relabelled: dict            # "Y1"/"Y2" -> test accuracy report (+ "key", "lower")
    chance: float
    config: dict
    built: list[str]
    seconds: float
    findings: list = dataclasses.field(default_factory=list)
    files: dict = dataclasses.field(default_factory=dict)
    leakage: dict = dataclasses.field(default_factory=dict)  # probe -> accuracy, interval
    seed: int = 0                                            # the run's seed
    write_error: str | None = None      # why results_dir could not be written, if it could not


class Mistakes:
    """The plan and evaluation of the different-mistakes experiment on one Experiment."""

    def __init__(self, exp: pipeline.Experiment, cfg: MistakesConfig):
        self.exp, self.cfg = exp, cfg
        self._nowait = dataclasses.replace(exp.cfg.runtime, wait=False)

    def radii(self) -> dict[str, float]:
        """The experiment's L2 radii, named as the flags that set them."""
        return {"mistakes_eps (--mistakes_eps)": self.cfg.eps,
                "leakage_eps (--leakage_eps)": self.cfg.leakage_eps}

    # -------------------------------------------------------------- the two attacked models
    def model_key(self, which: str) -> str:
        if which == "F1":
            return self.exp.model_key("standard")
        if self.cfg.second_model == "seed":
            return self.exp.model_key("standard", 0.0, "row")
        return self.exp.victim_key(self.cfg.second_model)

    def model(self, which: str, runtime=None) -> training.TrainedModel:
        if which == "F1":
            return self.exp.model("standard", runtime=runtime)
        if self.cfg.second_model == "seed":
            return self.exp.model("standard", 0.0, "row", runtime=runtime)
        return self.exp.victim(self.cfg.second_model, runtime=runtime)

    # -------------------------------------------------------------- the adversarial set
    def adversarial_key(self) -> str:
        c = self.cfg
        return self.exp.store.key("mistakes", {
            "F1": self.model_key("F1"), "F2": self.model_key("F2"), "eps": c.eps,
            "steps": c.steps, "step_size": c.step_size, "targets": c.targets,
            "target_seed": c.target_seed, "images": self.exp.train_data_key(),
            "holdout": self.exp.holdout_spec(), "version": VERSION})

    def _parts(self) -> dict:
        sp = self.exp.splits()
        return {"train": sp.fit_part(), "val": sp.val_part()}

    def adversarial(self, runtime=None) -> dict:
        """part -> (x memory-mapped float16, targets (2, n), success dict) from the store."""
        key = self.adversarial_key()
        path = self.exp.store.path(KIND, key)

        def load():
            metrics = self.exp.store.manifest(KIND, key)["metrics"]
            return {p: (np.load(os.path.join(path, f"x_{p}.npy"), mmap_mode="r"),
                        np.load(os.path.join(path, f"targets_{p}.npy")), metrics[p])
                    for p in ("train", "val")}

        return self.exp.store.get_or_build(KIND, key, lambda: self._build(key), load,
                                           poll=self.exp.cfg.runtime.lock_poll,
                                           log=self.exp.log,
                                           wait=(runtime or self.exp.cfg.runtime).wait)

    def _build(self, key: str):
        c, exp = self.cfg, self.exp
        f1, f2 = self.model("F1").model, self.model("F2").model
        partial = exp.store.partial_path(KIND, key)
        batch = exp.cfg.runtime.eval_batch_size
        metrics, parts = {}, self._parts()
        exp.log(f"[mistakes] N-targeted attack on F1 and F2 (eps {c.eps}, {c.steps} steps of "
                 f"{c.step_size}): {sum(len(p) for p in parts.values())} images")
        start = time.time()
        with exp.store.writing(KIND, key, {"F1": self.model_key("F1"),
                                           "F2": self.model_key("F2"),
                                           **dataclasses.asdict(c)}, metrics=metrics) as d:
            for i, (part, ds) in enumerate(parts.items()):
                targets = draw_target_pair(len(ds), ds.num_classes, c.targets,
                                           c.target_seed * 2 + i)

                def make(rows, ds=ds, targets=targets):
                    x = data.to_float(ds.x[rows])
                    adv = attacks.multi_targeted_pgd_l2(
                        [f1, f2], x, targets[:, rows], eps=c.eps, steps=c.steps,
                        step_size=c.step_size, batch_size=batch,
                        jit_compile=exp.cfg.runtime.jit_compile, verbose=False)
                    return {"x": adv.astype(np.float16)}

                work = os.path.join(partial, part)
                exp.build_chunks(work, len(ds), make)
                x = atomic.assemble_chunks(work, "x", os.path.join(d, f"x_{part}.npy"))
                np.save(os.path.join(d, f"targets_{part}.npy"), targets)
                metrics[part] = success_table(inference.predict(f1, x, batch),
                                              inference.predict(f2, x, batch), targets)
                del x
            metrics["seconds"] = time.time() - start
        return self.adversarial()

    # -------------------------------------------------------------- relabelled models
    def relabel_config(self, by: str) -> train.TrainConfig:
        """A relabelled model's hyperparameters: by default its own seed, so that it shares
        the initial weights of neither F1, F2 nor the other relabelled model; with
        ``relabel_init="f1"``, F1's (the shared start)."""
        if self.cfg.relabel_init == "f1":
            return dataclasses.replace(self.exp.train_config(self.cfg.relabel_kind),
                                       seed=self.exp.train_config("standard").seed)
        return self.exp.train_config(self.cfg.relabel_kind, 0.0, f"relabel-{by}")

    def relabelled_key(self, by: str) -> str:
        cfg = self.relabel_config(by)
        return training.model_key(self.exp.store, cfg, f"{self.adversarial_key()}|{by}",
                               self.exp.splits().train.num_classes, f"mistakes-{by}")

    def relabelled(self, by: str, runtime=None) -> training.TrainedModel:
        """A fresh model trained on the adversarial set labelled by ``by`` (Y1 or Y2)."""
        cfg = self.relabel_config(by)
        names = self.exp.splits().train.class_names
        row = {"Y1": 0, "Y2": 1}[by]
        if self.exp.store.has(training.MODEL_KIND, self.relabelled_key(by)):
            fit, val = self.exp.splits().train, None  # cache hit: the data is not needed
        else:
            adv = self.adversarial()
            fit, val = (data.Dataset(adv[p][0], adv[p][1][row], names, f"mistakes:{p}:{by}")
                        for p in ("train", "val"))
        return training.train_classifier(cfg, fit, val if cfg.early_stopping else None,
                                      self.exp.store, name=f"mistakes-{by}",
                                      runtime=runtime or self.exp.cfg.runtime,
                                      data_key=f"{self.adversarial_key()}|{by}")

    # -------------------------------------------------------------- plan
    def plan(self) -> list[PlanItem]:
        """F1, F2 (``graph.Graph``), the N-targeted set on them, the leakage probe's robust
        model and the relabelled models, each marked present or not."""
        return self.graph().plan()

    def graph(self) -> graph_lib.Graph:
        """The study's artifacts and their dependencies (see ``plan``)."""
        exp = self.exp
        g = graph_lib.Graph(exp)
        f1 = g.model("standard")
        f2 = (g.model("standard", 0.0, "row") if self.cfg.second_model == "seed"
              else g.victim(self.cfg.second_model, runner.default_rate(exp) / 600.0))
        f1_cfg = exp.train_config("standard")
        f2_cfg = (exp.train_config("standard", 0.0, "row") if self.cfg.second_model == "seed"
                  else exp.victim_config(self.cfg.second_model))
        images = g.n_train * (self.cfg.steps + 1)
        adv = g.add(PlanItem("N-targeted set", KIND, self.adversarial_key(), (f1, f2),
                             lambda: self.adversarial(self._nowait), 2 * images,
                             work=plan_lib.attack_work((f1_cfg, f2_cfg), images,
                                                       exp.cfg.runtime.eval_batch_size,
                                                       g.shape, g.classes)))
        if self.cfg.leakage_eps > 0:
            g.model("robust", self.cfg.leakage_eps)
        for by in ("Y1", "Y2"):
            cfg = self.relabel_config(by)
            g.add(plan_lib.training_item(
                f"model on (X', {by})", self.relabelled_key(by), (adv,),
                lambda by=by: self.relabelled(by, self._nowait), cfg,
                cfg.epochs * g.n_train, g.shape, g.classes, kind=training.MODEL_KIND))
        return g


def success_table(pred1: np.ndarray, pred2: np.ndarray, targets: np.ndarray) -> dict:
    """Waseda et al.'s Table 1: how often F1 lands on Y1, F2 on Y2, and both at once."""
    hit1, hit2 = pred1 == targets[0], pred2 == targets[1]
    return {"F1 hits Y1": float(hit1.mean()), "F2 hits Y2": float(hit2.mean()),
            "both": float((hit1 & hit2).mean()), "n": int(len(pred1))}


def run_mistakes(exp_cfg: pipeline.ExperimentConfig, cfg: MistakesConfig, *,
                 poll: float = 5.0, log: Callable[[str], None] = print) -> MistakesResult:
    """Plans, builds (cooperating with other processes on the store) and evaluates the
    experiment."""
    start = time.time()
    exp = pipeline.Experiment(exp_cfg)
    m = Mistakes(exp, cfg)
    built = runner.build_plan(exp, m.plan(), log, poll, "mistakes", m.radii())
    test = exp.splits().test
    adv = m.adversarial()
    relabelled, correct = {}, {}
    for by in ("Y1", "Y2"):
        trained = m.relabelled(by)
        rep = dict(exp.accuracy_on(trained, test, "Test"))
        rep["lower"], rep["upper"] = table_findings.wilson_interval(rep["accuracy"], rep["n"])
        rep["key"] = trained.key
        relabelled[by] = rep
        correct[by] = exp.evaluate(trained, outcomes=True)["clean_correct"]
        del trained
    result = MistakesResult(
        dataset=exp_cfg.data.dataset, models={w: m.model_key(w) for w in ("F1", "F2")},
        success={p: adv[p][2] for p in ("train", "val")}, relabelled=relabelled,
        chance=1.0 / test.num_classes, config=dataclasses.asdict(cfg), built=built,
        seconds=time.time() - start, seed=exp_cfg.hparams["standard"].seed)
    if cfg.leakage_eps > 0:
        result.leakage = leakage_control(m, adv, correct)
    result.findings = findings(result)
    return result


def leakage_control(m: Mistakes, adv: dict, correct: dict) -> dict:
    """Goh's linear probe on the eps-robust representation: trained on (X', Y1), (X', Y2)
    and, as the robust features' own ceiling, on the clean images with their labels; each
    scored on the test set. Per relabelled set, the model is compared with its probe on the
    same test images (exact McNemar, Holm over Y1 and Y2)."""
    exp, cfg = m.exp, m.cfg
    test = exp.splits().test
    robust = exp.model("robust", cfg.leakage_eps)
    batch = exp.cfg.runtime.eval_batch_size
    x_adv, fit = adv["train"][0], exp.splits().fit_part()
    sets = {"Y1": (x_adv, adv["train"][1][0]), "Y2": (x_adv, adv["train"][1][1]),
            "clean": (fit.x, fit.y)}
    out = {"robust_model": robust.key, "eps": cfg.leakage_eps, "l2": cfg.probe_l2}
    probes = linear_probe.leakage(robust.model, sets, test, l2=cfg.probe_l2, batch_size=batch)
    for name in sets:
        t = stats.chance_test(probes[name], test.y, test.num_classes)
        out[name] = {"accuracy": t["value"], "lower": t["low"], "upper": t["high"],
                     "p_above_chance": t["p"], "n": len(probes[name])}
    tests = [stats.mcnemar_exact(probes[by], correct[by]) for by in ("Y1", "Y2")]
    for by, t, p in zip(("Y1", "Y2"), tests, stats.holm([t["p"] for t in tests])):
        out[by]["model_vs_probe"] = {**t, "p_holm": p,
                                     "significant": p <= stats.ALPHA and t["difference"] > 0}
    return out


def findings(result: MistakesResult) -> list[dict]:
    """Waseda et al.'s conclusion, checked: both relabelled models above chance on the test
    set (95 % Wilson lower bound), i.e. the same examples carry features of two classes; with
    the leakage control, whether robust features leak into the set (a probe above chance)
    and whether both models beat their probes (the part leakage cannot explain)."""
    lows = {by: r["lower"] for by, r in result.relabelled.items()}
    out = [{"text": "both relabelled models are above chance on the original test set",
            "held": all(v > result.chance for v in lows.values()),
            "detail": ", ".join(f"trained on (X', {by}): "
                                f"{100 * result.relabelled[by]['accuracy']:.1f} % (95 % from "
                                f"{100 * v:.1f} %)" for by, v in lows.items())
            + f"; chance {100 * result.chance:.1f} %"}]
    lk = result.leakage
    if not lk:
        return out
    out.append({"text": f"robust features leak into the relabelled set (a linear probe on the "
                        f"eps {lk['eps']:g} robust representation beats chance)",
                "held": any(lk[by]["lower"] > result.chance for by in ("Y1", "Y2")),
                "detail": ", ".join(f"probe on (X', {by}): {100 * lk[by]['accuracy']:.1f} % "
                                    f"({100 * lk[by]['lower']:.1f}-"
                                    f"{100 * lk[by]['upper']:.1f})" for by in ("Y1", "Y2"))
                + f"; probe on the clean labels (ceiling): {100 * lk['clean']['accuracy']:.1f}"
                  " %"})
    tests = {by: lk[by]["model_vs_probe"] for by in ("Y1", "Y2")}
    out.append({"text": "both relabelled models beat robust-feature leakage (model vs probe, "
                        "exact McNemar on the test images, Holm over Y1 and Y2)",
                "held": all(t["significant"] for t in tests.values()),
                "detail": ", ".join(f"{by}: {100 * t['difference']:+.1f} points, p_holm "
                                    f"{t['p_holm']:.3g}" for by, t in tests.items())})
    return out
