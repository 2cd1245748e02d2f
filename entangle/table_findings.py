"""The paper's findings (a)-(e) as statistical tests on a Table result (Springer et al.
2021, section 4.1), with the table's own checks: per-image paired tests across columns
that share images, Holm-corrected, against chance where the finding says so."""

from __future__ import annotations

from scipy import stats as st

from entangle import paper, stats


def wilson_interval(p: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion p observed over n trials (scipy)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = st.binomtest(int(round(p * n)), n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def lower_bound(report: dict) -> float:
    """The 95 % Wilson lower bound of an accuracy report (``accuracy`` over ``n`` images)."""
    return wilson_interval(report["accuracy"], report["n"])[0]


SMALL_EPS = 0.25        # (a): the "small eps > 0" columns are 0 < eps <= 1/4


NEAR_CHANCE = 0.05      # (b): the 95 % upper bound on R_0 within 5 points of chance


def findings(result, alpha: float = stats.ALPHA) -> list[dict]:
    """The paper's five findings (section 4), each a test on paired per-image outcomes.

    (a) standard better on R_eps for small eps > 0 than on R_0: exact McNemar of each column
    with 0 < eps <= 1/4 against R_0, Holm across them; held when one improves significantly.
    (b) robust near chance on R_0 (95 % upper bound <= chance + 5 points) and significantly
    better (McNemar, Holm) on every R_eps with eps >= 1/4 except its own (a convergence
    check: the generator sees the inversion of its own representation).
    (c) zero-robust above chance on every R_eps: one-sided test per column, Holm.
    (d) neg-robust above chance on at least two R_eps with eps > 0 (one-sided, Holm). Its
    Test accuracy is Ilyas et al.'s D_det result, reported separately (not a finding here).
    (e) zero-robust accuracy decreases as eps grows over the eps > 0 columns: permutation
    test of the slope, columns permuted within images.
    Chance tests use balanced accuracy where the test set's classes are unbalanced. A
    finding whose rows or columns are absent is not reported.
    """
    out = []
    y, k = result.labels, result.num_classes
    measure = "accuracy" if stats.is_balanced(y, k) else "balanced accuracy"
    cols = {c: column_eps(c) for c in result.columns if c.startswith("R_")}
    positive = [c for c, e in sorted(cols.items(), key=lambda t: t[1]) if e > 0]
    robust = next((r for r in result.rows if r.startswith("robust")), None)

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

    def vs_chance(row, cols_):
        tests = {c: stats.chance_test(correct(row, c), y, k) for c in cols_}
        for c, p in zip(cols_, stats.holm([t["p"] for t in tests.values()])):
            tests[c]["p_holm"] = p
            tests[c]["significant"] = p <= alpha
        return tests

    def describe_chance(tests):
        return "; ".join(f"{c} {pct(t['value'])} % (95 % {pct(t['low'])}-{pct(t['high'])}, "
                         f"p {t['p']:.3g}, Holm {t['p_holm']:.3g})" for c, t in tests.items())

    if "standard" in result.rows and "R_0" in cols:
        small = [c for c in positive if cols[c] <= SMALL_EPS]
        if small:
            tests = paired("standard", small)
            out.append(_finding("a", "standard does better on R_eps (0 < eps <= 1/4) than on "
                                "R_0", "exact McNemar per column vs R_0, Holm",
                                any(t["significant"] for t in tests.values()),
                                describe(tests), "accuracy", tests))
    if robust and "R_0" in cols:
        own = next((c for c in positive if abs(cols[c] - result.robust_eps) < 1e-9), None)
        larger = [c for c in positive if cols[c] >= SMALL_EPS and
                  not (c == own and result.robust_is_generator)]
        if larger:
            near = stats.chance_test(correct(robust, "R_0"), y, k)
            near_ok = near["high"] <= near["chance"] + NEAR_CHANCE
            tests = paired(robust, larger)
            held = near_ok and all(t["significant"] for t in tests.values())
            out.append(_finding(
                "b", "robust is near chance on R_0 and significantly better on R_eps, eps >= "
                "1/4 (its own column excluded)",
                "95 % upper bound on R_0 within 5 points of chance; exact McNemar vs R_0, "
                "Holm", held, f"R_0 {pct(near['value'])} % (95 % upper {pct(near['high'])}, "
                f"chance {pct(near['chance'])}); " + describe(tests), near["measure"],
                {"R_0": near, **tests}))
    if "zero_robust" in result.rows and cols:
        tests = vs_chance("zero_robust", list(cols))
        out.append(_finding("c", "zero-robust is above chance on every R_eps",
                            f"one-sided {next(iter(tests.values()))['test']} per column, Holm",
                            all(t["significant"] for t in tests.values()),
                            describe_chance(tests), measure, tests))
    if "neg_robust" in result.rows and positive:
        tests = vs_chance("neg_robust", positive)
        hits = sum(t["significant"] for t in tests.values())
        out.append(_finding("d", "neg-robust is above chance on R_eps with eps > 0, except "
                            "the largest (at least two columns)",
                            f"one-sided {next(iter(tests.values()))['test']} per column, "
                            f"Holm; held on >= 2 columns", hits >= 2,
                            f"{hits} of {len(positive)} columns: " + describe_chance(tests),
                            measure, tests))
    if "zero_robust" in result.rows and len(positive) >= 2:
        trend = stats.trend_test([correct("zero_robust", c) for c in positive])
        out.append(_finding("e", "zero-robust accuracy decreases as eps grows (eps > 0)",
                            trend["test"], trend["p"] <= alpha,
                            ", ".join(f"{c} {pct(correct('zero_robust', c).mean())}"
                                      for c in positive) +
                            f" %; slope {100 * trend['statistic']:+.2f} points per column, "
                            f"p {trend['p']:.3g}", "accuracy", {"trend": trend}))
    return out


def _finding(name, text, test, held, detail, measure, tests) -> dict:
    return {"finding": name, "text": text, "test": test, "held": bool(held), "detail": detail,
            "measure": measure, "tests": tests}


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
