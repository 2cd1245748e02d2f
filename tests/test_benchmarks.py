"""The benchmark scripts start where users install: from an active virtual environment."""

import glob
import os
import site
import subprocess
import sys
import sysconfig

import numpy as np

from conftest import ROOT


def test_pgd_benchmark_venv_sees_the_active_environment(tmp_path):
    """A user's venv is active (first on PATH): the benchmark venv must see its packages,
    not the base interpreter's (`venv --system-site-packages` gave "No module named
    'keras'" there). Offline, without installing the peers, the benchmark starts."""
    user = tmp_path / "user-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(user)], check=True,
                   timeout=120)
    # the user's venv holds the project and its dependencies: it sees this interpreter's site
    # directories (--system-site-packages would give the base interpreter's, which lack them
    # when this interpreter is itself a venv's)
    site_dir = glob.glob(str(user / "lib" / "python*" / "site-packages"))[0]
    parents = [p for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                           *site.getsitepackages()) if os.path.isdir(p)]
    with open(os.path.join(site_dir, "_parent.pth"), "w") as f:
        f.write("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n")
    env = {**os.environ, "PATH": f"{user / 'bin'}:{os.environ['PATH']}",
           "VIRTUAL_ENV": str(user), "BENCH_VENV": str(tmp_path / "bench"),
           "BENCH_SKIP_INSTALL": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "run_pgd.sh"), "--help"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--train_steps" in proc.stdout
    pth = glob.glob(str(tmp_path / "bench" / "lib" / "python*" / "site-packages" /
                        "_entangle_parent.pth"))
    assert pth and str(user) in open(pth[0]).read()   # the active venv's site directory


def test_gpu_check_starts_and_names_its_options():
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--images" in proc.stdout and "--out" in proc.stdout


def test_flop_count_is_the_hand_count_and_the_plan_counts_each_kind_of_work():
    """benchmarks/flops.py: 2 x multiply-adds per layer (ResNet20v2 at 32 px: 66,243,072
    multiply-adds, the figure in NOTES.md), and per image 3 passes for a training step,
    3 + 2k for an adversarial one, 2 for a loop step."""
    import keras

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import flops
    from common import forward_flops

    from entangle.core import models

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)       # 8*8*3*3*3*4 = 6,912
    out = keras.layers.Dense(5)(keras.layers.Flatten()(x))      # 256*5 = 1,280
    assert forward_flops(keras.Model(inputs, out)) == 2 * (6912 + 1280)
    assert forward_flops(models.resnet_v2(20, (32, 32, 3), 10)) == 2 * 66_243_072
    assert [flops.PASSES[k](16) for k in ("train", "adv_train", "attack", "robustify")] == \
        [3, 35, 2, 2]
    rows = flops.plan_flops("smoke.cfg", "table", ["--dataset=cifar10", "--rows=standard",
                                                   "--columns=0"],
                            (1000, 100))
    kinds = {r["kind"]: r for r in rows.values()}
    assert set(kinds) == {"train", "robustify"}
    train = kinds["train"]
    assert train["flops"] == 3 * train["forward"] * train["images"] > 0


def test_flop_probes_time_each_kind_of_work_beside_its_own_floor(capsys):
    """benchmarks/flops.py --probe_rounds: one ratio per kind of work and round, each against
    the floor measured around it, and the plan's ratio weighted by the FLOPs."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import flops

    rows = flops.plan_flops("smoke.cfg", "table", ["--dataset=cifar10", "--rows=standard",
                                                   "--columns=0"], (64, 16))
    ratios = flops.probed_ratios(rows, rounds=2, repeats=1, matmul_n=256)
    assert set(ratios) == set(rows)
    assert all(len(r) == 2 and all(np.isfinite(x) and x > 0 for x in r)
               for r in ratios.values())
    flops.print_probed(rows, ratios, sum(r["flops"] for r in rows.values()))
    out = capsys.readouterr().out
    total = sum(r["flops"] for r in rows.values())
    plan = sum(np.median(ratios[s]) * r["flops"] / total for s, r in rows.items())
    assert f"The plan at the probed rates: {plan:.2f}x its floor." in out
    assert out.count("| train ") + out.count("| robustify ") == len(rows)


def test_gpu_check_keeps_every_row_when_one_fails_or_times_out(tmp_path, monkeypatch):
    """On a 4-GPU host (mocked): single-GPU rows see one device under the default strategy,
    the mirrored row all of them, XLA only on one; a row that times out or fails is reported
    and the next one runs; the report is written as rows finish."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_check

    out = tmp_path / "gpu.md"
    calls = []

    def fake_run(images, args, timeout):
        calls.append(args)
        if len(calls) == 2:
            return {"error": f"timed out after {timeout:g} s"}
        if len(calls) == 4:
            return {"error": "Out of memory"}
        assert out.exists() == (len(calls) > 1)      # earlier rows already on disk
        return {"seconds": 10.0 * len(calls), "built": 9, "test": 0.1}

    monkeypatch.setattr(gpu_check, "_run", fake_run)
    monkeypatch.setattr(gpu_check, "_gpu_count", lambda: 4)
    gpu_check.main(["--no_estimate", f"--out={out}", "--timeout=7", "--", "--width=4"])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(gpu_check.ROWS) == len(calls) == 6
    assert "timed out after 7 s" in rows[1] and "failed: Out of memory" in rows[3]
    assert all(" s (" in rows[i] for i in (0, 2, 4, 5))
    assert rows[1].startswith("| 1 GPU | float32 | on |")
    for row, args in zip(gpu_check.ROWS, calls):
        assert "--width=4" in args and ("--tf32" in args) == row.tf32
        if row.mirrored:
            assert {"--gpu=all", "--strategy=mirrored", "--nojit_compile"} <= set(args)
        else:
            assert {"--gpu=0", "--strategy=default"} <= set(args)
    assert {r.precision for r in gpu_check.ROWS} >= {"float32", "mixed_float16",
                                                     "mixed_bfloat16"}
    assert any(r.jit for r in gpu_check.ROWS)


def test_gpu_check_row_that_runs_past_its_time_is_an_error_not_a_crash():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_check

    assert gpu_check._run(20, ["--epochs=1"], timeout=0.5) == \
        {"error": "timed out after 0.5 s"}


def test_attack_batch_benchmark_runs_at_toy_size():
    """benchmarks/attack_batch.py end to end on a few images: one row per loop, one cell per
    batch, each a positive rate with its ratio to the last batch (1.00x there)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "attack_batch.py"),
                           "--archs=resnet11v2", "--batches=4,8", "--images=8", "--steps=1",
                           "--repeats=1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| resnet11v2")]
    assert [r.split(" | ")[1] for r in rows] == ["PGD (L2)", "robustify"]
    for row in rows:
        cells = row.strip(" |").split(" | ")[2:]
        assert len(cells) == 2 and cells[-1].endswith("(1.00x)")
        assert all(float(c.split()[0]) > 0 for c in cells)


def test_suite_timeline_records_each_test_and_counts_waits_and_idle_ends(tmp_path):
    """The suite's timeline: the conftest hook writes one line per test it runs, and
    benchmarks/suite_timeline.py counts a worker's wait on another's smoke store and its idle
    end as lost worker-seconds."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import suite_timeline

    path = tmp_path / "timeline.tsv"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-o", "addopts=",
         "tests/test_stats.py::test_mcnemar_exact_matches_a_hand_computed_case",
         "tests/test_stats.py::test_holm_keeps_and_rejects_as_it_should"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
             "ENTANGLE_TEST_TIMELINE": str(path)})
    assert proc.returncode == 0, proc.stdout[-2000:]
    rows = suite_timeline.read(str(path))
    assert [(r[0], r[1], r[2].split("::")[1]) for r in rows] == [
        ("main", "test", "test_mcnemar_exact_matches_a_hand_computed_case"),
        ("main", "test", "test_holm_keeps_and_rejects_as_it_should")]
    assert all(r[3] <= r[4] for r in rows) and rows[0][4] <= rows[1][3]
    # two workers over [0, 100]: gw1 waited 30 s inside its test and ended 40 s early
    made = [("gw0", "test", "a.py::x", 0, 100), ("gw1", "test", "a.py::y", 0, 60),
            ("gw1", "wait", "smoke", 10, 40)]
    text = suite_timeline.summarise(made)
    assert "worker-seconds: 200; waiting or idle: 70 (35 %)" in text
    assert "gw1: 1 tests, 60 s in tests, of which 30 s waiting" in text
