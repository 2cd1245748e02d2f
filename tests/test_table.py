"""The entanglement table end to end at smoke scale: files, reuse, kill -9, two processes."""

import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import built_once, copy_store, popen_python, run_binary, tensorboard_tags

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
SMOKE = ["--flagfile=flags/smoke.cfg", "--eps=1.0"]


def _run(workdir, *extra, env=None):
    return run_binary("table1", *SMOKE, f"--workdir={workdir}", *extra, timeout=900,
                      env=env, check=True).stdout


def _cold(path):
    """The binaries' environment with a user cache of their own: no op rate known."""
    return {**ENV, "ENTANGLE_CACHE": str(path)}


def _table(out):
    """The rows of the accuracy table printed at the end (the first Markdown table; the
    generator table follows it)."""
    rows, started = [], False
    for line in out.splitlines():
        if line.startswith("|"):
            started = True
            if line.startswith("| "):      # not the |---| separator
                rows.append(line)
        elif started:
            break
    return rows


def _built(out):
    return int(out.split("built here: ")[1].split()[0])


@pytest.fixture(scope="module")
def smoke_table(tmp_path_factory):
    """The smoke table from an empty store and a cold user cache, built once per run: (its
    store, the building run's stdout)."""
    return built_once(tmp_path_factory, "smoke_table", lambda work: _run(
        work, env=_cold(tmp_path_factory.mktemp("user-cache"))))


def _seconds(text):
    """'12s', '3 min' or '1.5 h' (a table cell's padding and bars aside) in seconds."""
    text = text.strip(" |")
    value, unit = text.split()[0].rstrip("s"), text.split()[-1]
    return float(value) * {"min": 60, "h": 3600}.get(unit, 1)


def test_table1_smoke_writes_every_file_with_every_cell(smoke_table):
    work, out = smoke_table
    assert "Plan:" in out and "ETA" in out
    # a cold store estimates from timed probes of each kind of work, not from constants
    # (which said "~0s" per artifact and 1 s for a 44 s run): within 4x of the wall time
    line = next(l for l in out.splitlines() if l.startswith("Estimated time"))
    assert "from op rates probed now" in line and "guess" not in line
    estimate = _seconds(line.split(": ", 1)[1].split(" (")[0])
    wall = float(out.split("built here: ")[1].split("; ")[1].rstrip("s"))
    assert wall / 4 <= estimate <= wall * 4, (estimate, wall)
    assert "~0s" not in out
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
    # R_0's generator, the row's twin and the constructed sets' source: three of them
    assert data["models"]["standard"] in gens and len(gens) == 3


def test_generator_report_gives_every_robust_generator_its_pgd_accuracy(smoke_table):
    work, out = smoke_table
    results = glob.glob(str(work / "results" / "table1-planted-eps1-paper-seed0-c*"))[0]
    data = json.load(open(os.path.join(results, "table.json")))
    gens = {g["column"]: g for g in data["generators"]}
    assert set(gens) == {"R_0", "R_1/16", "R_1/4", "R_1/2", "R_1"}
    assert set(gens["R_0"]["pgd_accuracy"]) == {"1/16", "1/4", "1/2", "1"}
    for col in ("R_1/16", "R_1/4", "R_1/2", "R_1"):
        g = gens[col]
        assert 0 <= g["pgd_accuracy"] <= g["test_accuracy"] + 0.05
        assert g["standard_pgd_accuracy"] == gens["R_0"]["pgd_accuracy"][col[2:]]
        assert "PGD" in g["attack"] and g["batch_norm"]["statistics"] == "recompute"
    assert {f["finding"] for f in data["findings"]} == set("abcdef")
    assert "Generators of the R_eps columns" in out and "Test: exact McNemar" in out
    prov = data["provenance"]                # what the table was computed from
    assert prov["tf32"] is False             # TensorFlow's default (on) turned off
    assert prov["commit"] and prov["flags"]["eps"] == 1.0 and prov["flagfiles"][-1] == \
        "flags/smoke.cfg"
    stored = {f"{kind}/{k}" for kind in ("models", "datasets") for k in os.listdir(work / kind)
              if not k.startswith(".") and not k.endswith((".lock", ".partial"))}
    plan = int(out.split("Plan: ")[1].split(" artifacts")[0])
    assert len(prov["artifacts"]) == plan and set(prov["artifacts"].values()) <= stored
    assert "Table 1 (planted, smoke.cfg), seed 0" in out and "over n = 128 images" in out
    assert "CIFAR" not in out and "paper's in brackets" not in out   # nothing in brackets
    # TensorBoard: one readable run per model, with its evaluations beside its training
    board = work / "tensorboard"
    assert f"TensorBoard: tensorboard --logdir {board}" in out
    runs = {r: tensorboard_tags(str(board / r)) for r in os.listdir(board)}
    assert len(runs) == len(os.listdir(work / "models")) - sum(
        k.startswith(".") or k.endswith((".lock", ".partial")) for k in os.listdir(work / "models"))
    assert all(re.fullmatch(r"[a-z_]+[0-9.]*-seed\d+-[0-9a-f]{8}", r) for r in runs), runs
    for eps in ("0.0625", "0.25", "0.5", "1"):
        robust = [t for r, t in runs.items() if r.startswith(f"robust{eps}-")]
        assert robust and all(f"eval/pgd_accuracy_eps{eps}" in t and "eval/test_accuracy" in t
                              for t in robust), (eps, runs)


def test_two_tables_on_one_store_keep_their_own_results(smoke_table, tmp_path):
    """Another configuration (here fewer rows) gets another folder; pointed at the first
    table's folder, it refuses to overwrite it, naming the flag that differs."""
    work = copy_store(smoke_table[0], tmp_path / "store")
    (full,) = glob.glob(str(work / "results" / "table1-planted-eps1-paper-seed0-c*"))
    cells = len(open(os.path.join(full, "table.csv")).read().splitlines())
    _run(work, "--rows=standard")
    folders = glob.glob(str(work / "results" / "table1-planted-eps1-paper-seed0-c*"))
    assert len(folders) == 2
    (fewer,) = set(folders) - {full}
    assert len(open(os.path.join(fewer, "table.csv")).read().splitlines()) == 1 + 6
    assert len(open(os.path.join(full, "table.csv")).read().splitlines()) == cells == 1 + 24
    before = os.stat(os.path.join(full, "table.csv")).st_mtime_ns
    proc = run_binary("table1", *SMOKE, f"--workdir={work}", "--rows=standard",
                      f"--results_dir={full}", timeout=900)
    assert proc.returncode == 1 and "holds the results of another configuration" in \
        proc.stderr and "--rows" in proc.stderr, proc.stderr[-2000:]
    assert os.stat(os.path.join(full, "table.csv")).st_mtime_ns == before
    assert "| standard |" in proc.stdout            # the result is still shown


def test_seeds_write_each_table_and_the_aggregate_and_rerun_builds_nothing(smoke_table,
                                                                           tmp_path):
    work = copy_store(smoke_table[0], tmp_path / "store")
    (single,) = glob.glob(str(work / "results" / "table1-planted-eps1-paper-seed0-c*"))
    single = Path(single) / "table.json"
    before = single.stat().st_mtime_ns
    few = ["--rows=standard,robust", "--columns=0,1/4"]  # seed 1: 6 artifacts, not 14
    out = _run(work, "--seeds=0,1", *few)
    assert 0 < _built(out) < 7              # seed 0 is in the store already
    (results,) = glob.glob(str(work / "results" / "table1-planted-eps1-cols*-seed0-1-c*"))
    results = Path(results)
    for seed in (0, 1):
        table = json.load(open(results / f"seed{seed}" / "table.json"))
        assert table["seed"] == seed and table["findings"]
    agg = json.load(open(results / "seeds.json"))
    cell = agg["aggregate"]["standard"]["Test"]
    assert len(cell["values"]) == 2 and cell["mean"] == pytest.approx(np.mean(cell["values"]))
    assert all(f["of"] == 2 and 0 <= f["held"] <= 2 for f in agg["findings"].values())
    assert os.path.exists(results / "seeds.png") and "mean ± sd" in open(results / "seeds.md").read()
    again = _run(work, "--seeds=0,1", *few)
    assert _built(again) == 0 and "0 to build" in again
    # another table on the same store gets its own folder: the seed-0 table is untouched
    assert single.stat().st_mtime_ns == before


def test_figures_on_the_tables_store_reuse_it_and_name_what_they_show(smoke_table, tmp_path):
    """Figures 3, 4 and 2 on the smoke table's store: nothing is built, every column has a
    finite accuracy, and each title names the dataset, the scale, the seed and n."""
    from absl import flags

    from entangle import flags as entangle_flags
    from entangle.report import figures as report_figures
    from entangle.studies import figures

    work, _ = smoke_table
    fv = flags.FlagValues()
    entangle_flags.define_all(fv)
    entangle_flags.parse(["--flagfile=" + entangle_flags.flagfile("smoke.cfg"), "--eps=1.0",
                          f"--workdir={work}", "--quiet"], fv)
    exp_cfg, cfg = entangle_flags.experiment_config(fv), entangle_flags.table_config(fv)
    context = "planted, smoke.cfg, seed 0"
    for run, name in ((figures.run_figure3, "figure3"),
                      (figures.run_figure4, "figure4")):
        result = run(exp_cfg, cfg, log=lambda m: None, context=context)
        result.files = report_figures.write_curve(result, str(tmp_path / name))
        assert result.built == []
        (series,) = result.series.values()
        assert sorted(series) == sorted(cfg.columns)
        assert all(0 <= r["accuracy"] <= 1 for r in series.values())
        assert result.title.endswith(f"({context}, n=128 test images)")
        assert os.path.exists(result.files["png"]) and os.path.exists(result.files["csv"])
    grid = figures.run_figure2(exp_cfg, cfg, log=lambda m: None, context=context)
    files = report_figures.write_grid(grid, str(tmp_path / "figure2"))
    assert os.path.getsize(files["png"]) > 10_000
    # each seed and each original is titled with its own class (a seed is of another class)
    assert set(grid.labels) == {"seed x0", "original x"}
    assert all(len(v) == len(grid.grid["seed x0"]) for v in grid.labels.values())


def test_figure2_shows_distinct_classes():
    from entangle.studies import figures

    y = np.array([0, 0, 1, 0, 2, 1, 2, 2])
    assert figures.distinct_class_images(y, 3).tolist() == [0, 2, 4]
    assert figures.distinct_class_images(y, 8).tolist() == [0, 2, 4, 1, 5, 6, 3, 7]
    cifar_like = np.repeat(np.arange(10), 50)         # sorted by class, as the JPEG copy
    assert len(set(cifar_like[figures.distinct_class_images(cifar_like, 8)])) == 8


def test_a_corrupted_artifact_is_named_moved_aside_and_rebuilt(smoke_table, tmp_path):
    """The reliability issue's reproduction: half of R_0 overwritten in place."""
    work, out = smoke_table
    copy = tmp_path / "store"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("results"))
    # the R_0 this table used, from its plan (other tests may add R_0 sets of other keys)
    key = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("R_0 "))
    x_path = str(copy / "datasets" / key / "x.npy")
    x = np.load(x_path, mmap_mode="r+")
    x[:64] = 0.5
    x.flush()
    del x
    proc = run_binary("table1", *SMOKE, f"--workdir={copy}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"damaged artifact datasets/{key}" in proc.stderr and "SHA-256" in proc.stderr
    assert glob.glob(str(copy / "datasets" / f".{key}.corrupt-*" / "x.npy"))
    assert _built(proc.stdout) == 1                     # R_0 alone, rebuilt in the plan
    assert _table(proc.stdout) == _table(out)


def test_a_finished_store_prints_its_table_and_says_it_cannot_write_results(smoke_table,
                                                                              tmp_path):
    """A finished store is only read (so a read-only mount serves it); where the results
    cannot be written, the table is still printed and one line says why (exit 1)."""
    work, out = smoke_table
    before = sorted(os.path.relpath(os.path.join(d, f), work)
                    for d, _, fs in os.walk(work) for f in fs if "results" not in d)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    proc = run_binary("table1", *SMOKE, f"--workdir={work}", f"--results_dir={blocked}/table",
                      timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert _table(proc.stdout) == _table(out)
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot write the results to {blocked}/table")
    after = sorted(os.path.relpath(os.path.join(d, f), work)
                   for d, _, fs in os.walk(work) for f in fs if "results" not in d)
    assert after == before  # nothing written to the store


def test_second_run_reuses_every_artifact(smoke_table):
    work, out = smoke_table
    again = _run(work)
    assert _built(again) == 0 and "0 to build" in again
    assert _table(again) == _table(out)


def _artifacts(work) -> dict:
    """key -> what must not depend on interruptions: a model's training history without
    timings, a dataset's arrays."""
    out = {}
    for m in glob.glob(str(work / "models" / "*" / "manifest.json")):
        man = json.load(open(m))
        out[man["key"]] = [{k: v for k, v in h.items() if k != "seconds"}
                           for h in man["history"]]
    for m in glob.glob(str(work / "datasets" / "*" / "manifest.json")):
        man = json.load(open(m))
        out[man["key"]] = {f: np.load(os.path.join(os.path.dirname(m), f)).astype(np.float64)
                           for f in man["files"] if f.endswith(".npy")}
    return out


def _assert_same_artifacts(got: dict, expected: dict):
    """Every artifact in ``got`` equals the reference's (which other tests add to), up to
    floating-point noise: across processes this Xeon once measured epoch
    losses 4e-7 apart (README, inter-op threads); within one process resume is exact
    (tests/test_train.py)."""
    assert len(got) >= 9 and set(got) <= set(expected)   # the reference store holds more
    for key, value in got.items():
        if isinstance(value, list):
            assert [{k: pytest.approx(v, rel=1e-5) for k, v in h.items()}
                    for h in expected[key]] == value, key
        else:
            for f, arr in value.items():
                np.testing.assert_allclose(arr, expected[key][f], atol=2e-3,
                                           err_msg=f"{key}/{f}")


def _builders(work) -> dict:
    """key -> pid of the process that built each stored model and dataset."""
    out = {}
    for m in glob.glob(str(work / "models" / "*" / "manifest.json")) + \
            glob.glob(str(work / "datasets" / "*" / "manifest.json")):
        man = json.load(open(m))
        out[man["key"]] = man["built_by"]["pid"]
    return out


def test_two_processes_share_the_work_and_a_killed_one_is_taken_over(smoke_table, tmp_path):
    """Two processes on one store (columns 0 and 1: nine artifacts): each artifact is built
    once, by one of them. The first is killed (-9) as soon as it has finished an artifact;
    the other takes over its lock (dead pid), resumes its checkpoint and finishes; every
    artifact equals the uninterrupted run's, and a rerun builds nothing."""
    ref_work, _ = smoke_table
    procs = [popen_python("-m", "experiments.table1", *SMOKE, f"--workdir={tmp_path}",
                          "--columns=0,1", env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) for _ in range(2)]
    deadline = time.time() + 600
    while procs[0].pid not in _builders(tmp_path).values():   # no race on who builds what
        assert procs[0].poll() is None and time.time() < deadline, "the first built nothing"
        time.sleep(0.1)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].communicate()
    out, err = procs[1].communicate(timeout=900)
    assert procs[1].returncode == 0, err[-3000:]
    builders = _builders(tmp_path)
    assert set(builders.values()) == {p.pid for p in procs}   # both contributed
    assert _built(out) == sum(pid == procs[1].pid for pid in builders.values())
    # exactly the uninterrupted run's artifacts: every model's training history (the killed
    # one's work resumed from its checkpoint) and every dataset's arrays
    _assert_same_artifacts(_artifacts(tmp_path), _artifacts(ref_work))
    again = _run(tmp_path, "--columns=0,1")
    assert _built(again) == 0 and _table(again) == _table(out)


def test_paper_scale_offline_fails_fast_with_directions(tmp_path):
    start = time.time()
    proc = run_binary("table1", f"--data_dir={tmp_path}", f"--workdir={tmp_path}", timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    for hint in ("--data_dir", "--download", "cifar10_quick.cfg"):
        assert hint in proc.stderr
    assert time.time() - start < 60  # TF start-up included; the data check itself is ~0.5 s


def test_wilson_interval_is_scipys():
    from entangle.stats import findings as table_findings

    lo, hi = table_findings.wilson_interval(0.12, 500)
    assert lo < 0.1 < 0.12 < hi
    assert (lo, hi) == pytest.approx((0.0944, 0.1514), abs=1e-4)


def test_estimate_projects_every_artifact_within_4x_of_the_smoke_run(smoke_table, tmp_path):
    _, out = smoke_table
    wall = float(out.split("built here: ")[1].split("; ")[1].rstrip("s"))
    cold = _cold(tmp_path / "user-cache")
    proc = run_binary("table1", *SMOKE, f"--workdir={tmp_path}", "--estimate", env=cold,
                      check=True)
    lines = proc.stdout.splitlines()
    rows = [l for l in lines if l.startswith("| ") and "`" in l]
    planned = int(out.split("Plan: ")[1].split(" artifacts")[0])
    assert len(rows) == planned                         # every artifact of the smoke plan
    projected = [_seconds(r.split(" | ")[1]) for r in rows]
    assert all(0 < p < math.inf for p in projected)
    one = _seconds(next(l for l in lines if l.startswith("| 1 |")).split(" | ")[1])
    two = _seconds(next(l for l in lines if l.startswith("| 2 |")).split(" | ")[1])
    assert wall / 4 <= one <= wall * 4, (one, wall)   # both under the suite's other worker
    assert two < one                                    # independent models run side by side
    assert not (tmp_path / "models").exists()           # probes only: nothing was built
    again = run_binary("table1", *SMOKE, f"--workdir={tmp_path}", "--estimate", env=cold,
                       check=True)
    assert "probing" not in again.stdout and "measured here" in again.stdout
    bad = run_binary("figure2", "--flagfile=flags/smoke.cfg", "--estimate")
    assert bad.returncode != 0 and "--estimate is not used by figure2" in bad.stderr
