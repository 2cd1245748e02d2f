"""The experiment pipeline and the train binary, end to end at smoke scale."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from entangle import flags as entangle_flags
from entangle.core import construct, inference
from entangle.studies import pipeline
from conftest import popen_python, run_binary, run_python, run_shared_dir, smoke_flags



@pytest.fixture(scope="module")
def smoke_config(tmp_path_factory):
    """The smoke configuration on a store every worker of this run shares: its models and
    sets are built once per run (the store's locks split the work), not once per worker."""
    return entangle_flags.experiment_config(smoke_flags(
        "--quiet", f"--workdir={run_shared_dir(tmp_path_factory, 'pipeline_smoke')}"))


def test_constructed_datasets(smoke_config):
    exp = pipeline.Experiment(smoke_config)
    sp = exp.splits()
    fit, val = sp.fit_part(), sp.val_part()
    ccfg = smoke_config.construct
    for kind in construct.KINDS:
        built, built_val = exp.constructed(kind)
        assert len(built) == len(fit) and built.x.dtype == np.float16
        assert len(built_val) == len(val)  # default: validate on a held-out constructed part
        delta = built.x.astype(np.float32) - fit.float_images()
        assert np.sqrt((delta.reshape(len(fit), -1) ** 2).sum(1)).max() <= ccfg.eps + 0.01
        key = exp.constructed_key(kind)
        manifest = exp.store.manifest("datasets", key)
        # targeted PGD moves the standard source model towards the targets
        before = inference.accuracy(exp.model("standard", role="source").model, fit.x, built.y)
        assert manifest["metrics"]["targeted_success_on_source_train"] > before + 0.1
        if kind == "neg_robust":
            np.testing.assert_array_equal(built.y, (fit.y + 1) % fit.num_classes)
            np.testing.assert_array_equal(built_val.y, (val.y + 1) % val.num_classes)
        else:
            assert len(np.unique(built.y)) == fit.num_classes
        again, _ = exp.constructed(kind)  # cached: same artifact, not rebuilt
        assert exp.store.manifest("datasets", key)["created"] == manifest["created"]
        np.testing.assert_array_equal(np.asarray(again.x), np.asarray(built.x))


def test_zero_robust_all_targets_makes_one_example_per_class():
    y = np.array([0, 2, 1])
    idx, t = construct.construct_targets("zero_robust", y, 3, construct.ConstructConfig())
    assert sorted(zip(idx.tolist(), t.tolist())) == [(i, c) for i in range(3) for c in range(3)]
    with pytest.raises(ValueError, match="kind"):
        construct.construct_targets("robust", y, 3, construct.ConstructConfig())


def test_zero_robust_model_trains_with_early_stopping(smoke_config):
    exp = pipeline.Experiment(smoke_config)
    trained = exp.model("zero_robust")
    assert trained.manifest["config"]["train"]["early_stopping"]
    assert not trained.manifest["config"]["train"]["augment"]
    assert exp.model("zero_robust").cached


def test_experiment_rejects_bad_kind_and_eps(smoke_config):
    exp = pipeline.Experiment(smoke_config)
    with pytest.raises(ValueError, match="kind"):
        exp.train_config("victim")
    with pytest.raises(ValueError, match="eps must be > 0"):
        exp.train_config("robust", 0.0)
    with pytest.raises(ValueError, match="robust models only"):
        exp.train_config("standard", 0.5)


def _run(*args, env=None, fresh=False):
    return run_binary("train", *args, env=env, fresh=fresh)


def test_train_binary_trains_reports_and_hits_cache(tmp_path):
    args = ["--flagfile=flags/smoke.cfg", "--kind=robust", "--eps=1.0", f"--workdir={tmp_path}"]
    plain = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    first = _run(*args, env=plain, fresh=True)     # TensorFlow's own start-up too
    assert first.returncode == 0, first.stderr[-3000:]
    # TensorFlow's start-up lines (absl pre-init warning, I/W/E C++ lines, cuInit without a
    # GPU) and its retracing warnings are not the tool's output: none reach the user
    noise = [l for l in first.stderr.splitlines()
             if re.match(r"^([IWE]\d{4} |WARNING: All log messages)", l) or "retracing" in l]
    assert not noise, noise
    assert "test accuracy:" in first.stdout and "PGD accuracy at eps 1" in first.stdout
    assert "cache hit" not in first.stdout
    second = _run(*args)
    assert second.returncode == 0 and "[cache hit]" in second.stdout
    pick = lambda out: [l for l in out.splitlines() if l.startswith(("  test", "  PGD"))]
    assert len(pick(first.stdout)) == 2 and pick(first.stdout) == pick(second.stdout)
    assert len(os.listdir(tmp_path / "models")) == 1


def test_inter_op_threads_flag_rejects_bad_values(tmp_path):
    proc = _run("--flagfile=flags/smoke.cfg", "--inter_op_threads=many", f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "inter_op_threads" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_workdir_that_is_a_file_is_one_line_and_exit_code_1(tmp_path):
    path = tmp_path / "not-a-directory"
    path.write_text("")
    proc = _run("--flagfile=flags/smoke.cfg", f"--workdir={path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot write {path}: exists and is not a directory"]


def test_train_binary_offline_dataset_error(tmp_path):
    proc = _run("--flagfile=flags/smoke.cfg", "--dataset=cifar10", f"--data_dir={tmp_path}",
                f"--workdir={tmp_path}")
    assert proc.returncode != 0
    assert "not prepared" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigterm_checkpoints_releases_the_lock_and_resumes(tmp_path):
    """A scheduler's SIGTERM mid-training: the run stops at the next batch with one line and
    exit code 143, no lock is left, and a rerun resumes from its checkpoint."""
    import glob
    import signal
    import time

    args = ["--flagfile=flags/smoke.cfg", "--kind=robust", "--eps=1.0", "--epochs=4",
            "--eval_attack_steps=2"]
    work = tmp_path / "b"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = popen_python("-m", "experiments.train", *args, f"--workdir={work}", env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not glob.glob(str(work / "models" / "*.partial" / "state.npz")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("train.py: stopped by SIGTERM")
    left = os.listdir(work / "models")
    assert not [d for d in left if d.endswith(".lock")]  # released: a requeue starts at once
    assert not [d for d in left if not d.endswith(".partial")]  # nothing finished
    resumed = _run(*args, f"--workdir={work}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stopped = re.search(r"in epoch (\d+) of \S+, after batch (\d+)|after epoch (\d+) of", err)
    where = (f"in epoch {stopped[1]}, after batch {stopped[2]}" if stopped[1]
             else f"after epoch {stopped[3]}")
    assert "resuming robust" in resumed.stdout and where in resumed.stdout, resumed.stdout
    assert "test accuracy" in resumed.stdout
    # exact equality of a resumed run: tests/test_train.py (in one process)


def test_validation_choices(smoke_config, tmp_path):
    exp = pipeline.Experiment(smoke_config)
    sp = exp.splits()
    std = exp.model("standard")  # no early stopping: trains on every training image
    assert std.manifest["config"]["data"] == exp.train_data_key()
    assert "val_accuracy" not in std.manifest["history"][0]
    zero = exp.model("zero_robust")  # early-stopped on held-out constructed images (targets)
    assert zero.manifest["config"]["data"].endswith("val=constructed")
    assert "val_accuracy" in zero.manifest["history"][0]
    import dataclasses
    clean_cfg = dataclasses.replace(smoke_config, workdir=str(tmp_path), data=dataclasses.replace(
        smoke_config.data, validation="clean"))
    clean = pipeline.Experiment(clean_cfg)
    built, val = clean.constructed("neg_robust")
    assert val is None and len(built) == len(sp.fit_part())  # hold-out images never attacked
    assert clean.model_key("neg_robust") != exp.model_key("neg_robust")
    assert clean.model_key("standard") == exp.model_key("standard")
    with pytest.raises(ValueError, match="validation"):
        pipeline.DataConfig(validation="test")


@pytest.mark.slow
def test_binaries_run_from_any_directory(tmp_path):
    """Outside the repository the binaries are ``python -m entangle <binary>`` (or the
    ``entangle`` command), and a shipped flagfile is named by its file name."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = run_python("-m", "entangle", "train", "--flagfile=smoke.cfg", "--kind=standard",
                      "--epochs=1", f"--workdir={tmp_path / 'w'}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "entangle", "train", "--flagfile=nope.cfg"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode != 0 and "nope.cfg" in bad.stderr and "smoke.cfg" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_flagfile_paths_are_relative_to_the_flagfile(tmp_path):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    (sub / "base.cfg").write_text("--dataset=folder:../images\n--epochs=7\n")
    (sub / "top.cfg").write_text("# comment\n--flagfile=base.cfg\n--workdir=work\n")
    args = entangle_flags.expand_flagfiles([f"--flagfile={sub / 'top.cfg'}", "--epochs=9"])
    assert args == [f"--dataset=folder:{tmp_path / 'images'}", "--epochs=7",
                    f"--workdir={sub / 'work'}", "--epochs=9"]


def test_r_eps_build_stopped_between_chunks_resumes_to_the_same_images(smoke_config,
                                                                     monkeypatch):
    """Preempted inside an R_0 build (after 2 of its 4 chunks), the rerun robustifies only
    the rest, and the stored R_0 equals an uninterrupted build of it exactly."""
    import shutil

    from entangle.runtime import preempt
    from entangle.core import robustify
    from entangle.studies import builders

    monkeypatch.setattr(builders, "CHUNK_IMAGES", 32)        # 128 test images: 4 chunks
    exp = pipeline.Experiment(smoke_config)
    exp.model("standard")
    calls = []
    real = robustify.robustify

    def counting(model, x, *args, **kwargs):
        calls.append(len(x))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(robustify, "robustify", counting)
    monkeypatch.setattr(preempt, "requested", lambda: 15 if len(calls) >= 2 else None)
    with pytest.raises(preempt.Preempted, match="after chunk 2 of 4"):
        exp.robustified(0.0)
    key = exp.robustified_key(0.0)
    assert not exp.store.has(pipeline.DATASET_KIND, key)
    monkeypatch.setattr(preempt, "requested", lambda: None)
    resumed, extra = exp.robustified(0.0)
    assert calls == [32, 32, 32, 32]                          # two before, two after
    resumed_x = np.array(resumed.x)
    resumed_rel = extra["relative_distance"].copy()
    del resumed
    shutil.rmtree(exp.store.path(pipeline.DATASET_KIND, key))
    calls.clear()
    whole, extra = exp.robustified(0.0)
    assert calls == [32, 32, 32, 32]
    np.testing.assert_array_equal(np.asarray(whole.x), resumed_x)
    np.testing.assert_array_equal(extra["relative_distance"], resumed_rel)
