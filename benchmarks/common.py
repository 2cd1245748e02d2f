"""Shared by the benchmarks: TensorFlow speed defaults (set before it loads), the CIFAR
copy's path, timing, the machine's matmul rate and a model's forward FLOPs."""

import functools
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# the offline CIFAR-10 JPEG copy beside the project (../shared/data/README.md)
CIFAR_COPY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                          "data", "cifar10-jpeg")

import statistics  # noqa: E402
import time  # noqa: E402


def timed(fn, repeats):
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up call."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def matmul_gflops(dtype, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a chain of ``repeats`` n x n matmuls in ``dtype``, one traced function (the
    machine's practical peak)."""
    chain, a = _matmul_chain(dtype, n, repeats)
    chain(a).numpy()
    t0 = time.perf_counter()
    chain(a).numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


@functools.lru_cache(maxsize=None)
def _matmul_chain(dtype, n: int, repeats: int):
    """(the traced chain, its input), made once: a benchmark that measures its floor again
    between other work must not trace it again each time."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n), dtype=tf.float32), dtype)

    @tf.function
    def chain(x):
        for _ in range(repeats):
            x = tf.matmul(x, a) * tf.cast(1e-3, dtype)
        return x

    return chain, a


def forward_flops(model) -> float:
    """Forward FLOPs per image at the model's input size: 2 x the multiply-adds of every
    convolution and dense layer, nested models included (batch norm and element-wise ops
    are not counted)."""
    import keras

    total = 0.0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            out = layer.output.shape
            kh, kw, cin = layer.kernel.shape[:3]
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                macs = out[1] * out[2] * kh * kw * out[3]
            else:
                macs = out[1] * out[2] * kh * kw * cin * layer.filters / layer.groups
            total += 2.0 * macs
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total
