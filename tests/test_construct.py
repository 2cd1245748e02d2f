"""Constructed datasets stream to disk: bounded memory, resumable chunks."""

import os
import tracemalloc

import keras
import numpy as np

from entangle import data
from entangle.core import construct
from entangle.runtime import atomic
from conftest import flip_byte


def _linear(size, classes):
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Flatten()(inputs)))


def test_construction_memory_stays_below_the_artifact_size(tmp_path):
    n, size = 6000, 16
    rng = np.random.default_rng(0)
    ds = data.Dataset(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                      rng.integers(0, 4, n), tuple("abcd"))
    model = _linear(size, 4)
    cfg = construct.ConstructConfig(eps=0.5, steps=2, step_size=0.3, targets="random")
    artifact_bytes = n * size * size * 3 * 2  # float16
    construct.construct_dataset("zero_robust", model, ds.subset(np.arange(10)), cfg,
                                batch_size=100, workdir=str(tmp_path / "warm"), verbose=False)
    tracemalloc.start()  # after the warm-up: tracing the attack once is not per-image memory
    built = construct.construct_dataset("zero_robust", model, ds, cfg, batch_size=100,
                                        workdir=str(tmp_path), chunk_size=300, verbose=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # a whole float32 copy of the images (4x uint8) alone would be 2x the artifact
    assert peak < 0.5 * artifact_bytes, (peak, artifact_bytes)
    assert built.x.shape == (n, size, size, 3) and built.x.dtype == np.float16
    assert isinstance(built.x, np.memmap)
    delta = built.x.astype(np.float32) - ds.float_images()
    assert np.sqrt((delta.reshape(n, -1) ** 2).sum(1)).max() <= 0.5 + 1e-2


def test_construction_resumes_from_its_chunks(tmp_path, capsys):
    rng = np.random.default_rng(1)
    ds = data.Dataset(rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8),
                      rng.integers(0, 3, 50), tuple("abc"))
    model = _linear(8, 3)
    cfg = construct.ConstructConfig(eps=0.5, steps=2, step_size=0.3)
    done = []

    def stop_after_two(c):
        done.append(c)
        if len(done) == 2:
            raise KeyboardInterrupt("killed")

    work = str(tmp_path / "chunks")
    try:
        construct.build_chunks("neg_robust", model, ds, cfg, work, chunk_size=20, verbose=False,
                               on_chunk=stop_after_two)
    except KeyboardInterrupt:
        pass
    assert sorted(os.listdir(work)) == ["chunk-00000.npz", "chunk-00001.npz"]
    flip_byte(os.path.join(work, "chunk-00001.npz"))    # one bad byte in the kept state
    resumed = []
    construct.build_chunks("neg_robust", model, ds, cfg, work, chunk_size=20, verbose=False,
                           on_chunk=resumed.append)
    assert resumed == [1, 2]                            # the damaged chunk is built again
    assert "damaged chunk 1 of" in capsys.readouterr().err
    full = construct.construct_dataset("neg_robust", model, ds, cfg, workdir=str(tmp_path / "b"),
                                       chunk_size=20, verbose=False)
    again = atomic.assemble_chunks(work, "x", str(tmp_path / "x.npy"))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(full.x))
