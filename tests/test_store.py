import json
import os

import numpy as np
import pytest

from entangle import store as store_lib


def test_keys_follow_configuration(tmp_path):
    s = store_lib.Store(str(tmp_path))
    a = s.key("model", {"eps": 0.5, "lr": 1e-3})
    assert a == s.key("model", {"lr": 1e-3, "eps": 0.5})  # order does not matter
    assert a != s.key("model", {"eps": 1.0, "lr": 1e-3})
    assert a.startswith("model-")
    assert s.key("m", {"eps": float("inf")}) != s.key("m", {"eps": 0.0})


def test_arrays_roundtrip_and_manifest(tmp_path):
    s = store_lib.Store(str(tmp_path))
    key = s.key("ds", {"n": 3})
    assert not s.has("datasets", key)
    s.save_arrays("datasets", key, {"n": 3}, {"x": np.arange(3)}, metrics={"acc": 0.5})
    assert s.has("datasets", key) and s.list("datasets") == [key]
    np.testing.assert_array_equal(s.load_arrays("datasets", key)["x"], np.arange(3))
    m = s.manifest("datasets", key)
    assert m["config"] == {"n": 3} and m["metrics"] == {"acc": 0.5}
    assert {"tensorflow", "keras", "numpy"} <= set(m["versions"])


def test_failed_write_leaves_nothing(tmp_path):
    s = store_lib.Store(str(tmp_path))
    key = s.key("ds", {"n": 1})
    with pytest.raises(RuntimeError):
        with s.writing("datasets", key, {"n": 1}) as d:
            np.save(os.path.join(d, "half.npy"), np.zeros(3))
            raise RuntimeError("killed mid-write")
    assert not s.has("datasets", key)
    assert os.listdir(os.path.join(str(tmp_path), "datasets")) == []
    with pytest.raises(KeyError):
        s.load_arrays("datasets", key)


def test_directory_without_manifest_is_not_trusted(tmp_path):
    s = store_lib.Store(str(tmp_path))
    key = s.key("ds", {"n": 2})
    os.makedirs(s.path("datasets", key))
    assert not s.has("datasets", key)
    s.save_arrays("datasets", key, {"n": 2}, {"x": np.ones(2)})
    assert s.has("datasets", key)
    with open(os.path.join(s.path("datasets", key), "manifest.json")) as f:
        assert json.load(f)["key"] == key


def test_fingerprint_changes_with_content():
    a = np.zeros((4, 2), np.uint8)
    b = a.copy()
    b[0, 0] = 1
    assert store_lib.fingerprint_arrays(a) == store_lib.fingerprint_arrays(a.copy())
    assert store_lib.fingerprint_arrays(a) != store_lib.fingerprint_arrays(b)
    assert store_lib.fingerprint_arrays(a) != store_lib.fingerprint_arrays(a.astype(np.int64))


def test_atomic_file_keeps_the_old_content_when_a_write_fails(tmp_path):
    target = tmp_path / "f.npz"
    store_lib.atomic_save_npz(str(target), x=np.arange(2))
    with pytest.raises(RuntimeError):
        with store_lib.atomic_file(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    with np.load(target) as z:
        np.testing.assert_array_equal(z["x"], np.arange(2))
    assert os.listdir(tmp_path) == ["f.npz"]
