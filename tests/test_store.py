import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from entangle import store as store_lib
from entangle.runtime import atomic
from conftest import popen_python, run_binary



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
    atomic.atomic_save_npz(str(target), x=np.arange(2))
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    with np.load(target) as z:
        np.testing.assert_array_equal(z["x"], np.arange(2))
    assert os.listdir(tmp_path) == ["f.npz"]


# ---------------------------------------------------------------------------- concurrency



def test_finished_artifact_is_never_overwritten(tmp_path):
    s = store_lib.Store(str(tmp_path))
    key = s.key("ds", {"n": 1})
    s.save_arrays("datasets", key, {"n": 1}, {"x": np.zeros(2)})
    first = s.manifest("datasets", key)["created"]
    s.save_arrays("datasets", key, {"n": 1}, {"x": np.ones(2)})  # a second builder finishes
    np.testing.assert_array_equal(s.load_arrays("datasets", key)["x"], np.zeros(2))
    assert s.manifest("datasets", key)["created"] == first
    assert sorted(os.listdir(tmp_path / "datasets")) == [key]  # no temporary left


def test_lock_is_exclusive_and_a_dead_holders_lock_is_recovered(tmp_path):
    import subprocess
    import sys

    s = store_lib.Store(str(tmp_path))
    a, b = s.lock("models", "k"), s.lock("models", "k")
    assert a.try_acquire() and not b.try_acquire()
    a.release()
    assert b.try_acquire()
    b.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    with open(s.path("models", "k") + ".lock", "w") as f:  # left by a killed process
        json.dump({"host": __import__("socket").gethostname(), "pid": int(dead),
                   "token": "x"}, f)
    c = s.lock("models", "k")
    assert c.try_acquire() and c.owner()["pid"] == os.getpid()
    c.release()
    with open(s.path("models", "k") + ".lock", "w") as f:  # another host, heartbeat stopped
        json.dump({"host": "elsewhere", "pid": 1, "token": "y"}, f)
    old = time.time() - 3600
    os.utime(s.path("models", "k") + ".lock", (old, old))
    assert s.lock("models", "k").try_acquire()


def test_get_or_build_waits_for_the_holder_or_reports_busy(tmp_path):
    s = store_lib.Store(str(tmp_path))
    held = s.lock("evals", "e")
    assert held.try_acquire()
    with pytest.raises(atomic.ArtifactBusy):
        s.get_or_build("evals", "e", lambda: 1, lambda: 2, wait=False)
    import threading

    waiting = threading.Event()

    def finish():       # the holder finishes only once the other is seen waiting for it
        assert waiting.wait(60)
        s.record("evals", "e", {})
        held.release()
    threading.Thread(target=finish).start()
    built = []
    assert s.get_or_build("evals", "e", lambda: built.append(1), lambda: "loaded",
                          poll=0.1, log=lambda m: "waiting" in m and waiting.set()) == "loaded"
    assert waiting.is_set() and not built


def test_an_empty_or_unreadable_lock_is_broken_in_seconds(tmp_path):
    """A 0-byte lock (a full disk, a hand) has no owner to ask: after a short grace it is
    taken over, not waited on for the heartbeat's 10 minutes."""
    s = store_lib.Store(str(tmp_path))
    path = s.path("models", "k") + ".lock"
    os.makedirs(os.path.dirname(path))
    open(path, "w").close()
    fresh = s.lock("models", "k")
    assert not fresh.try_acquire()          # within the grace: maybe being written
    old = time.time() - atomic.UNREADABLE_GRACE - 1
    os.utime(path, (old, old))
    assert fresh.try_acquire() and fresh.owner()["pid"] == os.getpid()
    fresh.release()
    with open(path, "w") as f:
        f.write("[1, 2")                    # garbage, not an owner
    os.utime(path, (old, old))
    start = time.time()
    assert s.get_or_build("models", "k", lambda: "built", lambda: "loaded", poll=0.1) == "built"
    assert time.time() - start < 5


def test_a_full_disk_never_leaves_an_empty_lock_and_names_the_lock(tmp_path, monkeypatch):
    import builtins
    import errno

    class Full:
        def __init__(self, *a, **k):
            self.f = builtins.open(*a, **k)

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    s = store_lib.Store(str(tmp_path))
    lock = s.lock("models", "k")
    monkeypatch.setattr(atomic, "open", Full, raising=False)
    with pytest.raises(OSError) as caught:
        lock.try_acquire()
    assert store_lib.describe_os_error(caught.value) == \
        f"{lock.path}: no space left on device"
    assert os.listdir(tmp_path / "models") == []   # neither lock nor staged owner left
    monkeypatch.undo()
    assert s.lock("models", "k").try_acquire()     # the next run takes it at once


WAITER = """
import sys
from entangle.runtime import preempt
from entangle.store import Store
s = Store(sys.argv[1])
with preempt.handling():
    try:
        s.get_or_build("evals", "e", lambda: 1, lambda: 2, poll=30,
                       log=lambda m: print(m, flush=True))
    except preempt.Preempted as e:
        print("STOPPED:", e, flush=True)
        sys.exit(e.exit_code)
"""


def test_sigterm_while_waiting_on_a_lock_ends_the_process_promptly(tmp_path):
    import signal

    s = store_lib.Store(str(tmp_path))
    held = s.lock("evals", "e")
    assert held.try_acquire()
    proc = popen_python("-c", WAITER, str(tmp_path), stdout=subprocess.PIPE)
    try:
        assert "waiting for" in proc.stdout.readline()
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        took = time.time() - sent
    finally:
        proc.kill()
        held.release()
    assert proc.returncode == 128 + signal.SIGTERM and "STOPPED: stopped by SIGTERM while " \
        "waiting for evals/e" in out
    assert took < 3, took


TWO_PROCESSES = """
import sys, json
from entangle import data
from entangle.core import train
from entangle.data import planted
from entangle.store import Store, training
cfg = planted.PlantedConfig(image_size=16, num_classes=4, train_size=512, test_size=64)
tc = train.TrainConfig(arch="resnet11v2", width=4, batch_size=32, epochs=2,
                       learning_rate=3e-3, lr_decay="none", augment=False)
t = training.train_classifier(tc, data.make_planted("train", cfg), None, Store(sys.argv[1]),
                           runtime=train.RuntimeOptions(verbose=False, lock_poll=0.2))
w = t.model.get_weights()
print("RESULT" + json.dumps({"cached": t.cached, "key": t.key,
                             "w": float(sum(abs(x).sum() for x in w)),
                             "built_by": t.manifest["built_by"]["pid"]}))
"""


def test_two_processes_asking_for_one_model_train_it_once(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [popen_python("-c", TWO_PROCESSES, str(tmp_path), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    results = []
    for (out, err), p in zip(outs, procs):
        line = [l for l in out.splitlines() if l.startswith("RESULT")]
        assert p.returncode == 0 and line, err[-3000:]
        results.append(json.loads(line[0][len("RESULT"):]))
    assert sorted(r["cached"] for r in results) == [False, True]  # trained once
    assert results[0]["key"] == results[1]["key"]
    assert results[0]["w"] == pytest.approx(results[1]["w"], rel=1e-6)  # same weights
    builder = [p.pid for p, r in zip(procs, results) if not r["cached"]][0]
    assert all(r["built_by"] == builder for r in results)
    assert not [f for f in os.listdir(tmp_path / "models") if f.endswith((".lock", ".partial"))]


def _build_counter(s, key, value):
    calls = []

    def build():
        calls.append(1)
        with s.writing("datasets", key, {"v": value}) as d:
            np.save(os.path.join(d, "x.npy"), np.full(1000, value, np.float32))
        return load()

    def load():
        return np.load(os.path.join(s.path("datasets", key), "x.npy"))

    return calls, build, load


def test_manifest_records_a_hash_of_every_file(tmp_path):
    s = store_lib.Store(str(tmp_path))
    key = s.key("ds", {"v": 1})
    calls, build, load = _build_counter(s, key, 1.0)
    s.get_or_build("datasets", key, build, load)
    files = s.manifest("datasets", key)["files"]
    assert set(files) == {"x.npy"} and files["x.npy"]["size"] == os.path.getsize(
        os.path.join(s.path("datasets", key), "x.npy"))
    import hashlib
    raw = open(os.path.join(s.path("datasets", key), "x.npy"), "rb").read()
    assert files["x.npy"]["sha256"] == hashlib.sha256(raw).hexdigest()


def test_a_corrupted_artifact_is_named_moved_aside_and_rebuilt(tmp_path, capsys):
    s = store_lib.Store(str(tmp_path))
    key = s.key("ds", {"v": 2})
    calls, build, load = _build_counter(s, key, 2.0)
    s.get_or_build("datasets", key, build, load)
    x = np.load(os.path.join(s.path("datasets", key), "x.npy"), mmap_mode="r+")
    x[:10] = 0.5                               # same size, other bytes
    x.flush()
    del x
    fresh = store_lib.Store(str(tmp_path))     # a new process: verifies on first load
    calls2, build2, load2 = _build_counter(fresh, key, 2.0)
    out = fresh.get_or_build("datasets", key, build2, load2)
    assert calls2 == [1] and np.all(out == 2.0)
    err = capsys.readouterr().err
    assert f"damaged artifact datasets/{key}" in err and "SHA-256" in err and "rebuilt" in err
    aside = [d for d in os.listdir(tmp_path / "datasets") if ".corrupt-" in d]
    assert len(aside) == 1 and aside[0].startswith(f".{key}.corrupt-")
    kept = np.load(tmp_path / "datasets" / aside[0] / "x.npy")
    assert np.all(kept[:10] == 0.5)            # nothing deleted: the damaged copy is kept
    assert fresh.verify("datasets", key) == []


def test_on_corrupt_stop_raises_naming_the_artifact(tmp_path):
    s = store_lib.Store(str(tmp_path))
    key = s.key("ds", {"v": 3})
    _, build, load = _build_counter(s, key, 3.0)
    s.get_or_build("datasets", key, build, load)
    with open(os.path.join(s.path("datasets", key), "x.npy"), "r+b") as f:
        f.truncate(100)
    stop = store_lib.Store(str(tmp_path), on_corrupt="stop")
    with pytest.raises(store_lib.CorruptArtifact, match=f"datasets/{key}.*x.npy has 100 bytes"
                                                        f".*Moved aside.*stopping"):
        stop.get_or_build("datasets", key, build, load)
    assert not stop.has("datasets", key)
    with pytest.raises(ValueError, match="on_corrupt"):
        store_lib.Store(str(tmp_path), on_corrupt="ignore")


def test_empty_manifest_and_unloadable_files_are_damaged(tmp_path, capsys):
    s = store_lib.Store(str(tmp_path))
    key = s.key("ds", {"v": 4})
    calls, build, load = _build_counter(s, key, 4.0)
    s.get_or_build("datasets", key, build, load)
    open(os.path.join(s.path("datasets", key), "manifest.json"), "w").close()
    assert "unreadable manifest.json" in store_lib.Store(str(tmp_path)).verify("datasets", key)[0]
    s2 = store_lib.Store(str(tmp_path))
    calls2, build2, load2 = _build_counter(s2, key, 4.0)
    s2.get_or_build("datasets", key, build2, load2)
    assert calls2 == [1]
    # a file stored with its true hash that does not load is damage too
    other = s2.key("ds", {"v": "garbage"})
    with s2.writing("datasets", other, {"v": "garbage"}) as d:
        with open(os.path.join(d, "x.npy"), "wb") as f:
            f.write(b"not an array")
    calls3, build3, load3 = _build_counter(s2, other, 4.5)
    assert np.all(s2.get_or_build("datasets", other, build3, load3) == 4.5) and calls3 == [1]
    assert "it does not load" in capsys.readouterr().err


def _edit_manifest(s, kind, key, edit):
    path = os.path.join(s.path(kind, key), "manifest.json")
    with open(path) as f:
        m = json.load(f)
    edit(m)
    with open(path, "w") as f:
        json.dump(m, f)


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m["metrics"].update(pgd_accuracy=0.987654), "does not match its own SHA-256"),
    (lambda m: m.update(file_list=m.pop("files")), "does not match its own SHA-256"),
    (lambda m: m.pop("manifest_sha256"), "carries no checksum"),
])
def test_a_tampered_manifest_is_damage(tmp_path, capsys, edit, problem):
    """An edited metric, a renamed file list or a missing self-checksum is detected, moved
    aside and rebuilt: no path skips verification."""
    s = store_lib.Store(str(tmp_path))
    key = s.key("ev", {"v": 1})
    s.record("evals", key, {"v": 1}, metrics={"pgd_accuracy": 1.0})
    _edit_manifest(s, "evals", key, edit)
    fresh = store_lib.Store(str(tmp_path))
    assert problem in fresh.verify("evals", key)[0]
    built = []

    def build():
        built.append(1)
        fresh.record("evals", key, {"v": 1}, metrics={"pgd_accuracy": 1.0})
        return load()

    def load():
        return fresh.manifest("evals", key)["metrics"]["pgd_accuracy"]

    assert fresh.get_or_build("evals", key, build, load) == 1.0 and built == [1]
    assert f"damaged artifact evals/{key}" in capsys.readouterr().err


def test_a_change_after_verification_is_caught_by_size_or_mtime(tmp_path, monkeypatch):
    s = store_lib.Store(str(tmp_path))
    key = s.key("ds", {"v": 5})
    _, build, load = _build_counter(s, key, 5.0)
    s.get_or_build("datasets", key, build, load)
    assert s.verify("datasets", key) == []
    hashed = []
    real = store_lib.file_digests
    monkeypatch.setattr(store_lib, "file_digests", lambda d: hashed.append(d) or real(d))
    assert s.verify("datasets", key) == [] and hashed == []   # unchanged: not hashed again
    path = os.path.join(s.path("datasets", key), "x.npy")
    x = np.load(path, mmap_mode="r+")
    x[0] = -1
    x.flush()
    del x
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert s.verify("datasets", key) and len(hashed) == 1


def test_files_and_directories_respect_the_umask(tmp_path):
    """mkstemp/mkdtemp create 0600/0700; a shared store must follow the umask instead."""
    old = os.umask(0o022)
    try:
        s = store_lib.Store(str(tmp_path))
        key = s.key("ds", {"v": 6})
        _, build, load = _build_counter(s, key, 6.0)
        s.get_or_build("datasets", key, build, load)
        with atomic.atomic_file(str(tmp_path / "results" / "t.md"), "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert os.stat(s.path("datasets", key)).st_mode & 0o777 == 0o755
    assert os.stat(os.path.join(s.path("datasets", key), "x.npy")).st_mode & 0o777 == 0o644
    assert os.stat(os.path.join(s.path("datasets", key), "manifest.json")).st_mode & 0o777 \
        == 0o644
    assert os.stat(tmp_path / "results" / "t.md").st_mode & 0o777 == 0o644


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_temporaries_of_dead_builders_are_removed_and_gc_lists_the_rest(tmp_path):
    """A kill during a build leaves a full-size temporary (2.9 GB at paper scale). Building
    that key again removes its dead owners' temporaries and keeps a live one's; the store
    binary lists what no manifest owns and --gc removes it (a results folder's dead
    temporaries too), keeping resumable state."""
    store = store_lib.Store(str(tmp_path))
    dead, host = _dead_pid(), socket.gethostname()
    folder = tmp_path / "datasets"
    orphan = folder / f".K-1.tmp-{dead}@{host}-abcd1234"
    orphan.mkdir(parents=True)
    (orphan / "x_train.npy").write_bytes(b"0" * 4096)
    live = folder / f".K-1.tmp-{os.getpid()}@{host}-efgh5678"
    live.mkdir()
    (folder / "K-1.partial").mkdir()
    chunk_tmp = folder / "K-1.partial" / f".chunk-00001.npz.tmp-{dead}@{host}-ij90.tmp"
    chunk_tmp.write_bytes(b"1" * 100)
    other = folder / f".K-2.tmp-{dead}@{host}-klmn1234"
    other.mkdir()
    (folder / "K-3.partial").mkdir()  # an unfinished build nobody holds: resumable state
    table = tmp_path / "results" / "table1-x"   # a table's file, its writer killed mid-write
    table.mkdir(parents=True)
    result_tmp = table / f".table.png.tmp-{dead}@{host}-op12.tmp"
    result_tmp.write_bytes(b"2" * 10)
    result_live = table / f".table.md.tmp-{os.getpid()}@{host}-qr34.tmp"
    result_live.write_bytes(b"3" * 10)

    def build():
        assert not orphan.exists() and not chunk_tmp.exists()  # gone before the build starts
        assert live.exists()  # its owner (this process) is alive
        store.record("datasets", "K-1", {})

    store.get_or_build("datasets", "K-1", build, lambda: None)
    assert store.has("datasets", "K-1") and other.exists()  # only K-1's were touched

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = run_binary("store", f"--workdir={tmp_path}", "--gc", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "temporary (owner dead)" in proc.stdout and "resumable state" in proc.stdout
    assert "removed 2" in proc.stdout
    assert not other.exists() and live.exists() and (folder / "K-3.partial").exists()
    assert not result_tmp.exists() and result_live.exists()
    assert store.has("datasets", "K-1")


def test_a_full_disk_leaves_no_partial_artifact_and_is_described(tmp_path, monkeypatch):
    import errno

    s = store_lib.Store(str(tmp_path))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npz"))

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError) as caught:
        s.save_arrays("datasets", "K-1", {}, {"x": np.zeros(3)})
    assert os.listdir(tmp_path / "datasets") == []  # no temporary, no artifact
    assert store_lib.describe_os_error(caught.value) == \
        f"{tmp_path / 'x.npz'}: no space left on device"
    with pytest.raises(OSError):
        atomic.atomic_save_npz(str(tmp_path / "state.npz"), x=np.zeros(3))
    assert os.listdir(tmp_path) == ["datasets"]  # atomic_file removed its temporary


def test_a_built_artifact_teaches_the_next_plan_its_rate(tmp_path, own_cache):
    """One rate system: an artifact built of one kind of work records that op's measured
    rate in the store; the next plan projects its items from it."""
    from entangle.core.train_config import TrainConfig
    from entangle.store import estimate, plan
    from entangle.studies import runner

    s = store_lib.Store(str(tmp_path))
    cfg = TrainConfig(arch="resnet11v2", width=4, batch_size=32)
    work = plan.training_work(cfg, 1000, (16, 16, 3), 4)
    item = plan.PlanItem("standard", "models", "k", (), lambda: None, 2000.0, work=work)
    op = work[0][0]
    assert estimate.known_rates(s, [op]) == {}

    class Exp:
        store = s
    runner._remember(Exp, item, took=5.0)
    got = estimate.known_rates(s, [op])[op.signature()]
    assert got.seconds_per_image == pytest.approx(5.0 / 1000) and "a run" in got.source
    assert estimate.item_seconds(item, {op.signature(): got}) == pytest.approx(5.0)
    several = plan.PlanItem("sets", "datasets", "j", (), lambda: None, 10.0,
                            work=plan.attack_work([cfg, TrainConfig(arch="resnet20v2")], 100,
                                                  50, (16, 16, 3), 4))
    runner._remember(Exp, several, took=1.0)      # two kinds of work: not attributable
    assert len(estimate.remembered(s)) == 1
