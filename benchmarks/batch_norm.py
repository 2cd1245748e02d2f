"""The fused batch norm against Keras' own, side by side in one process: each kind of work
(standard and adversarial training steps, the PGD and robustification loops) timed with the
ResNets' batch norms as ``models.FusedBatchNormalization`` and as Keras 3's
``BatchNormalization`` (the same arithmetic, unfused), alternating, median of the rounds.

    python benchmarks/batch_norm.py [--archs=resnet11v2] [--train_batch=64] [--attack_batch=500]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402,F401  (TensorFlow speed defaults, before it loads)

import argparse  # noqa: E402
import statistics  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from entangle.core import models
from entangle.core import train  # noqa: E402
from entangle.runtime import hardware
from entangle.store import estimate
from entangle.store.plan import Op  # noqa: E402

KINDS = ("train", "adv_train", "attack", "robustify")


def rate(kind: str, cfg, batch: int, fused: bool, repeats: int) -> float:
    """Images (image-steps for the loops) per second of one kind of work."""
    saved = models.FusedBatchNormalization
    if not fused:
        models.FusedBatchNormalization = keras.layers.BatchNormalization
    try:
        r = estimate.probe_op(Op(kind, cfg, batch, (32, 32, 3), 10), repeats)
    finally:
        models.FusedBatchNormalization = saved
    return 1.0 / r.seconds_per_image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet11v2,resnet20v2")
    parser.add_argument("--train_batch", type=int, default=64)
    parser.add_argument("--attack_batch", type=int, default=500)
    parser.add_argument("--adv_steps", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{hardware.describe()}; TF {tf.__version__}, Keras {keras.__version__}; oneDNN "
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS')}; float32; median of {args.rounds} "
          f"alternating rounds\n")
    print("| arch | work | batch | Keras BN img/s | fused BN img/s | fused / Keras |")
    print("|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        cfg = train.TrainConfig(arch=arch, width=16, pooling="keras_example", augment=False,
                                eps=0.5, attack_steps=args.adv_steps, attack_step_size=1.25,
                                attack_step_relative=True, attack_random_start=True,
                                bn_momentum=0.9)
        for kind in KINDS:
            batch = args.train_batch if kind in ("train", "adv_train") else args.attack_batch
            got = {True: [], False: []}
            for _ in range(args.rounds):
                for fused in (False, True):
                    got[fused].append(rate(kind, cfg, batch, fused, args.repeats))
            keras_bn, fused_bn = statistics.median(got[False]), statistics.median(got[True])
            label = f"{kind} (PGD {args.adv_steps})" if kind == "adv_train" else kind
            print(f"| {arch} | {label} | {batch} | {keras_bn:.0f} | {fused_bn:.0f} | "
                  f"{fused_bn / keras_bn:.2f} |", flush=True)


if __name__ == "__main__":
    main()
