"""Where the quick scale's accuracy goes: one standard (or robust) ResNet v2 per lever setting.

Trains one classifier on the offline CIFAR-10 copy with the quick flagfile's settings changed
by ``--set field=value,...`` (any ``TrainConfig`` field), then reports its clean accuracy on
``--test_images`` test images, its PGD accuracy (10 steps of 2.5 eps / 10) at each
``--pgd_eps`` on 500 of them, and the training time. Each run writes one JSON line to
``--out``, so a sweep is a shell loop and its table is ``--summary``.

    python benchmarks/quick_levers.py --train_images=10000 --set=epochs=4,ema=0.99
    python benchmarks/quick_levers.py --summary --out=levers.jsonl
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (TensorFlow speed defaults, before it loads)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

DATA = common.CIFAR_COPY
# The quick flagfile's standard model (flags/cifar10_quick.cfg), the baseline of every lever.
QUICK = dict(arch="resnet11v2", width=16, batch_size=64, epochs=5, learning_rate=3e-3,
             lr_decay="cosine", augment=True, pooling="keras_example", bn_momentum=0.9,
             bn_statistics="recompute", attack_steps=1, attack_step_size=1.25,
             attack_step_relative=True, attack_random_start=True)


def parse_set(text: str) -> dict:
    from entangle.core import train

    fields = {f.name: f for f in dataclasses.fields(train.TrainConfig)}
    out = {}
    for item in filter(None, text.split(",")):
        name, value = item.split("=", 1)
        if name not in fields:
            raise SystemExit(f"--set: unknown TrainConfig field {name!r}")
        kind = type(QUICK.get(name, getattr(train.TrainConfig(), name)))
        out[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def run(args):
    from entangle.core import attacks, inference, train
    from entangle import data
    from entangle.store import Store
    from entangle.store import training

    cfg = train.TrainConfig(**{**QUICK, **parse_set(args.set)})
    tr = data.load_dataset(f"folder:{args.data}", "train", limit=args.train_images,
                           seed=args.data_seed, verbose=False)
    te = data.load_dataset(f"folder:{args.data}", "test", limit=args.test_images, seed=0,
                           verbose=False)
    runtime = train.RuntimeOptions(verbose=args.verbose)
    with tempfile.TemporaryDirectory() as work:
        start = time.time()
        trained = training.train_classifier(cfg, tr, None, Store(work), runtime=runtime)
        seconds = time.time() - start
    x, y = te.float_images(), te.y
    row = {"set": args.set, "train_images": len(tr), "cfg": dataclasses.asdict(cfg),
           "seconds": round(seconds, 1), "test_images": len(te),
           "test_accuracy": inference.accuracy(trained.model, x, y),
           "train_seconds": trained.manifest["metrics"]["train_seconds"],
           "cpu": platform.processor() or platform.machine(), "pgd": {}}
    xs, ys = x[:500], y[:500]
    for eps in args.pgd_eps:
        adv = attacks.pgd_l2(trained.model, xs, ys, eps=eps, steps=10, step_size=0.25 * eps,
                             verbose=False)
        row["pgd"][f"{eps:g}"] = inference.accuracy(trained.model, adv, ys)
        if args.strong:
            _, right = attacks.pgd_l2_restarts(trained.model, xs, ys, eps=eps, steps=50,
                                               step_size=0.05 * eps, restarts=5, verbose=False)
            row.setdefault("strong", {})[f"{eps:g}"] = float(right.mean())
    line = json.dumps(row)
    print(line, flush=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")


def summary(args):
    rows = [json.loads(line) for line in open(args.out)]
    eps = sorted({e for r in rows for e in r["pgd"]}, key=float)
    print("| levers | train images | test % | " + " | ".join(f"PGD {e} % (strong)" for e in eps)
          + " | seconds |")
    print("|---|---|---|" + "---|" * len(eps) + "---|")
    for r in rows:
        strong = r.get("strong", {})
        cells = " | ".join((f"{100 * r['pgd'][e]:.1f}" + (f" ({100 * strong[e]:.1f})"
                                                          if e in strong else ""))
                           if e in r["pgd"] else "" for e in eps)
        print(f"| {r['set'] or 'quick'} | {r['train_images']} | {100 * r['test_accuracy']:.1f} | "
              f"{cells} | {r['seconds']:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="", help="TrainConfig overrides: 'epochs=4,ema=0.99'")
    parser.add_argument("--train_images", type=int, default=5000)
    parser.add_argument("--test_images", type=int, default=2000)
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--pgd_eps", type=float, nargs="*", default=[0.0625, 0.25])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--out", default="quick_levers.jsonl")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--strong", action="store_true",
                        help="also PGD of 50 steps with 5 restarts at each --pgd_eps")
    parser.add_argument("--summary", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if args.summary:
        summary(args)
    else:
        run(args)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
