"""The experiment: its configuration, its data (loaded once), and ``Experiment``, which holds
the store and the artifacts of one configuration: data -> standard/robust models ->
constructed datasets -> models, robustified sets, evaluations.

An Experiment fetches every artifact from the store, building (and storing) only what is
missing: Table 1, Figure 3, Figure 4 and the transfer figures all share the same eps-robust
models, which are never trained twice. It is made of three parts along the design's seams:
``keys.Keys`` (what each artifact is called, computed without building anything),
``builders.Builders`` (how each is built) and ``evaluation.Evaluation`` (predictions and
attacks, cached). One Experiment serves a whole run; ``with_config`` gives another
configuration (a seed, a budget) on the same store and, where the data is the same, the same
loaded splits.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from entangle import data
from entangle.core import construct, robustify, train
from entangle.data import planted as planted_lib
from entangle.runtime import distribution
from entangle.store import Store
from entangle.studies import builders, evaluation
from entangle.studies import keys as keys_lib
from entangle.studies.builders import CHUNK_IMAGES, DATASET_KIND
from entangle.studies.evaluation import EVAL_VERSION, PREDICTIONS_KIND, model_digest
from entangle.studies.keys import KINDS

__all__ = ["CHUNK_IMAGES", "DATASET_KIND", "EVAL_VERSION", "KINDS", "PAIRINGS",
           "PREDICTIONS_KIND", "VALIDATION_SOURCES", "DataConfig", "EvalConfig", "Experiment",
           "ExperimentConfig", "Splits", "model_digest"]

# Whose seed draws the robustification seeds x0 (the pairing of each test image with a seed
# image): every training seed its own draw (its tables average over pairings), or one draw
# from --data_seed for every training seed.
PAIRINGS = ("training_seed", "data_seed")
VALIDATION_SOURCES = ("constructed", "clean")


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


class Experiment(keys_lib.Keys, builders.Builders, evaluation.Evaluation):
    """Data, store and the artifacts of one configuration: their keys (``keys.Keys``), built
    on demand (``builders.Builders``) and evaluated (``evaluation.Evaluation``), cached."""

    def __init__(self, cfg: ExperimentConfig, store: Store | None = None):
        self.cfg = cfg
        self.store = store or Store(cfg.workdir, on_corrupt=cfg.runtime.on_corrupt)
        self._splits: Splits | None = None
        self._train_key = None
        self._test_key = None
        self._fingerprints: dict[int, tuple] = {}

    def with_config(self, cfg: ExperimentConfig) -> "Experiment":
        """An Experiment of ``cfg`` on this one's store and, when ``cfg`` reads the same data
        (another seed, other budgets), on its loaded splits and their content hashes: one
        load and one hash of the data per run."""
        other = Experiment(cfg, self.store)
        if cfg.data == self.cfg.data:
            self.train_data_key(), self.test_data_key()   # loads and hashes them once
            other._splits, other._train_key, other._test_key = (self._splits, self._train_key,
                                                                self._test_key)
        return other

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

    def check_against_data(self, radii: dict[str, float] | None = None) -> None:
        """Refuses, before any probe, trace or training, what the data rules out: a batch
        larger than the images a model trains on, or an L2 radius (``radii``: {what: eps},
        the construction's and robustification's always) beyond the images' L2 diameter
        sqrt(H*W*C), the farthest two [0, 1] images can be apart."""
        sp = self.splits()
        n_fit = len(sp.train) - len(sp.holdout)
        for kind, h in self.cfg.hparams.items():
            if h.batch_size > n_fit:
                raise ValueError(
                    f"batch_size (--batch_size) {h.batch_size} of {kind} exceeds the {n_fit} "
                    f"images it trains on ({len(sp.train)} training images less the "
                    f"{len(sp.holdout)} held out for early stopping); allowed: 1 to {n_fit}")
        diameter = float(np.sqrt(np.prod(sp.train.image_shape)))
        named = {"construct_eps (--construct_eps)": self.cfg.construct.eps,
                 "robustify_eps (--robustify_eps)": self.cfg.robustify.eps, **(radii or {})}
        for what, eps in named.items():
            if eps is not None and np.isfinite(eps) and eps > diameter:
                raise ValueError(
                    f"{what} {eps:g} exceeds the L2 diameter of "
                    f"{'x'.join(map(str, sp.train.image_shape))} images in [0, 1] "
                    f"({diameter:.1f}): no perturbation can be that large; allowed: 0 to "
                    f"{diameter:.1f}")

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

