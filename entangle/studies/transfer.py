"""Transfer from robust sources (Springer et al. 2021, section 5.2: Figures 5/6, 8/9, 13/14) and
the class-aware transfer metrics of Waseda et al. (2023, section 3.1).

For each eps-robust source (eps 0: the standard model), L2 PGD attacks the test set,
untargeted and targeted (Table 4: CIFAR eps 2.0, ImageNet-9 4.0; 100 steps of 0.1). Targets
are drawn uniformly from the wrong classes, seeded, the same for every source. Each victim
(keras.applications, fine-tuned through the same trainer and store) is scored by:

- the error rate on untargeted examples (Figure 5) and the target hit rate on targeted ones
  (Figure 6), beside the white-box numbers on the source itself;
- Waseda's class-aware ratios over D'_F1, the examples that the source classifies correctly
  and whose adversarial version it misclassifies (as y1 = F1(x') != y): un-fooled (victim
  says y), different mistake (another wrong class), same mistake (y1). They sum to 1.

``attack="n_targeted"`` attacks all sources at once, each towards its own target (Waseda et
al., section 4.1), and reports each source's hit rate and the class-aware ratios with respect
to each source. Adversarial sets, victims and predictions are store artifacts: built once,
shared by every process on the store, reused when a victim or a source is added.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable

import numpy as np

from entangle import data
from entangle.core import attacks, models, objectives
from entangle.runtime import atomic
from entangle.stats import paper
from entangle.store import plan as plan_lib
from entangle.studies import graph as graph_lib, pipeline, runner
from entangle.stats.transfer_metrics import (class_aware, conditioned, draw_targets, findings,
                                       outcome_key)
from entangle.store.plan import PlanItem

MODES = ("per_source", "n_targeted")
ADVERSARIAL_KIND = pipeline.DATASET_KIND
# Bump when a change here alters the adversarial sets built from the same configuration.
VERSION = 1
# Training throughput of each victim relative to ResNet20v2 (234 img/s) at 32 px, batch 128,
# on the 2-core CPU of the README (InceptionV3, Xception: resized to 75, 71 px); ETAs only.



@dataclasses.dataclass(frozen=True)
class TransferConfig:
    sources: tuple[float, ...] = paper.PAPER_COLUMNS   # eps of each source (0: standard)
    victims: tuple[str, ...] = models.VICTIMS
    eps: float = 2.0                                    # Table 4 (ImageNet-9: 4.0)
    steps: int = 100
    step_size: float = 0.1
    mode: str = "per_source"                            # or "n_targeted" (Waseda 4.1)
    target_seed: int = 0
    grid_images: int = 8
    poll: float = 5.0
    n_targeted_loss: str = "ce"                         # or "margin": the budget control
    kappa: float = 0.0                                  # the margin variant's margin

    def __post_init__(self):
        if not self.sources:
            raise ValueError("sources must name at least one eps (0: the standard model)")
        if any(e < 0 or not math.isfinite(e) for e in self.sources):
            raise ValueError(f"sources must be eps values >= 0; got {self.sources}")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources must be distinct; got {self.sources}")
        bad = [v for v in self.victims if v not in models.VICTIMS]
        if bad:
            raise ValueError(f"victims must be among {', '.join(models.VICTIMS)}; got {bad}")
        if self.mode not in MODES:
            raise ValueError(f"attack mode must be one of {MODES}; got {self.mode!r}")
        if self.mode == "n_targeted" and len(self.sources) < 2:
            raise ValueError(f"the n_targeted attack needs two or more sources; got "
                             f"{self.sources}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"transfer eps must be a finite number > 0; got {self.eps}")
        if self.n_targeted_loss not in objectives.N_TARGETED_LOSSES:
            raise ValueError(f"n_targeted_loss must be one of {objectives.N_TARGETED_LOSSES}; "
                             f"got {self.n_targeted_loss!r}")
        if not (self.kappa >= 0 and math.isfinite(self.kappa)):
            raise ValueError(f"kappa must be a finite number >= 0; got {self.kappa}")
        if self.steps < 1 or not self.step_size > 0:
            raise ValueError(f"transfer steps must be >= 1 and step_size > 0; got "
                             f"{self.steps}, {self.step_size}")

    def attack_fields(self, attack: str = "") -> dict:
        fields = {"eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                  "version": VERSION}
        if attack == "n_targeted" and self.n_targeted_loss != "ce":
            fields.update(loss=self.n_targeted_loss, kappa=self.kappa)
        return fields


@dataclasses.dataclass
class TransferResult:
    dataset: str
    mode: str
    sources: list[float]
    victims: list[str]
    victim_weights: str                 # "imagenet" or "none" (trained from scratch)
    records: list[dict]                 # one per (attack, source eps, model): every number
    clean_accuracy: dict                # model label -> test accuracy
    chance: float
    built: list[str]
    seconds: float
    findings: list = dataclasses.field(default_factory=list)
    files: dict = dataclasses.field(default_factory=dict)
    write_error: str | None = None      # why results_dir could not be written, if it could not
    outcomes: dict = dataclasses.field(default_factory=dict)   # outcome_key -> bool per image
    n_targeted_loss: str = "ce"
    # sample images for the figures: attack -> source eps -> images, "_original", "_targets"
    grids: dict = dataclasses.field(default_factory=dict)
    class_names: tuple = ()
    labels: np.ndarray = None           # the test labels

    def value(self, attack: str, model: str, eps: float, field: str):
        for r in self.records:
            if r["attack"] == attack and r["model"] == model and r["source_eps"] == eps:
                return r[field]
        raise KeyError((attack, model, eps, field))


SOURCE = "source (white-box)"


class Transfer:
    """The plan and evaluation of one transfer study on one Experiment."""

    def __init__(self, exp: pipeline.Experiment, cfg: TransferConfig):
        self.exp, self.cfg = exp, cfg
        self._nowait = dataclasses.replace(exp.cfg.runtime, wait=False)

    def radii(self) -> dict[str, float]:
        """The study's L2 radii, named as the flags that set them."""
        return {"transfer_eps (--transfer_eps)": self.cfg.eps,
                "sources (--sources)": max(self.cfg.sources)}

    def attack_modes(self) -> list[str]:
        return ["n_targeted"] if self.cfg.mode == "n_targeted" else ["untargeted", "targeted"]

    def source_key(self, eps: float) -> str:
        return self.exp.model_key(*self.exp.generator_spec(eps))

    def targets(self, k: int = 1) -> np.ndarray:
        test = self.exp.splits().test
        return draw_targets(test.y, test.num_classes, k, self.cfg.target_seed)

    # -------------------------------------------------------------- adversarial sets
    def _set_sources(self, attack: str, eps: float | None) -> list[float]:
        return list(self.cfg.sources) if attack == "n_targeted" else [eps]

    def adversarial_key(self, attack: str, eps: float | None = None) -> str:
        sources = self._set_sources(attack, eps)
        config = {"attack": attack, "sources": [self.source_key(e) for e in sources],
                  "pgd": self.cfg.attack_fields(attack),
                  "target_seed": self.cfg.target_seed if attack != "untargeted" else None,
                  "test": self.exp.test_data_key()}
        label = (("n" if self.cfg.n_targeted_loss == "ce" else "nm") if attack == "n_targeted"
                 else f"{attack[0]}{eps:g}")
        return self.exp.store.key(f"adv-{label}", config)

    def adversarial(self, attack: str, eps: float | None = None,
                    runtime=None) -> tuple[data.Dataset, np.ndarray | None]:
        """The test set attacked on the source(s): (images labelled with the true class,
        targets (k, n) or None); built in chunks (a kill loses at most one), float16."""
        exp, cfg = self.exp, self.cfg
        key = self.adversarial_key(attack, eps)
        path = exp.store.path(ADVERSARIAL_KIND, key)
        test = exp.splits().test
        sources = self._set_sources(attack, eps)

        def load():
            t = os.path.join(path, "targets.npy")
            ds = data.Dataset(np.load(os.path.join(path, "x.npy"), mmap_mode="r"), test.y,
                              test.class_names, key)
            return ds, np.load(t) if os.path.exists(t) else None

        def build():
            trained = [exp.model(*exp.generator_spec(e)) for e in sources]
            targets = None if attack == "untargeted" else self.targets(len(sources))
            exp.log(f"[{key}] {attack} L2 PGD (eps {cfg.eps}, {cfg.steps} steps of "
                     f"{cfg.step_size}) on {len(test)} test images against "
                     f"{', '.join(t.key for t in trained)}")
            start = time.time()
            batch = exp.cfg.runtime.eval_batch_size
            kw = dict(eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size, batch_size=batch,
                      jit_compile=exp.cfg.runtime.jit_compile, verbose=False)

            def make(rows):
                x = data.to_float(test.x[rows])
                if attack == "n_targeted":
                    adv, hit = attacks.multi_targeted_pgd_l2(
                        [t.model for t in trained], x, targets[:, rows], **kw,
                        loss=cfg.n_targeted_loss, kappa=cfg.kappa, first_hit=True)
                    norm = np.sqrt(((adv - x) ** 2).reshape(len(x), -1).sum(1))
                    return {"x": adv.astype(np.float16), "norm": norm, "first_hit": hit.T}
                elif attack == "targeted":
                    adv = attacks.pgd_l2(trained[0].model, x, targets[0, rows], targeted=True,
                                         **kw)
                else:
                    adv = attacks.pgd_l2(trained[0].model, x, test.y[rows], **kw)
                norm = np.sqrt(((adv - x) ** 2).reshape(len(x), -1).sum(1))
                return {"x": adv.astype(np.float16), "norm": norm}

            work = exp.store.partial_path(ADVERSARIAL_KIND, key)
            exp.build_chunks(work, len(test), make)
            config = {"attack": attack, "sources": [t.key for t in trained],
                      "pgd": cfg.attack_fields(attack), "target_seed": cfg.target_seed}
            metrics = {}
            with exp.store.writing(ADVERSARIAL_KIND, key, config, metrics=metrics) as d:
                atomic.assemble_chunks(work, "x", os.path.join(d, "x.npy"))
                norms = atomic.assemble_chunks(work, "norm", os.path.join(d, "l2.npy"))
                if targets is not None:
                    np.save(os.path.join(d, "targets.npy"), targets)
                if attack == "n_targeted":
                    hits = atomic.assemble_chunks(work, "first_hit",
                                                  os.path.join(d, "first_hit_rows.npy"))
                    np.save(os.path.join(d, "first_hit.npy"), np.asarray(hits).T)
                    del hits
                    os.unlink(os.path.join(d, "first_hit_rows.npy"))
                metrics.update(max_l2=float(norms.max()), mean_l2=float(norms.mean()),
                               seconds=time.time() - start)
            return load()

        return exp.store.get_or_build(ADVERSARIAL_KIND, key, build, load,
                                      poll=exp.cfg.runtime.lock_poll, log=exp.log,
                                      wait=(runtime or exp.cfg.runtime).wait)

    def first_hit(self) -> np.ndarray | None:
        """(sources, images): the first step after which each source of the N-targeted set
        predicted its target (-1: never); None for a set built before it was recorded."""
        path = os.path.join(self.exp.store.path(ADVERSARIAL_KIND,
                                                self.adversarial_key("n_targeted")),
                            "first_hit.npy")
        return np.load(path) if os.path.exists(path) else None

    # -------------------------------------------------------------- plan
    def plan(self) -> list[PlanItem]:
        """The sources and victims (``graph.Graph``) and the adversarial sets built on the
        sources, each marked present or not."""
        return self.graph().plan()

    def graph(self) -> graph_lib.Graph:
        """The study's artifacts and their dependencies (see ``plan``)."""
        exp = self.exp
        g = graph_lib.Graph(exp)
        size_factor = runner.default_rate(exp) / 600.0
        for e in self.cfg.sources:
            g.generator(e)
        for name in self.cfg.victims:
            g.victim(name, size_factor)
        for attack in self.attack_modes():
            for e in ([None] if attack == "n_targeted" else self.cfg.sources):
                srcs = self._set_sources(attack, e)
                images = g.n_test * (self.cfg.steps + 1)
                g.add(PlanItem(
                    f"{attack} set" + ("" if e is None else f" eps {paper.eps_label(e)}"),
                    ADVERSARIAL_KIND, self.adversarial_key(attack, e),
                    tuple(g.generator(s) for s in srcs),
                    lambda attack=attack, e=e: self.adversarial(attack, e, runtime=self._nowait),
                    images * len(srcs),
                    work=plan_lib.attack_work(
                        [exp.train_config(*exp.generator_spec(s)) for s in srcs], images,
                        exp.cfg.runtime.eval_batch_size, g.shape, g.classes)))
        return g

    # -------------------------------------------------------------- evaluate
    def evaluate(self) -> tuple[list[dict], dict, dict]:
        """Every record, clean accuracies, and the sample images for the grids."""
        exp = self.exp
        test = exp.splits().test
        y = test.y
        sources = {e: exp.model(*exp.generator_spec(e)) for e in self.cfg.sources}
        clean_pred = {e: exp.predictions(t, test, "Test") for e, t in sources.items()}
        clean = {f"source eps {paper.eps_label(e)}": float(np.mean(p == y))
                 for e, p in clean_pred.items()}
        sets, grids = {}, {}
        for attack in self.attack_modes():
            for e in ([None] if attack == "n_targeted" else self.cfg.sources):
                ds, targets = self.adversarial(attack, e)
                sets[(attack, e)] = (ds, targets)
                if attack != "n_targeted":
                    grids.setdefault(attack, {})[e] = np.asarray(
                        ds.x[:self.cfg.grid_images], np.float32)
        records, outcomes = [], {}

        def record(attack, eps, model, pred, src_clean, src_adv, target, model_clean):
            r = {"attack": attack, "source_eps": eps, "model": model,
                 **conditioned(y, pred, model_clean, target), "n": len(y)}
            ca = class_aware(y, src_clean, src_adv, pred)
            r.update({f"class_aware_{k}": v for k, v in ca.items()})
            ca = class_aware(y, src_clean, src_adv, pred, victim_clean=model_clean)
            r.update({f"class_aware_victim_right_{k}": v for k, v in ca.items()})
            if target is not None:
                mask = (src_clean == y) & (src_adv != y)
                r["fooled_to_target"] = float(np.mean(src_adv[mask] == target[mask])) \
                    if mask.any() else math.nan
            records.append(r)
            outcomes[outcome_key(attack, eps, model)] = (pred == target if target is not None
                                                         else pred != y)
            outcomes[outcome_key("clean", eps, model)] = model_clean == y

        adv_pred = {}
        for (attack, e), (ds, _) in sets.items():
            srcs = self._set_sources(attack, e)
            adv_pred[(attack, e)] = {s: exp.predictions(sources[s], ds, ds.name) for s in srcs}
        for (attack, e), (ds, targets) in sets.items():
            for i, s in enumerate(self._set_sources(attack, e)):
                t = None if targets is None else targets[i]
                record(attack, s, SOURCE, adv_pred[(attack, e)][s], clean_pred[s],
                       adv_pred[(attack, e)][s], t, clean_pred[s])
        for name in self.cfg.victims:
            victim = exp.victim(name)
            victim_clean = exp.predictions(victim, test, "Test")
            clean[name] = float(np.mean(victim_clean == y))
            for (attack, e), (ds, targets) in sets.items():
                pred = exp.predictions(victim, ds, ds.name)
                for i, s in enumerate(self._set_sources(attack, e)):
                    t = None if targets is None else targets[i]
                    record(attack, s, name, pred, clean_pred[s], adv_pred[(attack, e)][s], t,
                           victim_clean)
            del victim
        if self.cfg.mode == "n_targeted":
            ds, targets = sets[("n_targeted", None)]
            hits = np.stack([adv_pred[("n_targeted", None)][s] == targets[i]
                             for i, s in enumerate(self.cfg.sources)])
            records.append({"attack": "n_targeted", "source_eps": None, "model": "all sources",
                            "error_rate": None, "target_hit_rate": float(hits.all(0).mean()),
                            "n": len(y)})
            first = self.first_hit()
            if first is not None:
                for i, s in enumerate(self.cfg.sources):
                    reached = first[i][first[i] > 0]
                    records.append({"attack": "n_targeted", "source_eps": s,
                                    "model": "first hit", "error_rate": None,
                                    "target_hit_rate": float(np.mean(first[i] > 0)),
                                    "first_hit_median_step": (float(np.median(reached))
                                                              if len(reached) else None),
                                    "n": len(y)})
        grids["_original"] = test.float_images()[:self.cfg.grid_images]
        if sets and "targeted" in self.attack_modes():
            grids["_targets"] = sets[("targeted", self.cfg.sources[0])][1][0][
                :self.cfg.grid_images]
        return records, clean, grids, outcomes


def run_transfer(exp_cfg: pipeline.ExperimentConfig, cfg: TransferConfig, *,
                 log: Callable[[str], None] = print) -> TransferResult:
    """Plans, builds (cooperating with other processes on the store) and evaluates a transfer
    study."""
    start = time.time()
    exp = pipeline.Experiment(exp_cfg)
    study = Transfer(exp, cfg)
    plan = study.plan()
    pretrained = [v for v in cfg.victims if exp.victim_config(v).pretrained]
    for name in pretrained:  # before any work: offline, fail fast naming the weights file
        if not exp.store.has("models", exp.victim_key(name)):
            models.require_imagenet_weights(name)
    built = runner.build_plan(exp, plan, log, cfg.poll, "transfer", study.radii())
    records, clean, grids, outcomes = study.evaluate()
    result = TransferResult(dataset=exp_cfg.data.dataset, mode=cfg.mode,
                            sources=list(cfg.sources), victims=list(cfg.victims),
                            victim_weights="imagenet" if pretrained else "none",
                            records=records, clean_accuracy=clean,
                            chance=1.0 / exp.splits().test.num_classes, built=built,
                            seconds=time.time() - start, outcomes=outcomes,
                            n_targeted_loss=cfg.n_targeted_loss, grids=grids,
                            class_names=tuple(exp.splits().test.class_names),
                            labels=np.asarray(exp.splits().test.y))
    result.findings = findings(result)
    return result


