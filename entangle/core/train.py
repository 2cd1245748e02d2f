"""One training loop for every classifier of the paper, standard or Madry adversarial.

``fit`` builds the model inside a ``tf.distribute`` strategy scope, runs one compiled step
per global batch through ``strategy.run`` (PGD on the batch first when eps > 0, with the
model in inference mode), keeps the best validation weights when early stopping is on, and
recomputes the batch-norm statistics at the end. Given a checkpoint folder it saves its
state there every epoch (and part way into one on a stop request) and resumes from what it
finds, bit for bit. It knows nothing of stores or keys: ``entangle.store.training`` adds
those (the key, the lock among processes, the checkpoint folder, the stored model).

The loop is ours rather than ``keras.Model.fit`` because its resume is exact mid-epoch:
the batch order, augmentation and attack start of epoch e are pure functions of (seed, e),
and a checkpoint holds the optimiser state and the sums of a partial epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from entangle import data
from entangle.core import models, objectives, optimizers, stand_ins
from entangle.core.schedules import (lr_schedule, set_lr_schedule, shared_lr_schedule,
                                     sharing_key, without_numbers)
from entangle.core.seeding import seeded
from entangle.core.inference import accuracy, batch_norm_layers, recompute_bn_statistics
from entangle.core.steps import (attack_shape, bind_attack, compile_train_step,
                                 compiled_training_attack, load_state, make_train_step,
                                 run_epoch, save_state)
from entangle.core.train_config import parse_arch, RuntimeOptions, TrainConfig
from entangle.data import batching
from entangle.runtime import preempt, progress
from entangle.runtime.distribution import get_strategy

# Images whose batch statistics become the batch norms' moving statistics after training
# (``bn_statistics`` "recompute" or "recompute_augmented"): enough for stable averages, a
# fraction of an epoch's cost.
BN_RECOMPUTE_IMAGES = 10_000
# Bump when a change to this module alters the model it trains from the same configuration
# (2: index-permutation input pipeline, batched augmentation, float32 logits; 3: batch-norm
# statistics recomputed after training, ResNet batch-norm momentum a setting; 4: the
# learning rate per step as a Keras schedule, weight averaging and zero-initialised
# residual branches as settings, every model's seed its own role seed).
VERSION = 4


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


def build_model(cfg: TrainConfig, input_shape, num_classes: int) -> keras.Model:
    family, depth = parse_arch(cfg.arch)
    with dtype_policy(cfg.precision):
        if family == "resnet_v2":
            return models.resnet_v2(depth, input_shape, num_classes, width=cfg.width,
                                    weight_decay=cfg.weight_decay, pooling=cfg.pooling,
                                    bn_momentum=cfg.bn_momentum,
                                    zero_init_residual=cfg.zero_init_residual)
        return models.victim(family, input_shape, num_classes,
                             weights="imagenet" if cfg.pretrained else None,
                             resize_to=cfg.input_size or None)


def user_model(model_fn: ModelFn | keras.Model, cfg: TrainConfig) -> keras.Model:
    """A fresh model from a user's builder (or a clone of a user's model), checked."""
    with dtype_policy(cfg.precision):
        if isinstance(model_fn, keras.Model):
            model = keras.models.clone_model(model_fn)
            model.set_weights(model_fn.get_weights())
        else:
            model = model_fn()
    if not isinstance(model, keras.Model):
        raise ValueError(f"model_fn must return a keras.Model; got {type(model).__name__}")
    if objectives.ends_in_softmax(model):
        raise ValueError(f"model {model.name!r} ends in a softmax; train_classifier needs a model "
                         f"that outputs logits (e.g. keras.applications.*(classifier_activation"
                         f"=None), or drop the final softmax)")
    return model


def build_seeding(cfg: TrainConfig, model_fn: ModelFn | keras.Model | None = None):
    """The random state a model of ``cfg`` is built in: ``cfg.seed``, with TensorFlow's
    stateful random kernels restarted for a user's builder, which may draw from them
    (seeding.py). Anything that must build the same weights (the store's architecture probe)
    builds inside it."""
    return seeded(cfg.seed, restart_tf_streams=model_fn is not None)


def build_for_training(cfg: TrainConfig, strategy, input_shape, num_classes: int,
                       model_fn: ModelFn | keras.Model | None = None,
                       steps_per_epoch: int = 1, schedule=None):
    """(model, optimizer) created in ``strategy.scope()``, seeded: ``cfg.optimizer`` (Adam, or
    SGD with Nesterov momentum 0.9) built eagerly, its learning rate ``lr_schedule(cfg,
    steps_per_epoch)`` and its weight average ``cfg.ema``.

    Building the optimizer eagerly inside the scope avoids the Keras 3.14/3.15 + TF 2.21 "must
    feed a value for placeholder" failure of custom steps under MirroredStrategy (keras issue
    23085). ``schedule``: a learning-rate schedule to use instead (``shared_lr_schedule``).
    The seed is set for the build only; the caller's random state is left as it was.
    """
    with build_seeding(cfg, model_fn), strategy.scope():
        model = (build_model(cfg, input_shape, num_classes) if model_fn is None
                 else user_model(model_fn, cfg))
        if schedule is None:
            schedule = lr_schedule(cfg, steps_per_epoch)
        average = dict(use_ema=cfg.ema > 0, ema_momentum=cfg.ema or 0.99)
        optimizer = (optimizers.Adam(learning_rate=schedule, **average)
                     if cfg.optimizer == "adam" else
                     keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True,
                                          **average))
        if cfg.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def settle_bn_statistics(cfg: TrainConfig, model, train: data.Dataset,
                          runtime: RuntimeOptions) -> dict:
    """Recomputes the batch-norm statistics (``cfg.bn_statistics`` "recompute" or
    "recompute_augmented") over up to ``BN_RECOMPUTE_IMAGES`` training images: attacked by the
    training attack when eps > 0, and for "recompute_augmented" first augmented as in
    training. Reports inference-mode accuracy on 1,000 clean training images before and after,
    the measure of how stale the averages were."""
    rng = np.random.default_rng(cfg.seed + 104729)
    rows = np.sort(rng.choice(len(train), min(len(train), BN_RECOMPUTE_IMAGES), replace=False))
    probe = rows[:1000]
    batch = runtime.eval_batch_size
    before = accuracy(model, train.x[probe], train.y[probe], batch)
    report = {"statistics": cfg.bn_statistics, "probe_images": len(probe),
              "probe_accuracy_moving": before}
    if cfg.bn_statistics == "moving" or not batch_norm_layers(model):
        return report

    # the stand-in that recompute_bn_statistics updates batch by batch, as the model itself
    attack = (compiled_training_attack(stand_ins.stand_in(model), cfg) if cfg.eps > 0
              else None)
    augmented = cfg.bn_statistics == "recompute_augmented" and cfg.augment

    def batches():
        for i in range(0, len(rows), batch):
            part = rows[i:i + batch]
            x = data.to_float(np.asarray(train.x[part]))
            seed = tf.constant([cfg.seed % 2 ** 31, i], tf.int32)
            if augmented:   # the clean images' statistics differ: no zero-padded borders
                x = batching.augment_batch(tf.constant(x), seed + [0, 1]).numpy()
            if attack is not None:   # the training attack itself, as the last epoch saw it
                args = (tf.constant(x), tf.constant(train.y[part], tf.int32), seed)
                x = attack(*args).numpy()
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


@dataclasses.dataclass
class Fit:
    """What ``fit`` returns: the trained model, its history (one record per epoch) and its
    metrics (epochs run, the best validation accuracy, seconds, the batch-norm check)."""

    model: keras.Model
    history: list
    metrics: dict
    replicas: int
    strategy: str


def as_dataset(value, name: str = "train") -> data.Dataset:
    """A ``data.Dataset`` from one, from (images, labels) arrays, or from a finite
    ``tf.data.Dataset`` of (image, label) pairs, batched or not (read into memory: the
    trainer's epochs, augmentation and mid-epoch resume index the arrays). Labels are class
    indices, (n, 1) or one-hot."""
    if isinstance(value, data.Dataset):
        return value
    if isinstance(value, tf.data.Dataset):
        value = _read_tf_data(value, name)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        x, y = np.asarray(value[0]), np.asarray(value[1])
        if y.ndim == 2 and y.shape[1] > 1:
            y = y.argmax(1)             # one-hot
        y = y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{name} must be (images (n, h, w, c), labels (n,)); got shapes "
                             f"{x.shape} and {y.shape}")
        classes = int(y.max()) + 1 if len(y) else 1
        return data.Dataset(x, y.astype(np.int64), tuple(str(c) for c in range(classes)), name)
    raise TypeError(f"{name} must be an entangle.data.Dataset, an (images, labels) tuple of "
                    f"arrays or a finite tf.data.Dataset of (image, label); got "
                    f"{type(value).__name__}")


def _read_tf_data(ds: tf.data.Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"{name}: an infinite tf.data.Dataset (drop its .repeat())")
    xs, ys = [], []
    for element in ds.as_numpy_iterator():
        if not (isinstance(element, tuple) and len(element) == 2):
            raise ValueError(f"{name}: tf.data elements must be (image, label) pairs")
        x, y = element
        batched = x.ndim == 4
        xs.append(x if batched else x[None])
        ys.append(np.asarray(y) if batched else np.asarray(y)[None])
    if not xs:
        raise ValueError(f"{name}: the tf.data.Dataset is empty")
    return np.concatenate(xs), np.concatenate(ys)


def fit(cfg: TrainConfig, train, val=None, *, runtime: RuntimeOptions = RuntimeOptions(),
        checkpoint_dir: str | None = None, write_checkpoints: bool = True,
        log_dir: str | None = None, on_epoch_end: Callable[[int, dict], None] | None = None,
        model_fn: ModelFn | keras.Model | None = None, name: str = "model",
        strategy=None) -> Fit:
    """Trains a classifier of ``cfg`` (or a user's ``model_fn``) on ``train`` (``as_dataset``:
    a ``data.Dataset``, (images, labels) arrays or a finite tf.data.Dataset; uint8 or floats
    in [0, 1]).

    ``val`` feeds early stopping and the per-epoch validation accuracy. ``checkpoint_dir``:
    resume from the state saved there, and (``write_checkpoints``) save it every epoch and on
    a stop request (``preempt``); ``log_dir``: TensorBoard scalars per epoch.
    """
    train = as_dataset(train)
    val = None if val is None else as_dataset(val, "val")
    if cfg.early_stopping and not val:
        raise ValueError("early_stopping needs a validation set (val=...)")
    strategy = strategy or get_strategy(runtime.strategy, runtime.devices)
    replicas = strategy.num_replicas_in_sync
    _check_runtime(cfg, strategy, runtime, len(train))
    steps_per_epoch = len(train) // cfg.batch_size
    result_model, optimizer = build_for_training(cfg, strategy, train.image_shape,
                                                 train.num_classes, model_fn, steps_per_epoch)
    model, optimizer, step = _trainer(cfg, strategy, runtime.jit_compile, result_model,
                                      optimizer, (train.image_shape, train.num_classes,
                                                  model_fn, steps_per_epoch))

    state, best_weights = (load_state(checkpoint_dir, model, optimizer) if checkpoint_dir
                           else (None, None))
    start_epoch, history = (state["epoch"] + 1, state["history"]) if state else (0, [])
    best = state["best"] if state else {"val_accuracy": -1.0, "epoch": -1}
    if state and runtime.verbose:
        where = (f"in epoch {start_epoch + 1}, after batch {state['in_epoch']['batch']}"
                 if state.get("in_epoch") else f"after epoch {start_epoch}")
        print(f"[{name}] resuming {where} of {cfg.epochs}")
    save = checkpoint_dir is not None and write_checkpoints
    tb = (tf.summary.create_file_writer(log_dir) if log_dir
          else tf.summary.create_noop_writer())
    if log_dir and not state:
        log_hparams(tb, cfg)
    inner = getattr(optimizer, "inner_optimizer", optimizer)

    pipeline = batching.EpochPipeline(train.x, train.y, cfg.batch_size, shuffle=True,
                                      augment_images=cfg.augment, seed=cfg.seed,
                                      drop_remainder=True)
    in_epoch = state.get("in_epoch") if state else None
    for epoch in range(start_epoch, cfg.epochs):
        if best["epoch"] >= 0 and cfg.early_stopping and epoch - best["epoch"] > cfg.patience:
            break
        lr = float(inner.learning_rate)
        result = run_epoch(step, strategy,
                           pipeline.epoch(epoch, in_epoch["batch"] if in_epoch else 0),
                           steps_per_epoch, seed=(cfg.seed, epoch), batch_size=cfg.batch_size,
                           label="adv_accuracy" if cfg.eps > 0 else "accuracy",
                           verbose=runtime.verbose, start=in_epoch)
        in_epoch = None
        if "stopped" in result:
            if save:
                save_state(checkpoint_dir, model, optimizer, epoch - 1, history, best,
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
            progress.clear_line()
            print(epoch_line(name, cfg, record), flush=True)
        history.append(record)
        with tb.as_default(step=epoch):
            for k, v in record.items():
                if k != "epoch":
                    tf.summary.scalar(k, v)
        if save:
            save_state(checkpoint_dir, model, optimizer, epoch, history, best,
                       best_weights if cfg.early_stopping else None)
        if on_epoch_end:
            on_epoch_end(epoch, record)
        if preempt.requested() and epoch + 1 < cfg.epochs:
            tb.close()
            preempt.check(f"after epoch {epoch + 1} of {name}")

    if cfg.early_stopping and best_weights is not None:
        model.set_weights(best_weights)
    inner.finalize_variable_values(model.trainable_variables)  # the weight average, if any
    if model is not result_model:
        stand_ins.copy(result_model.weights, model.weights)
        model = result_model
    metrics = {"epochs_run": len(history), "steps_per_epoch": steps_per_epoch,
               "final": history[-1] if history else {},
               "best_val": best, "train_seconds": sum(r["seconds"] for r in history),
               "batch_norm": settle_bn_statistics(cfg, model, train, runtime)}
    tb.close()
    return Fit(model, history, metrics, replicas, type(strategy).__name__)


# what a train step depends on -> (model, optimizer, its train step, its shared schedule)
_TRAINERS: dict = {}


def _trainer(cfg: TrainConfig, strategy, jit_compile: bool, model, optimizer, build: tuple):
    """(model, optimizer, compiled train step) to train with, starting from ``model``'s and
    ``optimizer``'s state.

    Why: tracing a train step and optimising its graph on the first call cost seconds per
    model, more than a small model's training (docs/performance.md, "Tracing"). Models that
    differ only in their seed, their data and their attack's eps and step length
    (``steps.attack_shape``: those are the step's arguments) run the same step, so under the
    default strategy one model, optimizer and step per configuration serve them all in turn:
    the new model's initial weights and optimizer state are copied in, and ``fit`` copies the
    trained weights back out. Where the learning-rate schedule reads its numbers from
    variables (``shared_lr_schedule``), models that differ in their learning rate, epochs and
    data size share the step too. The arithmetic is the same, bit for bit
    (``tests/test_train.py``). Anything whose graph its configuration may not state
    (``stand_ins``) or that runs over replicas trains as itself.
    """
    architecture = stand_ins.architecture(model)
    if (architecture is not None and strategy.num_replicas_in_sync == 1
            and strategy is tf.distribute.get_strategy()):
        shape, length = dataclasses.replace(attack_shape(cfg), seed=0), build[3]
        shared = sharing_key(cfg, build[3])
        if shared is not None:
            # the loop and the input pipeline read early stopping and augmentation, the step
            # never does
            shape, length = dataclasses.replace(
                without_numbers(shape), early_stopping=False, patience=TrainConfig.patience,
                augment=False), shared
        key = (architecture, repr(shape), bool(jit_compile), repr(build[0]), build[1], length)
        if key not in _TRAINERS:
            schedule = shared_lr_schedule(cfg, build[3])
            twin, twin_optimizer = build_for_training(cfg, strategy, *build, schedule=schedule)
            _TRAINERS[key] = (twin, twin_optimizer, compile_train_step(
                twin, twin_optimizer, cfg, strategy, jit_compile), schedule)
        twin, twin_optimizer, compiled, schedule = _TRAINERS[key]
        mine = [*twin.weights, *twin_optimizer.variables]
        theirs = [*model.weights, *optimizer.variables]
        if len(mine) == len(theirs) and all(tuple(a.shape) == tuple(b.shape) and
                                            a.dtype == b.dtype for a, b in zip(mine, theirs)):
            stand_ins.copy(mine, theirs)
            if schedule is not None:
                set_lr_schedule(schedule, cfg, build[3])
            return twin, twin_optimizer, bind_attack(compiled, cfg)
    return model, optimizer, make_train_step(model, optimizer, cfg, strategy, jit_compile)


def log_hparams(writer, cfg: TrainConfig) -> None:
    """The configuration as TensorBoard hparams (lists and dicts as JSON text), so runs can be
    compared by what they were trained with."""
    from tensorboard.plugins.hparams import api as hp

    values = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
              for k, v in dataclasses.asdict(cfg).items()}
    with writer.as_default():
        hp.hparams(values)


def epoch_line(name: str, cfg: TrainConfig, record: dict) -> str:
    """The one line an epoch prints: its metrics, learning rate and seconds."""
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                        if k not in ("epoch", "lr", "seconds"))
    return (f"[{name}] epoch {record['epoch'] + 1}/{cfg.epochs}: {metrics}, "
            f"lr {record['lr']:.2e}, {record['seconds']:.1f} s")


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
