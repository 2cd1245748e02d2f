"""tf.distribute strategies (created once per process) and TensorFlow's thread settings:
what must happen before TensorFlow starts."""

from __future__ import annotations

import tensorflow as tf



STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


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
        threads = int(inter_op)
    except ValueError:
        threads = -1
    if threads < 0:
        raise ValueError(f"inter_op_threads must be 'auto' or an integer >= 0; got {inter_op!r}")
    inter_op = threads
    if tf.config.threading.get_inter_op_parallelism_threads() != inter_op:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        except RuntimeError as e:
            raise RuntimeError(f"inter_op_threads must be set before TensorFlow starts (call "
                               f"entangle.runtime.distribution.configure_threads first thing): {e}"
                               ) from e
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
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {name!r}")
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
                    f"entangle.runtime.distribution.get_strategy('multi_worker') first thing") from e
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
