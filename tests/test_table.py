"""The entanglement table end to end at smoke scale: files, reuse, kill -9, two processes."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
SMOKE = ["--flagfile=flags/smoke.cfg", "--eps=1.0"]


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "experiments.table1", *SMOKE, f"--workdir={workdir}", *extra]


def _run(workdir, *extra):
    proc = subprocess.run(_cmd(workdir, *extra), cwd=ROOT, capture_output=True, text=True,
                          env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _table(out):
    """The Markdown table rows printed at the end."""
    return [l for l in out.splitlines() if l.startswith("| ")]


def _built(out):
    return int(out.split("built here: ")[1].split()[0])


@pytest.fixture(scope="module")
def smoke_table(tmp_path_factory):
    work = tmp_path_factory.mktemp("table")
    return work, _run(work)


def test_table1_smoke_writes_every_file_with_every_cell(smoke_table):
    work, out = smoke_table
    assert "Plan:" in out and "ETA" in out
    rows = _table(out)
    assert len(rows) == 5 and rows[0].startswith("| Classifier | Test | R_0 | R_1/16")
    results = glob.glob(str(work / "results" / "table1-*"))[0]
    data = json.load(open(os.path.join(results, "table.json")))
    assert data["rows"] == ["standard", "robust (eps 1)", "zero_robust", "neg_robust"]
    for row in data["rows"]:
        assert set(data["cells"][row]) == set(data["columns"])
        assert all(np.isfinite(c["accuracy"]) for c in data["cells"][row].values())
    csv_lines = open(os.path.join(results, "table.csv")).read().splitlines()
    assert len(csv_lines) == 1 + 4 * 6
    from PIL import Image
    with Image.open(os.path.join(results, "table.png")) as im:
        assert im.size == (700, 400)
    # the standard row is an independent twin, the robust row the generator itself
    assert data["models"]["standard"] != data["models"]["robust (eps 1)"]
    gens = [m for m in os.listdir(work / "models") if m.startswith("standard-")]
    assert data["models"]["standard"] in gens and len(gens) == 2


def test_second_run_reuses_every_artifact(smoke_table):
    work, out = smoke_table
    again = _run(work)
    assert _built(again) == 0 and "0 to build" in again
    assert _table(again) == _table(out)


def test_killed_table_run_resumes_to_the_same_table(smoke_table, tmp_path):
    _, reference = smoke_table
    proc = subprocess.Popen(_cmd(tmp_path), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not glob.glob(str(tmp_path / "models" / "robust*[0-9a-f]" / "manifest.json")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = _run(tmp_path)
    assert 0 < _built(out) < 15
    assert _table(out) == _table(reference)


def test_two_processes_share_the_work_and_print_the_same_table(smoke_table, tmp_path):
    _, reference = smoke_table
    procs = [subprocess.Popen(_cmd(tmp_path), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    built = [_built(o) for o, _ in outs]
    assert sum(built) == 15 and min(built) > 0  # every artifact once, both contributed
    builders = set()
    for kind in ("models", "datasets"):
        for d in os.listdir(tmp_path / kind):
            if os.path.exists(tmp_path / kind / d / "manifest.json"):
                builders.add(json.load(open(tmp_path / kind / d / "manifest.json"))
                             ["built_by"]["pid"])
    assert builders == {p.pid for p in procs}
    assert _table(outs[0][0]) == _table(outs[1][0]) == _table(reference)


def test_paper_scale_offline_fails_fast_with_directions(tmp_path):
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "experiments.table1", f"--data_dir={tmp_path}",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    for hint in ("--data_dir", "--download", "cifar10_quick.cfg"):
        assert hint in proc.stderr
    assert time.time() - start < 60  # TF start-up included; the data check itself is ~0.5 s


def test_table2_on_mock_imagenet(tmp_path):
    import tensorflow_datasets as tfds

    import flags as entangle_flags
    from absl import flags
    from entangle import entanglement

    fv = flags.FlagValues()
    entangle_flags.define_all(fv)
    entangle_flags.parse(["--flagfile=" + entangle_flags.flagfile("smoke.cfg"),
                          "--dataset=imagenet9", "--batch_size=8", "--epochs=1",
                          "--columns=0,1", f"--workdir={tmp_path}", "--quiet",
                          "--robustify_steps=3", "--construct_steps=2"], fv)
    with tfds.testing.mock_data(num_examples=200):
        result = entanglement.run_table(entangle_flags.experiment_config(fv),
                                        entangle_flags.table_config(fv),
                                        results_dir=str(tmp_path / "res"), log=lambda m: None)
    assert result.columns == ["Test", "R_0", "R_1"] and result.chance == pytest.approx(1 / 9)
    assert result.rows[1] == "robust (eps 1)"  # ImageNet-9's robust row: Table 6's eps
    assert all(np.isfinite(c["balanced_accuracy"]) for r in result.cells.values()
               for c in r.values())
    assert result.paper["standard"]["Test"] == 94.8
    assert os.path.exists(result.files["png"])


def _cell(acc, n=500):
    return {"accuracy": acc, "balanced_accuracy": acc, "majority_rate": 0.1, "n": n}


def test_findings_on_a_hand_made_table():
    from entangle import entanglement

    cols = ["Test", "R_0", "R_1/16", "R_1/2"]
    cells = {
        "standard": dict(zip(cols, map(_cell, (0.9, 0.5, 0.7, 0.6)))),
        "robust (eps 0.5)": dict(zip(cols, map(_cell, (0.8, 0.12, 0.2, 0.8)))),
        "zero_robust": dict(zip(cols, map(_cell, (0.3, 0.2, 0.2, 0.12)))),  # 12 %: CI hits 10
        "neg_robust": dict(zip(cols, map(_cell, (0.2, 0.2, 0.1, 0.1)))),
    }
    result = entanglement.TableResult(
        dataset="x", rows=list(cells), columns=cols, cells=cells, paper={}, chance=0.1,
        majority_rate={c: 0.1 for c in cols}, median_relative_distance={}, models={},
        built=[], seconds=0)
    got = {f["finding"]: f["held"] for f in entanglement.findings(result)}
    assert got == {"a": True, "b": True, "c": False, "d": True}
    lo, hi = entanglement.wilson_interval(0.12, 500)
    assert lo < 0.1 < 0.12 < hi
