"""The learning rate per optimiser step, as a Keras schedule, and the same schedule with its
numbers in variables, so that one compiled train step serves models of other learning
rates, lengths and data sizes (``train._trainer``)."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from entangle.core.train_config import TrainConfig

# Schedules whose rate is the same bit for bit with their numbers read from variables. The
# graph optimiser rewrites the cosine's division by a constant step count, which moves the
# last bit of some rates (docs/performance.md, "Learning rates as step arguments"), so a
# cosine schedule keeps its numbers as constants.
IN_VARIABLES = ("step", "none")
# the schedules' arguments that count optimiser steps (int64, as the optimiser's iterations)
_STEP_COUNTS = ("boundaries", "decay_steps", "warmup_steps")


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int
                ) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate per optimiser step, as a Keras schedule.

    ``step`` is the schedule of Keras' CIFAR-10 ResNet example (Adam 1e-3, the paper's
    setting), scaled from its 200 epochs to ``cfg.epochs``: x0.1 after 40 %, x0.01 after 60 %,
    x1e-3 after 80 %, x5e-4 after 90 % of training. ``cosine`` anneals to 0, ``none`` stays;
    both after a linear warm-up over ``cfg.lr_warmup`` of the steps when it is > 0.
    """
    schedule, numbers = _numbers(cfg, steps_per_epoch)
    return schedule(**numbers)


def learning_rate_at(cfg: TrainConfig, epoch: int, steps_per_epoch: int = 1) -> float:
    """The learning rate at the first step of a (0-based) epoch (see ``lr_schedule``)."""
    return float(lr_schedule(cfg, steps_per_epoch)(epoch * steps_per_epoch))


def shared_lr_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """``lr_schedule`` with its numbers in variables (None for a schedule outside
    ``IN_VARIABLES``); ``set_lr_schedule`` gives it another model's numbers."""
    if cfg.lr_decay not in IN_VARIABLES:
        return None
    schedule, numbers = _numbers(cfg, steps_per_epoch)

    def variable(value, dtype):
        if value is None:
            return None
        if isinstance(value, list):
            return [variable(v, dtype) for v in value]
        return tf.Variable(value, dtype=dtype, trainable=False)

    return schedule(**{name: variable(value, tf.int64 if name in _STEP_COUNTS else tf.float32)
                       for name, value in numbers.items()})


def set_lr_schedule(schedule, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Gives a ``shared_lr_schedule`` the numbers of ``cfg``'s own schedule."""
    for name, value in _numbers(cfg, steps_per_epoch)[1].items():
        held = getattr(schedule, name)
        pairs = zip(held, value) if isinstance(value, list) else [(held, value)]
        for variable, number in pairs:
            if variable is not None:
                variable.assign(number)


def sharing_key(cfg: TrainConfig, steps_per_epoch: int) -> tuple | None:
    """What a step on a ``shared_lr_schedule`` holds of ``cfg``'s schedule as structure:
    its class, which arguments are unset (no warm-up), how many boundaries; None where the
    schedule keeps its numbers as constants."""
    if cfg.lr_decay not in IN_VARIABLES:
        return None
    schedule, numbers = _numbers(cfg, steps_per_epoch)
    return schedule.__name__, tuple(
        (name, None if v is None else len(v) if isinstance(v, list) else 1)
        for name, v in numbers.items())


def without_numbers(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the numbers that a ``shared_lr_schedule`` holds in variables set to the
    defaults (the warm-up's presence is in ``sharing_key``)."""
    return dataclasses.replace(cfg, learning_rate=TrainConfig.learning_rate,
                               epochs=TrainConfig.epochs, lr_warmup=0.0)


def _numbers(cfg: TrainConfig, steps_per_epoch: int) -> tuple[type, dict]:
    """(the Keras schedule class of ``lr_schedule``, its arguments)."""
    schedules = keras.optimizers.schedules
    lr, total = cfg.learning_rate, cfg.epochs * steps_per_epoch
    if cfg.lr_decay == "step":
        # PiecewiseConstantDecay switches after a boundary: step b-1 is the last at the old rate
        bounds = [max(0, int(round(f * total)) - 1) for f in (0.4, 0.6, 0.8, 0.9)]
        return schedules.PiecewiseConstantDecay, dict(
            boundaries=bounds, values=[lr * f for f in (1.0, 1e-1, 1e-2, 1e-3, 5e-4)])
    warm = int(round(cfg.lr_warmup * total))
    return schedules.CosineDecay, dict(
        initial_learning_rate=0.0 if warm else lr, decay_steps=max(1, total - warm),
        alpha=1.0 if cfg.lr_decay == "none" else 0.0, warmup_target=lr if warm else None,
        warmup_steps=warm)
