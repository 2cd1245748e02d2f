"""MultiWorkerMirroredStrategy for real: two worker processes on 127.0.0.1, CPU only."""

import glob
import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
from conftest import popen_python

ARGS = ["--flagfile=flags/smoke.cfg", "--kind=standard", "--strategy=multi_worker",
        "--early_stopping=standard", "--epochs=4", "--patience=3"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(workdir, ports, workdirs=None):
    """Two workers of one cluster; ``workdirs`` gives each its own --workdir."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(len(ports)):
        if workdirs:
            workdir = workdirs[i]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                     "index": i}})}
        procs.append(popen_python("-m", "experiments.train", *ARGS, f"--workdir={workdir}",
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def _finished(work):
    done = [d for d in os.listdir(work / "models") if not d.endswith((".partial", ".lock"))]
    assert len(done) == 1, done
    return work / "models" / done[0]


def _weights(model_dir):
    import keras

    return keras.models.load_model(str(model_dir / "model.keras")).get_weights()


def _files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


def _cluster(work=None, workdirs=None, attempts=3):
    """Start two workers and wait for them; a port taken between picking and binding (another
    process won the race) is retried on fresh ports, never reported as a failure."""
    for attempt in range(attempts):
        procs = _start(work, _free_ports(2), workdirs=workdirs)
        outs = [p.communicate(timeout=300)[0] for p in procs]
        if all(p.returncode == 0 for p in procs):
            return outs
        if attempt + 1 < attempts and any("already in use" in o.lower() for o in outs):
            continue
        raise AssertionError("\n".join(o[-3000:] for o in outs))


@pytest.mark.slow
def test_two_workers_train_resume_store_and_hit_the_cache(tmp_path):
    # 0. uninterrupted, the reference; worker 1 gets a store of its own, which must stay empty:
    # only the chief writes (models, checkpoints, evaluations, logs)
    ref, other = tmp_path / "ref", tmp_path / "worker1"
    _cluster(workdirs=(ref, other))
    assert _files(other) == [] if other.exists() else True
    reference = _finished(ref)
    work = tmp_path / "w"
    # 1. both workers killed after the chief's first checkpoint, which holds the best weights
    procs = _start(work, _free_ports(2))
    deadline = time.time() + 300
    while not glob.glob(str(work / "models" / "*.partial" / "state.npz")):
        assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs]
        assert time.time() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not [d for d in os.listdir(work / "models")
                if not d.endswith((".partial", ".lock"))]  # nothing finished
    state = np.load(glob.glob(str(work / "models" / "*.partial" / "state.npz"))[0])
    meta = json.loads(str(state["meta"]))
    assert meta["best"]["epoch"] >= 0 and any(k.startswith("b") for k in state.files)
    # 2. both resume from the chief's checkpoint (best weights included) and finish with the
    # uninterrupted run's history and weights, exactly
    outs = _cluster(work)
    assert all("resuming" in out for out in outs)
    resumed = _finished(work)
    manifest = json.load(open(resumed / "manifest.json"))
    assert manifest["replicas"] == 2
    assert manifest["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
    # (up to floating-point noise across processes: README, inter-op threads; exact within a
    # process, tests/test_train.py)
    expected = json.load(open(reference / "manifest.json"))
    strip = [{k: pytest.approx(v, rel=1e-5) for k, v in h.items() if k != "seconds"}
             for h in expected["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"}
                     for h in manifest["history"]]
    assert manifest["metrics"]["best_val"]["epoch"] == expected["metrics"]["best_val"]["epoch"]
    for a, b in zip(_weights(reference), _weights(resumed)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    acc = [[l for l in out.splitlines() if l.startswith("  test accuracy")] for out in outs]
    # 3. a rerun is a cache hit on both workers, with the stored model's numbers
    again = _cluster(work)
    assert all("[cache hit]" in out for out in again)
    assert [[l for l in out.splitlines() if l.startswith("  test accuracy")]
            for out in again][0] == acc[0]
