"""tf.distribute strategies (created once per process) and TensorFlow's thread settings:
what must happen before TensorFlow starts."""

from __future__ import annotations

import os
import socket
from typing import Callable, Mapping

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


def configure_tf32(enabled: bool = False) -> bool:
    """Allows TensorFloat-32 matmuls and convolutions (Ampere and newer GPUs) or not; returns
    the setting. TensorFlow allows them by default, and then a "float32" convolution rounds its
    inputs to 10 mantissa bits, as float16 does: the float32 stem would see an L2 perturbation
    of 1/256 with relative error 1.7 and one of 1/16 with 0.13 (docs/performance.md), so the
    binaries turn it off unless asked. No effect on CPUs."""
    tf.config.experimental.enable_tensor_float_32_execution(bool(enabled))
    return tf.config.experimental.tensor_float_32_execution_enabled()


GPU_CHOICES = ("all: every visible GPU; none: the CPU only; auto: one GPU for this process (the "
               "local rank of LOCAL_RANK, SLURM_LOCALID, OMPI_COMM_WORLD_LOCAL_RANK or "
               "MPI_LOCALRANKID, else the first GPU no other process on the store holds); or "
               "indices such as 0 or 0,2")
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK",
                   "MPI_LOCALRANKID")
_HELD: list = []          # the locks on the GPUs this process took: held until it exits


def parse_gpus(request: str) -> str | tuple[int, ...]:
    """``--gpu``'s value: "all", "none", "auto" or a tuple of distinct indices >= 0."""
    text = str(request).strip().lower()
    if text in ("all", "none", "auto"):
        return text
    try:
        indices = tuple(int(t) for t in text.split(","))
    except ValueError:
        indices = ()
    if not indices or min(indices) < 0 or len(set(indices)) != len(indices):
        raise ValueError(f"--gpu must be {GPU_CHOICES}; got {request!r}")
    return indices


def choose_gpus(request: str, count: int, *, lock_dir: str | None = None,
                env: Mapping[str, str] | None = None) -> tuple[list[int], str]:
    """Which of ``count`` GPUs this process uses, and why: see ``GPU_CHOICES``. ``auto``
    without a local rank takes, under a lock file in ``lock_dir`` (one per host and GPU,
    released when the process ends, broken when its owner is dead), the first GPU no other
    live process holds."""
    from entangle.runtime import atomic

    choice = parse_gpus(request)
    env = os.environ if env is None else env
    if choice == "none" or count == 0 and choice in ("all", "auto"):
        return [], "no GPU" if choice == "none" else "none visible"
    if choice == "all":
        return list(range(count)), "every visible GPU"
    if isinstance(choice, tuple):
        bad = [i for i in choice if i >= count]
        if bad:
            seen = (f"{count} GPUs are visible (indices 0 to {count - 1})" if count
                    else "no GPU is visible")
            raise ValueError(f"--gpu={request}: {seen}; there is no GPU {bad[0]}")
        return list(choice), "as given"
    for var in LOCAL_RANK_VARS:
        if env.get(var, "").strip().isdigit():
            rank = int(env[var])
            return [rank % count], f"local rank {var}={rank}"
    if lock_dir is None:
        return [0], "the first (no store to share GPUs through)"
    for i in range(count):
        lock = atomic.Lock(os.path.join(lock_dir, f"gpu-{socket.gethostname()}-{i}.lock"))
        if lock.try_acquire():
            _HELD.append(lock)
            return [i], f"the first GPU free on this store (lock {lock.path})"
    raise RuntimeError(f"--gpu=auto: all {count} GPUs of this host are held by other processes "
                       f"on the store (locks in {lock_dir}); start at most {count} processes "
                       f"per host, or share one with --gpu=INDEX")


def configure_gpus(request: str = "all", lock_dir: str | None = None,
                   log: Callable[[str], None] = print) -> list[int]:
    """Makes only the chosen GPUs visible to this process, with memory growth (a process
    takes the memory it uses, not every GPU's), before TensorFlow starts; logs its choice.
    Returns the physical indices taken."""
    physical = tf.config.list_physical_devices("GPU")
    indices, why = choose_gpus(request, len(physical), lock_dir=lock_dir)
    if not physical:
        return []
    try:
        tf.config.set_visible_devices([physical[i] for i in indices], "GPU")
        for i in indices:
            tf.config.experimental.set_memory_growth(physical[i], True)
    except RuntimeError as e:
        raise RuntimeError(f"--gpu must take effect before TensorFlow starts (call "
                           f"entangle.runtime.distribution.configure_gpus first thing): {e}"
                           ) from e
    names = ", ".join(physical[i].name for i in indices) or "none (CPU only)"
    log(f"GPU: {names} ({why})")
    return indices


def start_up(inter_op: int | str = "auto", tf32: bool | None = False, gpu: str | None = None,
             strategy="auto", gpu_locks: str | None = None,
             log: Callable[[str], None] = print) -> tf.distribute.Strategy:
    """A process's TensorFlow set up in the order it needs: threads (before the runtime
    starts), TF32, the visible GPUs (before the strategy lists devices), then the strategy,
    which it returns. ``None`` for ``tf32`` or ``gpu`` leaves that setting as it is."""
    configure_threads(inter_op)
    if tf32 is not None:
        configure_tf32(tf32)
    if gpu is not None:
        configure_gpus(gpu, gpu_locks, log=log)
    return get_strategy(strategy)


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
