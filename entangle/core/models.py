"""Model builders: the CIFAR ResNet v2 of He et al. (2016) and keras.applications victims.

Every model here takes images in [0, 1] at the dataset's size and returns logits, so that
attack budgets (L2 norms in the [0, 1] pixel scale) mean the same thing for every model.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import keras
import tensorflow as tf
from keras import layers

REPRESENTATION_LAYER = "representation"
LOGITS_LAYER = "logits"
# "keras_example": AveragePooling2D(8) + Flatten, as Keras' CIFAR ResNet v2 example (global
# pooling at 32 px; at 64 px a 2x2x(16*width) = 1,024-d representation). "global": global
# average pooling, a (16*width)-d representation at any size.
POOLINGS = ("keras_example", "global")
# The input, its preprocessing and the first convolution compute in float32 under any policy:
# in bfloat16, x + delta at L2 1/256 reaches the first layer's output with a cosine of 0.18 to
# float32's (docs/performance.md), so a mixed-precision model would be attacked and trained
# on rounding noise at the paper's small eps. One layer of 56: a small cost.
STEM_DTYPE = "float32"


@keras.saving.register_keras_serializable(package="entangle")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization, computed by TensorFlow's fused kernel on NHWC inputs.

    The same arithmetic (normalisation by the biased batch variance, moving averages of the
    batch mean and biased variance, float32 statistics under mixed precision) in one kernel
    per pass instead of Keras 3's separate moments, normalisation and their gradients: on
    the 2-core Xeon it made a ResNet11v2 training step 1.5x faster (docs/performance.md).
    Other inputs, masks and renormalisation take Keras' own path.
    """

    def call(self, inputs, training=None, mask=None):
        if (mask is not None or self.renorm or len(inputs.shape) != 4
                or self.axis not in (-1, 3) or not (self.scale and self.center)):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)
        gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True)
            # the kernel returns the Bessel-corrected variance; Keras averages the biased one
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            momentum = tf.cast(self.momentum, tf.float32)
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(self.moving_variance * momentum
                                        + variance * (1.0 - momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                is_training=False)
        return tf.cast(y, self.compute_dtype)


def _resnet_layer(x, filters, kernel_size=3, strides=1, activation=True, batch_norm=True,
                  conv_first=True, weight_decay=1e-4, bn_momentum=0.99, name=None,
                  initializer="he_normal", conv_dtype=None):
    """Conv-BN-ReLU (conv_first) or BN-ReLU-Conv (pre-activation), as in the Keras example;
    ``conv_dtype``: the convolution's own dtype policy (None: the global one)."""
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    conv = layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                         kernel_initializer=initializer, kernel_regularizer=reg,
                         name=f"{name}_conv" if name else None, dtype=conv_dtype)
    if conv_first:
        x = conv(x)
        if batch_norm:
            x = FusedBatchNormalization(momentum=bn_momentum,
                                        name=f"{name}_bn" if name else None)(x)
        if activation:
            x = layers.Activation("relu")(x)
        return x
    if batch_norm:
        x = FusedBatchNormalization(momentum=bn_momentum, name=f"{name}_bn" if name else None)(x)
    if activation:
        x = layers.Activation("relu")(x)
    return conv(x)


def is_resnet_v2_depth(depth) -> bool:
    """Whether resnet_v2 accepts ``depth``: an int 9n + 2 with n >= 1 (11, 20, 29, ..., 56)."""
    return isinstance(depth, int) and depth >= 11 and (depth - 2) % 9 == 0


def resnet_v2(depth: int, input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10,
              *, width: int = 16, weight_decay: float = 1e-4, pooling: str = "global",
              bn_momentum: float = 0.99, zero_init_residual: bool = False,
              name: str | None = None) -> keras.Model:
    """CIFAR ResNet v2 (pre-activation bottleneck blocks, depth 9n+2) returning logits.

    Follows Keras' classic CIFAR-10 example (ResNet20v2: depth 20, ResNet56v2: depth 56).
    ``pooling`` (``POOLINGS``): the example's AveragePooling2D(8) + Flatten (inputs >= 32 px),
    or global average pooling (any input from 8 px). The pooled features, rep(x) in the paper,
    come from the layer named ``representation``; ``width`` (16 in the paper) scales every
    stage, so tests can use a tiny variant (depth 11, width 4). ``bn_momentum`` is every batch
    norm's moving-average momentum (Keras' 0.99 by default). ``zero_init_residual`` starts the
    last convolution of every residual branch at zero (each block starts as the identity).
    The stem convolution (``STEM_DTYPE``) and the logits are float32 under any
    mixed-precision policy.
    """
    if not is_resnet_v2_depth(depth):
        raise ValueError(f"depth must be 9n+2 with n >= 1 (11, 20, 29, 38, 47, 56, ..., e.g. "
                         f"ResNet20v2 = 20, ResNet56v2 = 56); got {depth!r}")
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or min(input_shape[:2]) < 8:
        raise ValueError(f"input_shape must be (height, width, channels) with height, width >= 8; "
                         f"got {input_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    if width < 1:
        raise ValueError(f"width must be >= 1; got {width}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
    if not 0.0 <= bn_momentum < 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1); got {bn_momentum!r}")
    if pooling == "keras_example" and min(input_shape[:2]) < 32:
        raise ValueError(f"pooling='keras_example' (AveragePooling2D(8) on the 1/4-size final "
                         f"feature map) needs inputs of at least 32 px; got {input_shape[:2]}. "
                         f"Use pooling='global' (--pooling=global) for smaller images")
    n = (depth - 2) // 9
    kw = dict(weight_decay=weight_decay, bn_momentum=bn_momentum)
    inputs = keras.Input(shape=input_shape, name="image")
    x = _resnet_layer(inputs, width, conv_first=True, name="stem", conv_dtype=STEM_DTYPE,
                      **kw)
    filters_in = width
    for stage in range(3):
        for block in range(n):
            activation, batch_norm, strides = True, True, 1
            if stage == 0:
                filters_out = filters_in * 4
                if block == 0:
                    activation, batch_norm = False, False
            else:
                filters_out = filters_in * 2
                if block == 0:
                    strides = 2
            prefix = f"stage{stage + 1}_block{block + 1}"
            y = _resnet_layer(x, filters_in, kernel_size=1, strides=strides, activation=activation,
                              batch_norm=batch_norm, conv_first=False, name=f"{prefix}_a", **kw)
            y = _resnet_layer(y, filters_in, conv_first=False, name=f"{prefix}_b", **kw)
            y = _resnet_layer(y, filters_out, kernel_size=1, conv_first=False,
                              name=f"{prefix}_c", initializer="zeros" if zero_init_residual
                              else "he_normal", **kw)
            if block == 0:
                x = _resnet_layer(x, filters_out, kernel_size=1, strides=strides,
                                  activation=False, batch_norm=False, name=f"{prefix}_shortcut",
                                  **kw)
            x = layers.Add(name=f"{prefix}_add")([x, y])
        filters_in = filters_out
    x = FusedBatchNormalization(momentum=bn_momentum, name="final_bn")(x)
    x = layers.Activation("relu", name="final_relu")(x)
    if pooling == "global":
        rep = layers.GlobalAveragePooling2D(name=REPRESENTATION_LAYER)(x)
    else:
        rep = layers.Flatten(name=REPRESENTATION_LAYER)(layers.AveragePooling2D(pool_size=8)(x))
    logits = layers.Dense(num_classes, kernel_initializer="he_normal", name=LOGITS_LAYER,
                          dtype="float32")(rep)
    return keras.Model(inputs, logits, name=name or f"resnet{depth}v2")


def representation_model(model: keras.Model, layer: str | int = REPRESENTATION_LAYER
                         ) -> keras.Model:
    """The sub-model from ``model``'s input to a layer's output: rep(x) for robustification.

    ``layer`` is a layer name or an index into ``model.layers`` (e.g. -2 for the layer before
    the logits of a plain classifier); the default is entangle's ``representation`` layer, or,
    in a model without one, the input of its last Dense layer (what the logits read).
    """
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    if layer == REPRESENTATION_LAYER and layer not in {l.name for l in model.layers}:
        dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
        if dense:
            return keras.Model(inputs, dense[-1].input, name=f"{model.name}_before_logits")
    try:
        target = model.layers[layer] if isinstance(layer, int) else model.get_layer(layer)
    except (ValueError, IndexError) as e:
        names = ", ".join(l.name for l in model.layers[-5:])
        raise ValueError(f"model {model.name!r} has no layer {layer!r} (its last layers: "
                         f"{names}); pass representation_model(model, layer=name_or_index)"
                         ) from e
    return keras.Model(inputs, target.output, name=f"{model.name}_{target.name}")


# name -> (keras.applications constructor, preprocess mode, minimum input size, weights file)
_VICTIMS = {
    "densenet121": ("DenseNet121", "torch", 32,
                    "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "inception_v3": ("InceptionV3", "tf", 75,
                     "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenet_v2": ("MobileNetV2", "tf", 32,
                     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    "vgg16": ("VGG16", "caffe", 32, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet50_v2": ("ResNet50V2", "tf", 32,
                    "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception": ("Xception", "tf", 71, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}
VICTIMS = tuple(_VICTIMS)
# Batch-norm momentum of victims built without pretrained weights. keras.applications uses
# 0.99 (MobileNetV2: 0.999); from scratch, a few hundred steps leave those moving averages near
# their initial values (0.999^234 = 0.79), so inference-mode accuracy sits at chance.
SCRATCH_BN_MOMENTUM = 0.9
# Bump when a change here alters a victim built from the same arguments (part of its key).
VICTIM_VERSION = 2

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="entangle")
class ApplicationPreprocess(layers.Layer):
    """Maps [0, 1] RGB images to what a keras.applications backbone expects.

    Modes as in ``keras.applications.imagenet_utils.preprocess_input``: ``tf`` scales to
    [-1, 1]; ``torch`` standardises with ImageNet mean/std; ``caffe`` flips to BGR and
    subtracts the ImageNet mean on the 0-255 scale. Written as a layer so it is part of the
    model (and of its gradient), and saves/loads without a Lambda.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "torch", "caffe"):
            raise ValueError(f"mode must be 'tf', 'torch' or 'caffe'; got {mode!r}")
        self.mode = mode

    def call(self, x):
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_IMAGENET_MEAN, dtype=x.dtype)
            std = keras.ops.convert_to_tensor(_IMAGENET_STD, dtype=x.dtype)
            return (x - mean) / std
        x = keras.ops.flip(x, axis=-1) * 255.0
        return x - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (no network) and are not in the Keras cache."""


def _keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"),
                                                                  ".keras")), "models")


def require_imagenet_weights(name: str) -> None:
    """Fails fast (WeightsUnavailableError naming the file) unless a victim's ImageNet weights
    are in the Keras cache or can be downloaded now; called before any work is planned."""
    key = name.lower()
    if key not in _VICTIMS:
        raise ValueError(f"unknown victim {name!r}; choose one of {', '.join(VICTIMS)}")
    if os.path.exists(os.path.join(_keras_cache_dir(), _VICTIMS[key][3])):
        return
    victim(key, (max(32, _VICTIMS[key][2]),) * 2 + (3,), 2, weights="imagenet")


def victim(name: str, input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10,
           weights: str | None = "imagenet", *, resize_to: int | None = None) -> keras.Model:
    """A keras.applications backbone (include_top=False) + average pooling + Dense logits.

    The model takes [0, 1] images at ``input_shape``, resizes them inside the model to the
    architecture's minimum (InceptionV3 75 px, Xception 71 px) or to ``resize_to``, and applies
    that architecture's own preprocessing, so attacks live in the dataset's input space.
    Without pretrained weights, batch norm uses momentum ``SCRATCH_BN_MOMENTUM`` (a choice).
    """
    key = name.lower()
    if key not in _VICTIMS:
        raise ValueError(f"unknown victim {name!r}; choose one of {', '.join(VICTIMS)}")
    if weights not in (None, "imagenet") and not os.path.exists(str(weights)):
        raise ValueError(f"weights must be None, 'imagenet' or an existing file; got {weights!r}")
    ctor_name, mode, min_size, weights_file = _VICTIMS[key]
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3); got {input_shape}")
    size = max(min_size, resize_to or 0)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if min(input_shape[:2]) < size or resize_to:
        x = layers.Resizing(size, size, interpolation="bilinear", name="resize",
                            dtype=STEM_DTYPE)(x)
    x = ApplicationPreprocess(mode, name="preprocess", dtype=STEM_DTYPE)(x)
    ctor = getattr(keras.applications, ctor_name)
    try:
        backbone = ctor(include_top=False, weights=weights, input_shape=tuple(x.shape[1:]))
    except Exception as e:  # keras raises a bare Exception("URL fetch failure on ...")
        msg = str(e)
        if "URL fetch failure" not in msg and "URLError" not in repr(e.__cause__):
            raise
        url = re.search(r"https?://\S+", msg)
        fname = os.path.basename(url.group(0).rstrip(":;,")) if url else weights_file
        raise WeightsUnavailableError(
            f"could not download ImageNet weights for {name} (no network?). Place the file "
            f"{fname!r} in the Keras cache directory {_keras_cache_dir()!r} "
            f"($KERAS_HOME/models), or build the victim with weights=None, which works "
            f"offline. Original error: {msg}") from e
    # keras.applications builds under the global policy; its first convolution computes in
    # float32 as the ResNets' stem does (the policy is saved with the model)
    next(l for l in backbone.layers if hasattr(l, "kernel")).dtype_policy = \
        keras.DTypePolicy(STEM_DTYPE)
    if weights is None:
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    x = backbone(x)
    rep = layers.GlobalAveragePooling2D(name=REPRESENTATION_LAYER)(x)
    logits = layers.Dense(num_classes, name=LOGITS_LAYER, dtype="float32")(rep)
    return keras.Model(inputs, logits, name=key)


def architecture_signature(model: keras.Model) -> str:
    """The model's configuration as JSON with auto-generated names replaced by layer indices,
    so two builds of one architecture match ('dense_3' vs 'dense_7')."""
    index = {layer.name: f"#{i}" for i, layer in enumerate(model.layers)}

    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if k != "name"}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return index.get(obj, obj) if isinstance(obj, str) else obj

    return json.dumps(clean(model.get_config()), sort_keys=True, default=str)
