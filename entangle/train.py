"""One trainer for every classifier of the paper: Adam, standard or Madry adversarial training.

``train_classifier`` builds the model inside a ``tf.distribute`` strategy scope, runs one
compiled step per global batch through ``strategy.run`` (PGD on the batch first when
eps > 0, with the model in inference mode), checkpoints every epoch into the artifact store
so an interrupted run resumes where it stopped, keeps the best validation weights when early
stopping is on, and stores the finished model under a key of its full configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import weakref
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from entangle import attacks, data, models, progress
from entangle.store import Store, atomic_save_npz, fingerprint_arrays

LR_DECAYS = ("none", "step", "cosine")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MODEL_KIND = "models"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained classifier (and so its store key)."""

    arch: str = "resnet56v2"          # resnet<9n+2>v2, or a victim name (models.VICTIMS)
    width: int = 16                   # ResNet v2 base width (16 in the paper)
    eps: float = 0.0                  # Madry adversarial training radius; 0 = standard
    attack_steps: int = 16            # PGD steps per training batch (A.2: CIFAR 16, ImageNet 8)
    attack_step_size: float = 0.5     # A.2: CIFAR 0.5, ImageNet 1.0
    attack_random_start: bool = False
    batch_size: int = 200             # global batch
    epochs: int = 100
    learning_rate: float = 1e-3
    lr_decay: str = "step"
    augment: bool = True
    early_stopping: bool = False
    patience: int = 10
    weight_decay: float = 1e-4
    pretrained: bool = False          # victims: start from ImageNet weights
    precision: str = "float32"
    seed: int = 0

    def __post_init__(self):
        _check(self.eps >= 0 and not math.isnan(self.eps), "eps", self.eps, "a number >= 0")
        _check(self.attack_steps >= 1, "attack_steps", self.attack_steps, "an integer >= 1")
        _check(self.attack_step_size > 0, "attack_step_size", self.attack_step_size, "> 0")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _check(self.lr_decay in LR_DECAYS, "lr_decay", self.lr_decay, f"one of {LR_DECAYS}")
        _check(self.patience >= 1, "patience", self.patience, "an integer >= 1")
        _check(self.precision in PRECISIONS, "precision", self.precision,
               f"one of {PRECISIONS}")
        parse_arch(self.arch)


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How to run (not what to compute): excluded from store keys."""

    strategy: str = "auto"
    devices: tuple[str, ...] | None = None   # explicit devices for the mirrored strategy
    jit_compile: bool = False
    eval_batch_size: int = 500
    verbose: bool = True


@dataclasses.dataclass
class TrainedModel:
    model: keras.Model
    key: str
    manifest: dict
    cached: bool


def _check(ok: bool, name: str, value, allowed: str):
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


def build_model(cfg: TrainConfig, input_shape, num_classes: int) -> keras.Model:
    family, depth = parse_arch(cfg.arch)
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(cfg.precision)
    try:
        if family == "resnet_v2":
            return models.resnet_v2(depth, input_shape, num_classes, width=cfg.width,
                                    weight_decay=cfg.weight_decay)
        return models.victim(family, input_shape, num_classes,
                             weights="imagenet" if cfg.pretrained else None)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def learning_rate_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate for a (0-based) epoch.

    ``step`` is the schedule of Keras' CIFAR-10 ResNet example (Adam 1e-3, the paper's
    setting), scaled from its 200 epochs to ``cfg.epochs``: x0.1 after 40 %, x0.01 after 60 %,
    x1e-3 after 80 %, x5e-4 after 90 % of training. ``cosine`` anneals to 0.
    """
    frac = epoch / cfg.epochs
    if cfg.lr_decay == "none":
        return cfg.learning_rate
    if cfg.lr_decay == "cosine":
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * frac))
    factor = 1.0
    for start, f in ((0.4, 1e-1), (0.6, 1e-2), (0.8, 1e-3), (0.9, 5e-4)):
        if frac >= start:
            factor = f
    return cfg.learning_rate * factor


def get_strategy(name: str = "auto", devices=None) -> tf.distribute.Strategy:
    """default / mirrored (all visible GPUs, or ``devices``) / multi_worker (TF_CONFIG).

    ``auto`` is mirrored when more than one GPU is visible, else the default strategy.
    """
    _check(name in STRATEGIES, "strategy", name, f"one of {STRATEGIES}")
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """Whether this process writes artifacts: always, except on non-chief multi-worker tasks."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (inference mode) on [0, 1] or uint8 images."""
    if len(y) == 0:
        return float("nan")
    predict = _predictor(model)
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = predict(tf.constant(data.to_float(x[i:i + batch_size])))
        correct += int(np.sum(np.argmax(logits.numpy(), -1) == y[i:i + batch_size]))
    return correct / len(y)


_PREDICTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _predictor(model):
    """One traced inference function per model, reused across calls."""
    if model not in _PREDICTORS:
        _PREDICTORS[model] = tf.function(lambda x: model(x, training=False),
                                         reduce_retracing=True)
    return _PREDICTORS[model]


def build_for_training(cfg: TrainConfig, strategy, input_shape, num_classes: int):
    """(model, Adam) created in ``strategy.scope()``, seeded, the optimizer built eagerly.

    Building Adam eagerly inside the scope avoids the Keras 3.14/3.15 + TF 2.21 "must feed a
    value for placeholder" failure of custom steps under MirroredStrategy (keras issue 23085).
    """
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_model(cfg, input_shape, num_classes)
        optimizer = keras.optimizers.Adam(learning_rate=cfg.learning_rate)
        if cfg.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def make_train_step(model, optimizer, cfg: TrainConfig, strategy, jit_compile: bool = False):
    """The compiled global step: (PGD on the batch when eps > 0, then) one Adam update.

    Returns summed loss and correct count over the global batch.
    """
    replicas = strategy.num_replicas_in_sync
    global_batch = float(cfg.batch_size)
    objective = attacks.cross_entropy_objective(model, targeted=False)
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(x, y, seed):
        if cfg.eps > 0:
            start = (attacks.random_l2_start(x, cfg.eps, seed) if cfg.attack_random_start
                     else x)
            x = tf.stop_gradient(attacks.pgd_loop(objective, x, y, start, cfg.eps,
                                                  cfg.attack_steps, cfg.attack_step_size))
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.reduce_sum(per_example) / global_batch
            if model.losses:
                loss += tf.add_n([tf.cast(l, tf.float32) for l in model.losses]) / replicas
            to_diff = optimizer.scale_loss(loss) if scaled else loss
        grads = tape.gradient(to_diff, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y),
                                        tf.float32))
        return tf.reduce_sum(per_example), correct

    @tf.function(jit_compile=jit_compile)
    def step(x, y, seed):
        loss, correct = strategy.run(replica_step, args=(x, y, seed))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    return step


def run_epoch(step, strategy, dataset, steps: int, *, seed: tuple[int, int], batch_size: int,
              label: str = "accuracy", verbose: bool = False) -> dict:
    """One pass of a compiled train step over a dataset: mean loss and train accuracy."""
    progbar = progress.progbar(steps, enabled=verbose, unit_name="batch",
                               stateful_metrics=["loss", label])
    tot_loss = tot_correct = seen = 0.0
    for b, (x, y) in enumerate(strategy.experimental_distribute_dataset(dataset)):
        loss, correct = step(x, y, tf.constant([seed[0], seed[1] * 100_000 + b], tf.int32))
        tot_loss += float(loss)
        tot_correct += float(correct)
        seen += batch_size
        progbar.update(b + 1, [("loss", tot_loss / seen), (label, tot_correct / seen)],
                       finalize=b + 1 == steps)
    return {"loss": tot_loss / seen, "train_accuracy": tot_correct / seen}


def _save_state(path: str, model, optimizer, epoch: int, history: list, best: dict):
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
    arrays["meta"] = np.array(json.dumps({"epoch": epoch, "history": history, "best": best}))
    atomic_save_npz(os.path.join(path, "state.npz"), **arrays)


def _load_state(path: str, model, optimizer):
    file = os.path.join(path, "state.npz")
    if not os.path.exists(file):
        return None
    with np.load(file) as z:
        n_w = sum(k.startswith("w") for k in z.files)
        model.set_weights([z[f"w{i}"] for i in range(n_w)])
        for i, v in enumerate(optimizer.variables):
            v.assign(z[f"o{i}"])
        return json.loads(str(z["meta"]))


def train_classifier(cfg: TrainConfig, train: data.Dataset, val: data.Dataset | None = None,
                     store: Store | None = None, *, name: str = "model",
                     runtime: RuntimeOptions = RuntimeOptions(), data_key: str | None = None,
                     on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainedModel:
    """Trains (or fetches from ``store``) a classifier on ``train``; returns the model.

    The store key covers ``cfg``, ``name`` and the data (``data_key``, or a content hash of
    the arrays). ``val`` feeds early stopping and the per-epoch validation accuracy.
    """
    store = store or Store()
    if data_key is None:
        data_key = fingerprint_arrays(train.x, train.y, *((val.x, val.y) if val else ()))
    key = store.key(name, {"train": cfg, "data": data_key, "num_classes": train.num_classes})
    if store.has(MODEL_KIND, key):
        model = keras.models.load_model(os.path.join(store.path(MODEL_KIND, key), "model.keras"))
        return TrainedModel(model, key, store.manifest(MODEL_KIND, key), cached=True)
    if cfg.early_stopping and not val:
        raise ValueError("early_stopping needs a validation set (val=...)")

    strategy = get_strategy(runtime.strategy, runtime.devices)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of "
                         f"replicas ({replicas}) of the {runtime.strategy} strategy")
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(train)} training images")

    model, optimizer = build_for_training(cfg, strategy, train.image_shape, train.num_classes)
    step = make_train_step(model, optimizer, cfg, strategy, runtime.jit_compile)

    chief = is_chief(strategy)
    state = _load_state(store.partial_path(MODEL_KIND, key), model, optimizer)
    # Multi-worker: every worker resumes from the chief's state; only the chief writes to the
    # store, the others checkpoint into a private temporary directory.
    partial = store.partial_path(MODEL_KIND, key) if chief else tempfile.mkdtemp(
        prefix="entangle-worker-")
    start_epoch, history = (state["epoch"] + 1, state["history"]) if state else (0, [])
    best = state["best"] if state else {"val_accuracy": -1.0, "epoch": -1}
    if state and runtime.verbose:
        print(f"[{name}] resuming {key} after epoch {start_epoch} of {cfg.epochs}")
    tb = (tf.summary.create_file_writer(os.path.join(store.root, "tensorboard", key)) if chief
          else tf.summary.create_noop_writer())
    lr_var = optimizer.inner_optimizer.learning_rate if hasattr(
        optimizer, "inner_optimizer") else optimizer.learning_rate

    pipeline = data.EpochPipeline(train.x, train.y, cfg.batch_size, shuffle=True,
                                  augment_images=cfg.augment, seed=cfg.seed, drop_remainder=True)
    for epoch in range(start_epoch, cfg.epochs):
        if best["epoch"] >= 0 and cfg.early_stopping and epoch - best["epoch"] > cfg.patience:
            break
        lr = learning_rate_at(cfg, epoch)
        lr_var.assign(lr)
        if runtime.verbose:
            print(f"[{name}] epoch {epoch + 1}/{cfg.epochs} lr {lr:.2e}")
        t0 = time.time()
        record = {"epoch": epoch, "lr": lr,
                  **run_epoch(step, strategy, pipeline.epoch(epoch), steps_per_epoch,
                              seed=(cfg.seed, epoch), batch_size=cfg.batch_size,
                              label="adv_accuracy" if cfg.eps > 0 else "accuracy",
                              verbose=runtime.verbose),
                  "seconds": time.time() - t0}
        if val:
            record["val_accuracy"] = accuracy(model, val.x, val.y, runtime.eval_batch_size)
            if record["val_accuracy"] > best["val_accuracy"]:
                best = {"val_accuracy": record["val_accuracy"], "epoch": epoch}
                if cfg.early_stopping:
                    atomic_save_npz(os.path.join(partial, "best.npz"),
                                         **{f"w{i}": w for i, w in enumerate(model.get_weights())})
        if runtime.verbose:
            print(f"[{name}] " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                           if k not in ("epoch", "lr")))
        history.append(record)
        with tb.as_default(step=epoch):
            for k, v in record.items():
                if k != "epoch":
                    tf.summary.scalar(k, v)
        _save_state(partial, model, optimizer, epoch, history, best)
        if on_epoch_end:
            on_epoch_end(epoch, record)

    if cfg.early_stopping and best["epoch"] >= 0:
        with np.load(os.path.join(partial, "best.npz")) as z:
            model.set_weights([z[f"w{i}"] for i in range(len(z.files))])
    metrics = {"epochs_run": len(history), "final": history[-1] if history else {},
               "best_val": best, "train_seconds": sum(r["seconds"] for r in history)}
    tb.close()
    config = {"train": cfg, "data": data_key, "name": name}
    extra = dict(metrics=metrics, history=history, strategy=runtime.strategy, replicas=replicas)
    if not chief:
        shutil.rmtree(partial, ignore_errors=True)
        return TrainedModel(model, key, {"config": config, **extra}, cached=False)
    with store.writing(MODEL_KIND, key, config, **extra) as d:
        model.save(os.path.join(d, "model.keras"))
    return TrainedModel(model, key, store.manifest(MODEL_KIND, key), cached=False)
