"""What determines a trained classifier (``TrainConfig``, its store key) and how to run it
(``RuntimeOptions``, excluded from keys), with their checks."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Union

import tensorflow as tf

from entangle.core import models


LR_DECAYS = ("none", "step", "cosine")
OPTIMIZERS = ("adam", "sgd")


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


BN_STATISTICS = ("recompute", "recompute_augmented", "moving")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained classifier (and so its store key)."""

    arch: str = "resnet56v2"          # resnet<9n+2>v2, or a victim name (models.VICTIMS)
    width: int = 16                   # ResNet v2 base width (16 in the paper)
    eps: float = 0.0                  # Madry adversarial training radius; 0 = standard
    attack_steps: int = 16            # PGD steps per training batch (A.2: CIFAR 16, ImageNet 8)
    attack_step_size: float = 0.5     # A.2: CIFAR 0.5, ImageNet 1.0
    # The step size is a multiple of the model's eps rather than an L2 length (Wong et al.
    # 2020's fast adversarial training: one step of 1.25 eps from a random start).
    attack_step_relative: bool = False
    attack_random_start: bool = False
    # The random start's ball, as a fraction of eps (1: the whole eps ball; in 3,072
    # dimensions a uniform draw lies near its sphere).
    attack_start_radius: float = 1.0
    batch_size: int = 200             # global batch
    epochs: int = 100
    learning_rate: float = 1e-3
    # "adam": the paper's (Keras' CIFAR ResNet example); "sgd": momentum 0.9, Nesterov.
    optimizer: str = "adam"
    lr_decay: str = "step"
    # Fraction of the training steps spent warming the learning rate up linearly from 0
    # (cosine and none only).
    lr_warmup: float = 0.0
    # Momentum of an exponential moving average of the weights, which replaces them after
    # training (0: off; not with early stopping, which keeps its own best weights).
    ema: float = 0.0
    augment: bool = True
    early_stopping: bool = False
    patience: int = 10
    weight_decay: float = 1e-4
    pooling: str = "global"           # ResNet v2: models.POOLINGS
    bn_momentum: float = 0.99         # ResNet v2 batch-norm momentum (Keras' default)
    # ResNet v2: the last convolution of every residual branch starts at zero, so each block
    # starts as the identity (Goyal et al. 2017).
    zero_init_residual: bool = False
    # "recompute": after training, every batch norm's moving statistics become the average
    # batch statistics over the training inputs (adversarial ones for eps > 0);
    # "recompute_augmented": the same over the inputs augmented as the training step saw them
    # (when ``augment``); "moving": keep the moving averages (stale after a few hundred steps
    # at momentum 0.99).
    bn_statistics: str = "recompute"
    pretrained: bool = False          # victims: start from ImageNet weights
    input_size: int = 0               # victims: resize inside the model to this (0: the data's)
    precision: str = "float32"
    seed: int = 0

    def __post_init__(self):
        check(self.eps >= 0 and not math.isnan(self.eps), "eps", self.eps, "a number >= 0")
        check(self.attack_steps >= 1, "attack_steps", self.attack_steps, "an integer >= 1")
        check(self.attack_step_size > 0, "attack_step_size", self.attack_step_size, "> 0")
        check(0 < self.attack_start_radius <= 1, "attack_start_radius",
              self.attack_start_radius, "in (0, 1] (a fraction of eps)")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        check(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer,
              f"one of {OPTIMIZERS}")
        check(self.lr_decay in LR_DECAYS, "lr_decay", self.lr_decay, f"one of {LR_DECAYS}")
        check(0.0 <= self.lr_warmup < 1.0, "lr_warmup", self.lr_warmup, "in [0, 1)")
        check(not (self.lr_warmup and self.lr_decay == "step"), "lr_warmup", self.lr_warmup,
              "0 with lr_decay='step' (warm-up combines with cosine or none)")
        check(0.0 <= self.ema < 1.0, "ema", self.ema, "in [0, 1) (0: off)")
        check(not (self.ema and self.early_stopping), "ema", self.ema,
              "0 with early_stopping (early stopping keeps its best weights)")
        check(self.patience >= 1, "patience", self.patience, "an integer >= 1")
        check(self.precision in PRECISIONS, "precision", self.precision,
              f"one of {PRECISIONS}")
        check(self.pooling in models.POOLINGS, "pooling", self.pooling,
              f"one of {models.POOLINGS}")
        check(self.input_size >= 0, "input_size", self.input_size, "an integer >= 0")
        check(0.0 <= self.bn_momentum < 1.0, "bn_momentum", self.bn_momentum, "in [0, 1)")
        check(self.bn_statistics in BN_STATISTICS, "bn_statistics", self.bn_statistics,
              f"one of {BN_STATISTICS}")
        parse_arch(self.arch)

    @property
    def attack_step(self) -> float:
        """The training attack's L2 step length."""
        return self.attack_step_size * self.eps if self.attack_step_relative else \
            self.attack_step_size

    @property
    def is_victim(self) -> bool:
        return parse_arch(self.arch)[0] != "resnet_v2"

    def key_fields(self) -> dict:
        """The fields that determine the trained model: what its store key hashes.

        The training attack matters only when eps > 0, patience only with early stopping,
        width/weight decay/pooling only for ResNets, pretraining/input size only for victims.
        """
        fields = dataclasses.asdict(self)
        drop = set()
        if self.eps == 0:
            drop |= {"attack_steps", "attack_step_size", "attack_random_start",
                     "attack_start_radius",
                     "attack_step_relative"}
        else:
            if not self.attack_step_relative:
                drop.add("attack_step_relative")
            if not self.attack_random_start:
                drop.add("attack_start_radius")
        if not self.early_stopping:
            drop.add("patience")
        if self.optimizer == "adam":    # the default stays out of the key: stored Adam models match
            drop.add("optimizer")
        drop |= ({"width", "weight_decay", "pooling", "bn_momentum", "zero_init_residual"}
                 if self.is_victim
                 else {"pretrained", "input_size"})
        fields = {k: v for k, v in fields.items() if k not in drop}
        if self.is_victim:
            fields["victim_version"] = models.VICTIM_VERSION
        if self.precision != "float32":      # mixed-precision models before it had a half stem
            fields["stem"] = models.STEM_DTYPE
        return fields


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How to run (not what to compute): excluded from store keys."""

    strategy: Union[str, tf.distribute.Strategy] = "auto"
    devices: tuple[str, ...] | None = None   # explicit devices for the mirrored strategy
    jit_compile: bool = False
    eval_batch_size: int = 500
    verbose: bool = True
    lock_poll: float = 2.0                   # seconds between looks at a busy artifact
    wait: bool = True                        # busy artifact: wait for it, or raise ArtifactBusy
    on_corrupt: str = "rebuild"              # damaged artifact: move aside and rebuild, or stop
    probe_rates: bool = True                 # time unmeasured kinds of work for the plan's ETA


def role_seed(seed: int, kind: str, eps: float = 0.0, role: str = "generator") -> int:
    """The training seed of one model of a run: its own for every (seed, kind, eps, role), so
    that no two models of a table share initial weights, batch order or augmentation (the
    paper: "All classifiers are trained starting with random initial weights"). A hash, not
    an offset: seed + 1 of one run would be another run's seed."""
    text = f"{int(seed)}|{kind}|{float(eps)!r}|{role}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") >> 1


def check(ok: bool, name: str, value, allowed: str):
    if not ok:
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def parse_arch(arch: str) -> tuple[str, int | None]:
    """'resnet56v2' -> ('resnet_v2', 56); a victim name -> (name, None); else ValueError."""
    if (arch.startswith("resnet") and arch.endswith("v2") and arch[6:-2].isdigit()
            and models.is_resnet_v2_depth(int(arch[6:-2]))):
        return "resnet_v2", int(arch[6:-2])
    if arch in models.VICTIMS:
        return arch, None
    raise ValueError(f"arch must be resnet<depth>v2 with depth 9n+2 (resnet20v2, resnet56v2, "
                     f"...) or one of {', '.join(models.VICTIMS)}; got {arch!r}")
