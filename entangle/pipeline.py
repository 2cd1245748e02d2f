"""The experiment pipeline: data -> standard/robust models -> constructed datasets -> models.

``Experiment`` loads the data once, and fetches every model and constructed dataset from the
artifact store, building (and storing) only what is missing: Table 1, Figure 3, Figure 4 and
the transfer figures all share the same eps-robust models, which are never trained twice.
Every artifact's key hashes exactly what determines it (``*_key`` methods compute them
without building anything). ``run_train`` is the typed entry point of
``python -m experiments.train``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from entangle import atomic, attacks, construct, data, distribution, inference, models
from entangle import planted as planted_lib
from entangle import robustify, train
from entangle.store import Store, fingerprint_arrays

KINDS = ("standard", "robust", "zero_robust", "neg_robust")
# Whose seed draws the robustification seeds x0 (the pairing of each test image with a seed
# image): every training seed its own draw (its tables average over pairings), or one draw
# from --data_seed for every training seed.
PAIRINGS = ("training_seed", "data_seed")
VALIDATION_SOURCES = ("constructed", "clean")
DATASET_KIND = "datasets"
PREDICTIONS_KIND = "predictions"
# Bump when a change alters what Experiment.evaluate computes (2: per-image outcomes kept).
EVAL_VERSION = 2
# Images per resumable chunk of an R_eps build: a kill loses at most this much work.
CHUNK_IMAGES = 1024


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: str = "auto"              # tfds: "auto" (if the network answers), "yes", "no"
    train_limit: int | None = None
    test_limit: int | None = None
    # Held out of the training split, only for models that early-stop (zero-/neg-robust in
    # the paper); the others train on every training image.
    validation_fraction: float = 0.1
    # What early-stopped constructed-set models validate on: "constructed" (a held-out part of
    # the constructed set, labels = targets: unbiased for Table 1) or "clean" (held-out clean
    # images with true labels: the very quantity Table 1 reports).
    validation: str = "constructed"
    balance: bool = False               # class-balanced subsample (ImageNet-9 is 58 % dogs)
    seed: int = 0
    cache_dir: str | None = None
    planted: planted_lib.PlantedConfig | None = None
    allow_empty_classes: bool = False   # folder datasets: keep class folders without images

    def __post_init__(self):
        if self.validation not in VALIDATION_SOURCES:
            raise ValueError(f"validation must be one of {VALIDATION_SOURCES}; got "
                             f"{self.validation!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1); got "
                             f"{self.validation_fraction}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """PGD used to report a model's robust accuracy (the paper does not specify one)."""

    attack_steps: int = 20
    step_size_factor: float = 2.5       # step = factor * eps / steps (Madry et al. 2018)
    # The stronger attack reported beside it (gradient masking would show as a gap): PGD of
    # strong_steps (same step factor) with strong_restarts runs, the first from x; on the
    # first strong_images test images (None: all). strong_restarts 0: not run.
    strong_steps: int = 50
    strong_restarts: int = 5
    strong_images: int | None = None

    def __post_init__(self):
        if self.attack_steps < 1 or self.strong_steps < 1 or self.strong_restarts < 0:
            raise ValueError(f"eval attack_steps and strong_steps must be >= 1 and "
                             f"strong_restarts >= 0; got {self.attack_steps}, "
                             f"{self.strong_steps}, {self.strong_restarts}")
        if self.strong_images is not None and self.strong_images < 1:
            raise ValueError(f"eval strong_images must be >= 1 or None (all); got "
                             f"{self.strong_images}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig
    hparams: dict                       # kind -> train.TrainConfig (eps set per model)
    construct: construct.ConstructConfig = construct.ConstructConfig()
    robustify: robustify.RobustifyConfig = robustify.RobustifyConfig()
    eval: EvalConfig = EvalConfig()
    runtime: train.RuntimeOptions = train.RuntimeOptions()
    workdir: str | None = None
    pairing: str = "training_seed"      # PAIRINGS

    def __post_init__(self):
        missing = [k for k in KINDS if k not in self.hparams]
        if missing:
            raise ValueError(f"hparams lacks the model kinds {missing}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}; got {self.pairing!r}")


@dataclasses.dataclass
class Splits:
    """The training split, its early-stopping hold-out, and the test split."""

    train: data.Dataset                 # every training image
    holdout: np.ndarray                 # indices into train held out for early stopping
    test: data.Dataset

    def fit_part(self) -> data.Dataset:
        return self.train.subset(np.setdiff1d(np.arange(len(self.train)), self.holdout))

    def val_part(self) -> data.Dataset:
        return self.train.subset(self.holdout)


class Experiment:
    """Data, store and the models of one configuration, built on demand and cached."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.store = Store(cfg.workdir, on_corrupt=cfg.runtime.on_corrupt)
        self._splits: Splits | None = None
        self._train_key = None
        self._test_key = None

    def _log(self, msg: str):
        if self.cfg.runtime.verbose:
            print(msg, flush=True)

    def writes(self) -> bool:
        """Whether this process writes to the store: not on a non-chief multi-worker task,
        which reads what the chief stored and computes the rest for itself."""
        return distribution.is_chief(distribution.get_strategy(self.cfg.runtime.strategy,
                                                               self.cfg.runtime.devices))

    def splits(self) -> Splits:
        """The data, loaded once."""
        if self._splits is None:
            d = self.cfg.data
            kw = dict(data_dir=d.data_dir, download=d.download, seed=d.seed,
                      cache_dir=d.cache_dir, planted=d.planted,
                      verbose=self.cfg.runtime.verbose,
                      allow_empty_classes=d.allow_empty_classes)
            full = data.load_dataset(d.dataset, "train", limit=d.train_limit, **kw)
            test = data.load_dataset(d.dataset, "test", limit=d.test_limit, **kw)
            if d.balance:
                full, test = data.balance_classes(full, d.seed), data.balance_classes(test, d.seed)
            holdout = data.stratified_indices(
                full.y, max(1, int(round(d.validation_fraction * len(full)))), d.seed)
            self._splits = Splits(full, holdout, test)
        return self._splits

    def use_placeholder_data(self, n_train: int, n_test: int) -> None:
        """Plans as if the dataset had ``n_train``/``n_test`` images, without loading it (for
        projections of data not on this machine): zero images of the dataset's shape, labels
        cycling over its classes, keys that name the sizes (nothing stored matches them)."""
        shape, classes = data.shape_of(self.cfg.data.dataset)

        def placeholder(n, split):
            x = np.broadcast_to(np.zeros((), np.uint8), (n,) + shape)
            return data.Dataset(x, np.arange(n) % len(classes), classes, f"placeholder-{split}")
        train_set = placeholder(n_train, "train")
        holdout = np.arange(max(1, int(round(self.cfg.data.validation_fraction * n_train))))
        self._splits = Splits(train_set, holdout, placeholder(n_test, "test"))
        self._train_key, self._test_key = f"placeholder-{n_train}", f"placeholder-{n_test}"

    def train_data_key(self) -> str:
        """Content hash of the training split (part of every model key)."""
        if self._train_key is None:
            tr = self.splits().train
            self._train_key = fingerprint_arrays(tr.x, tr.y)
        return self._train_key

    def test_data_key(self) -> str:
        """Content hash of the test split (part of every key built on it)."""
        if self._test_key is None:
            test = self.splits().test
            self._test_key = fingerprint_arrays(test.x, test.y)
        return self._test_key

    def _holdout_spec(self) -> dict:
        d = self.cfg.data
        return {"fraction": d.validation_fraction, "seed": d.seed}

    def train_config(self, kind: str, eps: float = 0.0, role: str = "generator"
                     ) -> train.TrainConfig:
        """A model's hyperparameters, its seed its own (``train_config.role_seed``): the role
        says which model of the run it is ("generator" of a column, "row" twin evaluated in a
        row, "source" of the constructed sets, ...)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if kind == "robust" and not eps > 0:
            raise ValueError(f"eps must be > 0 for a robust model (eps = 0 is the standard "
                             f"model); got {eps}")
        if kind != "robust" and eps:
            raise ValueError(f"eps applies to robust models only; got eps={eps} for {kind}")
        cfg = self.cfg.hparams[kind]
        return dataclasses.replace(cfg, eps=float(eps),
                                   seed=train.role_seed(cfg.seed, kind, eps, role))

    @staticmethod
    def model_name(kind: str, eps: float = 0.0) -> str:
        return kind if kind != "robust" else f"robust{eps:g}"

    def _model_data_key(self, kind: str, cfg: train.TrainConfig) -> str:
        if kind in construct.KINDS:
            return (f"{self.constructed_key(kind)}|val={self.cfg.data.validation}"
                    if cfg.early_stopping else self.constructed_key(kind))
        if cfg.early_stopping:
            return f"{self.train_data_key()}|holdout={self._holdout_spec()}"
        return self.train_data_key()

    def model_key(self, kind: str, eps: float = 0.0, role: str = "generator") -> str:
        """The store key of a model, computed without training anything."""
        cfg = self.train_config(kind, eps, role)
        return train.model_key(self.store, cfg, self._model_data_key(kind, cfg),
                               self.splits().train.num_classes, self.model_name(kind, eps))

    def model(self, kind: str, eps: float = 0.0, role: str = "generator",
              runtime: train.RuntimeOptions | None = None) -> train.TrainedModel:
        """The trained model of a kind (eps for robust ones) in a role, from the store or
        trained now; each role is trained independently (same hyperparameters)."""
        cfg = self.train_config(kind, eps, role)
        sp = self.splits()
        if kind in construct.KINDS:
            if self.store.has(train.MODEL_KIND, self.model_key(kind, eps, role)):
                fit, val = sp.train, None  # cache hit: the data is not needed
            else:
                fit, val = self.constructed(kind)
                if cfg.early_stopping and self.cfg.data.validation == "clean":
                    val = sp.val_part()
        elif cfg.early_stopping:
            fit, val = sp.fit_part(), sp.val_part()
        else:
            fit, val = sp.train, None
        return train.train_classifier(cfg, fit, val, self.store,
                                      name=self.model_name(kind, eps),
                                      runtime=runtime or self.cfg.runtime,
                                      data_key=self._model_data_key(kind, cfg))

    def victim_config(self, name: str) -> train.TrainConfig:
        """Table 3's victim hyperparameters with ``name`` as the arch: ``hparams["victim:NAME"]``
        where given (per-victim overrides), else ``hparams["victim"]``."""
        if name not in models.VICTIMS:
            raise ValueError(f"victim must be one of {', '.join(models.VICTIMS)}; got {name!r}")
        cfg = self.cfg.hparams.get(f"victim:{name}", self.cfg.hparams.get("victim"))
        if cfg is None:
            raise ValueError("hparams has no 'victim' entry (Table 3's victim hyperparameters)")
        return dataclasses.replace(cfg, arch=name, eps=0.0,
                                   seed=train.role_seed(cfg.seed, name, 0.0, "victim"))

    def victim_key(self, name: str) -> str:
        cfg = self.victim_config(name)
        return train.model_key(self.store, cfg, self._model_data_key("victim", cfg),
                               self.splits().train.num_classes, name)

    def victim(self, name: str, runtime: train.RuntimeOptions | None = None
               ) -> train.TrainedModel:
        """A keras.applications victim fine-tuned (or trained from scratch: ``pretrained``
        False) on the training split, from the store or trained now."""
        cfg = self.victim_config(name)
        sp = self.splits()
        fit, val = (sp.fit_part(), sp.val_part()) if cfg.early_stopping else (sp.train, None)
        return train.train_classifier(cfg, fit, val, self.store, name=name,
                                      runtime=runtime or self.cfg.runtime,
                                      data_key=self._model_data_key("victim", cfg))

    def predictions(self, trained: train.TrainedModel, ds: data.Dataset, name: str
                    ) -> np.ndarray:
        """A model's predicted classes on a named set (cached in the store as .npy), keyed on
        the content of both: a rebuilt model or set never meets a stale prediction."""
        config = {"model": trained.key, "model_sha256": model_digest(trained), "set": name,
                  "data": fingerprint_arrays(np.asarray(ds.x), ds.y)}
        key = self.store.key("pred", config)
        path = os.path.join(self.store.path(PREDICTIONS_KIND, key), "predictions.npy")

        def build():
            pred = inference.predict(trained.model, ds.x, self.cfg.runtime.eval_batch_size)
            with self.store.writing(PREDICTIONS_KIND, key, config) as d:
                np.save(os.path.join(d, "predictions.npy"), pred.astype(np.int16))
            return pred

        return self._cached(PREDICTIONS_KIND, key, build, lambda: np.load(path).astype(np.int64))

    def _cached(self, kind: str, key: str, build, load):
        return self.store.get_or_build(kind, key, build, load, poll=self.cfg.runtime.lock_poll,
                                       log=self._log)

    def constructed_key(self, kind: str) -> str:
        ccfg = self.cfg.construct
        return self.store.key(kind, {"construct": ccfg.key_fields(kind),
                                     "source": self.model_key("standard", role="source"),
                                     "images": self.train_data_key(),
                                     "holdout": self._holdout_spec(),
                                     "validation": self.cfg.data.validation})

    def constructed(self, kind: str, runtime: train.RuntimeOptions | None = None
                    ) -> tuple[data.Dataset, data.Dataset | None]:
        """The zero-/negative-robust set built on the standard model: (train part, validation
        part labelled with targets, or None when validating on clean images)."""
        key = self.constructed_key(kind)
        path = self.store.path(DATASET_KIND, key)
        names = self.splits().train.class_names

        def load():
            parts = []
            for part in ("train", "val"):
                if os.path.exists(os.path.join(path, f"x_{part}.npy")):
                    parts.append(data.Dataset(np.load(os.path.join(path, f"x_{part}.npy"),
                                                      mmap_mode="r"),
                                              np.load(os.path.join(path, f"y_{part}.npy")),
                                              names, f"{kind}:{part}"))
                else:
                    parts.append(None)
            return parts[0], parts[1]

        return self.store.get_or_build(DATASET_KIND, key, lambda: self._construct(kind, key),
                                       load, poll=self.cfg.runtime.lock_poll, log=self._log,
                                       wait=(runtime or self.cfg.runtime).wait)

    def _construct(self, kind: str, key: str):
        source = self.model("standard", role="source")
        sp = self.splits()
        ccfg = self.cfg.construct
        parts = {"train": sp.fit_part()}
        if self.cfg.data.validation == "constructed":
            parts["val"] = sp.val_part()
        self._log(f"[{kind}] constructing {key}: targeted PGD (eps {ccfg.eps}, {ccfg.steps} "
                  f"steps of {ccfg.step_size}) on {sum(len(p) for p in parts.values())} images")
        start = time.time()
        partial = self.store.partial_path(DATASET_KIND, key)
        batch = self.cfg.runtime.eval_batch_size
        metrics = {}
        with self.store.writing(DATASET_KIND, key, {"construct": ccfg.key_fields(kind),
                                                    "kind": kind, "source": source.key,
                                                    "validation": self.cfg.data.validation},
                                metrics=metrics) as d:
            for part, ds in parts.items():
                pcfg = ccfg if part == "train" else dataclasses.replace(ccfg,
                                                                        seed=ccfg.seed + 7919)
                work = os.path.join(partial, part)
                _, targets = construct.build_chunks(
                    kind, source.model, ds, pcfg, work, batch_size=batch,
                    jit_compile=self.cfg.runtime.jit_compile, verbose=self.cfg.runtime.verbose)
                x = atomic.assemble_chunks(work, "x", os.path.join(d, f"x_{part}.npy"))
                np.save(os.path.join(d, f"y_{part}.npy"), targets.astype(np.int64))
                metrics[f"targeted_success_on_source_{part}"] = inference.accuracy(
                    source.model, x, targets, batch)
                metrics[f"size_{part}"] = len(targets)
                del x
            metrics["seconds"] = time.time() - start
        return self.constructed(kind)

    def generator(self, eps: float) -> tuple[str, float]:
        """(kind, eps) of the model that generates R_eps: the standard model for eps 0."""
        return ("standard", 0.0) if eps == 0 else ("robust", float(eps))

    def robustify_config(self) -> robustify.RobustifyConfig:
        """The robustification settings, their seed (of the x0 pairing) resolved from
        ``cfg.pairing``: the run's training seed, or the data seed."""
        r = self.cfg.robustify
        if self.cfg.pairing == "data_seed":
            return r
        return dataclasses.replace(r, seed=train.role_seed(
            self.cfg.hparams["standard"].seed, "pairing", 0.0, f"x0|data{r.seed}"))

    def seed_images(self) -> np.ndarray:
        """Index of each test image's robustification seed x0 (one pairing for every R_eps)."""
        return robustify.seed_indices(len(self.splits().test), self.robustify_config().seed)

    def robustified_key(self, eps: float) -> str:
        return self.store.key(f"R{eps:g}", {"generator": self.model_key(*self.generator(eps)),
                                            "robustify": self.robustify_config().key_fields(),
                                            "test": self.test_data_key()})

    def robustified(self, eps: float, runtime: train.RuntimeOptions | None = None
                    ) -> tuple[data.Dataset, dict]:
        """R_eps: the test set robustified w.r.t. the eps-robust model (eps 0: standard), with
        per-image seeds and relative representation distances; built in chunks (a kill loses
        at most one) and stored as float16."""
        key = self.robustified_key(eps)
        path = self.store.path(DATASET_KIND, key)
        test = self.splits().test

        def load():
            extra = {k: np.load(os.path.join(path, f"{k}.npy"))
                     for k in ("seeds", "relative_distance")}
            return data.Dataset(np.load(os.path.join(path, "x.npy"), mmap_mode="r"), test.y,
                                test.class_names, f"R{eps:g}"), extra

        def build():
            gen = self.model(*self.generator(eps))
            rcfg = self.robustify_config()
            seeds = self.seed_images()
            self._log(f"[R{eps:g}] robustifying {len(test)} test images w.r.t. {gen.key} "
                      f"({rcfg.steps} steps of {rcfg.step_size})")
            start = time.time()
            batch = self.cfg.runtime.eval_batch_size
            work = self.store.partial_path(DATASET_KIND, key)

            def make(rows):
                r = robustify.robustify(gen.model, test.x[rows], test.x[seeds[rows]], rcfg,
                                        batch_size=batch,
                                        jit_compile=self.cfg.runtime.jit_compile, verbose=False)
                return {"x": r.x.astype(np.float16), "relative_distance": r.relative_distance}

            atomic.build_chunks(work, len(test), CHUNK_IMAGES, make,
                                bar=self._bar(len(test)))
            config = {"generator": gen.key, "robustify": rcfg.key_fields(), "eps": eps}
            metrics = {}
            with self.store.writing(DATASET_KIND, key, config, metrics=metrics) as d:
                atomic.assemble_chunks(work, "x", os.path.join(d, "x.npy"))
                rel = atomic.assemble_chunks(work, "relative_distance",
                                             os.path.join(d, "relative_distance.npy"))
                np.save(os.path.join(d, "seeds.npy"), seeds)
                metrics.update(median_relative_distance=float(np.median(rel)),
                               seconds=time.time() - start)
            return load()

        return self.store.get_or_build(DATASET_KIND, key, build, load,
                                       poll=self.cfg.runtime.lock_poll, log=self._log,
                                       wait=(runtime or self.cfg.runtime).wait)

    def _bar(self, n: int):
        from entangle import progress
        return progress.progbar(n, enabled=self.cfg.runtime.verbose, unit_name="image")

    def accuracy_on(self, trained: train.TrainedModel, ds: data.Dataset, name: str) -> dict:
        """Accuracy report of a model on a named evaluation set (cached in the store)."""
        config = {"model": trained.key, "model_sha256": model_digest(trained), "set": name,
                  "data": fingerprint_arrays(np.asarray(ds.x), ds.y)}
        key = self.store.key("acc", config)

        def build():
            report = data.accuracy_report(inference.predict(trained.model, ds.x,
                                                            self.cfg.runtime.eval_batch_size),
                                          ds.y, ds.num_classes)
            self.store.record("evals", key, config, metrics=report)
            return report

        return self._cached("evals", key, build,
                            lambda: self.store.manifest("evals", key)["metrics"])

    def evaluate(self, trained: train.TrainedModel, eps: float = 0.0,
                 outcomes: bool = False) -> dict:
        """Test accuracy (with balanced accuracy and the majority rate) and, for eps > 0, PGD
        accuracy at eps; cached in the store with the per-image outcomes, which
        ``outcomes=True`` adds as ``clean_correct`` / ``pgd_correct`` boolean arrays."""
        test = self.splits().test
        ecfg = self.cfg.eval
        config = {"model": trained.key, "model_sha256": model_digest(trained), "eps": eps,
                  "eval": ecfg if eps > 0 else None,
                  "test": self.test_data_key(), "version": EVAL_VERSION}
        key = self.store.key("eval", config)
        path = os.path.join(self.store.path("evals", key), "outcomes.npz")

        def compute():
            x = test.float_images()
            batch = self.cfg.runtime.eval_batch_size
            pred = inference.predict(trained.model, x, batch)
            report = data.accuracy_report(pred, test.y, test.num_classes)
            metrics = {"test_accuracy": report["accuracy"],
                       "balanced_accuracy": report["balanced_accuracy"],
                       "majority_rate": report["majority_rate"], "num_test": len(test)}
            arrays = {"clean_correct": pred == test.y}
            if eps > 0:
                adv = attacks.pgd_l2(trained.model, x, test.y, eps=eps, steps=ecfg.attack_steps,
                                     step_size=ecfg.step_size_factor * eps / ecfg.attack_steps,
                                     batch_size=batch, jit_compile=self.cfg.runtime.jit_compile)
                arrays["pgd_correct"] = inference.predict(trained.model, adv, batch) == test.y
                metrics["pgd_accuracy"] = float(arrays["pgd_correct"].mean())
                metrics["pgd_norm_max"] = float(np.sqrt(((adv - x) ** 2).reshape(len(x), -1)
                                                        .sum(1)).max())
            return metrics, arrays

        def build():
            metrics, arrays = compute()
            with self.store.writing("evals", key, config, metrics=metrics) as d:
                np.savez(os.path.join(d, "outcomes.npz"), **arrays)
            return load()

        def load():
            metrics = dict(self.store.manifest("evals", key)["metrics"])
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
            return {**metrics, **arrays} if outcomes else metrics

        if not self.writes() and not self.store.has("evals", key):
            metrics, arrays = compute()
            return {**metrics, **arrays} if outcomes else metrics
        return self._cached("evals", key, build, load)

    def evaluate_strong(self, trained: train.TrainedModel, eps: float) -> dict:
        """Robust accuracy at ``eps`` under the stronger attack of ``cfg.eval`` on its test
        images: per image the worst case of the reporting PGD (``evaluate``) and PGD with
        random restarts (``attacks.pgd_l2_restarts``, run on the images the first left
        right), so it is never weaker than the first. Cached in the store with the per-image
        outcomes (``strong_correct``)."""
        test = self.splits().test
        ecfg = self.cfg.eval
        n = len(test) if ecfg.strong_images is None else min(len(test), ecfg.strong_images)
        config = {"model": trained.key, "model_sha256": model_digest(trained), "eps": eps,
                  "steps": ecfg.strong_steps, "restarts": ecfg.strong_restarts,
                  "step_size_factor": ecfg.step_size_factor, "images": n,
                  "after": {"attack_steps": ecfg.attack_steps},
                  "test": self.test_data_key(), "version": EVAL_VERSION}
        key = self.store.key("strong", config)
        path = os.path.join(self.store.path("evals", key), "outcomes.npz")

        def compute():
            right = np.array(self.evaluate(trained, eps, outcomes=True)["pgd_correct"][:n])
            rows = np.flatnonzero(right)
            if len(rows):
                _, still = attacks.pgd_l2_restarts(
                    trained.model, test.float_images()[rows], test.y[rows], eps=eps,
                    steps=ecfg.strong_steps,
                    step_size=ecfg.step_size_factor * eps / ecfg.strong_steps,
                    restarts=ecfg.strong_restarts,
                    batch_size=self.cfg.runtime.eval_batch_size,
                    jit_compile=self.cfg.runtime.jit_compile, verbose=False)
                right[rows] = still
            return {"strong_pgd_accuracy": float(right.mean()), "images": n}, right

        def build():
            metrics, right = compute()
            with self.store.writing("evals", key, config, metrics=metrics) as d:
                np.savez(os.path.join(d, "outcomes.npz"), strong_correct=right)
            return load()

        def load():
            with np.load(path) as z:
                return {**self.store.manifest("evals", key)["metrics"],
                        "strong_correct": z["strong_correct"]}

        if not self.writes() and not self.store.has("evals", key):
            metrics, right = compute()
            return {**metrics, "strong_correct": right}
        return self._cached("evals", key, build, load)

    def strong_attack_label(self) -> str | None:
        """How the stronger attack is described in reports (None when it is off)."""
        e = self.cfg.eval
        if not e.strong_restarts:
            return None
        n = len(self.splits().test) if e.strong_images is None else \
            min(e.strong_images, len(self.splits().test))
        return (f"per image the worst of that PGD and L2 PGD of {e.strong_steps} steps of "
                f"{e.step_size_factor:g} eps / {e.strong_steps} with {e.strong_restarts} runs "
                f"(the first from x, then random starts in the ball, each on the images still "
                f"right), first {n} test images")


def model_digest(trained: train.TrainedModel) -> str | None:
    """SHA-256 of a stored model's weights file (None for models stored before checksums)."""
    return (trained.manifest.get("files") or {}).get("model.keras", {}).get("sha256")


