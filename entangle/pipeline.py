"""The experiment pipeline: data -> standard/robust models -> constructed datasets -> models.

``Experiment`` loads the data once, and fetches every model and constructed dataset from the
artifact store, building (and storing) only what is missing: Table 1, Figure 3, Figure 4 and
the transfer figures all share the same eps-robust models, which are never trained twice.
``run_train`` is the typed entry point of ``python -m experiments.train``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from entangle import attacks, construct, data, train
from entangle.store import Store, fingerprint_arrays

KINDS = ("standard", "robust", "zero_robust", "neg_robust")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    train_limit: int | None = None
    test_limit: int | None = None
    validation_fraction: float = 0.1    # held out of train for early stopping (all kinds)
    seed: int = 0
    cache_dir: str | None = None
    planted: data.PlantedConfig | None = None


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """PGD used to report a model's robust accuracy (the paper does not specify one)."""

    attack_steps: int = 20
    step_size_factor: float = 2.5       # step = factor * eps / steps (Madry et al. 2018)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig
    hparams: dict                       # kind -> train.TrainConfig (eps set per model)
    construct: construct.ConstructConfig = construct.ConstructConfig()
    eval: EvalConfig = EvalConfig()
    runtime: train.RuntimeOptions = train.RuntimeOptions()
    workdir: str | None = None

    def __post_init__(self):
        missing = [k for k in KINDS if k not in self.hparams]
        if missing:
            raise ValueError(f"hparams lacks the model kinds {missing}")


@dataclasses.dataclass
class TrainReport:
    kind: str
    eps: float
    key: str
    cached: bool
    test_accuracy: float
    pgd_accuracy: float | None
    attack_eps: float
    num_test: int
    seconds: float
    store_path: str


class Experiment:
    """Data, store and the models of one configuration, built on demand and cached."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.store = Store(cfg.workdir)
        self._splits = None
        self._data_key = None

    def splits(self) -> tuple[data.Dataset, data.Dataset, data.Dataset]:
        """(train minus validation, validation, test), loaded once."""
        if self._splits is None:
            d = self.cfg.data
            kw = dict(data_dir=d.data_dir, download=d.download, seed=d.seed,
                      cache_dir=d.cache_dir, planted=d.planted,
                      verbose=self.cfg.runtime.verbose)
            full = data.load_dataset(d.dataset, "train", limit=d.train_limit, **kw)
            test = data.load_dataset(d.dataset, "test", limit=d.test_limit, **kw)
            tr, val = data.split_validation(full, d.validation_fraction, d.seed)
            self._splits = (tr, val, test)
        return self._splits

    def data_key(self) -> str:
        """Content hash of the training and validation splits (part of every model key)."""
        if self._data_key is None:
            tr, val, _ = self.splits()
            self._data_key = fingerprint_arrays(tr.x, tr.y, val.x, val.y)
        return self._data_key

    def train_config(self, kind: str, eps: float = 0.0) -> train.TrainConfig:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if kind == "robust" and not eps > 0:
            raise ValueError(f"eps must be > 0 for a robust model (eps = 0 is the standard "
                             f"model); got {eps}")
        if kind != "robust" and eps:
            raise ValueError(f"eps applies to robust models only; got eps={eps} for {kind}")
        return dataclasses.replace(self.cfg.hparams[kind], eps=float(eps))

    def model(self, kind: str, eps: float = 0.0) -> train.TrainedModel:
        """The trained model of a kind (eps for robust ones), from the store or trained now."""
        cfg = self.train_config(kind, eps)
        tr, val, _ = self.splits()
        name = kind if kind != "robust" else f"robust{eps:g}"
        if kind in construct.KINDS:
            built, built_key = self.constructed(kind)
            return train.train_classifier(cfg, built, val, self.store, name=name,
                                          runtime=self.cfg.runtime,
                                          data_key=f"{built_key}|{self.data_key()}")
        return train.train_classifier(cfg, tr, val, self.store, name=name,
                                      runtime=self.cfg.runtime, data_key=self.data_key())

    def constructed(self, kind: str) -> tuple[data.Dataset, str]:
        """The zero-/negative-robust training set built on the standard model (cached)."""
        source = self.model("standard")
        tr, _, _ = self.splits()
        ccfg = self.cfg.construct
        key = self.store.key(kind, {"construct": ccfg, "source": source.key,
                                    "data": self.data_key()})
        if self.store.has("datasets", key):
            arrays = self.store.load_arrays("datasets", key)
            return data.Dataset(arrays["x"], arrays["y"], tr.class_names,
                                f"{tr.name}:{kind}"), key
        if self.cfg.runtime.verbose:
            print(f"[{kind}] constructing {key}: targeted PGD (eps {ccfg.eps}, "
                  f"{ccfg.steps} steps of {ccfg.step_size}) on {len(tr)} images")
        start = time.time()
        batch = self.cfg.runtime.eval_batch_size
        built = construct.construct_dataset(kind, source.model, tr, ccfg, batch_size=batch,
                                            jit_compile=self.cfg.runtime.jit_compile)
        success = train.accuracy(source.model, built.x, built.y, batch)
        self.store.save_arrays("datasets", key, {"construct": ccfg, "kind": kind,
                                                 "source": source.key},
                               {"x": built.x, "y": built.y},
                               metrics={"targeted_success_on_source": success,
                                        "size": len(built)},
                               seconds=time.time() - start)
        return built, key

    def evaluate(self, trained: train.TrainedModel, eps: float = 0.0) -> dict:
        """Test accuracy and (eps > 0) PGD accuracy at eps, cached in the store."""
        _, _, test = self.splits()
        ecfg = self.cfg.eval
        key = self.store.key("eval", {"model": trained.key, "eps": eps, "eval": ecfg,
                                      "test": fingerprint_arrays(test.x, test.y)})
        if self.store.has("evals", key):
            return self.store.manifest("evals", key)["metrics"]
        x = test.float_images()
        batch = self.cfg.runtime.eval_batch_size
        metrics = {"test_accuracy": train.accuracy(trained.model, x, test.y, batch),
                   "num_test": len(test)}
        if eps > 0:
            adv = attacks.pgd_l2(trained.model, x, test.y, eps=eps, steps=ecfg.attack_steps,
                                 step_size=ecfg.step_size_factor * eps / ecfg.attack_steps,
                                 batch_size=batch, jit_compile=self.cfg.runtime.jit_compile)
            metrics["pgd_accuracy"] = train.accuracy(trained.model, adv, test.y, batch)
            metrics["pgd_norm_max"] = float(np.sqrt(((adv - x) ** 2).reshape(len(x), -1)
                                                    .sum(1)).max())
        self.store.record("evals", key, {"model": trained.key, "eps": eps, "eval": ecfg},
                          metrics=metrics)
        return metrics


def run_train(cfg: ExperimentConfig, kind: str, eps: float = 0.0,
              attack_eps: float | None = None) -> TrainReport:
    """Trains (or fetches) one classifier and reports its test and PGD accuracy.

    PGD accuracy is measured at ``attack_eps`` (default: the model's own eps; none for eps 0).
    """
    start = time.time()
    exp = Experiment(cfg)
    exp.train_config(kind, eps)  # validate before loading any data
    trained = exp.model(kind, eps)
    attack_eps = eps if attack_eps is None else attack_eps
    metrics = exp.evaluate(trained, attack_eps)
    return TrainReport(kind=kind, eps=eps, key=trained.key, cached=trained.cached,
                       test_accuracy=metrics["test_accuracy"],
                       pgd_accuracy=metrics.get("pgd_accuracy"), attack_eps=attack_eps,
                       num_test=metrics["num_test"],
                       seconds=time.time() - start,
                       store_path=exp.store.path(train.MODEL_KIND, trained.key))
