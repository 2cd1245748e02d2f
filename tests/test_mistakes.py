"""Waseda et al.'s different-mistakes experiment: targets, success table, end to end at smoke
scale (files, attack norms, success above the clean rate, relabelled models, cache), and the
leakage control: the linear probe and the findings it decides."""

import dataclasses
import json
import os

import numpy as np
import pytest

from entangle import flags as entangle_flags
from entangle import report
from entangle.report import mistakes as report_mistakes
from entangle.core import inference, linear_probe
from entangle.studies import mistakes, pipeline
from conftest import run_binary, smoke_flags



def test_target_pairs_are_uniform_distinct_and_seeded():
    t = mistakes.draw_target_pair(20_000, 10, "distinct", seed=1)
    assert t.shape == (2, 20_000) and (t[0] != t[1]).all()
    for row in t:  # each sequence alone is uniform over all ten classes
        freq = np.bincount(row, minlength=10) / 20_000
        assert np.abs(freq - 0.1).max() < 0.01
    np.testing.assert_array_equal(t, mistakes.draw_target_pair(20_000, 10, "distinct", seed=1))
    assert not np.array_equal(t, mistakes.draw_target_pair(20_000, 10, "distinct", seed=2))
    ind = mistakes.draw_target_pair(20_000, 10, "independent", seed=1)
    assert abs(np.mean(ind[0] == ind[1]) - 0.1) < 0.01
    with pytest.raises(ValueError, match="targets"):
        mistakes.draw_target_pair(10, 10, "same")


def test_success_table_counts_hits():
    targets = np.array([[0, 1, 2, 3], [1, 2, 3, 0]])
    s = mistakes.success_table(np.array([0, 1, 0, 3]), np.array([1, 0, 3, 0]), targets)
    assert s == {"F1 hits Y1": 0.75, "F2 hits Y2": 0.75, "both": 0.5, "n": 4}


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="targets"):
        mistakes.MistakesConfig(targets="random")
    with pytest.raises(ValueError, match="eps > 0"):
        mistakes.MistakesConfig(eps=0.0)


def _config(workdir, *extra):
    fv = smoke_flags("--quiet", f"--workdir={workdir}", "--mistakes_eps=1.5",
                     "--mistakes_steps=10", "--mistakes_step_size=0.3", *extra)
    return entangle_flags.experiment_config(fv), entangle_flags.mistakes_config(fv)


@pytest.mark.slow
def test_mistakes_smoke_end_to_end(tmp_path):
    exp_cfg, cfg = _config(tmp_path / "work")
    out = tmp_path / "results"
    result = mistakes.run_mistakes(exp_cfg, cfg, log=lambda m: None)
    result.files, _ = report.write_results(report_mistakes.write_mistakes, result, str(out))
    # F1, F2, the N-targeted set, two relabelled models, the leakage probe's robust model
    assert len(result.built) == 6
    assert set(result.files) == {"md", "csv", "json", "png"}
    assert all(os.path.getsize(p) > 0 for p in result.files.values())
    assert "F1(X') = Y1" in open(result.files["md"]).read()
    js = json.load(open(result.files["json"]))
    assert set(js["relabelled"]) == {"Y1", "Y2"} and len(js["findings"]) == 3
    # the leakage control ran: probes on both relabelled sets and the clean ceiling, each
    # scored on the test images, and each relabelled model compared with its probe
    lk = result.leakage
    assert lk["eps"] == cfg.leakage_eps and lk["robust_model"]
    for name in ("Y1", "Y2", "clean"):
        assert lk[name]["n"] == len(pipeline.Experiment(exp_cfg).splits().test)
        assert lk[name]["lower"] <= lk[name]["accuracy"] <= lk[name]["upper"]
    for by in ("Y1", "Y2"):
        t = lk[by]["model_vs_probe"]
        assert t["p"] <= t["p_holm"] <= 1 and np.isclose(
            t["difference"], result.relabelled[by]["accuracy"] - lk[by]["accuracy"])
    # the robust features are informative about the true labels: the clean probe is the
    # ceiling, above chance on the planted smoke data
    assert lk["clean"]["lower"] > result.chance
    assert "Leakage control" in open(result.files["md"]).read()

    exp = pipeline.Experiment(exp_cfg)
    m = mistakes.Mistakes(exp, cfg)
    adv = m.adversarial()
    fit = exp.splits().fit_part()
    x, targets, success = adv["train"]
    assert x.dtype == np.float16 and len(x) == len(fit) and (targets[0] != targets[1]).all()
    delta = (np.asarray(x, np.float32) - fit.float_images()).reshape(len(x), -1)
    assert np.sqrt((delta ** 2).sum(1)).max() <= cfg.eps + 0.01
    # the attack moves each model towards its own targets, beyond what the clean images give
    f1, f2 = m.model("F1").model, m.model("F2").model
    clean = mistakes.success_table(inference.predict(f1, fit.x), inference.predict(f2, fit.x),
                                   targets)
    assert success["F1 hits Y1"] > clean["F1 hits Y1"] + 0.2
    assert success["F2 hits Y2"] > clean["F2 hits Y2"] + 0.2
    assert success["both"] <= min(success["F1 hits Y1"], success["F2 hits Y2"])
    # F2 is the standard model with another seed: a different model
    assert m.model_key("F1") != m.model_key("F2")
    # relabelled models: the constructed-set rules (no augmentation, early stopping)
    for by in ("Y1", "Y2"):
        trained = m.relabelled(by)
        assert trained.cached and trained.key == result.relabelled[by]["key"]
        assert not trained.manifest["config"]["train"]["augment"]
        assert trained.manifest["config"]["train"]["early_stopping"]
        # fresh models: neither starts from F1's or F2's initial weights
        seeds = {m.model("F1").manifest["config"]["train"]["seed"],
                 m.model("F2").manifest["config"]["train"]["seed"]}
        assert trained.manifest["config"]["train"]["seed"] not in seeds
        assert trained.manifest["config"]["train"]["seed"] != \
            m.relabelled("Y2" if by == "Y1" else "Y1").manifest["config"]["train"]["seed"]
    shared = mistakes.Mistakes(exp, dataclasses.replace(cfg, relabel_init="f1"))
    assert shared.relabel_config("Y1").seed == m.model("F1").manifest["config"]["train"]["seed"]
    assert shared.adversarial_key() == m.adversarial_key()
    assert shared.relabelled_key("Y1") != m.relabelled_key("Y1")
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    again = mistakes.run_mistakes(exp_cfg, cfg, log=lambda m: None)
    assert again.built == [] and again.relabelled == result.relabelled
    # a results folder that cannot be written: the result stays, with the reason
    files, error = report.write_results(report_mistakes.write_mistakes, again,
                                        str(blocked / "results"))
    assert files == {} and "cannot write the results" in error


def test_linear_probe_learns_signal_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 1200)
    centres = rng.normal(size=(4, 16)) * 3
    x = centres[y] + rng.normal(size=(1200, 16))
    fitted = linear_probe.fit_linear(x[:800], y[:800], 4)
    assert np.mean(fitted.predict(x[800:]) == y[800:]) > 0.95
    # labels independent of the features: a held-out accuracy near chance (0.25)
    shuffled = linear_probe.fit_linear(x[:800], rng.permutation(y[:800]), 4, l2=1e-2)
    assert np.mean(shuffled.predict(x[800:]) == y[800:]) < 0.4
    # a heavy penalty shrinks the weights
    small = linear_probe.fit_linear(x[:800], y[:800], 4, l2=10.0)
    assert np.abs(small.weights[:-1]).max() < np.abs(fitted.weights[:-1]).max()
    with pytest.raises(ValueError, match="features"):
        linear_probe.fit_linear(x[:10], y[:9], 4)


def _result_with(model_right, probe_right, n=400):
    """A MistakesResult whose Y1/Y2 models and probes are right on the given test images."""
    rel, lk = {}, {"eps": 0.5, "robust_model": "k", "l2": 1e-3}
    probes = {}
    for by in ("Y1", "Y2"):
        acc = float(np.mean(model_right[by]))
        lo, hi = mistakes.table_findings.wilson_interval(acc, n)
        rel[by] = {"accuracy": acc, "lower": lo, "upper": hi, "n": n}
        probes[by] = probe_right[by]
    for name in ("Y1", "Y2", "clean"):
        right = probe_right.get(name, np.ones(n, bool))
        t = mistakes.stats.chance_test(right, np.arange(n) % 10, 10)
        lk[name] = {"accuracy": t["value"], "lower": t["low"], "upper": t["high"], "n": n}
    tests = [mistakes.stats.mcnemar_exact(probes[by], model_right[by]) for by in ("Y1", "Y2")]
    for by, t, p in zip(("Y1", "Y2"), tests, mistakes.stats.holm([t["p"] for t in tests])):
        lk[by]["model_vs_probe"] = {**t, "p_holm": p, "significant": p <= 0.05
                                    and t["difference"] > 0}
    return mistakes.MistakesResult("d", {}, {}, rel, 0.1, {}, [], 0.0, leakage=lk)


def test_findings_separate_leakage_from_the_rest():
    n = 400
    idx = np.arange(n)
    model = {by: idx % 4 == 0 for by in ("Y1", "Y2")}            # 25 %: above chance
    at_chance = {by: idx % 10 == 3 for by in ("Y1", "Y2")}       # 10 %
    found = mistakes.findings(_result_with(model, at_chance, n))
    assert [f["held"] for f in found] == [True, False, True]
    # the probes do as well as the models: leakage can explain the whole effect
    found = mistakes.findings(_result_with(model, model, n))
    assert [f["held"] for f in found] == [True, True, False]
    # one relabelled model beats its probe, the other does not: not held for both
    mixed = {"Y1": at_chance["Y1"], "Y2": model["Y2"]}
    found = mistakes.findings(_result_with(model, mixed, n))
    assert [f["held"] for f in found] == [True, True, False]


def test_mistakes_binary_bad_flag_fails_cleanly(tmp_path):
    proc = run_binary("different_mistakes", "--flagfile=flags/smoke.cfg",
                      "--second_model=lenet", f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode != 0 and "second_model" in proc.stderr
    assert "Traceback" not in proc.stderr
