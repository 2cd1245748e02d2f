"""MultiWorkerMirroredStrategy for real: two worker processes on 127.0.0.1, CPU only."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def _start(workdir, ports):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(len(ports)):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                     "index": i}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "experiments.train", *ARGS,
                                       f"--workdir={workdir}"], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def _finish(procs, timeout=300):
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def test_two_workers_train_resume_store_and_hit_the_cache(tmp_path):
    work = tmp_path / "w"
    # 1. both workers killed after the chief's first checkpoint
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
    # 2. both resume from the chief's checkpoint (best weights included) and finish
    outs = _finish(_start(work, _free_ports(2)))
    assert all("resuming" in out for out in outs)
    finished = [d for d in os.listdir(work / "models") if not d.endswith((".partial", ".lock"))]
    assert len(finished) == 1
    manifest = json.load(open(work / "models" / finished[0] / "manifest.json"))
    assert manifest["replicas"] == 2
    assert manifest["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
    acc = [[l for l in out.splitlines() if l.startswith("  test accuracy")] for out in outs]
    # 3. a rerun is a cache hit on both workers, with the stored model's numbers
    again = _finish(_start(work, _free_ports(2)))
    assert all("[cache hit]" in out for out in again)
    assert [[l for l in out.splitlines() if l.startswith("  test accuracy")]
            for out in again][0] == acc[0]
