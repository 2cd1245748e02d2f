"""The paper's findings (a)-(e) as statistical tests on a Table result (Springer et al.
2021, section 4.1), with the table's own checks: per-image paired tests across columns
that share images, Holm-corrected, against chance where the finding says so."""

from __future__ import annotations

import numpy as np
from scipy import stats as st

from entangle import stats
from entangle.stats import paper


def wilson_interval(p: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion p observed over n trials (scipy)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = st.binomtest(int(round(p * n)), n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def lower_bound(report: dict) -> float:
    """The 95 % Wilson lower bound of an accuracy report (``accuracy`` over ``n`` images)."""
    return wilson_interval(report["accuracy"], report["n"])[0]


SMALL_EPS = 0.25        # the earlier rule of (a): one column with 0 < eps <= 1/4
A_MAX_EPS = 0.5         # (a) as section 5.1 states it: every column with 0 < eps <= 1/2
# (f): where Figure 3's peak may lie: eps <= 1/4 among the paper's columns, <= 1/16 when the
# extended columns (Table 5, down to 1/256) are built
PEAK_MAX_EPS, PEAK_MAX_EPS_EXTENDED = 0.25, 0.0625


NEAR_CHANCE = 0.05      # (b): the 95 % upper bound on R_0 within 5 points of chance


def findings(result, alpha: float = stats.ALPHA) -> list[dict]:
    """The paper's findings (section 4, and section 5.1 for Figure 3), each a test on paired
    per-image outcomes, with the earlier, looser rule of each beside it (``loose``).

    (a) standard better on every R_eps with 0 < eps <= 1/2 than on R_0 (section 5.1:
    "significantly higher accuracy on robustified test sets with 0 < eps <= 1/2"): exact
    McNemar per column against R_0, Holm. Looser: one column with eps <= 1/4.
    (b) robust near chance on R_0 (95 % upper bound <= chance + 5 points) and significantly
    better (McNemar, Holm) on every R_eps with eps >= 1/4 except its own (a convergence
    check: the generator sees the inversion of its own representation).
    (c) zero-robust above chance on every R_eps. (d) neg-robust above chance on every R_eps
    with eps > 0 "except for when eps is large" (all but the largest). Both against both
    nulls of a robustified set, chance and the seed control (the model on the seed images
    x0 with the labels y: what reading x0 alone scores), Holm. Looser: chance alone, and (d)
    on at least two columns. Neg-robust's Test accuracy is Ilyas et al.'s D_det result,
    reported separately (``checks``).
    (e) zero-robust accuracy decreases as eps grows over the eps > 0 columns: permutation
    test of the slope, columns permuted within images.
    (f) Figure 3's shape: the standard row peaks at a small eps (<= 1/4, or <= 1/16 with the
    extended columns) and R_1 lies significantly below the peak: one-sided exact McNemar,
    Bonferroni over the small columns the peak was chosen from.
    Chance tests use balanced accuracy where the test set's classes are unbalanced. A
    finding whose rows or columns are absent is not reported.
    """
    out = []
    y, k = result.labels, result.num_classes
    measure = "accuracy" if stats.is_balanced(y, k) else "balanced accuracy"
    cols = {c: column_eps(c) for c in result.columns if c.startswith("R_")}
    positive = [c for c, e in sorted(cols.items(), key=lambda t: t[1]) if e > 0]
    robust = next((r for r in result.rows if r.startswith("robust")), None)
    control = getattr(result, "seed_control", None) or {}

    def correct(row, col):
        return result.correct[row][col]

    def pct(v):
        return f"{100 * v:.1f}"

    def paired(row, cols_):
        return stats.paired_vs(correct(row, "R_0"), {c: correct(row, c) for c in cols_}, alpha)

    def describe(tests, against="R_0"):
        return "; ".join(f"{c} {t['difference'] * 100:+.1f} points vs {against} "
                         f"({t['second_only']}:{t['first_only']} discordant, p {t['p']:.3g}, "
                         f"Holm {t['p_holm']:.3g})" for c, t in tests.items())

    def vs_null(row, cols_, with_control):
        if with_control and row in control:
            tests = {c: stats.above_chance_and_control(correct(row, c), control[row], y, k)
                     for c in cols_}
        else:
            tests = {c: stats.chance_test(correct(row, c), y, k) for c in cols_}
        for c, p in zip(cols_, stats.holm([t["p"] for t in tests.values()])):
            tests[c]["p_holm"] = p
            tests[c]["significant"] = p <= alpha
        return tests

    def describe_null(tests):
        return "; ".join(
            f"{c} {pct(t['value'])} % (95 % {pct(t['low'])}-{pct(t['high'])}"
            + (f", seed control {pct(t['control'])} %" if "control" in t else "")
            + f", p {t['p']:.3g}, Holm {t['p_holm']:.3g})" for c, t in tests.items())

    def null_test_name(row):
        base = ("one-sided exact binomial" if measure == "accuracy"
                else "one-sided z-test of balanced accuracy")
        if row in control:
            return (f"{base} vs chance and one-sided exact McNemar vs the seed control (the "
                    f"larger p), per column, Holm")
        return f"{base} per column, Holm"

    if "standard" in result.rows and "R_0" in cols:
        strict = [c for c in positive if cols[c] <= A_MAX_EPS]
        small = [c for c in positive if cols[c] <= SMALL_EPS]
        if strict:
            tests = paired("standard", strict)
            loose = paired("standard", small) if small else {}
            out.append(_finding(
                "a", "standard does better on every R_eps with 0 < eps <= 1/2 than on R_0",
                "exact McNemar per column vs R_0, Holm",
                all(t["significant"] for t in tests.values()), describe(tests), "accuracy",
                tests, loose=_loose("on some R_eps with 0 < eps <= 1/4",
                                    any(t["significant"] for t in loose.values()),
                                    describe(loose))))
    if robust and "R_0" in cols:
        own = next((c for c in positive if abs(cols[c] - result.robust_eps) < 1e-9), None)
        larger = [c for c in positive if cols[c] >= SMALL_EPS and
                  not (c == own and result.robust_is_generator)]
        if larger:
            near = stats.chance_test(correct(robust, "R_0"), y, k)
            near_ok = near["high"] <= near["chance"] + NEAR_CHANCE
            tests = paired(robust, larger)
            held = near_ok and all(t["significant"] for t in tests.values())
            seed = (f", seed control {pct(control[robust].mean())} %" if robust in control
                    else "")
            out.append(_finding(
                "b", "robust is near chance on R_0 and significantly better on R_eps, eps >= "
                "1/4 (its own column excluded)",
                "95 % upper bound on R_0 within 5 points of chance; exact McNemar vs R_0, "
                "Holm", held, f"R_0 {pct(near['value'])} % (95 % upper {pct(near['high'])}, "
                f"chance {pct(near['chance'])}{seed}); " + describe(tests), near["measure"],
                {"R_0": near, **tests}))
    if "zero_robust" in result.rows and cols:
        tests = vs_null("zero_robust", list(cols), True)
        loose = vs_null("zero_robust", list(cols), False)
        out.append(_finding("c", "zero-robust is above chance on every R_eps",
                            null_test_name("zero_robust"),
                            all(t["significant"] for t in tests.values()),
                            describe_null(tests), measure, tests,
                            loose=_loose("above chance alone (no seed control)",
                                         all(t["significant"] for t in loose.values()),
                                         describe_null(loose))))
    if "neg_robust" in result.rows and len(positive) >= 2:
        strict = positive[:-1]
        tests = vs_null("neg_robust", strict, True)
        loose = vs_null("neg_robust", positive, False)
        hits = sum(t["significant"] for t in loose.values())
        out.append(_finding("d", "neg-robust is above chance on every R_eps with eps > 0 "
                            "except the largest", null_test_name("neg_robust"),
                            all(t["significant"] for t in tests.values()),
                            describe_null(tests), measure, tests,
                            loose=_loose("above chance alone on at least two R_eps with eps > 0",
                                         hits >= 2, f"{hits} of {len(positive)} columns: "
                                         + describe_null(loose))))
    if "zero_robust" in result.rows and len(positive) >= 2:
        trend = stats.trend_test([correct("zero_robust", c) for c in positive])
        out.append(_finding("e", "zero-robust accuracy decreases as eps grows (eps > 0)",
                            trend["test"], trend["p"] <= alpha,
                            ", ".join(f"{c} {pct(correct('zero_robust', c).mean())}"
                                      for c in positive) +
                            f" %; slope {100 * trend['statistic']:+.2f} points per column, "
                            f"p {trend['p']:.3g}", "accuracy", {"trend": trend}))
    shape = _figure3_shape(result, cols, positive, alpha)
    if shape:
        out.append(shape)
    return out


def _figure3_shape(result, cols: dict, positive: list, alpha: float) -> dict | None:
    """(f): the standard row's peak over the eps > 0 columns lies at a small eps, and R_1 is
    significantly below it (one-sided exact McNemar, Bonferroni over the candidate peaks)."""
    last = next((c for c in positive if abs(cols[c] - 1.0) < 1e-9), None)
    if "standard" not in result.rows or last is None:
        return None
    limit = PEAK_MAX_EPS_EXTENDED if min(cols[c] for c in positive) < 0.0625 - 1e-9 \
        else PEAK_MAX_EPS
    candidates = [c for c in positive if cols[c] <= limit + 1e-9]
    if not candidates:
        return None
    acc = {c: result.correct["standard"][c].mean() for c in positive}
    peak = max(positive, key=lambda c: (acc[c], -cols[c]))
    test = stats.mcnemar_exact(result.correct["standard"][last],
                               result.correct["standard"][peak], alternative="greater")
    test["p_bonferroni"] = min(1.0, test["p"] * len(candidates))
    at_small = peak in candidates
    held = at_small and test["p_bonferroni"] <= alpha and test["difference"] > 0
    detail = (f"peak {peak} {100 * acc[peak]:.1f} % ({'at' if at_small else 'NOT at'} a small "
              f"eps <= {limit:g}); R_1 {100 * acc[last]:.1f} %, {100 * test['difference']:+.1f} "
              f"points below ({test['second_only']}:{test['first_only']} discordant, p "
              f"{test['p']:.3g}, x{len(candidates)} Bonferroni {test['p_bonferroni']:.3g}); "
              + ", ".join(f"{c} {100 * acc[c]:.1f}" for c in positive) + " %")
    return _finding("f", f"standard peaks at a small eps (<= {limit:g}) and R_1 is "
                    "significantly below the peak (Figure 3)",
                    "argmax over eps > 0; one-sided exact McNemar peak vs R_1, Bonferroni over "
                    "the small columns", held, detail, "accuracy",
                    {"peak": peak, "limit": limit, "vs_R_1": test})


def _loose(rule: str, held: bool, detail: str) -> dict:
    return {"rule": rule, "held": bool(held), "detail": detail}


def _finding(name, text, test, held, detail, measure, tests, loose=None) -> dict:
    return {"finding": name, "text": text, "test": test, "held": bool(held), "detail": detail,
            "measure": measure, "tests": tests, "loose": loose}


def checks(result) -> list[dict]:
    """Reported beside the findings, not as findings: neg-robust on Test (Ilyas et al.'s
    D_det result) and the robust generator's accuracy on its own R_eps (convergence)."""
    out = []
    y, k = result.labels, result.num_classes
    if "neg_robust" in result.rows:
        t = stats.chance_test(result.correct["neg_robust"]["Test"], y, k)
        out.append({"check": "neg-robust on Test (Ilyas et al.'s D_det result)",
                    "detail": f"{100 * t['value']:.1f} % (95 % {100 * t['low']:.1f}-"
                              f"{100 * t['high']:.1f}, one-sided p {t['p']:.3g} vs chance)",
                    "test": t})
    control = getattr(result, "seed_control", None) or {}
    if control:
        pairing = getattr(result, "pairing", {}) or {}
        frac = pairing.get("same_class_fraction")
        out.append({"check": "seed control (each row's classifier on the seed images x0, "
                             "scored on the labels y: what reading x0 alone scores)",
                    "detail": "; ".join(f"{r} {100 * np.mean(v):.1f} %"
                                        for r, v in control.items())
                              + (f"; {100 * frac:.1f} % of the pairs (x, x0) share a class "
                                 f"(pairing drawn by the {pairing.get('mode', '?')}, seed "
                                 f"{pairing.get('seed')})" if frac is not None else ""),
                    "values": {r: float(np.mean(v)) for r, v in control.items()},
                    "same_class_fraction": frac})
    rate = getattr(result, "neg_target_rate", None) or {}
    if rate:
        best = ((getattr(result, "row_metrics", None) or {}).get("neg_robust") or {}).get(
            "best_val") or {}
        learnt = (f"; on its constructed hold-out (labels y + 1) {100 * best['val_accuracy']:.1f} "
                  f"% at its best epoch {best['epoch'] + 1}, against "
                  f"{100 * result.cells['neg_robust']['Test']['accuracy']:.1f} % naming y on "
                  f"Test" if best.get("val_accuracy", -1) >= 0 and "neg_robust" in result.cells
                  else "")
        out.append({"check": "neg-robust names its training target y + 1 (the rate a model "
                             "reading the robust features of x would reach)",
                    "detail": ", ".join(f"{c} {100 * v:.1f} %" for c, v in rate.items()) + learnt,
                    "values": rate, "holdout": best})
    built = getattr(result, "constructed", None) or {}
    if built:
        out.append({"check": "constructed sets: targeted success of their PGD on the source "
                             "model (the share of images that carry the target's features)",
                    "detail": "; ".join(
                        f"{k} " + ", ".join(f"{part} {100 * m[f'targeted_success_on_source_{part}']:.1f} %"
                                            for part in ("train", "val")
                                            if f"targeted_success_on_source_{part}" in m)
                        for k, m in built.items()),
                    "values": built})
    robust = next((r for r in result.rows if r.startswith("robust")), None)
    own = f"R_{paper.eps_label(result.robust_eps)}"
    if robust and own in result.columns and result.robust_is_generator:
        test, mine = result.cells[robust]["Test"], result.cells[robust][own]
        out.append({"check": f"convergence: the robust generator on its own {own}",
                    "detail": f"{100 * mine['accuracy']:.1f} % on {own} vs "
                              f"{100 * test['accuracy']:.1f} % on Test (equal when "
                              "robustification converged)"})
    return out


def column_eps(label: str) -> float:
    """The eps of a column label such as R_1/4 (0.25) or R_1 (1.0)."""
    text = label[2:]
    if "/" in text:
        num, den = text.split("/")
        return float(num) / float(den)
    return float(text)
