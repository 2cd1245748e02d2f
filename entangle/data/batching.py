"""Batches for training: seeded augmentation (pad-and-crop, flip) and the per-epoch
index-permutation pipeline that feeds a compiled step, resumable from any batch."""

from __future__ import annotations

import numpy as np


def augment_batch(images, seed, pad: int | None = None):
    """Zero-pad then random-crop back (4 px at 32 px, scaled), and random horizontal flip.

    ``images`` is a float NHWC batch and ``seed`` a stateless seed (shape [2]): an epoch's
    augmentation is a pure function of (run seed, epoch, batch), so resumed runs see the same
    data. Crops are gathers, not per-image ops, so a batch costs a few vectorised kernels.
    """
    import tensorflow as tf

    h, w = images.shape[1], images.shape[2]
    pad = max(1, round(4 * h / 32)) if pad is None else pad
    n = tf.shape(images)[0]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.stateless_uniform([n, 2], seed=seed, minval=0, maxval=2 * pad + 1,
                                          dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(h)[None]
    cols = offsets[:, 1:] + tf.range(w)[None]
    out = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    flip = tf.random.stateless_uniform([n], seed=seed + 1) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)


def augment(image, seed, pad: int | None = None):
    """``augment_batch`` on one HWC image."""
    import tensorflow as tf

    return augment_batch(tf.cast(image, tf.float32)[None], seed, pad)[0]


class EpochPipeline:
    """tf.data pipelines of (float32 [0, 1] images, int32 labels) batches, one per epoch.

    Batches are gathered from the arrays by a seeded permutation of indices, so the images
    are never copied into a TensorFlow constant (nor onto a GPU) and no shuffle buffer holds a
    second copy: a memory-mapped float16 array of 500,000 images trains in a few MB of host
    memory. Epoch e's order and augmentation depend only on (seed, e), so epoch e of a resumed
    run is identical to epoch e of an uninterrupted one.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
                 augment_images: bool = False, seed: int = 0, drop_remainder: bool = False):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self._x, self._y = x, np.asarray(y, np.int32)
        self._scale = 255.0 if np.asarray(x[:0]).dtype == np.uint8 else 1.0
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment_images
        self.seed, self.drop_remainder = seed, drop_remainder

    def num_batches(self) -> int:
        n, b = len(self._y), self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def epoch(self, epoch: int = 0, start_batch: int = 0):
        """Epoch ``epoch``'s batches from ``start_batch`` on (a run resumed mid-epoch)."""
        import tensorflow as tf

        n, bs = len(self._y), self.batch_size
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else np.arange(n))
        batches = self.num_batches()
        # float16 sets (constructed, robustified) become float32 on the host: a half tensor in
        # the graph makes oneDNN log an error on CPUs without AVX-512 FP16
        dtype = np.uint8 if self._x.dtype == np.uint8 else np.float32

        def gen():
            for b in range(start_batch, batches):
                idx = order[b * bs:(b + 1) * bs]
                if self.shuffle:
                    idx = np.sort(idx)  # a batch is a set; sorted reads are faster on memmaps
                yield self._x[idx].astype(dtype, copy=False), self._y[idx], b

        shape = (None,) + tuple(self._x.shape[1:])
        ds = tf.data.Dataset.from_generator(gen, output_signature=(
            tf.TensorSpec(shape, tf.as_dtype(dtype)), tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((), tf.int64)))
        scale, augment_on = self._scale, self.augment
        base = tf.constant([self.seed, epoch], tf.int64)

        def prepare(img, lab, b):
            img = tf.cast(img, tf.float32) / scale
            if augment_on:
                img = augment_batch(img, tf.stack([base[0] * 1_000_003 + b, base[1]]))
            return img, lab

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)


def make_pipeline(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False,
                  augment_images: bool = False, seed: int = 0, epoch: int = 0,
                  drop_remainder: bool = False):
    """One epoch's tf.data pipeline (see EpochPipeline)."""
    return EpochPipeline(x, y, batch_size, shuffle=shuffle, augment_images=augment_images,
                         seed=seed, drop_remainder=drop_remainder).epoch(epoch)
