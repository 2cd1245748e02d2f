"""The planted study: probe sets, the matched filter, ground truth of a robust model, and the
study end to end at smoke scale."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from entangle import flags as entangle_flags
from entangle import data, planted_study, train
from conftest import ROOT, smoke_flags

CFG = data.PlantedConfig(image_size=16, num_classes=4, train_size=640, test_size=256,
                         features="ABC", seed=3)


def test_probe_sets_carry_one_pattern_type_of_their_class():
    for feature in "ABC":
        probe = data.make_planted_probe(CFG, feature, "absent")
        assert len(probe) == CFG.test_size and probe.x.dtype == np.uint8
        assert np.bincount(probe.y).tolist() == [CFG.test_size // 4] * 4
        found = data.pattern_presence(probe.x, probe.y, CFG)
        assert found[feature] > 0.95
        assert all(found[t] < 0.5 for t in "ABC" if t != feature)  # chance 0.25
        # nothing else: pixels minus the (0.8-1.2x) class pattern are grey plus small noise
        pat = data.planted_patterns(CFG)[feature][probe.y]
        rest = data.to_float(probe.x) - pat
        rest -= rest.mean(axis=(1, 2, 3), keepdims=True)
        assert (np.abs(rest) <= 0.2 * np.abs(pat) + 0.15).all()


def test_conflict_probes_carry_the_other_types_of_another_class():
    probe = data.make_planted_probe(CFG, "B", "other")
    pats = data.planted_patterns(CFG)
    x = data.to_float(probe.x).reshape(len(probe), -1)
    x = x - x.mean(axis=1, keepdims=True)
    for t in "AC":
        p = pats[t].reshape(4, -1)
        p = p - p.mean(axis=1, keepdims=True)
        winner = np.argmax(x @ p.T, axis=1)
        assert np.mean(winner == probe.y) < 0.05      # never the label's own A or C
    assert data.pattern_presence(probe.x, probe.y, CFG)["B"] > 0.95
    # in a world with B only, the conflict probe has nothing to add
    only_b = data.PlantedConfig(**{**CFG.__dict__, "features": "B"})
    found = data.pattern_presence(*_xy(data.make_planted_probe(only_b, "B", "other")), only_b)
    assert found["B"] > 0.95 and found["A"] < 0.5 and found["C"] < 0.5


def test_probe_rejects_bad_arguments():
    with pytest.raises(ValueError, match="probe feature"):
        data.make_planted_probe(CFG, "D")
    with pytest.raises(ValueError, match="probe others"):
        data.make_planted_probe(CFG, "A", "some")


def test_matched_filter_finds_exactly_the_planted_types():
    ds = data.make_planted("test", data.PlantedConfig(**{**CFG.__dict__, "features": "AC"}))
    found = data.pattern_presence(ds.x, ds.y, CFG)
    assert found["A"] > 0.95 and found["C"] > 0.95
    assert found["B"] < 0.45  # chance 0.25


def test_robust_model_uses_a_not_b_or_c(tmp_path):
    """Ground truth of the generator: an eps-1 robust model (B and C have norm 1) is high on
    A-only probes and near chance on B-only and C-only."""
    cfg = data.PlantedConfig(image_size=16, num_classes=4, train_size=1024, test_size=256,
                             seed=0)
    tr = data.make_planted("train", cfg)
    accs = {}
    for eps in (1.0,):
        tcfg = train.TrainConfig(arch="resnet11v2", width=8, pooling="global", eps=eps,
                                 attack_steps=3, attack_step_size=0.5, batch_size=64,
                                 epochs=6, learning_rate=3e-3, lr_decay="cosine",
                                 augment=False)
        m = _train(tcfg, tr, tmp_path)
        accs[eps] = {f: train.accuracy(m, *_xy(data.make_planted_probe(cfg, f))) for f in "ABC"}
    robust = accs[1.0]
    assert robust["A"] > 0.8
    assert robust["B"] < 0.45 and robust["C"] < 0.45   # chance 0.25


def _xy(ds):
    return ds.x, ds.y


def _train(tcfg, ds, root):
    from entangle.store import Store

    return train.train_classifier(tcfg, ds, store=Store(str(root)),
                                  runtime=train.RuntimeOptions(verbose=False)).model


def _study_config(workdir, *extra):
    fv = smoke_flags("--quiet", "--augment=none", "--eps=1.0", "--columns=0,1",
                     f"--workdir={workdir}", "--feature_sets=AB", "--study_seeds=0",
                     "--probe_size=128", *extra)
    return entangle_flags.experiment_config(fv), entangle_flags.study_config(fv)


def test_study_smoke_end_to_end_writes_every_file(tmp_path):
    exp_cfg, cfg = _study_config(tmp_path / "work")
    out = tmp_path / "results"
    result = planted_study.run_planted_study(exp_cfg, cfg, results_dir=str(out),
                                             log=lambda m: None)
    # one world (the verdict over several worlds and seeds: the unit tests below)
    assert [(r.features, r.seed) for r in result.runs] == [("AB", 0)]
    assert set(result.files) == {"md", "csv", "json", "png"}
    for path in result.files.values():
        assert os.path.getsize(path) > 0
    md = open(result.files["md"]).read()
    assert "**Verdict.**" in md and "| AB | 0 |" in md
    js = json.load(open(result.files["json"]))
    assert set(js["verdict"]) == {"AB"} and js["verdict"]["AB"]["truth"]
    for r in result.runs:
        assert set(r.probes) == {"standard", "robust (eps 1)", "zero_robust", "neg_robust"}
        assert all(set(p) == {f"{t}-{o}" for t in "ABC" for o in data.PROBE_OTHERS}
                   for p in r.probes.values())
        assert set(r.carries) == {"Test", "R_0", "R_1"}
        # the test set carries exactly the planted types (matched filter, chance 0.25)
        for t in "ABC":
            assert (r.carries["Test"][t] > 0.9) == (t in r.features)
        assert r.says_b == (r.zero_says_b and any(v > result.chance
                                                  for v in r.neg_lower.values()))
        assert os.path.exists(out / "tables" / f"{r.features}-seed{r.seed}" / "table.md")
    rows = open(result.files["csv"]).read().splitlines()
    assert rows[0] == "features,seed,kind,classifier_or_set,column,value"
    assert sum(",probe_accuracy," in l for l in rows) == 4 * 6
    from PIL import Image
    with Image.open(result.files["png"]) as im:
        assert im.size == (1100, 420)


def test_verdict_names_false_positives_and_negatives():
    def run(features, seed, says):
        cells = {c: {"accuracy": 0.3, "n": 100} for c in ("R_0", "R_1")}
        table = type("T", (), {"cells": {"zero_robust": cells}, "chance": 0.25})()
        return planted_study.RunResult(
            features, seed, table, {"zero_robust": {"A-absent": 0.6, "B-absent": 0.3}},
            {"R_0": {"A": 1, "B": 1, "C": 1}, "R_1": {"A": 1.0, "B": 0.2, "C": 0.7}},
            {"R_1": 0.3}, {"R_1": 0.3}, says, says)

    runs = [run("AB", 0, True), run("AB", 1, True), run("AC", 0, True), run("AC", 1, True),
            run("A", 0, False), run("A", 1, True), run("ABC", 0, False), run("ABC", 1, False)]
    v, summary = planted_study.verdict(runs, 0.25)
    assert v["AB"]["outcome"] == "correct"
    assert v["AC"]["outcome"] == "false positive" and "A-only 60 %" in v["AC"]["why"]
    assert v["A"]["outcome"] == "seed-dependent"
    assert v["ABC"]["outcome"] == "false negative" and "carries B in 20 %" in v["ABC"]["why"]
    assert "does not say" in summary and "AC: false positive" in summary


def test_robust_reliability_moves_a_to_other_classes_only():
    base = data.PlantedConfig(**{**CFG.__dict__, "test_size": 2000})
    unreliable = data.PlantedConfig(**{**base.__dict__, "robust_reliability": 0.6})
    ds, ds1 = data.make_planted("test", unreliable), data.make_planted("test", base)
    found = data.pattern_presence(ds.x, ds.y, unreliable)
    assert abs(found["A"] - 0.6) < 0.05  # A of the label in ~60 % of the images
    assert found["B"] > 0.85 and found["C"] > 0.95  # the non-robust patterns stay reliable
    np.testing.assert_array_equal(ds.y, ds1.y)  # same labels and backgrounds as p = 1
    with pytest.raises(ValueError, match="robust_reliability"):
        data.PlantedConfig(robust_reliability=0.0)


def test_study_config_rejects_bad_values():
    with pytest.raises(ValueError, match="feature sets"):
        planted_study.StudyConfig(feature_sets=("ABD",))
    with pytest.raises(ValueError, match="seeds"):
        planted_study.StudyConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="rows"):
        from entangle import entanglement
        planted_study.StudyConfig(table=entanglement.TableConfig(rows=("standard",)))


def test_study_binary_bad_flag_fails_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.planted_study",
                           "--feature_sets=AB,AD", f"--workdir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode != 0 and "feature_sets" in proc.stderr
    assert "Traceback" not in proc.stderr
