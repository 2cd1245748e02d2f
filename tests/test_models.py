import keras
import numpy as np
import pytest

from entangle.core import models


def _convs(model):
    return sum(isinstance(l, keras.layers.Conv2D) for l in model.layers)


@pytest.mark.parametrize("depth,convs,params", [(20, 22, 574_090), (56, 58, 1_673_738)])
def test_resnet_v2_matches_keras_example(depth, convs, params):
    # 1 stem conv + 3 convs per bottleneck block (n = (depth-2)/9 per stage) + 3 projection shortcuts.
    model = models.resnet_v2(depth, (32, 32, 3), 10)
    assert _convs(model) == convs
    assert model.count_params() == params
    assert model.output_shape == (None, 10)
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits


@pytest.mark.parametrize("size", [8, 16, 24])
def test_resnet_v2_small_inputs_and_representation(size):
    model = models.resnet_v2(11, (size, size, 3), 4, width=4)
    rep = models.representation_model(model)
    x = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype("float32")
    assert model(x).shape == (2, 4)
    # width 4 -> stages of 16, 32, 64 output channels: the representation is 64-d.
    assert rep(x).shape == (2, 64)
    dense = model.get_layer(models.LOGITS_LAYER)
    np.testing.assert_allclose(dense(rep(x)), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [19, 10, 2, "20"])
def test_resnet_v2_invalid_depth(depth):
    with pytest.raises(ValueError, match="9n\\+2"):
        models.resnet_v2(depth)


def test_any_classifier_has_a_representation_before_its_logits():
    """Without entangle's ``representation`` layer, the default is what the last Dense layer
    reads (robustify_split works on any Keras classifier); a model without a Dense layer names
    the missing layer."""
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(name="pool"),
                              keras.layers.Dense(3), keras.layers.Softmax()])
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    rep = models.representation_model(plain)
    np.testing.assert_allclose(rep(x), models.representation_model(plain, "pool")(x))
    from entangle.core import robustify
    r = robustify.robustify_split(plain, x, robustify.RobustifyConfig(steps=2, step_size=0.1))
    assert r.x.shape == x.shape
    convs = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 8)])
    with pytest.raises(ValueError, match="representation"):
        models.representation_model(convs)


@pytest.mark.parametrize("name", models.VICTIMS)
def test_victims_build_offline_at_small_size(name):
    model = models.victim(name, (32, 32, 3), 5, weights=None)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    assert model(x).shape == (2, 5)
    assert model.input_shape == (None, 32, 32, 3)
    if name in ("inception_v3", "xception"):
        assert model.get_layer("resize").output.shape[1] >= 71
    assert models.representation_model(model)(x).shape[0] == 2


@pytest.mark.parametrize("mode,name", [("tf", "mobilenet_v2"), ("torch", "densenet121"),
                                       ("caffe", "vgg16")])
def test_preprocess_matches_keras(mode, name):
    import importlib
    module = {"mobilenet_v2": "mobilenet_v2", "densenet121": "densenet", "vgg16": "vgg16"}[name]
    ref = importlib.import_module(f"keras.applications.{module}").preprocess_input
    x = np.random.default_rng(1).uniform(size=(2, 8, 8, 3)).astype("float32")
    ours = models.ApplicationPreprocess(mode)(x)
    np.testing.assert_allclose(ours, ref(x * 255.0), rtol=1e-4, atol=1e-3)


def test_victim_offline_imagenet_weights_error(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    def offline(fname, origin=None, *args, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(models.WeightsUnavailableError) as info:
        models.victim("vgg16", (32, 32, 3), 10, weights="imagenet")
    msg = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert str(tmp_path) in msg and "weights=None" in msg


def test_victim_unknown_name():
    with pytest.raises(ValueError, match="densenet121"):
        models.victim("alexnet", (32, 32, 3), 10, weights=None)


def test_pooling_choices():
    ex = models.resnet_v2(11, (64, 64, 3), 9, width=4, pooling="keras_example")
    gl = models.resnet_v2(11, (64, 64, 3), 9, width=4, pooling="global")
    assert ex.get_layer("representation").output.shape[-1] == 4 * 16 * 4  # 2x2x(16*width)
    assert gl.get_layer("representation").output.shape[-1] == 16 * 4
    at32 = models.resnet_v2(11, (32, 32, 3), 10, width=4, pooling="keras_example")
    gl32 = models.resnet_v2(11, (32, 32, 3), 10, width=4, pooling="global")
    gl32.set_weights(at32.get_weights())
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(at32(x), gl32(x), atol=1e-5)  # same thing at 32 px
    with pytest.raises(ValueError, match="32 px"):
        models.resnet_v2(11, (16, 16, 3), 4, pooling="keras_example")


def test_representation_model_by_name_or_index():
    m = models.resnet_v2(11, (16, 16, 3), 4, width=4)
    by_default = models.representation_model(m)
    by_index = models.representation_model(m, layer=-2)
    by_name = models.representation_model(m, layer="final_relu")
    assert by_default.output.shape == by_index.output.shape == (None, 64)
    assert by_name.output.shape == (None, 4, 4, 64)
    with pytest.raises(ValueError, match="no layer"):
        models.representation_model(m, layer="nope")


def test_fused_batch_norm_computes_what_keras_batch_norm_computes():
    """Outputs, input gradients and moving statistics of the fused layer equal Keras' own
    BatchNormalization with the same weights, in training and in inference mode."""
    import numpy as np
    import tensorflow as tf
    from keras import layers

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 2.0, (8, 5, 5, 6)).astype(np.float32))
    fused, plain = models.FusedBatchNormalization(momentum=0.9), layers.BatchNormalization(
        momentum=0.9)
    fused.build(x.shape)
    plain.build(x.shape)
    weights = [rng.normal(1, 0.3, 6).astype(np.float32), rng.normal(0, 0.3, 6).astype(
        np.float32), rng.normal(0, 1, 6).astype(np.float32), rng.uniform(0.5, 2, 6).astype(
        np.float32)]
    fused.set_weights(weights)
    plain.set_weights(weights)
    for training in (True, False):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            a, b = fused(x, training=training), plain(x, training=training)
            la, lb = tf.reduce_sum(a * x), tf.reduce_sum(b * x)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tape.gradient(la, x).numpy(), tape.gradient(lb, x).numpy(),
                                   rtol=1e-4, atol=1e-4)
        for u, v in zip(fused.get_weights(), plain.get_weights()):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.get_weights()[2], weights[2])   # the moving mean moved


def test_resnets_use_the_fused_batch_norm_and_reload_with_it(tmp_path):
    import keras

    model = models.resnet_v2(11, (16, 16, 3), 3, width=4)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(isinstance(l, models.FusedBatchNormalization) for l in bns)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    assert any(isinstance(l, models.FusedBatchNormalization) for l in again.layers)


def test_zero_init_residual_starts_every_block_as_the_identity():
    import numpy as np

    model = models.resnet_v2(20, (16, 16, 3), 3, width=4, zero_init_residual=True)
    last = [l for l in model.layers if l.name.endswith("_c_conv")]
    assert len(last) == 6 and all(not np.any(l.kernel.numpy()) for l in last)
    other = models.resnet_v2(20, (16, 16, 3), 3, width=4)
    assert all(np.any(l.kernel.numpy()) for l in other.layers if l.name.endswith("_c_conv"))


def _first_layer_delta(build, first, policy, x, delta, weights=None):
    """first(model)'s output change from x to x + delta, the model built under ``policy``
    (with ``weights`` where given), in float32."""
    from entangle.core import train

    with train.dtype_policy(policy):
        model = build()
        if weights is not None:
            model.set_weights(weights)
        f = first(model)
        out = (keras.ops.convert_to_numpy(f(x + delta)).astype(np.float64)
               - keras.ops.convert_to_numpy(f(x)).astype(np.float64))
        logits_dtype = model(x[:1]).dtype
    return out.ravel(), model.get_weights(), logits_dtype


def _stem(model):
    return keras.Model(model.input, model.get_layer("stem_conv").output)


def _victim_stem(model):
    backbone = next(l for l in model.layers if isinstance(l, keras.Model))
    conv = next(l for l in backbone.layers if hasattr(l, "kernel"))
    resize = [model.get_layer("resize")] if any(l.name == "resize" for l in model.layers) else []
    layers_ = [*resize, model.get_layer("preprocess"), conv]

    def f(x):
        for layer in layers_:
            x = layer(x)
        return x
    return f


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("which", ["resnet", "victim"])
def test_a_tiny_perturbation_reaches_the_first_layer_as_in_float32(policy, which):
    """L2 1/256 on 32 px images: the first layer sees it as float32 does (cosine > 0.99);
    in a half-precision stem it is mostly rounding (cosine 0.18 in bfloat16)."""
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 3)).astype(np.float32)
    d = rng.standard_normal(x.shape)
    delta = (d / np.linalg.norm(d.reshape(4, -1), axis=1)[:, None, None, None] / 256
             ).astype(np.float32)
    if which == "resnet":
        build, first = (lambda: models.resnet_v2(11, (32, 32, 3), 10, width=4)), _stem
    else:
        build = lambda: models.victim("mobilenet_v2", (32, 32, 3), 10, weights=None)  # noqa
        first = _victim_stem
    ref, weights, _ = _first_layer_delta(build, first, "float32", x, delta)
    got, _, logits_dtype = _first_layer_delta(build, first, policy, x, delta, weights)
    cosine = ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got))
    assert cosine > 0.99, cosine
    assert logits_dtype == "float32"
