"""One trainer for every classifier of the paper: Adam, standard or Madry adversarial training.

``train_classifier`` builds the model inside a ``tf.distribute`` strategy scope, runs one
compiled step per global batch through ``strategy.run`` (PGD on the batch first when
eps > 0, with the model in inference mode), checkpoints every epoch into the artifact store
so an interrupted run resumes where it stopped, keeps the best validation weights when early
stopping is on, and stores the finished model under a key of what determines it. Processes
sharing a store train one model at a time: the others wait for it (``Store.get_or_build``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import time
import weakref
from typing import Callable, Iterable, Union

import keras
import numpy as np
import tensorflow as tf

from entangle import attacks, data, models, preempt, progress
from entangle.store import Store, atomic_save_npz, fingerprint_arrays

LR_DECAYS = ("none", "step", "cosine")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
BN_STATISTICS = ("recompute", "moving")
# Images whose batch statistics become the batch norms' moving statistics after training
# (``bn_statistics="recompute"``): enough for stable averages, a fraction of an epoch's cost.
BN_RECOMPUTE_IMAGES = 10_000
MODEL_KIND = "models"
# Bump when a change to this module alters the model it trains from the same configuration
# (2: index-permutation input pipeline, batched augmentation, float32 logits; 3: batch-norm
# statistics recomputed after training, ResNet batch-norm momentum a setting).
VERSION = 3


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
    batch_size: int = 200             # global batch
    epochs: int = 100
    learning_rate: float = 1e-3
    lr_decay: str = "step"
    augment: bool = True
    early_stopping: bool = False
    patience: int = 10
    weight_decay: float = 1e-4
    pooling: str = "global"           # ResNet v2: models.POOLINGS
    bn_momentum: float = 0.99         # ResNet v2 batch-norm momentum (Keras' default)
    # "recompute": after training, every batch norm's moving statistics become the average
    # batch statistics over the training inputs (adversarial ones for eps > 0); "moving":
    # keep the moving averages (stale after a few hundred steps at momentum 0.99).
    bn_statistics: str = "recompute"
    pretrained: bool = False          # victims: start from ImageNet weights
    input_size: int = 0               # victims: resize inside the model to this (0: the data's)
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
        _check(self.pooling in models.POOLINGS, "pooling", self.pooling,
               f"one of {models.POOLINGS}")
        _check(self.input_size >= 0, "input_size", self.input_size, "an integer >= 0")
        _check(0.0 <= self.bn_momentum < 1.0, "bn_momentum", self.bn_momentum, "in [0, 1)")
        _check(self.bn_statistics in BN_STATISTICS, "bn_statistics", self.bn_statistics,
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
                     "attack_step_relative"}
        elif not self.attack_step_relative:
            drop.add("attack_step_relative")
        if not self.early_stopping:
            drop.add("patience")
        drop |= ({"width", "weight_decay", "pooling", "bn_momentum"} if self.is_victim
                 else {"pretrained", "input_size"})
        fields = {k: v for k, v in fields.items() if k not in drop}
        if self.is_victim:
            fields["victim_version"] = models.VICTIM_VERSION
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


ModelFn = Callable[[], keras.Model]


@contextlib.contextmanager
def dtype_policy(name: str):
    """Sets Keras' global dtype policy inside the block only."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def seeded(seed: int):
    """``keras.utils.set_random_seed(seed)`` inside the block; the caller's Python, NumPy,
    TensorFlow and Keras seed state is restored afterwards, so nothing leaks."""
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from tensorflow.python.eager import context

    saved = (random.getstate(), np.random.get_state(), context.global_seed(),
             global_state.get_global_attribute("global_random_seed"),
             global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR))
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        tf.random.set_seed(saved[2])
        global_state.set_global_attribute("global_random_seed", saved[3])
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, saved[4])


def build_model(cfg: TrainConfig, input_shape, num_classes: int) -> keras.Model:
    family, depth = parse_arch(cfg.arch)
    with dtype_policy(cfg.precision):
        if family == "resnet_v2":
            return models.resnet_v2(depth, input_shape, num_classes, width=cfg.width,
                                    weight_decay=cfg.weight_decay, pooling=cfg.pooling,
                                    bn_momentum=cfg.bn_momentum)
        return models.victim(family, input_shape, num_classes,
                             weights="imagenet" if cfg.pretrained else None,
                             resize_to=cfg.input_size or None)


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


_STRATEGIES: dict = {}


def configure_threads(inter_op: int | str = "auto") -> int:
    """Sets TensorFlow's inter-op thread count before its runtime starts; returns it (0: TF's
    default). ``auto`` is 1 on a machine without GPUs: measured here, default inter-op
    parallelism makes standard training differ from run to run (weights 2e-2 apart after
    two epochs; robust training was unaffected), one thread makes it bit-reproducible at
    the same speed. With GPUs TF's default is kept."""
    if inter_op == "auto":
        inter_op = 0 if tf.config.list_physical_devices("GPU") else 1
    try:
        inter_op = int(inter_op)
    except ValueError:
        inter_op = -1
    _check(inter_op >= 0, "inter_op_threads", inter_op, "'auto' or an integer >= 0")
    if tf.config.threading.get_inter_op_parallelism_threads() != inter_op:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        except RuntimeError as e:
            raise RuntimeError(f"inter_op_threads must be set before TensorFlow starts "
                               f"(call entangle.train.configure_threads first thing): {e}") from e
    return inter_op


def get_strategy(name="auto", devices=None) -> tf.distribute.Strategy:
    """default / mirrored (all visible GPUs, or ``devices``) / multi_worker (TF_CONFIG).

    ``auto`` is mirrored when more than one GPU is visible, else the default strategy. A
    strategy object passes through. Strategies are created once per process and reused:
    MultiWorkerMirroredStrategy must be created at program start, before anything (tfds,
    tf.data) initialises TensorFlow, so binaries call this first thing.
    """
    if isinstance(name, tf.distribute.Strategy):
        return name
    _check(name in STRATEGIES, "strategy", name, f"one of {STRATEGIES}")
    if name == "default":
        return tf.distribute.get_strategy()
    cache_key = (name, tuple(devices) if devices else None)
    if cache_key not in _STRATEGIES:
        if name == "auto":
            gpus = len(tf.config.list_logical_devices("GPU"))
            strategy = (tf.distribute.MirroredStrategy() if gpus > 1
                        else tf.distribute.get_strategy())
        elif name == "mirrored":
            strategy = tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
        else:
            try:
                strategy = tf.distribute.MultiWorkerMirroredStrategy()
            except (RuntimeError, ValueError) as e:
                raise RuntimeError(
                    f"cannot create MultiWorkerMirroredStrategy ({e}). It must be created at "
                    f"program start, before TensorFlow is initialised (binaries do this when "
                    f"--strategy=multi_worker); in your own program call "
                    f"entangle.train.get_strategy('multi_worker') first thing") from e
        _STRATEGIES[cache_key] = strategy
    return _STRATEGIES[cache_key]


def is_chief(strategy) -> bool:
    """Whether this process writes artifacts: always, except on non-chief multi-worker tasks."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def predict_logits(model: keras.Model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """float32 outputs of ``model`` (inference mode) on [0, 1] float or uint8 images."""
    predict = _predictor(model)
    out = [predict(tf.constant(data.to_float(x[i:i + batch_size]))).numpy()
           for i in range(0, len(x), batch_size)]
    return (np.concatenate(out).astype(np.float32) if out
            else np.zeros((0, int(model.output_shape[-1])), np.float32))


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Per-example predicted classes (int64) of ``model`` on [0, 1] float or uint8 images."""
    return np.argmax(predict_logits(model, x, batch_size), -1).astype(np.int64)


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (inference mode) on [0, 1] or uint8 images."""
    if len(y) == 0:
        return float("nan")
    return float(np.mean(predict(model, x, batch_size) == np.asarray(y)))


def batch_norm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of ``model``, those of nested models included."""
    found: dict[int, keras.layers.Layer] = {}

    def walk(layer):
        for sub in getattr(layer, "layers", None) or []:
            if isinstance(sub, keras.layers.BatchNormalization):
                found.setdefault(id(sub), sub)
            walk(sub)

    walk(model)
    return list(found.values())


def recompute_bn_statistics(model: keras.Model, batches: Iterable[np.ndarray]) -> int:
    """Precise batch norm: every batch norm's moving mean and variance become the
    size-weighted average of its batch statistics over ``batches`` ([0, 1] images), from
    training-mode forward passes without a weight update. Returns the number of layers set.

    Why: at momentum 0.99, a model trained for a few hundred steps keeps much of the initial
    0/1 statistics (0.99^117 = 0.31), and inference-mode accuracy falls far below what the
    weights can do.
    """
    layers_ = [l for l in batch_norm_layers(model) if l.trainable]
    if not layers_:
        return 0
    keep = tf.Variable(0.0, trainable=False, dtype=tf.float32)  # weight of the running average
    saved = [l.momentum for l in layers_]
    forward = tf.function(lambda x: model(x, training=True), reduce_retracing=True)
    seen = 0
    try:
        for l in layers_:
            l.momentum = keep
        for xb in batches:
            n = len(xb)
            if n == 0:
                continue
            keep.assign(seen / (seen + n))
            forward(tf.constant(data.to_float(np.asarray(xb))))
            seen += n
    finally:
        for l, m in zip(layers_, saved):
            l.momentum = m
    return len(layers_) if seen else 0


_PREDICTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _predictor(model):
    """One traced inference function per model, reused across calls; holds the model weakly
    so that ``del model`` frees it."""
    if model not in _PREDICTORS:
        ref = weakref.ref(model)
        _PREDICTORS[model] = tf.function(lambda x: tf.cast(ref()(x, training=False),
                                                           tf.float32), reduce_retracing=True)
    return _PREDICTORS[model]


def _user_model(model_fn: ModelFn | keras.Model, cfg: TrainConfig) -> keras.Model:
    """A fresh model from a user's builder (or a clone of a user's model), checked."""
    with dtype_policy(cfg.precision):
        if isinstance(model_fn, keras.Model):
            model = keras.models.clone_model(model_fn)
            model.set_weights(model_fn.get_weights())
        else:
            model = model_fn()
    if not isinstance(model, keras.Model):
        raise ValueError(f"model_fn must return a keras.Model; got {type(model).__name__}")
    if attacks.ends_in_softmax(model):
        raise ValueError(f"model {model.name!r} ends in a softmax; train_classifier needs a model "
                         f"that outputs logits (e.g. keras.applications.*(classifier_activation"
                         f"=None), or drop the final softmax)")
    return model


def architecture_signature(model: keras.Model) -> str:
    """The model's configuration as JSON with auto-generated names replaced by layer indices,
    so two builds of one architecture match ('dense_3' vs 'dense_7')."""
    index = {layer.name: f"#{i}" for i, layer in enumerate(model.layers)}

    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if k != "name"}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return index.get(obj, obj) if isinstance(obj, str) else obj

    return json.dumps(clean(model.get_config()), sort_keys=True, default=str)


def build_for_training(cfg: TrainConfig, strategy, input_shape, num_classes: int,
                       model_fn: ModelFn | keras.Model | None = None):
    """(model, Adam) created in ``strategy.scope()``, seeded, the optimizer built eagerly.

    Building Adam eagerly inside the scope avoids the Keras 3.14/3.15 + TF 2.21 "must feed a
    value for placeholder" failure of custom steps under MirroredStrategy (keras issue 23085).
    The seed is set for the build only; the caller's random state is left as it was.
    """
    with seeded(cfg.seed), strategy.scope():
        model = (build_model(cfg, input_shape, num_classes) if model_fn is None
                 else _user_model(model_fn, cfg))
        optimizer = keras.optimizers.Adam(learning_rate=cfg.learning_rate)
        if cfg.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def training_attack(model, cfg: TrainConfig):
    """The batch attack of adversarial training: untargeted L2 PGD at ``cfg.eps`` (from a
    random start in the ball if ``cfg.attack_random_start``); (x, y, seed) -> x_adv, no
    gradient through it. Traced inside the train step."""
    objective = attacks.cross_entropy_objective(model, targeted=False)

    def attack(x, y, seed):
        start = attacks.random_l2_start(x, cfg.eps, seed) if cfg.attack_random_start else x
        return tf.stop_gradient(attacks.pgd_loop(objective, x, y, start, cfg.eps,
                                                 cfg.attack_steps, cfg.attack_step))

    return attack


def make_train_step(model, optimizer, cfg: TrainConfig, strategy, jit_compile: bool = False):
    """The compiled global step: (PGD on the batch when eps > 0, then) one Adam update.

    Returns summed loss and correct count over the global batch.
    """
    replicas = strategy.num_replicas_in_sync
    global_batch = float(cfg.batch_size)
    adversarial = training_attack(model, cfg)
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(x, y, seed):
        if cfg.eps > 0:
            x = adversarial(x, y, seed)
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
              label: str = "accuracy", verbose: bool = False, start: dict | None = None) -> dict:
    """One pass of a compiled train step over a dataset: mean loss and train accuracy.

    ``dataset`` starts at batch ``start["batch"]`` when resuming mid-epoch (``start`` holds
    the sums so far). On a stop request (``preempt``) it returns after the current batch with
    ``{"stopped": {"batch", "loss", "correct", "seconds"}}``: the state to resume from.
    """
    start = start or {"batch": 0, "loss": 0.0, "correct": 0.0, "seconds": 0.0}
    progbar = progress.progbar(steps, enabled=verbose, unit_name="batch",
                               stateful_metrics=["loss", label])
    tot_loss, tot_correct, first = start["loss"], start["correct"], start["batch"]
    t0 = time.time() - start["seconds"]
    seen = float(first * batch_size)
    for b, (x, y) in enumerate(strategy.experimental_distribute_dataset(dataset), first):
        loss, correct = step(x, y, tf.constant([seed[0], seed[1] * 100_000 + b], tf.int32))
        tot_loss += float(loss)
        tot_correct += float(correct)
        seen += batch_size
        progbar.update(b + 1, [("loss", tot_loss / seen), (label, tot_correct / seen)],
                       finalize=b + 1 == steps)
        if preempt.requested() and b + 1 < steps:
            return {"stopped": {"batch": b + 1, "loss": tot_loss, "correct": tot_correct,
                                "seconds": time.time() - t0}}
    return {"loss": tot_loss / seen, "train_accuracy": tot_correct / seen,
            "seconds": time.time() - t0}


def _save_state(path: str, model, optimizer, epoch: int, history: list, best: dict,
                best_weights: list | None, in_epoch: dict | None = None):
    """Checkpoints after epoch ``epoch`` (or, with ``in_epoch``, part way into the next)."""
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
    arrays.update({f"b{i}": w for i, w in enumerate(best_weights or [])})
    arrays["meta"] = np.array(json.dumps({"epoch": epoch, "history": history, "best": best,
                                          "in_epoch": in_epoch}))
    atomic_save_npz(os.path.join(path, "state.npz"), **arrays)


def _load_state(path: str, model, optimizer):
    """(meta, best weights or None) of a checkpoint, loaded into model and optimizer."""
    file = os.path.join(path, "state.npz")
    if not os.path.exists(file):
        return None, None
    with np.load(file) as z:
        n_w = sum(k.startswith("w") for k in z.files)
        model.set_weights([z[f"w{i}"] for i in range(n_w)])
        for i, v in enumerate(optimizer.variables):
            v.assign(z[f"o{i}"])
        n_b = sum(k.startswith("b") for k in z.files)
        best = [z[f"b{i}"] for i in range(n_b)] if n_b else None
        return json.loads(str(z["meta"])), best


def probe_throughput(cfg: TrainConfig, input_shape, num_classes: int, steps: int = 3,
                     strategy=None, jit_compile: bool = False,
                     adversarial: bool = False) -> tuple[float, float]:
    """(images per second of the training step at ``cfg.batch_size``, seconds to build and
    trace the model and take its first step): a few steps on random images, for plan
    estimates. The clean step unless ``adversarial`` (then its PGD runs inside, as in
    training; cfg.eps must be > 0)."""
    strategy = strategy or tf.distribute.get_strategy()
    if adversarial and not cfg.eps > 0:
        raise ValueError(f"an adversarial training probe needs eps > 0; got {cfg.eps}")
    clean = cfg if adversarial else dataclasses.replace(cfg, eps=0.0)
    start = time.time()
    with seeded(cfg.seed):
        model, optimizer = build_for_training(clean, strategy, input_shape, num_classes)
        step = make_train_step(model, optimizer, clean, strategy, jit_compile)
        rng = np.random.default_rng(0)
        x = tf.constant(rng.random((cfg.batch_size,) + tuple(input_shape), np.float32))
        y = tf.constant(rng.integers(0, num_classes, cfg.batch_size), tf.int32)
        seed = tf.constant([0, 0], tf.int32)
        float(step(x, y, seed)[0])
        first = time.time() - start
        t0 = time.time()
        for _ in range(steps):
            float(step(x, y, seed)[0])
        per_second = steps * cfg.batch_size / max(time.time() - t0, 1e-9)
    del model, optimizer, step
    return per_second, first


def model_key(store: Store, cfg: TrainConfig, data_key: str, num_classes: int, name: str,
              architecture: str | None = None) -> str:
    """The store key of a trained model: exactly what determines it (``key_fields``)."""
    fields = cfg.key_fields()
    if architecture is not None:  # a user's model: its architecture replaces arch and friends
        for k in ("arch", "width", "weight_decay", "pooling", "bn_momentum", "pretrained",
                  "input_size"):
            fields.pop(k, None)
        fields["architecture"] = hashlib.sha256(architecture.encode()).hexdigest()[:16]
    return store.key(name, {"train": fields, "data": data_key, "num_classes": num_classes,
                            "version": VERSION})


def _settle_bn_statistics(cfg: TrainConfig, model, train: data.Dataset,
                          runtime: RuntimeOptions) -> dict:
    """Recomputes the batch-norm statistics (``cfg.bn_statistics == "recompute"``) over up to
    ``BN_RECOMPUTE_IMAGES`` training images as the training step saw them (attacked by the
    training attack when eps > 0, not augmented); reports inference-mode accuracy on 1,000
    clean training images before and after, the measure of how stale the averages were."""
    rng = np.random.default_rng(cfg.seed + 104729)
    rows = np.sort(rng.choice(len(train), min(len(train), BN_RECOMPUTE_IMAGES), replace=False))
    probe = rows[:1000]
    batch = runtime.eval_batch_size
    before = accuracy(model, train.x[probe], train.y[probe], batch)
    report = {"statistics": cfg.bn_statistics, "probe_images": len(probe),
              "probe_accuracy_moving": before}
    if cfg.bn_statistics != "recompute" or not batch_norm_layers(model):
        return report

    def batches():
        for i in range(0, len(rows), batch):
            part = rows[i:i + batch]
            x = data.to_float(np.asarray(train.x[part]))
            if cfg.eps > 0:
                x = attacks.pgd_l2(model, x, train.y[part], eps=cfg.eps, steps=cfg.attack_steps,
                                   step_size=cfg.attack_step,
                                   random_start=cfg.attack_random_start, seed=cfg.seed + i,
                                   batch_size=batch, jit_compile=runtime.jit_compile,
                                   verbose=False)
            yield x

    recompute_bn_statistics(model, batches())
    report.update(images=len(rows), probe_accuracy_recomputed=accuracy(
        model, train.x[probe], train.y[probe], batch))
    if runtime.verbose:
        print(f"[bn] statistics recomputed over {len(rows)} training images: inference accuracy "
              f"on {len(probe)} of them {before:.4f} -> {report['probe_accuracy_recomputed']:.4f}")
    return report


def _check_runtime(cfg: TrainConfig, strategy, runtime: RuntimeOptions, n_train: int):
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of "
                         f"replicas ({replicas}) of the {runtime.strategy} strategy")
    if runtime.jit_compile and replicas > 1:
        raise ValueError(f"--jit_compile (jit_compile=True) is not supported for training with "
                         f"{replicas} replicas: Keras turns XLA off under tf.distribute, and a "
                         f"step whose optimizer all-reduces across replicas cannot be compiled "
                         f"as one XLA cluster. Train without it (attacks and evaluation, which "
                         f"run outside the strategy, still use it)")
    if n_train // cfg.batch_size < 1:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {n_train} training images")


def train_classifier(cfg: TrainConfig, train: data.Dataset, val: data.Dataset | None = None,
                     store: Store | None = None, *, name: str = "model",
                     runtime: RuntimeOptions = RuntimeOptions(), data_key: str | None = None,
                     on_epoch_end: Callable[[int, dict], None] | None = None,
                     model_fn: ModelFn | keras.Model | None = None) -> TrainedModel:
    """Trains (or fetches from ``store``) a classifier on ``train``; returns the model.

    The store key covers ``cfg.key_fields()``, ``name`` and the data (``data_key``, or a content
    hash of the arrays). ``val`` feeds early stopping and the per-epoch validation accuracy.
    ``model_fn`` trains a user's Keras model (a builder, or a model to clone) instead of
    ``cfg.arch``; it must output logits for images in [0, 1]. Among processes sharing the
    store, one trains and the others wait for its result.
    """
    store = store or Store()
    if data_key is None:
        data_key = fingerprint_arrays(train.x, train.y, *((val.x, val.y) if val else ()))
    architecture = None
    if model_fn is not None:
        with seeded(cfg.seed):
            probe = _user_model(model_fn, cfg)
        architecture = architecture_signature(probe)
        del probe
    key = model_key(store, cfg, data_key, train.num_classes, name, architecture)
    strategy = get_strategy(runtime.strategy, runtime.devices)
    chief = is_chief(strategy)

    def load():
        model = keras.models.load_model(os.path.join(store.path(MODEL_KIND, key), "model.keras"))
        return TrainedModel(model, key, store.manifest(MODEL_KIND, key), cached=True)

    def build():
        if cfg.early_stopping and not val:
            raise ValueError("early_stopping needs a validation set (val=...)")
        return _train(cfg, train, val, store, key, name, runtime, strategy, chief, data_key,
                      on_epoch_end, model_fn)

    log = (lambda msg: print(f"[{name}] {msg}", flush=True)) if runtime.verbose else None
    return store.get_or_build(MODEL_KIND, key, build, load, poll=runtime.lock_poll, log=log,
                              lock=chief, wait=runtime.wait)


def _train(cfg, train, val, store, key, name, runtime, strategy, chief, data_key, on_epoch_end,
           model_fn) -> TrainedModel:
    replicas = strategy.num_replicas_in_sync
    _check_runtime(cfg, strategy, runtime, len(train))
    steps_per_epoch = len(train) // cfg.batch_size
    model, optimizer = build_for_training(cfg, strategy, train.image_shape, train.num_classes,
                                          model_fn)
    step = make_train_step(model, optimizer, cfg, strategy, runtime.jit_compile)

    # Every worker resumes from the chief's checkpoint (a shared file system under
    # multi-worker); only the chief writes to the store. The best weights travel inside the
    # checkpoint, so no worker needs a file of its own.
    partial = store.partial_path(MODEL_KIND, key) if chief else store.path(MODEL_KIND, key) + \
        ".partial"
    state, best_weights = _load_state(partial, model, optimizer)
    start_epoch, history = (state["epoch"] + 1, state["history"]) if state else (0, [])
    best = state["best"] if state else {"val_accuracy": -1.0, "epoch": -1}
    if state and runtime.verbose:
        where = (f"in epoch {start_epoch + 1}, after batch {state['in_epoch']['batch']}"
                 if state.get("in_epoch") else f"after epoch {start_epoch}")
        print(f"[{name}] resuming {key} {where} of {cfg.epochs}")
    tb = (tf.summary.create_file_writer(os.path.join(store.root, "tensorboard", key)) if chief
          else tf.summary.create_noop_writer())
    lr_var = optimizer.inner_optimizer.learning_rate if hasattr(
        optimizer, "inner_optimizer") else optimizer.learning_rate

    pipeline = data.EpochPipeline(train.x, train.y, cfg.batch_size, shuffle=True,
                                  augment_images=cfg.augment, seed=cfg.seed, drop_remainder=True)
    in_epoch = state.get("in_epoch") if state else None
    for epoch in range(start_epoch, cfg.epochs):
        if best["epoch"] >= 0 and cfg.early_stopping and epoch - best["epoch"] > cfg.patience:
            break
        lr = learning_rate_at(cfg, epoch)
        lr_var.assign(lr)
        if runtime.verbose:
            print(f"[{name}] epoch {epoch + 1}/{cfg.epochs} lr {lr:.2e}"
                  + (f", from batch {in_epoch['batch'] + 1}" if in_epoch else ""))
        result = run_epoch(step, strategy,
                           pipeline.epoch(epoch, in_epoch["batch"] if in_epoch else 0),
                           steps_per_epoch, seed=(cfg.seed, epoch), batch_size=cfg.batch_size,
                           label="adv_accuracy" if cfg.eps > 0 else "accuracy",
                           verbose=runtime.verbose, start=in_epoch)
        in_epoch = None
        if "stopped" in result:
            if chief:
                _save_state(partial, model, optimizer, epoch - 1, history, best,
                            best_weights if cfg.early_stopping else None, result["stopped"])
            tb.close()
            preempt.check(f"in epoch {epoch + 1} of {name}, after batch "
                          f"{result['stopped']['batch']}")
        record = {"epoch": epoch, "lr": lr, **result}
        if val:
            record["val_accuracy"] = accuracy(model, val.x, val.y, runtime.eval_batch_size)
            if record["val_accuracy"] > best["val_accuracy"]:
                best = {"val_accuracy": record["val_accuracy"], "epoch": epoch}
                if cfg.early_stopping:
                    best_weights = model.get_weights()
        if runtime.verbose:
            print(f"[{name}] " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                           if k not in ("epoch", "lr")))
        history.append(record)
        with tb.as_default(step=epoch):
            for k, v in record.items():
                if k != "epoch":
                    tf.summary.scalar(k, v)
        if chief:
            _save_state(partial, model, optimizer, epoch, history, best,
                        best_weights if cfg.early_stopping else None)
        if on_epoch_end:
            on_epoch_end(epoch, record)
        if preempt.requested() and epoch + 1 < cfg.epochs:
            tb.close()
            preempt.check(f"after epoch {epoch + 1} of {name}")

    if cfg.early_stopping and best_weights is not None:
        model.set_weights(best_weights)
    metrics = {"epochs_run": len(history), "final": history[-1] if history else {},
               "best_val": best, "train_seconds": sum(r["seconds"] for r in history),
               "batch_norm": _settle_bn_statistics(cfg, model, train, runtime)}
    tb.close()
    config = {"train": cfg.key_fields(), "data": data_key, "name": name, "version": VERSION}
    extra = dict(metrics=metrics, history=history, replicas=replicas,
                 strategy=type(strategy).__name__)
    if not chief:
        return TrainedModel(model, key, {"config": config, **extra}, cached=False)
    with store.writing(MODEL_KIND, key, config, **extra) as d:
        model.save(os.path.join(d, "model.keras"))
    return TrainedModel(model, key, store.manifest(MODEL_KIND, key), cached=False)
