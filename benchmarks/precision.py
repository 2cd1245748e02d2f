"""Speed of the standard and adversarial training steps and of the PGD and robustification
loops on the CPU at hand, under float32, mixed_bfloat16, XLA for the training steps, and
batch 128 vs 256, for ResNet11v2, ResNet20v2 and ResNet56v2 at 32x32; each as images per
second and as a fraction of this machine's fp32 matmul peak, measured in the same run.

    python benchmarks/precision.py [--archs=resnet11v2,resnet20v2] [--kinds=train,attack]
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/precision.py      # oneDNN off, for comparison

A training step costs about 3 forward passes of FLOPs, an adversarial one 3 + 2 per PGD
step, an attack or robustification step about 2; forward FLOPs are counted from the model's
convolutions and dense layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from common import forward_flops, matmul_gflops  # noqa: E402

from entangle.core import train  # noqa: E402
from entangle.runtime import hardware
from entangle.store import estimate
from entangle.store.plan import Op  # noqa: E402

CONFIGS = (("float32", False, 128), ("mixed_bfloat16", False, 128), ("float32", True, 128),
           ("float32", False, 256))


KINDS = ("train", "adv_train", "attack", "robustify")


def _label(config) -> str:
    """A configuration's name for --configs: precision, +xla, @batch unless 128."""
    precision, jit, batch = config
    return precision + ("+xla" if jit else "") + (f"@{batch}" if batch != 128 else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet11v2,resnet20v2,resnet56v2")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"which of {', '.join(KINDS)} to time")
    parser.add_argument("--adv_steps", type=int, default=16,
                        help="PGD steps inside the adversarial training step (Table 4: 16)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="all",
                        help="all, or a subset of precision[+xla][@batch] such as "
                             "float32,mixed_bfloat16 (batch 128, no XLA)")
    args = parser.parse_args()
    configs = CONFIGS if args.configs == "all" else [
        c for c in CONFIGS if _label(c) in args.configs.split(",")]
    if not configs:
        parser.error(f"--configs: none of {args.configs!r}; allowed: all, "
                     + ", ".join(_label(c) for c in CONFIGS))
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; allowed: {', '.join(KINDS)}")
    fp32, bf16 = matmul_gflops(tf.float32), matmul_gflops(tf.bfloat16)
    print(f"{hardware.describe()}; TF {tf.__version__}; oneDNN "
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS')}")
    print(f"2048^2 matmul: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s\n")
    print("Images per second (per loop step for attack and robustify), and % of the fp32 "
          "matmul peak in brackets.\n")
    print("| arch (fwd MFLOP/img) | precision | XLA train | batch | "
          + " | ".join(kinds) + " |")
    print("|---|---|---|---|" + "---|" * len(kinds))
    passes = {"train": 3, "adv_train": 3 + 2 * args.adv_steps, "attack": 2, "robustify": 2}
    for arch in args.archs.split(","):
        base = train.TrainConfig(arch=arch, width=16, pooling="keras_example", augment=False,
                                 eps=1.0, attack_steps=args.adv_steps)
        flops = forward_flops(train.build_model(base, (32, 32, 3), 10))
        for precision, jit, batch in configs:
            cfg = dataclasses.replace(base, precision=precision, batch_size=batch)
            cells = []
            for kind in kinds:
                rate = estimate.probe_op(Op(kind, cfg, batch, (32, 32, 3), 10), args.repeats,
                                         jit_compile=jit)
                per_second = 1 / rate.seconds_per_image
                peak = 100 * per_second * passes[kind] * flops / 1e9 / fp32
                cells.append(f"{per_second:.0f} ({peak:.0f} %)")
            print(f"| {arch} ({flops / 1e6:.0f}) | {precision} | {'on' if jit else 'off'} | "
                  f"{batch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
