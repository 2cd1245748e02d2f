"""Stale batch-norm statistics at quick scale: test accuracy with the moving averages against
the same weights with statistics recomputed over the training inputs (precise BN).

    python benchmarks/bn_statistics.py --kinds=standard,robust0.5 --epochs=6 --momentum=0.99,0.9

Trains each model once per momentum with ``bn_statistics="moving"`` on the quick CIFAR subset
(5,000 train / 500 test images of the offline copy), then evaluates it in inference mode
before and after ``inference.recompute_bn_statistics`` (robust models: PGD accuracy at their eps
too, 10 steps of 2.5 eps / 10). Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from entangle import data  # noqa: E402
from entangle.core import attacks, inference
from entangle.core import train  # noqa: E402
from entangle.store import training  # noqa: E402

COPY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                    "cifar10-jpeg")


def _pgd(model, x, y, eps):
    adv = attacks.pgd_l2(model, x, y, eps=eps, steps=10, step_size=0.25 * eps, verbose=False)
    return inference.accuracy(model, adv, y)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kinds", default="standard,robust0.5")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--momentum", default="0.99,0.9")
    p.add_argument("--train_attack_steps", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--fast", action="store_true", help="one step of 1.25 eps, random start")
    p.add_argument("--data", default=COPY)
    args = p.parse_args()
    tr = data.load_dataset(f"folder:{args.data}", "train", limit=5000, seed=0, verbose=False)
    te = data.load_dataset(f"folder:{args.data}", "test", limit=500, seed=0, verbose=False)
    xt = te.float_images()
    rows = []
    for kind in args.kinds.split(","):
        eps = float(kind[6:]) if kind.startswith("robust") else 0.0
        for momentum in (float(m) for m in args.momentum.split(",")):
            cfg = train.TrainConfig(arch="resnet11v2", eps=eps, batch_size=args.batch_size,
                                    epochs=args.epochs, learning_rate=3e-3, lr_decay="cosine",
                                    attack_steps=1 if args.fast else args.train_attack_steps,
                                    attack_step_size=1.25 if args.fast else 0.5,
                                    attack_step_relative=args.fast,
                                    attack_random_start=args.fast,
                                    bn_momentum=momentum, bn_statistics="moving")
            start = time.time()
            tm = training.train_classifier(cfg, tr, runtime=train.RuntimeOptions(verbose=False),
                                        store=_tmp_store())
            seconds = time.time() - start
            m = tm.model
            acc = [inference.accuracy(m, xt, te.y)]
            pgd = [_pgd(m, xt, te.y, eps)] if eps else []
            inference.recompute_bn_statistics(
                m, (tr.x[i:i + 500] for i in range(0, len(tr), 500)) if eps == 0
                else _adv_batches(m, tr, cfg))
            acc.append(inference.accuracy(m, xt, te.y))
            if eps:
                pgd.append(_pgd(m, xt, te.y, eps))
            rows.append((kind, momentum, args.epochs, args.batch_size, seconds, acc, pgd))
            print(rows[-1], flush=True)
    print("\n| model | BN momentum | epochs | batch | train s | test, moving stats | test, "
          "recomputed | PGD, moving | PGD, recomputed |\n|---|---|---|---|---|---|---|---|---|")
    for kind, mom, ep, batch, sec, acc, pgd in rows:
        pg = [f"{100 * v:.1f}" for v in pgd] or ["", ""]
        print(f"| {kind} | {mom} | {ep} | {batch} | {sec:.0f} | {100 * acc[0]:.1f} | "
              f"{100 * acc[1]:.1f} | {pg[0]} | {pg[1]} |")


def _adv_batches(model, ds, cfg):
    for i in range(0, len(ds), 500):
        x = data.to_float(ds.x[i:i + 500])
        yield attacks.pgd_l2(model, x, ds.y[i:i + 500], eps=cfg.eps, steps=cfg.attack_steps,
                             step_size=cfg.attack_step, random_start=cfg.attack_random_start,
                             seed=i, verbose=False)


def _tmp_store():
    import tempfile

    from entangle.store import Store
    return Store(tempfile.mkdtemp(prefix="bn-bench-"))


if __name__ == "__main__":
    main()
