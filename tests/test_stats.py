"""The statistics behind the findings: McNemar, Holm, chance, trend; and the findings
themselves on hand-made tables, each held and not held."""

import numpy as np
import pytest

from entangle import data, stats
from entangle.stats import findings as table_findings
from entangle.studies import entanglement

N = 500


def first(k, n=N):
    """Per-image outcomes with the first k images right (nested sets: paired differences
    all go one way)."""
    return np.arange(n) < k


def test_mcnemar_exact_matches_a_hand_computed_case():
    # 2 images right only in the first column, 8 only in the second: two-sided exact
    # p = 2 * P(X <= 2 | n=10, 1/2) = 2 * (1 + 10 + 45) / 1024
    a = np.array([1, 1] + [0] * 8 + [1] * 5 + [0] * 5, bool)
    b = np.array([0, 0] + [1] * 8 + [1] * 5 + [0] * 5, bool)
    t = stats.mcnemar_exact(a, b)
    assert (t["first_only"], t["second_only"]) == (2, 8)
    assert t["p"] == pytest.approx(2 * 56 / 1024)
    assert t["difference"] == pytest.approx(0.3)
    assert stats.mcnemar_exact(a, a)["p"] == 1.0  # no discordant pairs
    with pytest.raises(ValueError, match="one shape"):
        stats.mcnemar_exact(a, b[:5])


def test_holm_keeps_and_rejects_as_it_should():
    # sorted 0.01, 0.02, 0.03, 0.04 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06 (monotone), 0.06
    adjusted = stats.holm([0.03, 0.01, 0.04, 0.02])
    assert adjusted == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert [p <= 0.05 for p in adjusted] == [False, True, False, False]
    assert stats.holm([0.001, 0.9]) == pytest.approx([0.002, 0.9])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_trend_test_detects_a_decreasing_trend_and_not_a_flat_one():
    rng = np.random.default_rng(0)
    base = rng.random(N)
    falling = [base < p for p in (0.35, 0.28, 0.21, 0.14)]
    assert stats.trend_test(falling, n_resamples=999)["p"] < 0.01
    flat = [rng.random(N) < 0.25 for _ in range(4)]
    assert stats.trend_test(flat, n_resamples=999)["p"] > 0.05
    rising = falling[::-1]
    assert stats.trend_test(rising, n_resamples=999)["p"] > 0.5


def test_chance_uses_balanced_accuracy_on_an_unbalanced_set():
    y = np.array([0] * 400 + list(range(1, 10)) * 11 + [1])   # 80 % class 0
    always_zero = y == 0                                       # 80 % plain accuracy
    t = stats.chance_test(always_zero, y, 10)
    assert t["measure"] == "balanced accuracy"
    assert t["value"] == pytest.approx(0.1) and t["p"] > 0.4   # at chance: not above it
    balanced = np.repeat(np.arange(10), 50)
    t = stats.chance_test(first(100), balanced, 10)
    assert t["measure"] == "accuracy" and t["value"] == 0.2 and t["p"] < 1e-10
    assert t["low"] < 0.2 < t["high"]


COLS = ["Test", "R_0", "R_1/16", "R_1/4", "R_1/2", "R_1"]


def hand_table(outcomes: dict, labels=None, robust_eps=0.5, seed_control=None,
               columns=None) -> entanglement.TableResult:
    """A TableResult from per-image outcomes {row: {column: bool array}} (and, optionally,
    each row's seed-control outcomes)."""
    cols_ = COLS if columns is None else columns
    labels = np.repeat(np.arange(10), N // 10) if labels is None else labels
    cells = {r: {c: data.accuracy_report(np.where(v, labels, (labels + 1) % 10), labels, 10)
                 for c, v in cols.items()} for r, cols in outcomes.items()}
    return entanglement.TableResult(
        dataset="hand", rows=list(outcomes), columns=cols_, cells=cells,
        paper={r: {} for r in outcomes}, chance=0.1, majority_rate={c: 0.1 for c in cols_},
        median_relative_distance={}, models={}, built=[], seconds=0, labels=labels,
        num_classes=10, correct=outcomes, robust_eps=robust_eps,
        seed_control=seed_control or {})


def good_outcomes():
    """A table on which the paper's five findings all hold."""
    return {
        "standard": dict(zip(COLS, map(first, (450, 100, 160, 150, 120, 90)))),
        "robust (eps 0.5)": dict(zip(COLS, map(first, (300, 50, 70, 180, 290, 250)))),
        "zero_robust": dict(zip(COLS, map(first, (150, 170, 160, 140, 120, 100)))),
        "neg_robust": dict(zip(COLS, map(first, (90, 140, 120, 100, 80, 60)))),
    }


def held(outcomes, **kw):
    return {f["finding"]: f["held"] for f in table_findings.findings(hand_table(outcomes, **kw))}


def loose(outcomes, **kw):
    return {f["finding"]: f["loose"]["held"] for f in
            table_findings.findings(hand_table(outcomes, **kw)) if f["loose"]}


def test_every_finding_holds_on_a_table_built_to_show_them():
    assert held(good_outcomes()) == dict.fromkeys("abcdef", True)
    assert loose(good_outcomes()) == dict.fromkeys("acd", True)
    result = hand_table(good_outcomes())
    for f in table_findings.findings(result):
        assert f["test"] and f["measure"] == "accuracy" and "p " in f["detail"]


@pytest.mark.parametrize("finding, row, cells", [
    # (a): one column with 0 < eps <= 1/2 no better than R_0
    ("a", "standard", {"R_1/2": 100}),
    # (b): R_0 far above chance (upper bound beyond chance + 5 points)
    ("b", "robust (eps 0.5)", {"R_0": 100}),
    # (b): R_1 not better than R_0 (R_1/2, its own column, does not count)
    ("b", "robust (eps 0.5)", {"R_1": 50}),
    # (c): one column at chance
    ("c", "zero_robust", {"R_1": 50}),
    # (d): above chance on one eps > 0 column only
    ("d", "neg_robust", {"R_1/4": 50, "R_1/2": 50, "R_1": 50}),
    # (d): at chance on R_1/2 (the largest column R_1 does not count)
    ("d", "neg_robust", {"R_1/2": 50}),
    # (e): flat
    ("e", "zero_robust", {"R_1/16": 130, "R_1/4": 130, "R_1/2": 130, "R_1": 130}),
    # (f): the standard row peaks at R_1/2, not at a small eps
    ("f", "standard", {"R_1/2": 200}),
    # (f): R_1 not significantly below the peak
    ("f", "standard", {"R_1": 155}),
])
def test_each_finding_fails_where_its_test_says_so(finding, row, cells):
    outcomes = good_outcomes()
    for c, k in cells.items():
        outcomes[row][c] = first(k)
    got = held(outcomes)
    assert got[finding] is False
    assert all(v for f, v in got.items() if f != finding)


@pytest.mark.parametrize("finding, row, cells", [
    # (a): R_1/16 and R_1/4 above R_0, R_1/2 not: the earlier rule (one column <= 1/4) holds
    ("a", "standard", {"R_1/2": 100}),
    # (d): above chance on R_1/16 and R_1/4 but not R_1/2: the earlier rule (two columns) holds
    ("d", "neg_robust", {"R_1/2": 50, "R_1": 50}),
])
def test_the_papers_rule_can_fail_where_the_earlier_looser_rule_holds(finding, row, cells):
    outcomes = good_outcomes()
    for c, k in cells.items():
        outcomes[row][c] = first(k)
    assert held(outcomes)[finding] is False and loose(outcomes)[finding] is True


def test_a_model_that_reads_only_x0_is_at_the_seed_control_null():
    """(c) above chance on every column, but every R_eps outcome is exactly the seed control's
    (the model reads only x0, whose class is y for a fifth of the pairs): held against chance
    alone, not against the seed control."""
    outcomes = good_outcomes()
    reads_x0 = first(100)                       # 20 %: x0's class equals y that often
    for c in COLS[1:]:
        outcomes["zero_robust"][c] = reads_x0.copy()
    control = {"zero_robust": reads_x0.copy()}
    assert loose(outcomes, seed_control=control)["c"] is True
    assert held(outcomes, seed_control=control)["c"] is False
    assert held(outcomes)["c"] is True          # without the control: chance alone
    # above the control on every column by 40 images: held against both
    for c in COLS[1:]:
        outcomes["zero_robust"][c] = first(140)
    assert held(outcomes, seed_control=control)["c"] is True
    checks = {c["check"].split(" (")[0]: c for c in
              table_findings.checks(hand_table(outcomes, seed_control=control))}
    assert checks["seed control"]["values"]["zero_robust"] == pytest.approx(0.2)


def test_figure3_peak_limit_is_1_16_with_the_extended_columns():
    columns = ["Test", "R_0", "R_1/256", "R_1/16", "R_1/4", "R_1"]
    outcomes = {"standard": dict(zip(columns, map(first, (450, 100, 120, 140, 160, 90))))}
    f = next(f for f in table_findings.findings(hand_table(outcomes, columns=columns))
             if f["finding"] == "f")
    assert f["tests"]["limit"] == 0.0625 and f["tests"]["peak"] == "R_1/4" and not f["held"]
    outcomes["standard"]["R_1/4"] = first(130)
    f = next(f for f in table_findings.findings(hand_table(outcomes, columns=columns))
             if f["finding"] == "f")
    assert f["tests"]["peak"] == "R_1/16" and f["held"]


def test_neg_robust_on_test_is_reported_beside_not_as_finding_d():
    outcomes = good_outcomes()
    outcomes["neg_robust"]["Test"] = first(50)    # at chance on Test: (d) does not care
    result = hand_table(outcomes)
    assert held(outcomes)["d"] is True
    checks = {c["check"]: c for c in table_findings.checks(result)}
    assert "10.0 %" in checks["neg-robust on Test (Ilyas et al.'s D_det result)"]["detail"]
    assert any(c.startswith("convergence") for c in checks)


def test_findings_use_balanced_accuracy_on_an_unbalanced_test_set():
    labels = np.array([0] * 300 + list(np.arange(1, 10).repeat(22)) + [1, 2])
    outcomes = good_outcomes()
    # zero-robust always says class 0: 60 % plain accuracy, chance balanced accuracy
    outcomes["zero_robust"] = {c: labels == 0 for c in COLS}
    result = hand_table(outcomes, labels=labels)
    c = next(f for f in table_findings.findings(result) if f["finding"] == "c")
    assert c["measure"] == "balanced accuracy" and c["held"] is False


def test_paired_vs_corrects_over_columns_and_needs_the_column_higher():
    base = np.zeros(100, bool)
    up = np.zeros(100, bool)
    up[:20] = True                                   # 20 discordant, all for the column
    down = np.zeros(100, bool)
    base_down = base.copy()
    base_down[:20] = True
    tests = stats.paired_vs(base, {"up": up, "same": base.copy()})
    assert tests["up"]["significant"] and not tests["same"]["significant"]
    assert tests["up"]["p_holm"] == pytest.approx(min(1.0, 2 * tests["up"]["p"]))
    assert not stats.paired_vs(base_down, {"down": down})["down"]["significant"]


def test_sign_test_is_one_sided_and_drops_zeros():
    res = stats.sign_test([0.1, 0.2, 0.05, 0.3, 0.0, 0.2, 0.1])
    assert (res["positive"], res["negative"], res["zero"]) == (6, 0, 1)
    assert res["p"] == pytest.approx(1 / 64)
    assert stats.sign_test([-0.1, -0.2, -0.3])["p"] == 1.0
