"""The build runner every study shares: print the plan with its time estimate, build what is
missing (cooperating with other processes on the store), and learn the speed of each kind of
work as it goes.

One rate system: the op rates of ``store.estimate`` (seconds per image of a training step,
an adversarial step, an attack or robustification loop step, per host and CPU). A plan takes
its estimate from the rates remembered in the store (measured by ``--estimate`` or by earlier
runs), probes the kinds of work never measured on this host (unless --probe_rates=false),
and falls back on a guess for an artifact without a measured rate; every artifact built of a
single kind of work records its measured rate for the next plan.
"""

from __future__ import annotations

from typing import Callable

from entangle.store import estimate, plan as plan_lib
from entangle.studies import pipeline


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


def build_plan(exp: pipeline.Experiment, items: list, log: Callable[[str], None],
               poll: float, name: str, radii: dict[str, float] | None = None) -> list[str]:
    """Checks the configuration against the data (``Experiment.check_against_data`` with the
    study's L2 ``radii``), prints the plan with time estimates, then builds what is missing,
    cooperating with other processes on the store; returns the keys this process built."""
    exp.check_against_data(radii)
    todo = [it for it in items if not it.present]
    # a few timed steps of each kind of work this host never ran: an ETA from constants was
    # off by 40x
    est = estimate.estimate(exp.store, items, processes=(), log=log,
                            probe=exp.cfg.runtime.probe_rates)
    if est is None:             # not probing, and some work never measured here
        rates, probed = estimate.known_rates(exp.store, estimate.plan_ops(items).values()), False
    else:
        rates, probed = est.rates, bool(est.probed)
    projected = {it.key: estimate.item_seconds(it, rates) for it in todo
                 if it.work and all(op.signature() in rates for op, _ in it.work)}
    source = ("a guess" if not projected else
              ("op rates probed now" if probed else "op rates measured here")
              + ("" if len(projected) == len(todo) else " and a guess"))
    rate = plan_lib.Rate(default_rate(exp), 0.0, source, projected)
    log(plan_lib.describe(exp.store, items, rate))
    return plan_lib.build(exp.store, items, rate, log, poll, name,
                          on_built=lambda it, took: _remember(exp, it, took))


def _remember(exp: pipeline.Experiment, it, took: float) -> None:
    """Records the rate an artifact of one kind of work was built at (its seconds over its
    images, the build and trace included)."""
    signatures = {op.signature(): op for op, _ in it.work}
    images = sum(n for _, n in it.work)
    if len(signatures) == 1 and images > 0:
        estimate.remember(exp.store, {sig: estimate.OpRate(took / images, 0.0, "a run")
                                      for sig in signatures})
