"""Transfer from robust sources: targets, Waseda's class-aware ratios, victims, and the binary
end to end at smoke scale (files, reuse, an added victim, the N-targeted attack, offline
ImageNet weights)."""

import glob
import json
import math
import os
import time

import numpy as np
import pytest

from entangle.core import inference
from entangle.stats import transfer_metrics
from entangle.studies import transfer
from conftest import built_once, copy_store, run_binary

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
SMOKE = ["--flagfile=flags/smoke.cfg", "--sources=0,1"]


def _run(workdir, *extra, env=None, check=True):
    return run_binary("transfer", *SMOKE, f"--workdir={workdir}", *extra, env=env,
                      timeout=900, check=check)


def _tables(out):
    return [l for l in out.splitlines() if l.startswith("| ")]


def _built(out):
    return int(out.split("built here: ")[1].split()[0])


# ------------------------------------------------------------------------------ pieces


def test_targets_are_wrong_distinct_seeded_and_shared_across_k():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 4000)
    t1 = transfer_metrics.draw_targets(y, 10, 1, seed=3)
    t3 = transfer_metrics.draw_targets(y, 10, 3, seed=3)
    assert t1.shape == (1, 4000) and t3.shape == (3, 4000)
    assert np.array_equal(t1[0], t3[0])                       # same first target for every k
    assert not (t3 == y).any()                                # never the true class
    assert (t3[0] != t3[1]).all() and (t3[1] != t3[2]).all() and (t3[0] != t3[2]).all()
    assert np.array_equal(t1, transfer_metrics.draw_targets(y, 10, 1, seed=3))
    assert not np.array_equal(t1, transfer_metrics.draw_targets(y, 10, 1, seed=4))
    # uniform over the 9 wrong classes: each offset (t - y) mod 10 appears ~1/9 of the time
    offsets = np.bincount((t1[0] - y) % 10, minlength=10)
    assert offsets[0] == 0 and np.all(np.abs(offsets[1:] / 4000 - 1 / 9) < 0.03)
    with pytest.raises(ValueError, match="num_classes"):
        transfer_metrics.draw_targets(y, 10, 10)


def test_class_aware_ratios_on_hand_made_predictions():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    source_clean = np.array([0, 1, 2, 3, 4, 5, 9, 7])   # image 6: source wrong -> excluded
    source_adv = np.array([1, 2, 3, 4, 5, 0, 1, 7])     # image 7: not fooled -> excluded
    victim_adv = np.array([0, 2, 9, 3, 5, 0, 6, 1])
    # D'_F1 = images 0..5; victim: 0 un-fooled (says y), 1 same (y1 = 2), 2 different (9 vs 3),
    # 3 un-fooled, 4 same (5), 5 same (0)
    r = transfer_metrics.class_aware(y, source_clean, source_adv, victim_adv)
    assert r["n"] == 6
    assert r["unfooled"] == pytest.approx(2 / 6)
    assert r["same"] == pytest.approx(3 / 6)
    assert r["different"] == pytest.approx(1 / 6)
    assert r["unfooled"] + r["different"] + r["same"] == pytest.approx(1.0)
    # what the excluded images predict does not matter
    other = victim_adv.copy()
    other[6:] = [3, 3]
    assert transfer_metrics.class_aware(y, source_clean, source_adv, other) == r
    empty = transfer_metrics.class_aware(y, y, y, victim_adv)
    assert empty["n"] == 0 and math.isnan(empty["same"])


def test_conditioned_metrics_on_hand_made_predictions():
    y = np.array([0, 1, 2, 0, 1, 2])
    clean = np.array([0, 1, 2, 0, 2, 0])       # the victim gets 4 right: its clean error 2/6
    pred = np.array([1, 1, 0, 0, 2, 1])        # wrong on 0, 2, 4, 5
    target = np.array([1, 2, 0, 1, 0, 1])      # hits on 0, 2, 5
    m = transfer_metrics.conditioned(y, pred, clean, target)
    assert m["error_rate"] == pytest.approx(4 / 6) and m["clean_error"] == pytest.approx(2 / 6)
    assert m["excess_error"] == pytest.approx(2 / 6)
    assert m["victim_right_n"] == 4
    assert m["error_rate_victim_right"] == pytest.approx(2 / 4)         # images 0, 2
    assert m["target_hit_rate"] == pytest.approx(3 / 6)
    assert m["target_hit_rate_victim_right"] == pytest.approx(2 / 4)    # images 0, 2
    # Waseda's D'_F1 restricted to victim-right images
    src_clean = np.array([0, 1, 2, 0, 1, 2])   # the source is right everywhere
    src_adv = np.array([1, 2, 0, 1, 1, 1])     # fooled on 0, 1, 2, 3, 5
    full = transfer_metrics.class_aware(y, src_clean, src_adv, pred)
    assert full["n"] == 5
    restricted = transfer_metrics.class_aware(y, src_clean, src_adv, pred, victim_clean=clean)
    # D'_F1 and victim right: images 0, 1, 2, 3; victim says 1 (=y1), 1 (=y), 0 (=y1), 0 (=y)
    assert restricted == {"unfooled": 0.5, "different": 0.0, "same": 0.5, "n": 4}


def _outcomes_result(rates, victims=("a", "b", "c", "d", "e", "f"), n=400, seed=0):
    """A per-source TransferResult whose outcomes hit at ``rates[eps]`` per victim, drawn so
    that the same images flip (paired), with every victim right on its clean images."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    outcomes = {}
    for v in victims:
        for attack in ("targeted", "untargeted"):
            for e, r in rates.items():
                outcomes[transfer_metrics.outcome_key(attack, e, v)] = u < r
        for e in rates:
            outcomes[transfer_metrics.outcome_key("clean", e, v)] = np.ones(n, bool)
    return transfer.TransferResult(
        dataset="planted", mode="per_source", sources=list(rates), victims=list(victims),
        victim_weights="none", records=[], clean_accuracy={}, chance=0.1, built=[],
        seconds=0.0, outcomes=outcomes)


def test_findings_test_each_source_against_eps0_with_holm_and_a_sign_test(monkeypatch):
    from entangle import stats

    calls = []
    real, findings = stats.paired_vs, transfer_metrics.findings
    monkeypatch.setattr(stats, "paired_vs", lambda *a, **k: calls.append(1) or real(*a, **k))
    up = findings(_outcomes_result({0.0: 0.10, 0.0625: 0.30, 0.25: 0.25, 1.0: 0.1}))
    assert calls                                 # the shared McNemar/Holm helper
    targeted = next(f for f in up if f["finding"] == "targeted, all images")
    assert targeted["held"] and targeted["victims_held"] == 6
    assert targeted["sign_test"]["positive"] == 6
    assert targeted["sign_test"]["p"] == pytest.approx(1 / 64)
    tests = targeted["per_victim"]["a"]["tests"]
    assert tests["1/16"]["significant"] and not tests["1"]["significant"]   # equal rates
    assert {f["view"] for f in up} == {"all images", "victim right on clean"}
    flat = findings(_outcomes_result({0.0: 0.2, 0.0625: 0.2, 0.25: 0.2, 1.0: 0.2}))
    assert not any(f["held"] for f in flat)
    assert all(f["victims_held"] == 0 for f in flat)
    down = findings(_outcomes_result({0.0: 0.3, 0.0625: 0.1, 0.25: 0.1, 1.0: 0.1}))
    assert not any(f["held"] for f in down)   # one-sided: lower transfer is not the finding


def test_transfer_peak_compares_the_best_small_eps_source_with_eps_1_over_victims():
    def peak(rates, **kw):
        return {f["view"]: f for f in transfer_metrics.findings(_outcomes_result(rates, **kw))
                if f["finding"].startswith("untargeted peak")}

    # Figure 5's shape: highest at 1/16, lower at 1
    up = peak({0.0: 0.2, 0.0625: 0.35, 0.25: 0.3, 0.5: 0.25, 1.0: 0.2})
    assert set(up) == {"all images", "victim right on clean"}
    f = up["all images"]
    assert f["held"] and f["sign_test"]["p"] == pytest.approx(1 / 64)
    assert f["per_victim"]["a"]["best_small"] == "1/16"
    assert f["per_victim"]["a"]["difference"] == pytest.approx(0.15, abs=0.06)
    # rising with eps (the quick scale's earlier shape): not held
    rising = peak({0.0: 0.2, 0.0625: 0.22, 0.25: 0.3, 0.5: 0.35, 1.0: 0.4})
    assert not rising["all images"]["held"]
    assert rising["all images"]["sign_test"]["negative"] == 6
    # 1/4 is no candidate (0 < eps <= 1/8 only): a peak there does not count
    at_quarter = peak({0.0: 0.2, 0.0625: 0.2, 0.25: 0.5, 1.0: 0.2})
    assert not at_quarter["all images"]["held"]
    # no eps 1 source: no peak finding
    assert not peak({0.0: 0.2, 0.0625: 0.3, 0.25: 0.3})


def test_config_errors_name_what_is_allowed():
    with pytest.raises(ValueError, match="two or more sources"):
        transfer.TransferConfig(sources=(0.0,), mode="n_targeted")
    with pytest.raises(ValueError, match="victims must be among"):
        transfer.TransferConfig(victims=("alexnet",))
    with pytest.raises(ValueError, match="attack mode"):
        transfer.TransferConfig(mode="both")
    with pytest.raises(ValueError, match="distinct"):
        transfer.TransferConfig(sources=(0.0, 0.0))


@pytest.mark.slow
def test_victim_trains_at_tiny_size_through_the_trainer_and_store(tmp_path):
    from conftest import colour_dataset
    from entangle import data
    from entangle.core import train
    from entangle.store import training
    from entangle.store import Store

    x, y = colour_dataset(384, size=16)
    names = ("r", "g", "b")
    ds = data.Dataset((x * 255).astype(np.uint8), y, names, "colour")
    xt, yt = colour_dataset(192, size=16, seed=1)
    cfg = train.TrainConfig(arch="mobilenet_v2", batch_size=32, epochs=4, learning_rate=1e-3,
                            lr_decay="none", augment=False, pretrained=False, seed=0)
    store = Store(str(tmp_path))
    runtime = train.RuntimeOptions(verbose=False)
    trained = training.train_classifier(cfg, ds, None, store, name="mobilenet_v2", runtime=runtime)
    assert not trained.cached
    final = trained.manifest["metrics"]["final"]
    assert final["train_accuracy"] > 0.8
    # chance 1/3; 192 test images: 0.45 is more than 3 standard errors above it (MobileNetV2
    # from scratch keeps a train/inference gap from batch norm after 48 steps)
    assert inference.accuracy(trained.model, xt, yt) > 0.45
    again = training.train_classifier(cfg, ds, None, store, name="mobilenet_v2", runtime=runtime)
    assert again.cached and again.key == trained.key


# ------------------------------------------------------------------------------ binary


@pytest.fixture(scope="module")
def smoke_transfer(tmp_path_factory):
    """The smoke transfer from an empty store, built once per run: (its store, its stdout)."""
    return built_once(tmp_path_factory, "smoke_transfer", lambda work: _run(work).stdout)


def test_transfer_smoke_writes_every_file_with_every_cell(smoke_transfer):
    from PIL import Image

    work, out = smoke_transfer
    assert "Plan:" in out and "ETA" in out and "from scratch" in out
    results = glob.glob(str(work / "results" / "transfer-planted-*"))[0]
    data = json.load(open(os.path.join(results, "transfer.json")))
    assert data["victim_weights"] == "none" and data["victims"] == ["mobilenet_v2"]
    recs = data["records"]
    # 2 attacks x 2 sources x (source + 1 victim)
    assert len(recs) == 8
    assert {(r["attack"], r["source_eps"], r["model"]) for r in recs} == {
        (a, e, m) for a in ("targeted", "untargeted") for e in (0.0, 1.0)
        for m in ("source (white-box)", "mobilenet_v2")}
    white = [r for r in recs if r["model"] == "source (white-box)"]
    # on the source itself every fooled example is, by definition, its own mistake
    assert all(r["class_aware_same"] == 1.0 for r in white if r["class_aware_n"])
    assert len(open(os.path.join(results, "transfer.csv")).read().splitlines()) == 1 + 8
    sizes = {"untargeted_error": (600, 400), "targeted_hit_rate": (600, 400)}
    for name in ("untargeted_error", "targeted_hit_rate", "class_aware",
                 "adversarial_untargeted", "adversarial_targeted"):
        with Image.open(os.path.join(results, f"{name}.png")) as im:
            if name in sizes:
                assert im.size == sizes[name]
            else:
                assert im.size[0] >= 400 and im.size[1] >= 300
    tables = _tables(out)
    assert any(l.startswith("| mobilenet_v2 |") for l in tables)
    assert all("nan" not in l for l in tables)


def test_untargeted_attack_fools_the_white_box_source_and_sets_are_bounded(smoke_transfer):
    work, _ = smoke_transfer
    results = glob.glob(str(work / "results" / "transfer-planted-*"))[0]
    data = json.load(open(os.path.join(results, "transfer.json")))
    std = next(r for r in data["records"] if r["model"] == "source (white-box)"
               and r["attack"] == "untargeted" and r["source_eps"] == 0.0)
    clean = data["clean_accuracy"]["source eps 0"]
    assert std["error_rate"] > (1 - clean) + 0.1    # the attack lowers accuracy
    from conftest import smoke_flags
    from entangle import flags as entangle_flags
    from entangle.studies import pipeline

    test = pipeline.Experiment(entangle_flags.experiment_config(smoke_flags(
        *SMOKE[1:], f"--workdir={work}"))).splits().test
    sets = glob.glob(str(work / "datasets" / "adv-*" / "x.npy"))
    assert len(sets) >= 4           # targeted and untargeted sets of both sources (+ N-targeted)
    for path in sets:               # norms from the stored images, not the reported max_l2
        x = np.load(path).astype(np.float32)
        delta = (x - test.float_images()).reshape(len(x), -1)
        norms = np.linalg.norm(delta, axis=1)
        assert norms.max() <= 2.0 + 0.02, path     # eps 2.0, float16 storage
        assert np.median(norms) > 0.5, path        # and the attacks did move the images


def test_rerun_reuses_sets_and_victims_and_adding_a_victim_builds_only_it(smoke_transfer,
                                                                          tmp_path):
    out = smoke_transfer[1]
    work = copy_store(smoke_transfer[0], tmp_path / "store")
    again = _run(work).stdout
    assert _built(again) == 0 and "0 to build" in again
    assert _tables(again) == _tables(out)
    sets = sorted(os.listdir(work / "datasets"))
    # the added victim trains one epoch (the others' keys do not change: --epochs is per kind)
    more = _run(work, "--victims=mobilenet_v2,vgg16", "--epochs=3,vgg16:1").stdout
    assert "1 to build" in more and _built(more) == 1
    assert sorted(os.listdir(work / "datasets")) == sets   # no adversarial set rebuilt
    assert any(l.startswith("| vgg16 |") for l in _tables(more))


def test_n_targeted_reports_each_source_and_all_at_once(smoke_transfer, tmp_path):
    work = copy_store(smoke_transfer[0], tmp_path / "store")
    out = _run(work, "--attack=n_targeted").stdout
    assert _built(out) == 1                                # only the N-targeted set
    assert "All sources hit their own targets at once" in out
    assert not any(l.startswith("| all sources") for l in _tables(out))
    results = glob.glob(str(work / "results" / "transfer-n_targeted-ce-planted-*"))[0]
    data = json.load(open(os.path.join(results, "transfer.json")))
    recs = [r for r in data["records"] if r["attack"] == "n_targeted"]
    white = {r["source_eps"]: r for r in recs if r["model"] == "source (white-box)"}
    assert set(white) == {0.0, 1.0}
    assert any(r["model"] == "all sources" for r in recs)
    assert len([r for r in recs if r["model"] == "mobilenet_v2"]) == 2
    assert os.path.exists(os.path.join(results, "class_aware.png"))
    targets = np.load(glob.glob(str(work / "datasets" / "adv-n-*" / "targets.npy"))[0])
    assert targets.shape[0] == 2 and (targets[0] != targets[1]).all()
    first = np.load(glob.glob(str(work / "datasets" / "adv-n-*" / "first_hit.npy"))[0])
    assert first.shape == targets.shape and first.min() >= -1 and first.max() <= 10
    hits = {r["source_eps"]: r for r in recs if r["model"] == "first hit"}
    assert hits[0.0]["target_hit_rate"] >= white[0.0]["target_hit_rate"]   # hit at some step
    # the control for budget allocation: clipped margins, its own set and its own report
    margin = _run(work, "--attack=n_targeted", "--n_targeted_loss=margin").stdout
    assert _built(margin) == 1 and "first predicted its own target" in margin
    assert glob.glob(str(work / "datasets" / "adv-nm-*" / "first_hit.npy"))


def test_imagenet_weights_offline_fail_fast_naming_the_file(tmp_path):
    env = {**ENV, "KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    start = time.time()
    proc = _run(tmp_path / "work", "--victim_weights=imagenet", env=env, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in proc.stderr
    assert "Keras cache" in proc.stderr and "--victim_weights=none" in proc.stderr
    assert time.time() - start < 60
    assert not os.path.exists(tmp_path / "work" / "models")   # nothing was trained first
