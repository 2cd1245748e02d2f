"""Batch-norm statistics after training, on the same weights: test accuracy with the moving
averages, recomputed over the clean training inputs ("recompute"), and recomputed over them
augmented as the training step saw them ("recompute_augmented"; robust models: attacked too,
and PGD accuracy at their eps, 10 steps of 2.5 eps / 10).

    python benchmarks/bn_statistics.py --kinds=standard,robust0.5 --epochs=6 --momentum=0.99,0.9

Trains each model once per momentum and seed with ``bn_statistics="moving"`` on a CIFAR
subset of the offline copy (--train_limit, --test_limit; learning rate 3e-3 with cosine
decay), then settles the statistics each way with ``train.settle_bn_statistics``, the
library's own path; ``--stored`` does the same for a store's trained models. Prints one
Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402  (TensorFlow speed defaults, before it loads)

from entangle import data  # noqa: E402
from entangle.core import attacks, inference  # noqa: E402
from entangle.core import train  # noqa: E402
from entangle.store import training  # noqa: E402

COPY = common.CIFAR_COPY


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
    p.add_argument("--train_limit", type=int, default=5_000)
    p.add_argument("--test_limit", type=int, default=500)
    p.add_argument("--seeds", default="0", help="training seeds, each a model")
    p.add_argument("--data", default=COPY)
    p.add_argument("--stored", default="", help="comma-separated model folders of a store "
                   "(manifest.json, model.keras): recompute their statistics both ways "
                   "instead of training (their moving averages are not stored)")
    args = p.parse_args()
    tr = data.load_dataset(f"folder:{args.data}", "train", limit=args.train_limit, seed=0,
                           verbose=False)
    te = data.load_dataset(f"folder:{args.data}", "test", limit=args.test_limit, seed=0,
                           verbose=False)
    xt = te.float_images()
    runtime = train.RuntimeOptions(verbose=False)
    ways = ("moving", "recompute", "recompute_augmented")
    rows = []
    for folder in filter(None, args.stored.split(",")):
        cfg, m = _stored(folder)
        acc, pgd = _settle_each(m, cfg, tr, xt, te.y, ways[1:], runtime)
        rows.append((os.path.basename(folder.rstrip("/")), cfg.bn_momentum, cfg.seed, 0.0,
                     [float("nan")] + acc, [float("nan")] + pgd if pgd else []))
        print(rows[-1], flush=True)
    for kind in filter(None, args.kinds.split(",")):
        eps = float(kind[6:]) if kind.startswith("robust") else 0.0
        for momentum, seed in ((float(m), int(s)) for m in args.momentum.split(",")
                               for s in args.seeds.split(",")):
            cfg = train.TrainConfig(arch="resnet11v2", eps=eps, batch_size=args.batch_size,
                                    epochs=args.epochs, learning_rate=3e-3, lr_decay="cosine",
                                    attack_steps=1 if args.fast else args.train_attack_steps,
                                    attack_step_size=1.25 if args.fast else 0.5,
                                    attack_step_relative=args.fast,
                                    attack_random_start=args.fast,
                                    bn_momentum=momentum, bn_statistics="moving",
                                    seed=seed)
            start = time.time()
            m = training.train_classifier(cfg, tr, runtime=runtime, store=_tmp_store()).model
            seconds = time.time() - start
            acc, pgd = _settle_each(m, cfg, tr, xt, te.y, ways, runtime)
            rows.append((kind, momentum, seed, seconds, acc, pgd))
            print(rows[-1], flush=True)
    trained = (f" x {args.epochs} epochs, batch {args.batch_size}" if args.kinds
               else " (stored models: trained as their manifests say)")
    print(f"\n{len(tr)} training images{trained}; {len(te)} test images\n")
    print("| model | BN momentum | seed | train s | " + " | ".join(f"test, {w}" for w in ways)
          + " | " + " | ".join(f"PGD, {w}" for w in ways) + " |")
    print("|---" * (4 + 2 * len(ways)) + "|")
    for kind, mom, seed, sec, acc, pgd in rows:
        pg = [f"{100 * v:.1f}" if v == v else "" for v in pgd] or [""] * len(ways)
        cells = [f"{100 * a:.1f}" if a == a else "" for a in acc] + pg  # nan: not measured
        print(f"| {kind} | {mom} | {seed} | {sec:.0f} | " + " | ".join(cells) + " |")


def _settle_each(model, cfg, tr, xt, yt, ways, runtime):
    """Test accuracy (and PGD accuracy at the model's eps) after settling the statistics each
    way, every way from the same weights."""
    weights = model.get_weights()
    acc, pgd = [], []
    for way in ways:
        model.set_weights(weights)
        train.settle_bn_statistics(dataclasses.replace(cfg, bn_statistics=way), model, tr,
                                   runtime)
        acc.append(inference.accuracy(model, xt, yt))
        if cfg.eps:
            pgd.append(_pgd(model, xt, yt, cfg.eps))
    return acc, pgd


def _stored(folder):
    """(TrainConfig, model) of a store's model folder, its bytes verified by the store."""
    import keras

    from entangle.core import models  # noqa: F401  (registers the custom layers)
    from entangle.store import Store

    folder = os.path.abspath(folder.rstrip("/"))
    root, key = os.path.dirname(os.path.dirname(folder)), os.path.basename(folder)
    store = Store(root)
    problems = store.verify(training.MODEL_KIND, key)
    if problems:
        raise SystemExit(f"--stored: {folder} is damaged: {'; '.join(problems)}")
    cfg = train.TrainConfig(**store.manifest(training.MODEL_KIND, key)["config"]["train"])
    return cfg, keras.saving.load_model(os.path.join(folder, "model.keras"))


def _tmp_store():
    import tempfile

    from entangle.store import Store
    return Store(tempfile.mkdtemp(prefix="bn-bench-"))


if __name__ == "__main__":
    main()
