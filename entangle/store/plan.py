"""Plans of store artifacts: what an experiment needs, what the store holds, and a cooperative
build of the rest with progress and an ETA.

An experiment (a table, a transfer study) lists ``PlanItem``s: each names a store artifact,
the artifacts it depends on, how to build it, and its cost in forward+backward image passes.
``build`` takes the next item whose dependencies exist and that no other process holds (the
store's locks, without waiting), so N processes running the same plan on one store each
build different artifacts and finish together.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from entangle.runtime import preempt
from entangle.runtime.atomic import ArtifactBusy, builder_id
from entangle.store import Store


@dataclasses.dataclass(frozen=True)
class Op:
    """One kind of work an artifact does, as a probe can time it, through the model ``config``
    (a train.TrainConfig) builds, ``batch`` images at a time: a training step ("train"), an
    adversarial training step with its PGD inside ("adv_train"), or one step of the attack
    loop ("attack") or of the robustification loop ("robustify")."""

    KINDS = ("train", "adv_train", "attack", "robustify")

    kind: str
    config: object
    batch: int
    input_shape: tuple
    num_classes: int

    def signature(self) -> str:
        """What the op's speed depends on (not its weights, seed or learning rate)."""
        c = self.config
        model = c.arch if c.is_victim else f"{c.arch}-w{c.width}-{c.pooling}"
        size = "x".join(str(d) for d in self.input_shape)
        kind = f"{self.kind} k{c.attack_steps}" if self.kind == "adv_train" else self.kind
        return (f"{kind} {model} in{c.input_size} b{self.batch} {size} "
                f"c{self.num_classes} {c.precision}")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"op kind must be one of {self.KINDS}; got {self.kind!r}")

    def describe(self) -> str:
        return (f"{self.kind} step of {self.config.arch}, batch {self.batch}, "
                f"{'x'.join(str(d) for d in self.input_shape)}")


def training_work(cfg, images: float, input_shape, num_classes: int) -> tuple:
    """The ops of training ``cfg`` on ``images`` (epochs included): one training step per
    image, adversarial (PGD inside, timed whole) when ``cfg.eps`` > 0."""
    kind = "adv_train" if cfg.eps > 0 else "train"
    return ((Op(kind, cfg, cfg.batch_size, tuple(input_shape), num_classes), images),)


def attack_work(cfgs, images: float, batch: int, input_shape, num_classes: int,
                kind: str = "attack") -> tuple:
    """``images`` loop steps (steps x images) of ``kind`` ("attack" or "robustify") through
    each model ``cfgs`` build (an attack on several models at once passes through each)."""
    return tuple((Op(kind, c, batch, tuple(input_shape), num_classes), images) for c in cfgs)


@dataclasses.dataclass
class PlanItem:
    label: str
    kind: str                           # store kind: models / datasets / ...
    key: str
    deps: tuple[str, ...]               # keys that must exist first
    build: Callable[[], object]
    passes: float                       # estimated forward+backward image passes
    present: bool = False
    work: tuple = ()                    # ((Op, images), ...): what a measured estimate times


def training_item(label: str, key: str, deps: tuple, build: Callable[[], object], cfg,
                  images: float, input_shape, num_classes: int, kind: str = "models",
                  passes: float | None = None) -> PlanItem:
    """The plan item of a model trained as ``cfg`` says on ``images`` (epochs included):
    2 passes per image, plus the attack steps of adversarial training."""
    if passes is None:
        passes = images * (2.0 + (cfg.attack_steps if cfg.eps > 0 else 0))
    return PlanItem(label, kind, key, deps, build, passes,
                    work=training_work(cfg, images, input_shape, num_classes))


def mark_present(store: Store, plan: list[PlanItem]) -> list[PlanItem]:
    """Marks the items the store holds intact; a damaged one is moved aside (and so planned
    for a rebuild), or stops the plan under ``on_corrupt="stop"``."""
    for it in plan:
        it.present = store.has(it.kind, it.key) and store.intact(it.kind, it.key)
    return plan


@dataclasses.dataclass
class Rate:
    """How fast this process builds: image passes per second, plus a fixed cost per artifact
    (building and tracing a model); ``source`` says where the numbers came from."""

    passes_per_second: float
    overhead: float = 0.0
    source: str = "a guess"
    projected: dict = dataclasses.field(default_factory=dict)   # key -> seconds (estimate)

    def seconds(self, it: PlanItem) -> float:
        if it.key in self.projected:
            return self.projected[it.key]
        return it.passes / self.passes_per_second + self.overhead

    def refined(self, it: PlanItem, took: float, measured: "Rate") -> "Rate":
        """After building ``it`` in ``took`` seconds: projections scaled by how far off the
        last one was (halfway), pass rates moved halfway to this run's."""
        scale = (0.5 + 0.5 * took / max(self.projected[it.key], 1e-9)
                 if it.key in self.projected else 1.0)
        return Rate(0.5 * self.passes_per_second + 0.5 * measured.passes_per_second,
                    0.5 * self.overhead, "this run",
                    {k: v * scale for k, v in self.projected.items()})


def describe(store: Store, plan: list[PlanItem], rate: Rate) -> str:
    """The plan, one line per artifact: stored, or to build with an estimated time."""
    todo = [it for it in plan if not it.present]
    lines = [f"Plan: {len(plan)} artifacts, {len(plan) - len(todo)} in the store "
             f"({store.root}), {len(todo)} to build"]
    for it in plan:
        state = "stored" if it.present else f"build, ~{fmt_seconds(rate.seconds(it))}"
        lines.append(f"  {it.label:<28} {state:<18} {it.key}")
    if todo:
        lines.append(f"Estimated time for this process alone: "
                     f"{fmt_seconds(sum(rate.seconds(it) for it in todo))} (from {rate.source}; "
                     f"refined as it runs)")
    return "\n".join(lines)


def _exists(store: Store, key: str, kinds: tuple[str, ...]) -> bool:
    return any(store.has(k, key) for k in kinds)


def build(store: Store, plan: list[PlanItem], rate: Rate, log=print, poll: float = 5.0,
          name: str = "plan", on_built: Callable[[PlanItem, float], None] | None = None
          ) -> list[str]:
    """Builds every missing item; with other processes, takes what nobody holds.

    Returns the keys this process built. ``rate`` seeds the ETA and is refined from the items
    built here; ``on_built(item, seconds)`` hears of each item this process built.
    """
    kinds = tuple(dict.fromkeys(it.kind for it in plan))
    pending = [it for it in plan if not it.present]
    total = sum(it.passes for it in pending) or 1.0
    built, done_passes, spent, waiting_since = [], 0.0, 0.0, None
    while pending:
        progressed = False
        for it in list(pending):
            if store.has(it.kind, it.key):
                pending.remove(it)
                done_passes += it.passes
                progressed = True
                continue
            if not all(_exists(store, d, kinds) for d in it.deps):
                continue
            start = time.time()
            try:
                it.build()
            except ArtifactBusy:
                continue
            took = time.time() - start
            pending.remove(it)
            done_passes += it.passes
            if store.manifest(it.kind, it.key).get("built_by") != builder_id():
                progressed = True  # finished by another process meanwhile
                break
            built.append(it.key)
            spent += took
            measured = Rate(sum(p.passes for p in plan if p.key in built) / max(spent, 1e-9),
                            0.0, "this run")
            if on_built:
                on_built(it, took)
            rate = rate.refined(it, took, measured)
            left = sum(rate.seconds(p) for p in pending)
            log(f"[{name}] {len(plan) - len(pending)}/{len(plan)} built {it.label} in "
                f"{fmt_seconds(took)}; {100 * done_passes / total:.0f}% of the work, ETA "
                f"{fmt_seconds(left)}")
            progressed = True
            waiting_since = None
            break
        if pending and not progressed:
            if waiting_since is None:
                waiting_since = time.time()
                log(f"[{name}] {len(pending)} artifacts are being built by other processes; "
                    f"waiting")
            preempt.sleep(poll, f"while waiting for other processes' artifacts")
    return built


def fmt_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
