"""Do the two tracing changes of docs/performance.md ("Tracing") move bits at quick scale?

Trains the quick flagfile's standard ResNet11v2 for one epoch on the CIFAR copy (10,000
images), then predicts 500 test images and attacks 200 of them (L2 PGD, 5 steps), three
ways, each in its own process with the threads TensorFlow picks: as the code runs today;
with Keras' own Adam instead of ``entangle.core.optimizers.Adam``; and with every forward
pass, batch-norm pass and attack traced once with its batch axis unknown (the change that
was measured and not kept) instead of on its full batches' exact shape. Prints which
weights, logits and adversarial images differ from today's.

    python benchmarks/tracing_bits.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (TensorFlow speed defaults, before it loads)
import quick_levers  # noqa: E402

import numpy as np  # noqa: E402

MODES = ("today", "keras_adam", "unknown_batch")


def _unknown_batch(self, *args, owner=None):
    """``tracing.Traced.__call__`` as the withdrawn change had it: one trace with axis 0 of
    every non-scalar argument unknown, whatever the shapes."""
    import tensorflow as tf

    args = [tf.convert_to_tensor(a) for a in args]
    return self.relaxed.get_concrete_function(*[
        tf.TensorSpec([None, *a.shape[1:]] if a.shape.rank else a.shape, a.dtype)
        for a in args])(*args)


def run(mode: str, out: str, data: str):
    import keras

    from entangle import data as data_lib
    from entangle.core import attacks, inference, tracing, train

    if mode == "keras_adam":
        train.optimizers.Adam = keras.optimizers.Adam
    elif mode == "unknown_batch":   # the forward, batch-norm and attack passes
        tracing.Traced.__call__ = _unknown_batch
    tr = data_lib.load_dataset(f"folder:{data}", "train", limit=10000, seed=0, verbose=False)
    te = data_lib.load_dataset(f"folder:{data}", "test", limit=500, seed=0, verbose=False)
    cfg = train.TrainConfig(**{**quick_levers.QUICK, "epochs": 1})
    fitted = train.fit(cfg, tr, runtime=train.RuntimeOptions(verbose=False))
    x = te.float_images()
    adv = attacks.pgd_l2(fitted.model, x[:200], te.y[:200], eps=0.25, steps=5, step_size=0.1,
                         verbose=False)
    names = [w.path for w in fitted.model.weights]
    np.savez(out, names=np.array(names), logits=inference.predict_logits(fitted.model, x),
             adv=adv, **{f"w{i}": w for i, w in enumerate(fitted.model.get_weights())})


def _differs(a, b) -> str:
    return "equal" if np.array_equal(a, b) else f"differ by up to {np.abs(a - b).max():.2g}"


def compare(files: dict):
    base = np.load(files["today"])
    names = list(base["names"])
    for mode in MODES[1:]:
        other = np.load(files[mode])
        moved = [i for i in range(len(names))
                 if not np.array_equal(base[f"w{i}"], other[f"w{i}"])]
        detail = ""
        if moved:
            largest = max(np.abs(base[f"w{i}"] - other[f"w{i}"]).max() for i in moved)
            detail = f" ({', '.join(names[i] for i in moved[:4])}, ...; largest {largest:.2g})"
        print(f"{mode}: {len(moved)} of {len(names)} weight arrays differ{detail}; logits "
              f"{_differs(base['logits'], other['logits'])}; adversarial images "
              f"{_differs(base['adv'], other['adv'])}")


def main():
    if len(sys.argv) == 4:
        run(*sys.argv[1:])
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = {m: os.path.join(tmp, f"{m}.npz") for m in MODES}
        for mode in MODES:
            subprocess.run([sys.executable, __file__, mode, files[mode], common.CIFAR_COPY],
                           check=True)
        compare(files)


if __name__ == "__main__":
    main()
