"""Measured projections of a plan: time a short probe of each kind of work with the real
model, configuration and hardware, then project every artifact and the whole plan, for one
process and for N processes (or GPUs) sharing one store.

Work comes in four kinds (``plan.Op``): a training step, an adversarial training step (its
PGD inside), a step of the attack loop (construction, transfer) and a step of the
robustification loop, each timed whole as the experiments run it. A probe
times each distinct op once: the first call (building and tracing the model) is the fixed
cost of every artifact that uses the op; the next calls give seconds per image. Rates are
remembered per host, CPU and op, in the store and in this user's cache (``runtime.cache_dir``),
so later plans estimate without probing, on this store or on a new one on the same machine.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import platform
import socket
import time
from typing import Callable

import numpy as np

from entangle import runtime
from entangle.runtime import preempt
from entangle.runtime.atomic import atomic_file
from entangle.store import plan as plan_lib, Store
from entangle.store.plan import Op, PlanItem

RATES = "op_rates.json"
PROCESSES = (1, 2, 4, 8)
# A probe times at most this many images a step: the per-image rate is flat above a few
# hundred on CPUs and GPUs alike, and a probe must never need more memory than the run.
PROBE_BATCH = 512


@dataclasses.dataclass(frozen=True)
class OpRate:
    """Seconds per image of an op, and the seconds to build and trace its model once."""

    seconds_per_image: float
    overhead: float
    source: str = "probe"


@dataclasses.dataclass
class Estimate:
    """Projected seconds per artifact (label, key, seconds, stored) and the plan's wall time
    for each number of processes sharing the store (artifacts run in dependency order)."""

    items: list[tuple[str, str, float, bool]]
    wall: dict                           # processes -> seconds
    rates: dict                          # op signature -> OpRate
    probed: tuple = ()                   # the signatures timed now (never measured here)


def host_id() -> str:
    return f"{socket.gethostname()}|{platform.processor() or platform.machine()}"


def probe_op(op: Op, repeats: int = 3, jit_compile: bool = False) -> OpRate:
    """Times ``op`` on random images: the first call (build and trace) is the overhead;
    ``repeats`` more give the per-image time (per loop step for attacks and robustification).
    Victims are probed without pretrained weights (the same arithmetic, nothing to download).
    ``jit_compile``: the training step under XLA (the loops stay without: XLA slows the
    while-loop PGD on CPUs, NOTES.md)."""
    import tensorflow as tf

    from entangle.core import train

    adversarial = op.kind == "adv_train"
    batch = min(op.batch, PROBE_BATCH)
    cfg = dataclasses.replace(op.config, pretrained=False, batch_size=batch,
                              eps=op.config.eps if adversarial else 0.0)
    if op.kind in ("train", "adv_train"):
        per_second, overhead = train.probe_throughput(cfg, op.input_shape, op.num_classes,
                                                      repeats, jit_compile=jit_compile,
                                                      adversarial=adversarial)
        return OpRate(1.0 / per_second, overhead, "probed now")
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + tuple(op.input_shape), np.float32)
    start = time.time()
    model, _ = train.build_for_training(cfg, tf.distribute.get_strategy(), op.input_shape,
                                        op.num_classes)
    loop = _loop(op.kind, model, x, rng.integers(0, op.num_classes, batch).astype(np.int32))

    def seconds(steps):
        t = time.time()
        loop(steps)
        return time.time() - t
    seconds(1)
    overhead = time.time() - start
    one = seconds(1)
    many = seconds(1 + repeats)
    return OpRate(max(many - one, 1e-9) / (repeats * batch), overhead, "probed now")


def _loop(kind: str, model, x: np.ndarray, y: np.ndarray) -> Callable[[int], object]:
    """``steps -> result``: the attack (L2 PGD) or robustification loop on one batch, as the
    experiments run them."""
    from entangle.core import attacks, robustify

    if kind == "attack":
        return lambda steps: attacks.pgd_l2(model, x, y, eps=1.0, steps=steps, step_size=0.1,
                                            batch_size=len(x), verbose=False)
    x0 = np.roll(x, 1, axis=0)
    return lambda steps: robustify.robustify(
        model, x, x0, robustify.RobustifyConfig(steps=steps), batch_size=len(x), verbose=False)


def _records(store: Store) -> list[str]:
    """Where rates are remembered: the store's own record first, then this machine's."""
    return [os.path.join(store.root, RATES), os.path.join(runtime.cache_dir(), RATES)]


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            entries = json.load(f)
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}


def remembered(store: Store) -> dict:
    """Every remembered rate, the store's own where both records have one."""
    return {k: v for path in reversed(_records(store)) for k, v in _read(path).items()}


def remember(store: Store, rates: dict) -> None:
    """Merges measured op rates into both records; one that cannot be written (a read-only
    store, no home directory) just does not learn them."""
    when = time.strftime("%Y-%m-%d %H:%M")
    new = {f"{host_id()}|{sig}": {"seconds_per_image": r.seconds_per_image,
                                  "overhead": r.overhead, "when": when, "how": r.source}
           for sig, r in rates.items()}
    for path in _records(store):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            entries = {**_read(path), **new}
            with atomic_file(path, "w") as f:
                json.dump(entries, f, indent=1, sort_keys=True)
        except OSError:
            pass


def known_rates(store: Store, ops) -> dict:
    """The remembered rate of each op measured on this host, where there is one."""
    entries, out = remembered(store), {}
    for op in ops:
        e = entries.get(f"{host_id()}|{op.signature()}")
        if isinstance(e, dict) and {"seconds_per_image", "overhead"} <= set(e):
            out[op.signature()] = OpRate(e["seconds_per_image"], e["overhead"],
                                         f"measured here ({e.get('how', 'probe')}) "
                                         f"{e.get('when', '')}".rstrip())
    return out


def item_seconds(it: PlanItem, rates: dict) -> float:
    """An artifact's projected time: each op's images at its rate, plus each distinct op's
    build-and-trace cost once."""
    total, seen = 0.0, set()
    for op, images in it.work:
        r = rates[op.signature()]
        total += images * r.seconds_per_image
        if op.signature() not in seen:
            seen.add(op.signature())
            total += r.overhead
    return total


def schedule(items: list[PlanItem], seconds: dict, processes: int) -> float:
    """Wall time of ``processes`` workers taking, whenever one is free, the first missing
    artifact whose dependencies are built (what ``plan.build`` does on a shared store)."""
    pending = [it for it in items if not it.present]
    done_at = {it.key: 0.0 for it in items if it.present}
    free = [0.0] * processes
    heapq.heapify(free)
    while pending:
        now = heapq.heappop(free)
        ready = [it for it in pending if all(done_at.get(d, np.inf) <= now for d in it.deps)]
        if not ready:
            later = [t for t in done_at.values() if t > now]
            if not later:
                raise ValueError(f"{pending[0].label} depends on an artifact the plan lacks")
            heapq.heappush(free, min(later))
            continue
        it = ready[0]
        pending.remove(it)
        done_at[it.key] = now + seconds[it.key]
        heapq.heappush(free, done_at[it.key])
    return max(done_at.values(), default=0.0)


def plan_ops(items: list[PlanItem]) -> dict:
    """{signature: op} of the work the plan's missing artifacts need."""
    return {op.signature(): op for it in items if not it.present for op, _ in it.work}


def estimate(store: Store, items: list[PlanItem], *, probe: bool = True,
             processes=PROCESSES, log: Callable[[str], None] = print,
             probe_fn: Callable[[Op], OpRate] = probe_op) -> Estimate | None:
    """Projects ``items``: rates remembered on this host, the rest probed (``probe``) and
    remembered. Without ``probe`` and with an op never measured here, returns None."""
    ops = plan_ops(items)
    rates = known_rates(store, ops.values())
    missing = [op for sig, op in ops.items() if sig not in rates]
    if missing and not probe:
        return None
    for i, op in enumerate(missing):
        preempt.check(f"before probe {i + 1} of {len(missing)}")
        log(f"[estimate] probing {i + 1}/{len(missing)}: {op.describe()}")
        rates[op.signature()] = probe_fn(op)
    if missing:
        remember(store, {op.signature(): rates[op.signature()] for op in missing})
    seconds = {it.key: 0.0 if it.present else item_seconds(it, rates) for it in items}
    return Estimate(items=[(it.label, it.key, seconds[it.key], it.present) for it in items],
                    wall={n: schedule(items, seconds, n) for n in processes},
                    rates={sig: rates[sig] for sig in ops},
                    probed=tuple(op.signature() for op in missing))


def markdown(est: Estimate, title: str, hardware: str = "") -> str:
    """The projection as Markdown: one row per artifact, the wall time per process count, and
    the rates it rests on."""
    fmt = plan_lib.fmt_seconds
    lines = [f"## Projected time: {title}", ""]
    if hardware:
        lines += [f"Hardware: {hardware}.", ""]
    lines += ["| Artifact | Projected | Key |", "|---|---|---|"]
    lines += [f"| {label} | {'stored' if present else fmt(s)} | `{key}` |"
              for label, key, s, present in est.items]
    lines += ["", "| Processes on one store (each as fast as this hardware: GPUs, hosts) | "
              "Wall time |", "|---|---|"]
    lines += [f"| {n} | {fmt(s)} |" for n, s in est.wall.items()]
    lines += ["", "| Op | Seconds per image | Build and trace | From |", "|---|---|---|---|"]
    lines += [f"| {sig} | {r.seconds_per_image:.3g} | {fmt(r.overhead)} | {r.source} |"
              for sig, r in est.rates.items()]
    lines += ["", "Epochs are the upper bound: early-stopped models may finish sooner. "
              "Evaluation and batch-norm recomputation are not included (a few percent)."]
    return "\n".join(lines)
