import keras
import numpy as np
import pytest

from entangle import models


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


def test_representation_model_needs_layer():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="representation"):
        models.representation_model(plain)


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
