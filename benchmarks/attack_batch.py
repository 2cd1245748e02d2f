"""The attack and robustification loops against their batch size (``--eval_batch_size``) on
this CPU: image-steps per second at each batch for the quick and paper ResNets, in one run.
A loop's result does not depend on the batch (the model runs in inference mode and every
image is attacked on its own), so the fastest batch is free to take; activations that
overflow the cache are what large batches risk.

    python benchmarks/attack_batch.py [--archs=resnet11v2,resnet56v2] [--batches=64,128,256,500]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from entangle.core import attacks, robustify, train  # noqa: E402
from entangle.runtime import hardware  # noqa: E402


def rate(loop, images: int, steps: int, repeats: int) -> float:
    """Image-steps per second of ``loop`` (the first call traces and is not timed)."""
    loop()
    best = float("inf")
    for _ in range(repeats):
        t = time.time()
        loop()
        best = min(best, time.time() - t)
    return images * steps / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet11v2,resnet56v2")
    parser.add_argument("--batches", default="64,128,256,500")
    parser.add_argument("--images", type=int, default=500, help="images per loop call")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    x = rng.random((args.images, 32, 32, 3), np.float32)
    y = rng.integers(0, 10, args.images).astype(np.int32)
    print(f"{hardware.describe()}; TF {tf.__version__}; {args.images} images, {args.steps} "
          f"steps; image-steps per second (ratio to batch {batches[-1]})\n")
    print("| arch | loop | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|---|" + "---|" * len(batches))
    for arch in args.archs.split(","):
        cfg = train.TrainConfig(arch=arch, pooling="keras_example")
        model = train.build_model(cfg, (32, 32, 3), 10)
        loops = {
            "PGD (L2)": lambda b: (lambda: attacks.pgd_l2(
                model, x, y, eps=0.5, steps=args.steps, step_size=0.125, batch_size=b,
                verbose=False)),
            "robustify": lambda b: (lambda: robustify.robustify(
                model, x, x[::-1].copy(), robustify.RobustifyConfig(
                    steps=args.steps, step_size=0.5), batch_size=b, verbose=False)),
        }
        for name, make in loops.items():
            rates = [rate(make(b), args.images, args.steps, args.repeats) for b in batches]
            print(f"| {arch} | {name} | " + " | ".join(
                f"{r:.0f} ({r / rates[-1]:.2f}x)" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
