"""The artifact graph, declared once: every stored artifact a study can need (classifiers,
constructed training sets, robustified test sets, victims), what it depends on, what it
costs and how it is built. Studies ask a ``Graph`` for the artifacts they use; each request
adds the artifact and, recursively, its dependencies, so every plan (Table, Transfer,
Mistakes) comes from the same declaration and no study spells out another's dependencies.
"""

from __future__ import annotations

import dataclasses

from entangle.core import construct
from entangle.stats import paper
from entangle.store import plan as plan_lib
from entangle.store.plan import PlanItem
from entangle.studies import pipeline

# Training cost of the keras.applications victims relative to ResNet20v2 at the same image
# size (forward MACs, measured by benchmarks/precision.py's counter): for the plan's ETA.
VICTIM_COST = {"mobilenet_v2": 0.36, "densenet121": 0.96, "resnet50_v2": 1.26,
               "vgg16": 4.8, "inception_v3": 3.8, "xception": 6.9}


class Graph:
    """The artifacts of one Experiment that a plan needs, each added once with its
    dependencies; ``plan()`` lists them (dependencies first), marked present or not."""

    def __init__(self, exp: pipeline.Experiment):
        self.exp = exp
        self.nowait = dataclasses.replace(exp.cfg.runtime, wait=False)
        self.items: dict[str, PlanItem] = {}
        sp = exp.splits()
        self.n_train, self.n_test = len(sp.train), len(sp.test)
        self.shape, self.classes = sp.train.image_shape, sp.train.num_classes

    def plan(self) -> list[PlanItem]:
        """Every artifact added, marked present (intact in the store) or not."""
        return plan_lib.mark_present(self.exp.store, list(self.items.values()))

    def add(self, item: PlanItem) -> str:
        """A study's own artifact (its dependencies added first by the caller)."""
        self.items.setdefault(item.key, item)
        return item.key

    def constructed_copies(self, kind: str) -> int:
        """Training examples of a constructed set per training image: one per class for the
        zero-robust set with every target, else one."""
        return self.classes if (kind == "zero_robust" and
                                self.exp.cfg.construct.targets == "all") else 1

    # -------------------------------------------------------------- artifacts
    def model(self, kind: str, eps: float = 0.0, role: str = "generator") -> str:
        """A trained classifier (and, for zero-/neg-robust, its constructed set)."""
        exp = self.exp
        key = exp.model_key(kind, eps, role)
        if key in self.items:
            return key
        deps, images = (), self.n_train
        if kind in construct.KINDS:
            deps = (self.constructed(kind),)
            images *= self.constructed_copies(kind)
        cfg = exp.train_config(kind, eps, role)
        label = exp.model_name(kind, eps) + ("" if role == "generator" else f" ({role})")
        return self.add(plan_lib.training_item(
            label, key, deps, lambda: exp.model(kind, eps, role, runtime=self.nowait), cfg,
            cfg.epochs * images, self.shape, self.classes))

    def generator(self, eps: float) -> str:
        """The model whose representation R_eps inverts (eps 0: the standard model)."""
        return self.model(*self.exp.generator_spec(eps))

    def constructed(self, kind: str) -> str:
        """The zero-/neg-robust training set, built on the constructed sets' source."""
        exp = self.exp
        key = exp.constructed_key(kind)
        if key in self.items:
            return key
        role = exp.cfg.construct.source_role
        source = self.model("standard", 0.0, role)
        images = self.n_train * self.constructed_copies(kind) * (exp.cfg.construct.steps + 1)
        return self.add(PlanItem(
            f"{kind} set", pipeline.DATASET_KIND, key, (source,),
            lambda: exp.constructed(kind, runtime=self.nowait), images,
            work=plan_lib.attack_work((exp.train_config("standard", 0.0, role),), images,
                                      exp.cfg.runtime.eval_batch_size, self.shape,
                                      self.classes)))

    def robustified(self, eps: float) -> str:
        """R_eps: the test set robustified w.r.t. its generator."""
        exp = self.exp
        key = exp.robustified_key(eps)
        if key in self.items:
            return key
        generator = self.generator(eps)
        images = self.n_test * (exp.cfg.robustify.steps + 3)
        return self.add(PlanItem(
            f"R_{paper.eps_label(eps)}", pipeline.DATASET_KIND, key, (generator,),
            lambda: exp.robustified(eps, runtime=self.nowait), images,
            work=plan_lib.attack_work((exp.train_config(*exp.generator_spec(eps)),), images,
                                      exp.cfg.runtime.eval_batch_size, self.shape,
                                      self.classes, kind="robustify")))

    def victim(self, name: str, size_factor: float) -> str:
        """A keras.applications victim (``size_factor``: the plan's per-image speed guess
        relative to ResNet20v2)."""
        exp = self.exp
        key = exp.victim_key(name)
        if key in self.items:
            return key
        cfg = exp.victim_config(name)
        return self.add(plan_lib.training_item(
            f"victim {name}", key, (), lambda: exp.victim(name, runtime=self.nowait), cfg,
            cfg.epochs * self.n_train, self.shape, self.classes,
            passes=cfg.epochs * self.n_train * 2.0 * VICTIM_COST[name] * size_factor))
