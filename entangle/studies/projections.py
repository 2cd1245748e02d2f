"""``--estimate``: measured projections of an experiment's plan without building it.

Each binary's ``--estimate`` plans its experiment exactly as a run would (same store keys,
same artifacts already stored), probes the kinds of work it needs on this hardware, and
returns the projection; nothing is trained or attacked beyond the probes.
"""

from __future__ import annotations

from typing import Callable

from entangle.store import estimate
from entangle.studies import pipeline


def study_of(exp: pipeline.Experiment, experiment: str, cfg):
    """The study object of ``experiment`` (table, transfer, mistakes) with ``cfg``."""
    if experiment == "table":
        from entangle.studies import entanglement
        return entanglement.Table(exp, cfg)
    if experiment == "transfer":
        from entangle.studies import transfer
        return transfer.Transfer(exp, cfg)
    if experiment == "mistakes":
        from entangle.studies import mistakes
        return mistakes.Mistakes(exp, cfg)
    raise ValueError(f"experiment must be table, transfer or mistakes; got {experiment!r}")


def plan_of(exp: pipeline.Experiment, experiment: str, cfg) -> list:
    """The plan a run of ``experiment`` (table, transfer, mistakes) with ``cfg`` builds."""
    return _plan(study_of(exp, experiment, cfg), experiment)


def _plan(study, experiment: str) -> list:
    return study.plan(True) if experiment == "table" else study.plan()


def project(exp_cfg: pipeline.ExperimentConfig, experiment: str, cfg, *,
            processes=estimate.PROCESSES, log: Callable[[str], None] = print,
            probe_fn=estimate.probe_op, images: tuple[int, int] | None = None
            ) -> estimate.Estimate:
    """Probes (or recalls from the store) every kind of work the plan needs and projects it;
    with ``images`` = (train, test), for a dataset of that size instead of the one loaded."""
    exp = pipeline.Experiment(exp_cfg)
    if images:
        exp.use_placeholder_data(*images)
    study = study_of(exp, experiment, cfg)
    exp.check_against_data(study.radii())
    return estimate.estimate(exp.store, _plan(study, experiment), processes=processes,
                             log=log, probe_fn=probe_fn)
