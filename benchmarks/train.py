"""Side-by-side cost of training steps: adversarial step vs its floor, and an epoch vs fit.

One process, one ResNet20v2 at 32x32, one batch size:
  (1) one adversarial training step with k PGD steps (entangle.core.train's compiled step) against
      its floor: k forward+backward input-gradient passes plus one standard training step,
      each timed separately on the same model and batch;
  (2) one standard epoch of entangle.core.train's epoch loop (run_epoch: the loop train_classifier
      runs, progress bookkeeping included) against keras.Model.fit, on the same architecture,
      pipeline epochs and optimizer; epochs alternate, the first of each (tracing) is dropped.

    python benchmarks/train.py [--k=7] [--batch=128] [--images=2560]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import dataclasses
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from entangle import data
from entangle.core import steps, train
from entangle.data import batching, planted

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgd import floor_fn, timed  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=7, help="PGD steps per adversarial step")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=2560, help="images per epoch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cfg = train.TrainConfig(arch="resnet20v2", batch_size=args.batch, epochs=4, eps=0.5,
                            attack_steps=args.k, attack_step_size=0.125, lr_decay="none",
                            augment=True)
    ds = data.make_planted("train", planted.PlantedConfig(train_size=args.images))
    x = tf.constant(ds.float_images()[:args.batch])
    y = tf.constant(ds.y[:args.batch].astype(np.int32))
    seed = tf.constant([0, 0], tf.int32)
    strategy = tf.distribute.get_strategy()

    model, optimizer = train.build_for_training(cfg, strategy, ds.image_shape, ds.num_classes)
    adv_step = steps.make_train_step(model, optimizer, cfg, strategy)
    std_cfg = dataclasses.replace(cfg, eps=0.0)
    std_step = steps.make_train_step(model, optimizer, std_cfg, strategy)
    grads = floor_fn(model, args.k)

    rows = {}
    for name, fn in (("adversarial step (k PGD + train)", lambda: adv_step(x, y, seed)[0].numpy()),
                     ("k input-gradient passes", lambda: grads(x, y).numpy()),
                     ("standard train step", lambda: std_step(x, y, seed)[0].numpy())):
        rows[name] = timed(fn, args.repeats)[0]
    floor = rows["k input-gradient passes"] + rows["standard train step"]

    # Standard epochs, interleaved: entangle's epoch loop vs keras fit, same pipeline epochs.
    fit_model, _ = train.build_for_training(std_cfg, strategy, ds.image_shape, ds.num_classes)
    fit_model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    epochs = batching.EpochPipeline(ds.x, ds.y, args.batch, shuffle=True, augment_images=True,
                                    drop_remainder=True)
    batches = args.images // args.batch
    ours_t, fit_t = [], []
    for e in range(args.repeats + 1):
        start = time.perf_counter()
        steps.run_epoch(std_step, strategy, epochs.epoch(e), batches, seed=(0, e),
                        batch_size=args.batch)
        ours_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        fit_model.fit(epochs.epoch(e), epochs=1, verbose=0)
        fit_t.append(time.perf_counter() - start)
    ours_epoch, fit_epoch = statistics.median(ours_t[1:]), statistics.median(fit_t[1:])

    print(f"\nResNet20v2 32x32, batch {args.batch}, k={args.k} PGD steps, {args.images} "
          f"images/epoch; TF {tf.__version__}, Keras {keras.__version__}, "
          f"oneDNN={os.environ['TF_ENABLE_ONEDNN_OPTS']}\n")
    print("| measurement | seconds |\n|---|---|")
    for name, t in rows.items():
        print(f"| {name} | {t:.3f} |")
    print(f"| floor = k passes + train step | {floor:.3f} |")
    print(f"| standard epoch, entangle.core.train | {ours_epoch:.2f} |")
    print(f"| standard epoch, keras fit | {fit_epoch:.2f} |")
    print(f"\nadversarial step / floor = {rows['adversarial step (k PGD + train)'] / floor:.2f}"
          f" (target <= 1.1)")
    print(f"entangle epoch / fit epoch = {ours_epoch / fit_epoch:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
