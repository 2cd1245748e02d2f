"""The machine at hand: CPU features, a one-line description for reports, and the precision
``--precision=auto`` picks from them."""

from __future__ import annotations

import os
import platform

# CPU flags (as /proc/cpuinfo names them) of native bfloat16 arithmetic.
BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}


def _cpuinfo(field: str) -> str:
    """The first value of ``field`` in /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_features() -> set:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent)."""
    return set(_cpuinfo("flags").split())


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_logical_devices("GPU")


def describe() -> str:
    """The CPU (with AMX / AVX-512 where present) and GPUs, for reports."""
    have = cpu_features()
    extras = [name for flag, name in (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"),
                                      ("avx512f", "AVX-512")) if flag in have]
    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    cpu = f"{name}{' with ' + ', '.join(extras) if extras else ''}, {os.cpu_count()} cores"
    gpus = _gpus()
    return f"{len(gpus)} GPU(s) + {cpu}" if gpus else cpu


def choose_precision(requested: str, features: set | None = None,
                     gpus: int | None = None) -> tuple[str, str]:
    """(precision, why): ``requested`` itself unless it is "auto"; then mixed_bfloat16 on a
    CPU with native bf16 (AMX or AVX512-BF16), oneDNN on and no GPU, where
    benchmarks/precision.py measured it faster, else float32 (GPUs: mixed precision not yet
    measured there; oneDNN off: bf16 ran 8x slower than float32)."""
    if requested != "auto":
        return requested, "as given"
    gpus = len(_gpus()) if gpus is None else gpus
    if gpus:
        return "float32", f"auto: {gpus} GPU(s); mixed precision is not measured on GPUs yet"
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        return "float32", "auto: TF_ENABLE_ONEDNN_OPTS=0, without which bfloat16 is slow"
    have = cpu_features() if features is None else features
    native = [name for flag, name in BF16_FLAGS.items() if flag in have]
    if native:
        return "mixed_bfloat16", (f"auto: this CPU has native bfloat16 ({', '.join(native)}), "
                                  f"where bf16 trained and attacked faster than float32")
    return "float32", "auto: this CPU has no native bfloat16"
