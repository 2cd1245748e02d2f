import importlib
import os
import time

import numpy as np
import pytest

from entangle import data
from entangle.data import batching, planted
from conftest import flip_byte

CIFAR_COPY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg")


def test_cifar10_through_tfds_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        ds = data.load_dataset("cifar10", "test")
    assert ds.x.shape == (24, 32, 32, 3) and ds.x.dtype == np.uint8
    assert ds.y.dtype == np.int64 and ds.y.min() >= 0 and ds.y.max() < 10
    assert ds.class_names == data.CIFAR10_CLASSES and ds.num_classes == 10


def test_imagenet9_through_tfds_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=600):
        ds = data.load_dataset("imagenet9", "train")
        builder = tfds.builder("imagenet_resized/64x64")
        wnids = builder.info.features["label"].names
        raw = list(tfds.as_numpy(tfds.load("imagenet_resized/64x64", split="train")))
    # the same mock examples, relabelled by hand through their WordNet ids
    spec = data.imagenet9_spec()
    by_hand = [(ex["image"], spec["classes"].index(c))
               for ex in raw for c in spec["classes"] if wnids[ex["label"]] in spec["wnids"][c]]
    assert [l for _, l in by_hand] == ds.y.tolist()
    np.testing.assert_array_equal(np.stack([im for im, _ in by_hand]), ds.x)
    assert ds.x.shape[1:] == (64, 64, 3) and ds.x.dtype == np.uint8
    assert ds.class_names == ("dog", "cat", "frog", "turtle", "bird", "primate", "fish", "crab",
                              "insect")
    # about 203 of the 1000 ImageNet classes belong to ImageNet-9; mock labels are uniform
    assert 0.1 * 600 < len(ds) < 0.35 * 600
    assert set(np.unique(ds.y)) <= set(range(9))
    assert wnids[0] == "n02119789"  # imagenet_resized's first label is kit fox, not tench


def test_imagenet9_mapping_goes_through_wordnet_ids():
    spec = data.imagenet9_spec()
    counts = {c: len(spec["wnids"][c]) for c in spec["classes"]}
    assert counts == {"dog": 118, "cat": 5, "frog": 3, "turtle": 5, "bird": 21, "primate": 18,
                      "fish": 9, "crab": 4, "insect": 20}
    known = {"n02123045": "cat",       # tabby cat, ImageNet index 281
             "n02085620": "dog",       # Chihuahua, 151
             "n01641577": "frog",      # bullfrog, 30
             "n01664065": "turtle",    # loggerhead, 33
             "n01530575": None,        # brambling, 10: a bird, but outside the range 80-100
             "n01795545": "bird",      # black grouse, 80
             "n02606052": "fish",      # rock beauty, 392
             "n01443537": None,        # goldfish, index 1: outside the fish range 389-397
             "n01978287": "crab",      # Dungeness crab, 118
             "n02177972": "insect",    # weevil, 307
             "n02484975": "primate",   # guenon, 370
             "n02119789": None}        # kit fox, 278
    mapping = data.imagenet9_label_map(list(known))
    for (wnid, cls), got in zip(known.items(), mapping):
        assert (spec["classes"][got] if got >= 0 else None) == cls, wnid


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet9"])
def test_offline_tfds_fails_fast_with_advice(tmp_path, dataset):
    """The README's promise: offline, an unprepared tfds dataset fails within about a second
    (TensorFlow and tfds imported: their import is start-up, 3-5 s here, paid by every
    binary before it reads data), naming --data_dir and the folder way."""
    importlib.import_module("tensorflow")
    importlib.import_module("tensorflow_datasets")

    start = time.time()
    with pytest.raises(data.DatasetUnavailableError) as e:
        data.load_dataset(dataset, "train", data_dir=str(tmp_path))
    assert time.time() - start < 2.0
    message = str(e.value)
    assert "--data_dir" in message and str(tmp_path) in message
    assert "--dataset=folder:PATH" in message and "--download=yes" in message


def test_download_auto_asks_tfds_only_when_the_network_answers(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    calls = []

    def fake_load(name, split, data_dir, download, as_supervised):
        calls.append(download)
        if not download:
            raise AssertionError(f"Dataset {name}: could not find data in {data_dir}")
        raise RuntimeError("stop here: the download was asked for")

    monkeypatch.setattr(tfds, "load", fake_load)
    monkeypatch.setattr(data, "network_reachable", lambda *a, **k: True)
    with pytest.raises(RuntimeError, match="download was asked"):
        data.load_dataset("cifar10", "train", data_dir=str(tmp_path))        # auto
    assert calls == [False, True]
    calls.clear()
    monkeypatch.setattr(data, "network_reachable", lambda *a, **k: False)
    with pytest.raises(data.DatasetUnavailableError, match="found no network"):
        data.load_dataset("cifar10", "train", data_dir=str(tmp_path))
    assert calls == [False]
    calls.clear()
    with pytest.raises(RuntimeError, match="download was asked"):
        data.load_dataset("cifar10", "train", data_dir=str(tmp_path), download="yes")
    assert calls == [True]
    calls.clear()
    monkeypatch.setattr(data, "network_reachable", lambda *a, **k: True)
    with pytest.raises(data.DatasetUnavailableError, match="--download=no"):
        data.load_dataset("cifar10", "train", data_dir=str(tmp_path), download="no")
    assert calls == [False]
    with pytest.raises(ValueError, match="download must be one of"):
        data.load_dataset("cifar10", "train", download="maybe")


def test_network_check_is_bounded_and_honours_the_proxy(monkeypatch):
    import socket

    seen = []

    def refuse(address, timeout):
        seen.append((address, timeout))
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert data.network_reachable(timeout=0.5) is False
    assert seen == [(("proxy.example", 3128), 0.5)]
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("https_proxy", raising=False)
    seen.clear()
    assert data.network_reachable(timeout=0.5) is False
    assert seen[0][0] == data.DOWNLOAD_HOST


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="cifar10, imagenet9, planted, folder:PATH"):
        data.load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="split"):
        data.load_dataset("planted", "val")


def _write_folder(root, size=12, per_class=6, classes=("b_cat", "a_dog", "c_eel")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            os.makedirs(root / split / c)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                fmt = "png" if i % 2 else "bmp"
                Image.fromarray(arr).save(root / split / c / f"{i}.{fmt}")


def test_folder_loader_and_cache(tmp_path, capsys):
    _write_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    ds = data.load_dataset(f"folder:{tmp_path / 'imgs'}", "train", cache_dir=str(cache))
    assert ds.class_names == ("a_dog", "b_cat", "c_eel")  # sorted names are the labels
    assert ds.x.shape == (18, 12, 12, 3) and np.bincount(ds.y).tolist() == [6, 6, 6]
    from PIL import Image
    first = np.asarray(Image.open(tmp_path / "imgs" / "train" / "a_dog" / "0.bmp"))
    np.testing.assert_array_equal(ds.x[0], first)  # lossless formats round-trip exactly
    cached = list((cache / "folders").glob("*.npz"))
    assert len(cached) == 1
    again = data.load_dataset(f"folder:{tmp_path / 'imgs'}", "train", cache_dir=str(cache))
    np.testing.assert_array_equal(again.x, ds.x)
    flip_byte(cached[0])                        # a damaged cache is decoded again
    redone = data.load_dataset(f"folder:{tmp_path / 'imgs'}", "train", cache_dir=str(cache))
    np.testing.assert_array_equal(redone.x, ds.x)
    assert "damaged decoded-folder cache" in capsys.readouterr().err
    # a changed folder is a different cache key
    os.remove(tmp_path / "imgs" / "train" / "a_dog" / "0.bmp")
    changed = data.load_dataset(f"folder:{tmp_path / 'imgs'}", "train", cache_dir=str(cache))
    assert len(changed) == 17 and len(list((cache / "folders").glob("*.npz"))) == 2


def test_folder_cache_is_used(tmp_path, monkeypatch):
    _write_folder(tmp_path / "imgs")
    data.load_dataset(f"folder:{tmp_path / 'imgs'}", "test", cache_dir=str(tmp_path / "c"))
    monkeypatch.setattr(data, "_decode", lambda p: pytest.fail("decoded again on a cache hit"))
    assert len(data.load_dataset(f"folder:{tmp_path / 'imgs'}", "test",
                                 cache_dir=str(tmp_path / "c"))) == 18


def test_folder_corrupt_and_wrong_size(tmp_path):
    _write_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "train" / "b_cat" / "3.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="3.png"):
        data.load_dataset(f"folder:{tmp_path / 'imgs'}", "train", cache_dir=str(tmp_path / "c"))
    from PIL import Image
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(bad, format="png")
    with pytest.raises(ValueError, match="3.png.*20x20"):
        data.load_dataset(f"folder:{tmp_path / 'imgs'}", "train", cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="PATH/train"):
        data.load_dataset(f"folder:{tmp_path / 'nowhere'}", "train")


def test_folder_train_and_test_classes_must_match(tmp_path):
    _write_folder(tmp_path / "imgs")
    os.rename(tmp_path / "imgs" / "test" / "c_eel", tmp_path / "imgs" / "test" / "d_fox")
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"only in train: \['c_eel'\], only in test: "
                                             r"\['d_fox'\]|only in test: \['d_fox'\], only "
                                             r"in train: \['c_eel'\]"):
            data.load_dataset(f"folder:{tmp_path / 'imgs'}", split,
                              cache_dir=str(tmp_path / "c"))


def test_folder_empty_class_is_an_error_unless_allowed(tmp_path):
    _write_folder(tmp_path / "imgs")
    for split in ("train", "test"):
        os.makedirs(tmp_path / "imgs" / split / "z_empty")
    with pytest.raises(ValueError, match=r"without images: \['z_empty'\].*chance 1/4 instead "
                                         r"of 1/3.*--allow_empty_classes"):
        data.load_dataset(f"folder:{tmp_path / 'imgs'}", "train", cache_dir=str(tmp_path / "c"))
    ds = data.load_dataset(f"folder:{tmp_path / 'imgs'}", "train", allow_empty_classes=True,
                           cache_dir=str(tmp_path / "c"))
    assert ds.num_classes == 4 and len(ds) == 18


@pytest.mark.skipif(not os.path.isdir(CIFAR_COPY),
                    reason="the offline CIFAR-10 copy ../shared/data/cifar10-jpeg is absent")
def test_real_cifar10_copy(tmp_path, monkeypatch):
    """The test split decoded (the train split takes the same path: 15 s more of decoding),
    the train split's files counted per class."""
    monkeypatch.setenv("ENTANGLE_CACHE", str(tmp_path))     # the decoded cache goes here
    ds = data.load_dataset(f"folder:{CIFAR_COPY}", "test")
    assert ds.x.shape == (10_000, 32, 32, 3)
    assert ds.class_names == data.CIFAR10_CLASSES
    assert np.bincount(ds.y).tolist() == [1000] * 10
    assert 110 < ds.x.mean() < 130  # the documented decoded mean is 120.7 on train
    assert os.listdir(tmp_path)
    train_dir = os.path.join(CIFAR_COPY, "train")
    assert sorted(os.listdir(train_dir)) == sorted(data.CIFAR10_CLASSES)
    assert [len(os.listdir(os.path.join(train_dir, c))) for c in data.CIFAR10_CLASSES] == \
        [5000] * 10


def test_limit_is_stratified_and_seeded():
    ds = data.load_dataset("planted", "train", limit=200, seed=3,
                           planted=planted.PlantedConfig(train_size=1000, num_classes=10))
    assert len(ds) == 200 and np.bincount(ds.y).tolist() == [20] * 10
    again = data.load_dataset("planted", "train", limit=200, seed=3,
                              planted=planted.PlantedConfig(train_size=1000, num_classes=10))
    np.testing.assert_array_equal(ds.x, again.x)


def test_validation_split_is_stratified_and_disjoint():
    ds = data.make_planted("train", planted.PlantedConfig(train_size=500, num_classes=5))
    ds.x = np.arange(len(ds))[:, None, None, None] * np.ones((1, 2, 2, 1), np.int64)
    train, val = data.split_validation(ds, 0.2, seed=1)
    assert len(train) == 400 and len(val) == 100
    assert np.bincount(val.y).tolist() == [20] * 5
    assert not set(train.x[:, 0, 0, 0]) & set(val.x[:, 0, 0, 0])
    with pytest.raises(ValueError, match="fraction"):
        data.split_validation(ds, 1.5)


def test_planted_dataset_properties():
    cfg = planted.PlantedConfig(image_size=16, num_classes=4, train_size=400, test_size=200)
    pats = planted.patterns(cfg)
    for name, norm in (("A", 4.0), ("B", 1.0), ("C", 1.0), ("D", 1.0)):
        np.testing.assert_allclose(np.linalg.norm(pats[name].reshape(4, -1), axis=1), norm,
                                   rtol=1e-5)
    tr = data.make_planted("train", cfg)
    assert tr.x.dtype == np.uint8 and tr.x.shape == (400, 16, 16, 3)
    assert np.bincount(tr.y).tolist() == [100] * 4
    np.testing.assert_array_equal(tr.x, data.make_planted("train", cfg).x)
    assert not np.array_equal(tr.x, data.make_planted("train", planted.PlantedConfig(
        image_size=16, num_classes=4, train_size=400, seed=1)).x)
    for bad, match in (("AE", "letters of ABCD"), ("BC", "need A"), ("AA", "distinct")):
        with pytest.raises(ValueError, match=match):
            planted.PlantedConfig(features=bad)
    with pytest.raises(ValueError, match="multiple of 4"):
        planted.PlantedConfig(image_size=18)


def test_b_is_a_component_of_a():
    """B is A's own texture: on A's support only, orthogonal to every A, a fixed function of
    A's shape and colour, at its norm, and present in an image exactly when A of that class
    is (riding on A's amplitude)."""
    cfg = planted.PlantedConfig(num_classes=10, features="AB", test_size=400, seed=2)
    pats = planted.patterns(cfg)
    a, b = pats["A"], pats["B"]
    assert np.all((b != 0) == (a != 0))                      # exactly A's support
    np.testing.assert_allclose(np.linalg.norm(b.reshape(10, -1), axis=1), 1.0, rtol=1e-5)
    assert np.abs(b.reshape(10, -1) @ a.reshape(10, -1).T).max() < 1e-4
    # the texture is A's colour times a one-pixel checkerboard: a function of A alone
    checker = np.where(np.add.outer(np.arange(16), np.arange(16)) % 2 == 0, 1.0, -1.0)
    np.testing.assert_allclose(np.sign(b), np.sign(a) * checker[None, :, :, None])
    # D is co-located (A's support) but not a function of A
    assert np.all((pats["D"] != 0) <= (a != 0))
    assert not np.array_equal(np.sign(pats["D"]), np.sign(b))
    # in the images B rides on A's amplitude (unconfused images: the same projection ratio)
    x, y, confused = planted.images(cfg, "test")
    idx = np.arange(len(y))
    amp_a = planted.projections(x, cfg, "A")[idx, y]
    amp_b = planted.projections(x, cfg, "B")[idx, y]
    ratio = amp_b[~confused] / amp_a[~confused]
    assert ratio.std() < 0.05 * ratio.mean()
    # and is absent exactly where A is absent
    without_a, yc, _ = planted.images(planted.PlantedConfig(num_classes=10, features="C",
                                                            test_size=400, seed=2), "test")
    assert np.abs(planted.projections(without_a, cfg, "B")).max() < 0.1 < amp_b.min()


def test_planted_shapes_are_distinct(monkeypatch):
    for size, k in ((16, 10), (32, 10), (16, 4)):
        for seed in range(3):
            a = planted.patterns(planted.PlantedConfig(image_size=size, num_classes=k,
                                                       seed=seed))["A"].reshape(k, -1)
            a = a / np.linalg.norm(a, axis=1, keepdims=True)
            cos = a @ a.T
            assert cos[~np.eye(k, dtype=bool)].max() < 0.5
    monkeypatch.setattr(planted, "MAX_COSINE", -1.0)    # no two shapes can be that distinct
    with pytest.raises(ValueError, match="cannot draw 10 shapes"):
        planted.PlantedConfig(image_size=16, num_classes=10, seed=99)


def test_planted_patterns_never_saturate():
    """Every pixel stays inside [0, 1] before rounding, in every world, and settings that
    could clip are refused with the flags to change."""
    for features in ("ABC", "AD", "ACD", "A"):
        cfg = planted.PlantedConfig(num_classes=10, features=features, test_size=2000,
                                    robust_reliability=0.6, seed=1)
        x, _, _ = planted.images(cfg, "test")
        assert x.min() > 0.0 and x.max() < 1.0
        for t in "ABCD":
            for others in planted.PROBE_OTHERS:
                px, _ = planted.probe(cfg, t, others, 500)
                assert px.min() > 0.0 and px.max() < 1.0
    with pytest.raises(ValueError, match="--planted_robust_norm"):
        planted.PlantedConfig(robust_norm=6.0)


def test_confused_images_blend_the_labels_shape_with_another():
    cfg = planted.PlantedConfig(num_classes=10, features="ABC", test_size=2000,
                                robust_reliability=0.6)
    x, y, confused = planted.images(cfg, "test")
    assert abs(confused.mean() - 0.4) < 0.05
    own = planted.projections(x, cfg, "A")[np.arange(len(y)), y]
    assert own[~confused].min() > 1.3 * own[confused].max() > 0     # half the shape
    # the texture and the artifact stay the label's in every image
    for t in "BC":
        assert np.all(np.argmax(planted.projections(x, cfg, t), axis=1) == y)
    same = planted.images(planted.PlantedConfig(num_classes=10, features="ABC",
                                                test_size=2000), "test")
    np.testing.assert_array_equal(y, same[1])
    with pytest.raises(ValueError, match="robust_reliability"):
        planted.PlantedConfig(robust_reliability=0.0)


def test_augmentation_keeps_shape_and_range_and_is_seeded():
    import tensorflow as tf

    x = np.random.default_rng(0).integers(1, 256, (20, 16, 16, 3)).astype(np.uint8)
    y = np.arange(20) % 4
    batches = list(batching.make_pipeline(x, y, 8, shuffle=True, augment_images=True, seed=1))
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    imgs = np.concatenate([b[0].numpy() for b in batches])
    assert imgs.shape == (20, 16, 16, 3) and imgs.dtype == np.float32
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0
    assert (imgs == 0).any()  # zero padding shows up after random crops
    again = np.concatenate([b[0].numpy() for b in batching.make_pipeline(
        x, y, 8, shuffle=True, augment_images=True, seed=1)])
    np.testing.assert_array_equal(imgs, again)
    other_epoch = np.concatenate([b[0].numpy() for b in batching.make_pipeline(
        x, y, 8, shuffle=True, augment_images=True, seed=1, epoch=1)])
    assert not np.array_equal(imgs, other_epoch)
    plain = list(batching.make_pipeline(x, y, 8, drop_remainder=True))
    assert len(plain) == 2
    np.testing.assert_allclose(plain[0][0].numpy(), x[:8] / 255.0, atol=1e-6)
    single = batching.augment(tf.constant(x[0]), tf.constant([0, 0], tf.int64))
    assert single.shape == (16, 16, 3)


def test_accuracy_report_and_class_balancing():
    y = np.array([0] * 6 + [1] * 2 + [2] * 2)
    rep = data.accuracy_report(np.zeros(10, int), y, 3)  # always predicts the majority
    assert rep["accuracy"] == 0.6 and rep["majority_rate"] == 0.6
    assert rep["balanced_accuracy"] == pytest.approx(1 / 3)
    ds = data.Dataset(np.zeros((10, 8, 8, 3), np.uint8), y, ("a", "b", "c"))
    bal = data.balance_classes(ds, seed=0)
    assert np.bincount(bal.y).tolist() == [2, 2, 2]


def test_pipeline_reads_memmaps_without_copying_them(tmp_path):
    x = np.lib.format.open_memmap(str(tmp_path / "x.npy"), mode="w+", dtype=np.float16,
                                  shape=(40, 8, 8, 3))
    x[:] = np.random.default_rng(0).uniform(size=x.shape)
    y = np.arange(40) % 4
    pipe = batching.EpochPipeline(np.load(str(tmp_path / "x.npy"), mmap_mode="r"), y, 16,
                                  shuffle=True, seed=3, drop_remainder=True)
    got = list(pipe.epoch(0))
    assert [b[0].shape[0] for b in got] == [16, 16]
    seen = np.concatenate([b[1].numpy() for b in got])
    assert len(seen) == 32 and set(seen) <= set(y)
    again = list(pipe.epoch(0))
    np.testing.assert_array_equal(got[0][0].numpy(), again[0][0].numpy())
    assert np.shares_memory(pipe._x, np.load(str(tmp_path / "x.npy"), mmap_mode="r")) or \
        isinstance(pipe._x, np.memmap)     # the pipeline holds the map itself, not a copy


def _anon_rss() -> int:
    """Anonymous resident memory of this process in bytes (Linux): copies land here; pages
    of a memory-mapped file count as file-backed instead."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_an_epoch_over_a_memmap_adds_far_less_anonymous_memory_than_the_images(tmp_path):
    """tracemalloc cannot see TensorFlow's allocations; RssAnon can. A 147 MB float16 memmap
    read through a whole epoch must not be copied (a float32 copy would add 295 MB). Measured
    on the 2-core Xeon: about 40 MB of allocator and prefetch overhead, the same at 49 and
    147 MB of images."""
    n = 6000
    x = np.lib.format.open_memmap(str(tmp_path / "x.npy"), mode="w+", dtype=np.float16,
                                  shape=(n, 64, 64, 3))
    x[:] = 0.5
    x.flush()
    del x
    y = np.arange(n) % 4
    warm = batching.EpochPipeline(np.zeros((8, 64, 64, 3), np.float16), y[:8], 4)
    list(warm.epoch(0))
    mapped = np.load(str(tmp_path / "x.npy"), mmap_mode="r")
    size = mapped.nbytes
    pipe = batching.EpochPipeline(mapped, y, 100, shuffle=True, seed=0)
    before, peak, total = _anon_rss(), 0, 0.0
    for xb, _ in pipe.epoch(0):
        total += float(xb.numpy()[:, 0, 0, 0].sum())
        peak = max(peak, _anon_rss() - before)
    assert total == pytest.approx(0.5 * n)          # every image was read
    assert peak < 0.5 * size, (peak, size)
