"""The planted study: probe sets, calibrated detectors, the carry test, Goh's leakage
estimate, ground truth of a robust model, the verdict, and the study end to end at smoke
scale."""

import json
import os

import numpy as np
import pytest

from entangle import data, flags as entangle_flags
from entangle.core import inference, train
from entangle.data import planted
from entangle.stats import findings as table_findings
from entangle.store import training
from entangle.report import planted as planted_report
from entangle.studies import entanglement, planted_study
from conftest import run_binary, smoke_flags

CFG = planted.PlantedConfig(image_size=16, num_classes=4, train_size=640, test_size=256,
                            features="ABC", seed=3)


def _winner(x, cfg, t):
    return np.argmax(planted.projections(x, cfg, t), axis=1)


def test_probe_sets_carry_one_pattern_type_of_their_class():
    for feature in planted.TYPES:
        probe = data.make_planted_probe(CFG, feature, "absent")
        assert len(probe) == CFG.test_size and probe.x.dtype == np.uint8
        assert np.bincount(probe.y).tolist() == [CFG.test_size // 4] * 4
        assert np.mean(_winner(probe.x, CFG, feature) == probe.y) > 0.95
        # nothing else: pixels minus the (0.9-1.1x) class pattern are grey plus small noise
        pat = planted.patterns(CFG)[feature][probe.y]
        rest = data.to_float(probe.x) - pat
        rest -= rest.mean(axis=(1, 2, 3), keepdims=True)
        assert (np.abs(rest) <= 0.1 * np.abs(pat) + 0.06).all()


def test_conflict_probes_carry_the_other_types_of_another_class():
    probe = data.make_planted_probe(CFG, "B", "other")
    for t in "AC":
        assert np.mean(_winner(probe.x, CFG, t) == probe.y) < 0.05   # never the label's
    assert np.mean(_winner(probe.x, CFG, "B") == probe.y) > 0.95
    with pytest.raises(ValueError, match="probe feature"):
        data.make_planted_probe(CFG, "E")
    with pytest.raises(ValueError, match="probe others"):
        data.make_planted_probe(CFG, "A", "some")


def test_detector_finds_inserted_patterns_at_its_calibrated_amplitude_only():
    world = planted.PlantedConfig(num_classes=10, features="AC", seed=1)
    for t in planted.TYPES:
        det = planted.calibrate(world, t, target_fpr=0.05)
        assert abs(det.fpr - 0.05) < 0.03
        assert det.sensitivity[1.0] > 0.95
        # images of the world without t, then with the label's t at full amplitude
        rest = "".join(f for f in "AC" if f != t) or "C"
        x, y, _ = planted.images(planted.PlantedConfig(num_classes=10, features=rest,
                                                       test_size=400, seed=1), "test")
        assert det.detects(x, y, world).mean() < 0.1
        inserted = x + planted.patterns(world)[t][y]
        assert det.detects(inserted, y, world).mean() > 0.95


def test_carry_test_finds_exactly_the_planted_types():
    world = planted.PlantedConfig(num_classes=10, features="AC", test_size=500, seed=2)
    test = data.make_planted("test", world)
    for t in planted.TYPES:
        det = planted.calibrate(world, t)
        decoys = [planted.calibrate(world, t, decoy=i) for i in range(1, 20)]
        res = planted_study.carry_test(det, decoys, test.x, test.y, world)
        assert res["carried"] == (t in "AC"), (t, res)
        assert 0.05 <= res["p"] <= 1


def test_template_leakage_sees_a_deliberate_leak_and_not_its_absence():
    """Goh's estimate: a set whose target labels come with the target's A added (a leak) is
    learnable from A projections and scores high on clean images; the same images with
    target labels and no leak do not (targets are never the label, so the probe learns to
    avoid it: at or below chance, as Goh found for D_det)."""
    world = planted.PlantedConfig(num_classes=10, features="AC", train_size=2000,
                                  test_size=500, seed=4)
    tr, te = data.make_planted("train", world), data.make_planted("test", world)
    targets = planted.other_class(np.random.default_rng(0), tr.y, 10)
    leaked = data.to_uint8(data.to_float(tr.x) + 0.5 * planted.patterns(world)["A"][targets])
    high = planted_study.template_leakage(leaked, targets, te, world, "A")
    none = planted_study.template_leakage(tr.x, targets, te, world, "A")
    assert high["leaks"] and high["accuracy"] > 0.8
    assert not none["leaks"] and none["accuracy"] < 0.15


def test_robust_model_uses_a_not_the_non_robust_patterns(tmp_path):
    """Ground truth of the generator: an eps-1 robust model (B and C of norm 0.5) is high on
    A-only probes and near chance on B-only and C-only."""
    cfg = planted.PlantedConfig(image_size=16, num_classes=4, train_size=1024, test_size=256,
                                entangled_norm=0.5, artifact_norm=0.5, seed=0)
    tcfg = train.TrainConfig(arch="resnet11v2", width=8, pooling="global", eps=1.0,
                             attack_steps=3, attack_step_size=0.5, batch_size=64,
                             epochs=6, learning_rate=3e-3, lr_decay="cosine", augment=False)
    from entangle.store import Store

    m = training.train_classifier(tcfg, data.make_planted("train", cfg), store=Store(str(tmp_path)),
                               runtime=train.RuntimeOptions(verbose=False)).model
    acc = {f: inference.accuracy(m, *_xy(data.make_planted_probe(cfg, f))) for f in "ABC"}
    assert acc["A"] > 0.8
    assert acc["B"] < 0.45 and acc["C"] < 0.45   # chance 0.25


def _xy(ds):
    return ds.x, ds.y


def _study_config(workdir, *extra):
    fv = smoke_flags("--quiet", "--augment=none", "--eps=1.0", "--columns=0,1",
                     f"--workdir={workdir}", "--feature_sets=AB", "--study_seeds=0",
                     "--probe_size=128", "--study_construct_eps=0.5,1.5", *extra)
    return entangle_flags.experiment_config(fv), entangle_flags.study_config(fv)


@pytest.mark.slow
def test_study_smoke_end_to_end_writes_every_file(tmp_path):
    exp_cfg, cfg = _study_config(tmp_path / "work")
    out = tmp_path / "results"
    result = planted_study.run_planted_study(exp_cfg, cfg, log=lambda m: None)
    result.files = planted_report.write_study(result, str(out))
    assert [(r.features, r.seed) for r in result.runs] == [("AB", 0)]
    assert set(result.files) == {"md", "csv", "json", "png", "leakage_png"}
    for path in result.files.values():
        assert os.path.getsize(path) > 0
    md = open(result.files["md"]).read()
    for part in ("*Premise*", "*What is there*", "construct 0.5", "construct 1.5",
                 "*Detectors*", "**Verdict.**", "| AB | 0 |"):
        assert part in md
    js = json.load(open(result.files["json"]))
    assert js["budgets"] == [0.5, 1.5] and js["columns"] == ["R_1"]
    (r,) = result.runs
    assert set(r.probes) == {"standard", "robust (eps 1)", "zero_robust (construct 0.5)",
                             "neg_robust (construct 0.5)", "zero_robust (construct 1.5)",
                             "neg_robust (construct 1.5)"}
    assert all(set(p) == {f"{t}-{o}" for t in "ABCD" for o in planted.PROBE_OTHERS}
               for p in r.probes.values())
    # the test set carries exactly the planted types (detector against 19 decoys)
    assert {t for t, v in r.carries["Test"].items() if v["carried"]} == {"A", "B"}
    assert set(r.premise) == {"R_1"} and 0 < r.premise["R_1"]["relative_distance"] < 1
    for b in (0.5, 1.5):
        assert set(r.leakage[b]) == {"zero_robust", "neg_robust"}
        p = r.protocol[b]["R_1"]
        assert p["says_b"] == (p["zero_low"] > result.chance and p["neg_low"] > result.chance)
        used = r.probes[f"zero_robust (construct {b:g})"]["B-absent"]
        assert r.truth[b]["R_1"]["b"] == (r.carries["R_1"]["B"]["carried"] and
                                          table_findings.lower_bound(used) > result.chance)
        v = result.verdict[b]["R_1"]
        assert v["tp"] + v["fp"] + v["fn"] + v["tn"] + len(v["unscored"]) == 1
        assert os.path.exists(out / "tables" / "AB-seed0" / f"construct-{b:g}" / "table.md")
    rows = open(result.files["csv"]).read().splitlines()
    assert rows[0] == "features,seed,budget,kind,name,column,value"
    assert sum(",probe_accuracy," in line for line in rows) == 6 * 8


def _run(features, seed, *, says, true, premise=True, leak=False, c_route=False, uses_a=0.1):
    col = "R_1"
    return planted_study.RunResult(
        features, seed, {},
        {"zero_robust (construct 0.5)": {"A-absent": {"accuracy": uses_a, "n": 500}}}, {},
        {col: {"B": {"rate": 0.3, "control": 0.1, "p": 0.05, "carried": true}}},
        {col: {"relative_distance": 0.1, "generator_accuracy": 0.9, "carries_A": 0.5,
               "met": premise}},
        {0.5: {"zero_robust": {"A": {"accuracy": 0.4, "leaks": leak}}}},
        {0.5: {col: {"zero_low": 0.3 if says else 0.05, "neg_low": 0.3, "says_b": says},
               "all": says}},
        {0.5: {col: {"b": true, "routes": {"B": true, "C": c_route, "D": False}}}})


def test_verdict_scores_runs_against_the_truth_and_names_the_mechanism():
    runs = [_run("AB", 0, says=True, true=True),
            _run("AB", 1, says=False, true=True),
            _run("AC", 0, says=True, true=False, leak=True, c_route=True, uses_a=0.6),
            _run("A", 0, says=False, true=False),
            _run("A", 1, says=True, true=False, premise=False)]
    v, summary = planted_study.verdict(runs, 0.1)
    cell = v[0.5]["R_1"]
    assert (cell["tp"], cell["fn"], cell["fp"], cell["tn"]) == (1, 1, 1, 1)
    assert cell["unscored"] == ["A seed 1"]
    fp = next(e for e in cell["errors"] if e["kind"] == "false positive")
    assert fp["world"] == "AC" and "C carried and used" in fp["why"]
    assert "A leaks into D_zero: zero-robust uses A (60 % on A-only probes), Goh's linear " \
        "probe 40 %" in fp["why"]
    fn = next(e for e in cell["errors"] if e["kind"] == "false negative")
    assert fn["world"] == "AB" and fn["why"] == "zero-robust at chance"
    assert "2 of 4 scored runs right" in summary and "1 unscored" in summary


def test_study_config_rejects_bad_values():
    with pytest.raises(ValueError, match="feature sets"):
        planted_study.StudyConfig(feature_sets=("ABE",))
    with pytest.raises(ValueError, match="need A"):
        planted_study.StudyConfig(feature_sets=("BC",))
    with pytest.raises(ValueError, match="seeds"):
        planted_study.StudyConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="construct_eps"):
        planted_study.StudyConfig(construct_eps=(0.5, 0.5))
    with pytest.raises(ValueError, match="rows"):
        planted_study.StudyConfig(table=entanglement.TableConfig(rows=("standard",)))


@pytest.mark.parametrize("flag", ["--feature_sets=AB,BD", "--study_construct_eps=0.5,-1"])
def test_study_binary_bad_flag_fails_cleanly(tmp_path, flag):
    proc = run_binary("planted_study", flag, f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode != 0 and flag.split("=")[0] in proc.stderr
    assert "Traceback" not in proc.stderr
