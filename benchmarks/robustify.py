"""Robustification throughput against its floor, side by side in one process.

The floor: ``steps`` forward+backward passes of the representation model in one compiled
loop, each pass fed the previous output (x + 1e-6 * grad) so TF cannot hoist work out of it.
``entangle.core.robustify.robustify`` runs the same number of passes plus its bookkeeping (target
and start representations, the per-example output-gradient scaling, clip, step).

    python benchmarks/robustify.py [--arch=resnet20v2] [--batch=128] [--steps=20]
"""

from __future__ import annotations

import os

from common import timed  # sets TensorFlow's environment first

import argparse  # noqa: E402

import numpy as np
import tensorflow as tf

from entangle.core import models, robustify


def floor_fn(rep, steps):
    @tf.function
    def passes(x, target):
        def body(i, x_cur):
            with tf.GradientTape() as tape:
                tape.watch(x_cur)
                loss = tf.reduce_sum(tf.square(rep(x_cur, training=False) - target))
            return i + 1, x_cur + 1e-6 * tape.gradient(loss, x_cur)
        return tf.while_loop(lambda i, _: i < steps, body, (0, x))[1]
    return passes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20v2")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    depth = int(args.arch[6:-2])
    model = models.resnet_v2(depth, (32, 32, 3), 10)
    rep = models.representation_model(model)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch, 32, 32, 3)).astype(np.float32)
    x0 = rng.uniform(size=x.shape).astype(np.float32)
    work = args.batch * args.steps
    floor = floor_fn(rep, args.steps)
    target = tf.constant(rep(x, training=False))
    t_floor, _ = timed(lambda: floor(tf.constant(x0), target).numpy(), args.repeats)
    cfg = robustify.RobustifyConfig(steps=args.steps, step_size=0.1)
    t_ours, r = timed(lambda: robustify.robustify(model, x, x0, cfg, batch_size=args.batch,
                                                  verbose=False), args.repeats)
    print(f"\n{args.arch} 32x32, batch {args.batch}, {args.steps} steps; TF {tf.__version__}, "
          f"oneDNN={os.environ['TF_ENABLE_ONEDNN_OPTS']}\n")
    print("| method | images*steps/s |\n|---|---|")
    print(f"| floor: compiled representation-gradient loop | {work / t_floor:.0f} |")
    print(f"| entangle.core.robustify.robustify | {work / t_ours:.0f} |")
    print(f"\nrobustify / floor = {t_floor / t_ours:.2f} (median relative distance after "
          f"{args.steps} steps: {np.median(r.relative_distance):.3f})")


if __name__ == "__main__":
    main()
