"""The compiled training step (PGD on the batch first when eps > 0), one epoch of it with
progress and preemption, and the checkpointed state a stopped training resumes from."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import weakref

import keras
import numpy as np
import tensorflow as tf

from entangle.core import loop, norms, objectives
from entangle.core.train_config import TrainConfig
from entangle.runtime import preempt, progress
from entangle.runtime.atomic import atomic_save_npz, read_npz


def pgd_batch_attack(model, steps: int, random_start: bool = False):
    """The batch attack of adversarial training: untargeted L2 PGD of ``steps`` steps,
    (x, y, seed, eps, step_size, start_eps) -> x_adv, no gradient through it; from a random
    start in the ball of radius ``start_eps`` if ``random_start``. The budget and the step
    length are arguments, so that one trace serves every eps (``attack_numbers``)."""
    objective = objectives.cross_entropy_objective(model, targeted=False)

    def attack(x, y, seed, eps, step_size, start_eps):
        start = (norms.clip01(norms.random_l2_start(x, start_eps, seed)) if random_start
                 else x)
        return tf.stop_gradient(loop.pgd_loop(objective, x, y, start, eps, steps, step_size))

    return attack


def pgd_training_attack(model, eps: float, steps: int, step_size: float,
                        random_start: bool = False, start_radius: float = 1.0):
    """``pgd_batch_attack`` at ``eps``, ``steps`` of ``step_size``, from a random start in the
    ball of ``start_radius`` x eps if ``random_start``: (x, y, seed) -> x_adv. Traced inside
    the train step, here and in ``adversarial.AdversarialModel``."""
    attack = pgd_batch_attack(model, steps, random_start)
    return lambda x, y, seed: attack(x, y, seed, eps, step_size, eps * start_radius)


def training_attack(model, cfg: TrainConfig):
    """``pgd_training_attack`` with the training configuration's attack."""
    return pgd_training_attack(model, cfg.eps, cfg.attack_steps, cfg.attack_step,
                               cfg.attack_random_start, cfg.attack_start_radius)


# An eps that stays a Python number, traced as a constant of its own trace: TensorFlow's
# graph optimiser rewrites a constant 1 / norm (the L2 projection at eps 1) as
# Reciprocal(norm), which rounds differently from the division an argument gets. Kept as a
# constant so that models trained at eps 1 stay what every stored model and published table
# was trained with, bit for bit (tests/test_train.py).
_CONSTANT_EPS = (1.0,)


def attack_numbers(cfg: TrainConfig) -> tuple:
    """The training attack's eps, step length and random-start radius, the arguments of
    ``pgd_batch_attack`` and of a compiled train step: float32 tensors, each the float32 of
    the number computed in Python (eps in ``_CONSTANT_EPS`` stays a number)."""
    eps = cfg.eps if cfg.eps in _CONSTANT_EPS else tf.constant(cfg.eps, tf.float32)
    return (eps, *(tf.constant(v, tf.float32)
                   for v in (cfg.attack_step, cfg.eps * cfg.attack_start_radius)))


def attack_shape(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the numbers that ``attack_numbers`` passes at run time set aside: what a
    compiled train step or training attack depends on (one trace for every eps > 0)."""
    return dataclasses.replace(cfg, eps=float(cfg.eps > 0), attack_step_size=1.0,
                               attack_step_relative=False, attack_start_radius=1.0)


_TRAINING_ATTACKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_training_attack(model, cfg: TrainConfig):
    """``training_attack`` as one ``tf.function`` per model, number of steps and start (per
    stand-in: per architecture), held weakly by the model, for every eps:
    (x, y, seed) -> x_adv."""
    per_model = _TRAINING_ATTACKS.setdefault(model, {})
    key = (cfg.attack_steps, cfg.attack_random_start)
    if key not in per_model:
        per_model[key] = tf.function(pgd_batch_attack(model, *key))
    compiled, numbers = per_model[key], attack_numbers(cfg)
    return lambda x, y, seed: compiled(x, y, seed, *numbers)


def compile_train_step(model, optimizer, cfg: TrainConfig, strategy,
                       jit_compile: bool = False):
    """The compiled global step, (x, y, seed, attack) -> (summed loss, correct count over
    the global batch): PGD on the batch when eps > 0 (``attack``: ``attack_numbers``), then
    one optimizer update. One trace serves every configuration of one ``attack_shape``."""
    replicas = strategy.num_replicas_in_sync
    global_batch = float(cfg.batch_size)
    adversarial = pgd_batch_attack(model, cfg.attack_steps, cfg.attack_random_start)
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(x, y, seed, attack):
        if cfg.eps > 0:
            x = adversarial(x, y, seed, *attack)
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.reduce_sum(per_example) / global_batch
            if model.losses:
                loss += tf.add_n([tf.cast(l, tf.float32) for l in model.losses]) / replicas
            to_diff = optimizer.scale_loss(loss) if scaled else loss
        grads = tape.gradient(to_diff, model.trainable_variables)
        if scaled and replicas > 1:
            grads = agree_on_finite(grads)
        optimizer.apply(grads, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y),
                                        tf.float32))
        return tf.reduce_sum(per_example), correct

    @tf.function(jit_compile=jit_compile)
    def step(x, y, seed, attack):
        loss, correct = strategy.run(replica_step, args=(x, y, seed, attack))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    return step


def bind_attack(compiled, cfg: TrainConfig):
    """A compiled train step with ``cfg``'s attack numbers: (x, y, seed) -> (loss, correct)."""
    numbers = attack_numbers(cfg)
    return lambda x, y, seed: compiled(x, y, seed, numbers)


def make_train_step(model, optimizer, cfg: TrainConfig, strategy, jit_compile: bool = False):
    """The compiled global step for ``cfg``: (x, y, seed) -> summed loss and correct count
    over the global batch (``compile_train_step`` with ``cfg``'s attack bound)."""
    return bind_attack(compile_train_step(model, optimizer, cfg, strategy, jit_compile), cfg)


def agree_on_finite(grads: list) -> list:
    """Every replica's gradients made non-finite when any replica's are (in a replica
    context). Keras' LossScaleOptimizer decides "finite or not" on the first replica's local
    gradients and then sums all of them into the weights: an overflow on another replica
    would reach every replica's weights instead of skipping the step and halving the scale."""
    local_bad = tf.logical_not(tf.reduce_all(tf.stack(
        [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])))
    any_bad = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(local_bad, tf.float32)) > 0
    return [g if g is None else tf.where(any_bad, tf.constant(float("inf"), g.dtype), g)
            for g in grads]


SYNC_EVERY = 10     # training steps between two reads of the loss by the host


def run_epoch(step, strategy, dataset, steps: int, *, seed: tuple[int, int], batch_size: int,
              label: str = "accuracy", verbose: bool = False, start: dict | None = None) -> dict:
    """One pass of a compiled train step over a dataset: mean loss and train accuracy.

    ``dataset`` starts at batch ``start["batch"]`` when resuming mid-epoch (``start`` holds
    the sums so far). On a stop request (``preempt``) it returns after the current batch with
    ``{"stopped": {"batch", "loss", "correct", "seconds"}}``: the state to resume from.
    """
    start = start or {"batch": 0, "loss": 0.0, "correct": 0.0, "seconds": 0.0}
    # live on a terminal only: the caller prints the epoch's one line (``clear_line`` first)
    progbar = progress.live_bar(steps, enabled=verbose, unit_name="batch",
                                stateful_metrics=["loss", label])
    tot_loss, tot_correct, first = start["loss"], start["correct"], start["batch"]
    t0 = time.time() - start["seconds"]
    seen = float(first * batch_size)
    pending, b = [], first - 1

    def read():
        # one read of the device every SYNC_EVERY steps keeps a fast device busy; the sums
        # are added one step at a time, in order, so they do not depend on where reads fall
        nonlocal tot_loss, tot_correct, seen, pending
        for loss, correct in tf.stack([tf.stack(p) for p in pending]).numpy():
            tot_loss += float(loss)
            tot_correct += float(correct)
        seen += batch_size * len(pending)
        pending = []
        progbar.update(b + 1, [("loss", tot_loss / seen), (label, tot_correct / seen)],
                       finalize=False)

    for b, (x, y) in enumerate(strategy.experimental_distribute_dataset(dataset), first):
        pending.append(step(x, y, tf.constant([seed[0], seed[1] * 100_000 + b], tf.int32)))
        stop = preempt.requested()
        if len(pending) < SYNC_EVERY and b + 1 < steps and not stop:
            continue
        read()
        if stop and b + 1 < steps:
            return {"stopped": {"batch": b + 1, "loss": tot_loss, "correct": tot_correct,
                                "seconds": time.time() - t0}}
    if pending:
        read()
    return {"loss": tot_loss / seen, "train_accuracy": tot_correct / seen,
            "seconds": time.time() - t0}


def save_state(path: str, model, optimizer, epoch: int, history: list, best: dict,
               best_weights: list | None, in_epoch: dict | None = None):
    """Checkpoints after epoch ``epoch`` (or, with ``in_epoch``, part way into the next)."""
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
    arrays.update({f"b{i}": w for i, w in enumerate(best_weights or [])})
    arrays["meta"] = np.array(json.dumps({"epoch": epoch, "history": history, "best": best,
                                          "in_epoch": in_epoch}))
    atomic_save_npz(os.path.join(path, "state.npz"), **arrays)


def load_state(path: str, model, optimizer):
    """(meta, best weights or None) of a checkpoint, loaded into model and optimizer."""
    z = read_npz(os.path.join(path, "state.npz"), "training checkpoint")
    if z is None:
        return None, None
    n_w = sum(k.startswith("w") for k in z)
    model.set_weights([z[f"w{i}"] for i in range(n_w)])
    for i, v in enumerate(optimizer.variables):
        v.assign(z[f"o{i}"])
    n_b = sum(k.startswith("b") for k in z)
    best = [z[f"b{i}"] for i in range(n_b)] if n_b else None
    return json.loads(str(z["meta"])), best


