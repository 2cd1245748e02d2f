"""What every artifact of an experiment is called: the store keys of its models, constructed
sets and robustified sets, derived from the configuration and the data's content hashes
alone (nothing is built), and the hyperparameters and seed of each model's role.

``Keys`` is one of the parts ``pipeline.Experiment`` is made of; it reads ``self.cfg``,
``self.store`` and ``self.splits()``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from entangle.core import construct, models, robustify, train, train_config
from entangle.store import fingerprint_arrays, training

KINDS = ("standard", "robust", "zero_robust", "neg_robust")


class Keys:
    """Key derivations of an Experiment (see the module docstring)."""

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

    def holdout_spec(self) -> dict:
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
                                   seed=train_config.role_seed(cfg.seed, kind, eps, role))

    @staticmethod
    def model_name(kind: str, eps: float = 0.0) -> str:
        return kind if kind != "robust" else f"robust{eps:g}"

    def model_data_key(self, kind: str, cfg: train.TrainConfig) -> str:
        if kind in construct.KINDS:
            return (f"{self.constructed_key(kind)}|val={self.cfg.data.validation}"
                    if cfg.early_stopping else self.constructed_key(kind))
        if cfg.early_stopping:
            return f"{self.train_data_key()}|holdout={self.holdout_spec()}"
        return self.train_data_key()

    def model_key(self, kind: str, eps: float = 0.0, role: str = "generator") -> str:
        """The store key of a model, computed without training anything."""
        cfg = self.train_config(kind, eps, role)
        return training.model_key(self.store, cfg, self.model_data_key(kind, cfg),
                               self.splits().train.num_classes, self.model_name(kind, eps))

    def victim_config(self, name: str) -> train.TrainConfig:
        """Table 3's victim hyperparameters with ``name`` as the arch: ``hparams["victim:NAME"]``
        where given (per-victim overrides), else ``hparams["victim"]``."""
        if name not in models.VICTIMS:
            raise ValueError(f"victim must be one of {', '.join(models.VICTIMS)}; got {name!r}")
        cfg = self.cfg.hparams.get(f"victim:{name}", self.cfg.hparams.get("victim"))
        if cfg is None:
            raise ValueError("hparams has no 'victim' entry (Table 3's victim hyperparameters)")
        return dataclasses.replace(cfg, arch=name, eps=0.0,
                                   seed=train_config.role_seed(cfg.seed, name, 0.0, "victim"))

    def victim_key(self, name: str) -> str:
        cfg = self.victim_config(name)
        return training.model_key(self.store, cfg, self.model_data_key("victim", cfg),
                               self.splits().train.num_classes, name)

    def constructed_key(self, kind: str) -> str:
        ccfg = self.cfg.construct
        return self.store.key(kind, {"construct": ccfg.key_fields(kind),
                                     "source": self.model_key(
                                         "standard", role=self.cfg.construct.source_role),
                                     "images": self.train_data_key(),
                                     "holdout": self.holdout_spec(),
                                     "validation": self.cfg.data.validation})

    def generator_spec(self, eps: float) -> tuple[str, float]:
        """(kind, eps) of the model that generates R_eps: the standard model for eps 0."""
        return ("standard", 0.0) if eps == 0 else ("robust", float(eps))

    def robustify_config(self) -> robustify.RobustifyConfig:
        """The robustification settings, their seed (of the x0 pairing) resolved from
        ``cfg.pairing``: the run's training seed, or the data seed."""
        r = self.cfg.robustify
        if self.cfg.pairing == "data_seed":
            return r
        return dataclasses.replace(r, seed=train_config.role_seed(
            self.cfg.hparams["standard"].seed, "pairing", 0.0, f"x0|data{r.seed}"))

    def seed_images(self) -> np.ndarray:
        """Index of each test image's robustification seed x0 (one pairing for every R_eps)."""
        return robustify.seed_indices(len(self.splits().test), self.robustify_config().seed)

    def robustified_key(self, eps: float) -> str:
        generator = self.model_key(*self.generator_spec(eps))
        return self.store.key(f"R{eps:g}", {"generator": generator,
                                            "robustify": self.robustify_config().key_fields(),
                                            "test": self.test_data_key()})

