"""Figure 3's shape against the robustification budget: R_eps rebuilt from stored generators
under several robustification settings, scored by stored row classifiers.

Models are ``.keras`` files (a store's ``models/<key>/model.keras``): ``--generators`` maps
each column's eps to its generator, ``--rows`` names the classifiers to score. Each setting of
``--settings`` (steps:step_size:schedule:keep_best) robustifies the quick test images (the
CIFAR copy's 500, seeds x0 from ``--pairing_seed``) w.r.t. every generator, and prints one
JSON line per setting: per row and column the accuracy, and per column the median relative
representation distance.

    python benchmarks/shape.py --generators=0:STORE/models/standard-.../model.keras,... \\
        --rows=twin:STORE/models/.../model.keras --settings=40:0.5:constant:0,40:1:linear:1
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (TensorFlow speed defaults, before it loads)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

DATA = common.CIFAR_COPY


def pairs(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        name, path = item.split(":", 1)
        out[name] = path
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generators", required=True, help="eps:path,...")
    parser.add_argument("--rows", required=True, help="name:path,...")
    parser.add_argument("--settings", default="40:0.5:constant:0")
    parser.add_argument("--test_images", type=int, default=500)
    parser.add_argument("--pairing_seed", type=int, default=0)
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--out", default="shape.jsonl")
    args = parser.parse_args()

    import keras

    from entangle import data
    from entangle.core import inference, robustify

    test = data.load_dataset(f"folder:{args.data}", "test", limit=args.test_images, seed=0,
                             verbose=False)
    x, y = test.float_images(), test.y
    seeds = robustify.seed_indices(len(x), args.pairing_seed)
    gens = {float(e): keras.models.load_model(p) for e, p in pairs(args.generators).items()}
    rows = {n: keras.models.load_model(p) for n, p in pairs(args.rows).items()}
    base = {n: inference.predict(m, x) for n, m in rows.items()}
    for setting in args.settings.split(","):
        steps, step, schedule, best = setting.split(":")
        cfg = robustify.RobustifyConfig(steps=int(steps), step_size=float(step),
                                        schedule=schedule, keep_best=bool(int(best)))
        row = {"setting": setting, "pairing_seed": args.pairing_seed, "acc": {}, "rel": {},
               "seed_control": {n: float(np.mean(p[seeds] == y)) for n, p in base.items()},
               "test": {n: float(np.mean(p == y)) for n, p in base.items()}}
        start = time.time()
        for eps, gen in sorted(gens.items()):
            r = robustify.robustify(gen, x, x[seeds], cfg, batch_size=500, verbose=False)
            row["rel"][f"{eps:g}"] = float(np.median(r.relative_distance))
            row["acc"][f"{eps:g}"] = {n: inference.accuracy(m, r.x, y) for n, m in rows.items()}
        row["seconds"] = round(time.time() - start, 1)
        line = json.dumps(row)
        print(line, flush=True)
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
