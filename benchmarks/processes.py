"""Processes against threads on this CPU: the aggregate speed of the quick scale's kinds of
work when P processes of T intra-op threads each share the cores (P x T = the core count),
as N processes of one table on one store do. Every process warms up, then all count the steps
they finish in the same window; the aggregate is the sum of their images per second.

    python benchmarks/processes.py [--seconds=20] [--kinds=train,adv_train,attack]

The quick scale's configurations: ResNet11v2, batch 64 for training (one-step fast
adversarial training at eps 0.5 for adv_train), batch 500 for the attack loop (PGD-10 L2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = """
import json, sys, time
import numpy as np
import tensorflow as tf
from entangle.core import attacks, train
kind, start, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(0)
cfg = train.TrainConfig(arch="resnet11v2", pooling="keras_example", batch_size=64,
                        eps=0.5 if kind == "adv_train" else 0.0, attack_steps=1,
                        attack_step_size=1.25, attack_step_relative=True,
                        attack_random_start=True, bn_momentum=0.9)
strategy = tf.distribute.get_strategy()
model, optimizer = train.build_for_training(cfg, strategy, (32, 32, 3), 10)
if kind == "attack":
    x = rng.random((500, 32, 32, 3), np.float32)
    y = rng.integers(0, 10, 500).astype(np.int32)
    batch = 500 * 10                       # image-steps per call
    def work():
        attacks.pgd_l2(model, x, y, eps=0.25, steps=10, step_size=0.0625)
else:
    step = train.make_train_step(model, optimizer, cfg, strategy)
    x = tf.constant(rng.random((64, 32, 32, 3), np.float32))
    y = tf.constant(rng.integers(0, 10, 64), tf.int32)
    seed = tf.constant([0, 0], tf.int32)
    batch = 64
    def work():
        float(step(x, y, seed)[0])
work(); work()
while time.time() < start:
    time.sleep(0.01)
done, t0 = 0, time.time()
while time.time() - t0 < seconds:
    work()
    done += 1
print(json.dumps({"per_second": done * batch / (time.time() - t0)}))
"""


def measure(kind: str, processes: int, threads: int, seconds: float) -> float:
    """Aggregate images (image-steps for the attack) per second of ``processes`` workers."""
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
           "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2",
           "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1")}
    start = time.time() + 40          # time to import TensorFlow, build, trace and warm up
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, kind, str(start), str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(processes)]
    rates = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(err[-2000:])
        rates.append(json.loads(out.strip().splitlines()[-1])["per_second"])
    return sum(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--kinds", default="train,adv_train,attack")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    layouts = [(1, cores)] + [(p, cores // p) for p in (2, 4) if p <= cores and cores % p == 0]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from entangle.runtime import hardware

    print(f"{hardware.describe()}; {args.seconds:g} s windows\n")
    print("| kind | " + " | ".join(f"{p} process(es) x {t} thread(s)" for p, t in layouts)
          + " |")
    print("|---|" + "---|" * len(layouts))
    for kind in args.kinds.split(","):
        rates = [measure(kind, p, t, args.seconds) for p, t in layouts]
        print(f"| {kind} | " + " | ".join(f"{r:.0f}/s ({r / rates[0]:.2f}x)" for r in rates)
              + " |", flush=True)


if __name__ == "__main__":
    main()
