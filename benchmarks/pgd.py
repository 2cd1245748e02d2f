"""Side-by-side speed and strength of L2 and Linf PGD: the floor, entangle, ART and foolbox.

One process, one ResNet20v2 at 32x32, one batch of 128, the same eps and steps for all.
Run through ``benchmarks/run_pgd.sh``, which installs ART and foolbox into a benchmark-only
virtual environment; a peer that does not import is skipped with the reason.

    python benchmarks/pgd.py [--data=folder:../shared/data/cifar10-jpeg] [--train_steps=300]
"""

from __future__ import annotations

import os

from common import timed  # sets TensorFlow's environment first

import argparse  # noqa: E402

import keras
import numpy as np
import tensorflow as tf

from entangle import data
from entangle.core import attacks, models
from entangle.data import batching, planted


def train_briefly(model, ds, steps, batch):
    """A few hundred Adam steps so that accuracies (and attack strength) mean something."""
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    pipe = batching.make_pipeline(ds.x, ds.y, batch, shuffle=True, augment_images=True).repeat()
    model.fit(pipe, steps_per_epoch=steps, epochs=1, verbose=2)


def floor_fn(model, steps):
    """The floor: ``steps`` forward+backward passes in one compiled loop, each on the last
    step's output (x + 1e-6 * grad), as in any attack. With a loop-invariant input TF hoists
    work out of the loop and the "floor" runs 10-15 % faster than any real attack could."""
    @tf.function
    def grads(x, y):
        def body(i, x_cur):
            with tf.GradientTape() as tape:
                tape.watch(x_cur)
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=y, logits=model(x_cur, training=False)))
            return i + 1, x_cur + 1e-6 * tape.gradient(loss, x_cur)
        return tf.while_loop(lambda i, _: i < steps, body, (0, x))[1]
    return grads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="folder:" + os.path.join(
        os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg"))
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.5, help="the L2 budget")
    parser.add_argument("--eps_inf", type=float, default=8 / 255, help="the Linf budget")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    try:
        train = data.load_dataset(args.data, "train", limit=20_000)
        test = data.load_dataset(args.data, "test", limit=args.batch)
    except (FileNotFoundError, data.DatasetUnavailableError) as e:
        print(f"{args.data} unavailable ({e}); using the planted dataset")
        cfg = planted.PlantedConfig(train_size=20_000, test_size=args.batch)
        train, test = data.make_planted("train", cfg), data.make_planted("test", cfg)
    model = models.resnet_v2(20, (32, 32, 3), train.num_classes)
    if args.train_steps:
        train_briefly(model, train, args.train_steps, args.batch)
    x, y = test.float_images(), test.y.astype(np.int32)
    work = args.batch * args.steps

    def accuracy(adv):
        return float(np.mean(np.argmax(model.predict(adv, verbose=0), -1) == y))

    xt, yt = tf.constant(x), tf.constant(y)
    grads = floor_fn(model, args.steps)
    t, _ = timed(lambda: grads(xt, yt).numpy(), args.repeats)
    floor = work / t
    print(f"\nResNet20v2 32x32, batch {args.batch}, {args.steps} steps, no random start; "
          f"clean accuracy {accuracy(x):.3f}; TF {tf.__version__}, Keras {keras.__version__}, "
          f"oneDNN={os.environ['TF_ENABLE_ONEDNN_OPTS']}")
    for norm, eps in (("2", args.eps), ("inf", args.eps_inf)):
        step_size = 2.5 * eps / args.steps  # Madry et al.'s rule of thumb
        rows = compare(model, (x, y), (xt, yt), norm, eps, step_size, args, accuracy)
        print(f"\n**L{norm} PGD**, eps {eps:g}, step {step_size:g}\n")
        print("| method | images*steps/s | adversarial accuracy |\n|---|---|---|")
        print(f"| floor: compiled input-gradient loop | {floor:.0f} | |")
        for name, speed, acc in rows:
            print(f"| {name} | {'' if speed is None else f'{speed:.0f}'} | "
                  f"{'' if acc is None else f'{acc:.3f}'} |")
        speeds = {name: s for name, s, _ in rows if s}
        ours = speeds[f"entangle.core.attacks.pgd(norm={norm!r})"]
        peers = [s for name, s in speeds.items() if name.startswith(("ART", "foolbox"))]
        print(f"\nL{norm}: pgd / floor = {ours / floor:.2f}"
              + (f"; pgd / best peer = {ours / max(peers):.2f}" if peers else ""))


def compare(model, arrays, tensors, norm, eps, step_size, args, accuracy):
    """(name, images*steps/s, adversarial accuracy) for entangle and each peer at one norm, on
    one batch given as arrays and as the same tensors."""
    (x, y), (xt, yt) = arrays, tensors
    work = args.batch * args.steps
    num_classes = int(model.output_shape[-1])
    rows = []
    for jit in (False, True):
        t, adv = timed(lambda: attacks.pgd(model, x, y, norm=norm, eps=eps, steps=args.steps,
                                           step_size=step_size, batch_size=args.batch,
                                           jit_compile=jit), args.repeats)
        rows.append((f"entangle.core.attacks.pgd(norm={norm!r})" + (" (jit_compile)" if jit else ""),
                     work / t, accuracy(adv)))
    try:
        from art.attacks.evasion import ProjectedGradientDescentTensorFlowV2
        from art.estimators.classification import TensorFlowV2Classifier

        clf = TensorFlowV2Classifier(
            model, nb_classes=num_classes, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
            loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        art_attack = ProjectedGradientDescentTensorFlowV2(
            clf, norm=2 if norm == "2" else np.inf, eps=eps, eps_step=step_size,
            max_iter=args.steps, batch_size=args.batch, num_random_init=0, verbose=False)
        t, adv = timed(lambda: art_attack.generate(x, np.eye(num_classes)[y]), args.repeats)
        rows.append(("ART ProjectedGradientDescentTensorFlowV2", work / t, accuracy(adv)))
    except Exception as e:  # not installed, or incompatible with this Keras
        rows.append((f"ART skipped: {type(e).__name__}: {str(e)[:80]}", None, None))

    try:
        if not hasattr(np, "find_common_type"):  # eagerpy (foolbox 3.3.4) predates NumPy 2
            np.find_common_type = lambda arrays, scalars: np.result_type(*arrays, *scalars)
        import foolbox as fb

        fmodel = fb.TensorFlowModel(model, bounds=(0.0, 1.0))
        peer = fb.attacks.L2PGD if norm == "2" else fb.attacks.LinfPGD
        fb_attack = peer(abs_stepsize=step_size, steps=args.steps, random_start=False)
        t, adv = timed(lambda: fb_attack(fmodel, xt, yt, epsilons=eps)[1].numpy(), args.repeats)
        rows.append((f"foolbox {peer.__name__}", work / t, accuracy(adv)))
    except Exception as e:
        rows.append((f"foolbox skipped: {type(e).__name__}: {str(e)[:80]}", None, None))
    return rows


if __name__ == "__main__":
    main()
