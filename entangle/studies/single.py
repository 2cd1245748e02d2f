"""One classifier of an experiment trained (or fetched from the store) and reported: the
train binary's entry point."""

from __future__ import annotations

import dataclasses
import time

from entangle.store import training
from entangle.studies import pipeline


@dataclasses.dataclass
class TrainReport:
    kind: str
    eps: float
    key: str
    cached: bool
    test_accuracy: float
    balanced_accuracy: float
    majority_rate: float
    pgd_accuracy: float | None
    attack_eps: float
    num_test: int
    seconds: float
    store_path: str


def run_train(cfg: pipeline.ExperimentConfig, kind: str, eps: float = 0.0,
              attack_eps: float | None = None) -> TrainReport:
    """Trains (or fetches) one classifier and reports its test and PGD accuracy.

    PGD accuracy is measured at ``attack_eps`` (default: the model's own eps; none for eps 0).
    """
    start = time.time()
    exp = pipeline.Experiment(cfg)
    exp.train_config(kind, eps)  # validate before loading any data
    trained = exp.model(kind, eps)
    attack_eps = eps if attack_eps is None else attack_eps
    metrics = exp.evaluate(trained, attack_eps)
    return TrainReport(kind=kind, eps=eps, key=trained.key, cached=trained.cached,
                       test_accuracy=metrics["test_accuracy"],
                       balanced_accuracy=metrics["balanced_accuracy"],
                       majority_rate=metrics["majority_rate"],
                       pgd_accuracy=metrics.get("pgd_accuracy"), attack_eps=attack_eps,
                       num_test=metrics["num_test"],
                       seconds=time.time() - start,
                       store_path=exp.store.path(training.MODEL_KIND, trained.key))
