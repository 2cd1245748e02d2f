"""The figures say what they show: no line across the eps = 0 axis break or from Test to the
R_eps curve, 95 % intervals where a count is known, the paper's values, the legend outside."""

import numpy as np
import pytest

from entangle import report
from entangle.stats.findings import wilson_interval


@pytest.fixture
def drawn(monkeypatch):
    """The axes of the next figure, captured before it is saved and closed."""
    from entangle.report import planted as planted_report

    axes = []
    real = report.finish_plot

    def keep(plt, fig, ax, path, title, ylabel, top=100, note=""):
        real(plt, fig, ax, path, title, ylabel, top, note)
        axes.append((ax, title, " ".join(t.get_text() for t in fig.texts)))
    monkeypatch.setattr(report, "finish_plot", keep)
    monkeypatch.setattr(planted_report, "finish_plot", keep)
    return axes


def _curves(ax):
    """(x, y) of every drawn data line with more than one point (markers and bars aside)."""
    out = []
    for line in ax.get_lines():
        x, y = (np.asarray(v, float) for v in line.get_data())
        if len(x) > 1 and line.get_linestyle() not in ("None", "") and not (
                np.allclose(x, x[0]) or np.allclose(y, y[0])):    # whiskers, chance
            out.append((x, y))
    return out


def test_eps_curves_never_cross_the_break_and_carry_intervals(tmp_path, drawn):
    series = {"standard": {0.0: 0.30, 0.25: 0.50, 0.5: 0.40, 1.0: 0.35}}
    paper = {0.0: 31.0, 0.25: 52.0, 0.5: 45.0}
    report.plot_vs_eps(series, str(tmp_path / "f.png"), "Figure 3", "accuracy (%)",
                       chance=0.1, paper=paper,
                       counts={"standard": {e: 500 for e in series["standard"]}})
    ax, title, _ = drawn[0]
    zero_at = ax.get_xticks()[0]
    curves = _curves(ax)
    assert len(curves) == 2                      # ours and the paper's, eps > 0 each
    for x, _ in curves:
        assert np.all(x > zero_at * 1.6), x      # nothing joins eps = 0 to the rest
    bars = [c for c in ax.collections if len(c.get_segments())]
    lo, hi = wilson_interval(0.5, 500)
    spans = sorted(tuple(np.round(s[:, 1], 6)) for c in bars for s in c.get_segments())
    assert (round(100 * lo, 6), round(100 * hi, 6)) in spans
    assert "95 % intervals" in title
    assert any(t.get_text() == "paper" for t in ax.get_legend().get_texts())
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1


def test_the_table_plot_keeps_test_apart_from_the_r_eps_curve(tmp_path, drawn):
    class Result:
        rows = ["standard"]
        columns = ["Test", "R_0", "R_1/4", "R_1/2"]
        cells = {"standard": {c: {"accuracy": a, "n": 500}
                              for c, a in zip(columns, (0.9, 0.3, 0.5, 0.45))}}
        paper = {"standard": {"Test": 94.0, "R_0": 31.0, "R_1/4": 55.0}}
        chance = 0.1
    report.plot_table(Result(), str(tmp_path / "t.png"), "Table 1")
    ax, _, _ = drawn[0]
    curves = _curves(ax)
    assert curves and all(np.all(x >= 1) for x, _ in curves)   # column 0 (Test) stands alone
    assert any(len(x) == 3 for x, _ in curves)                 # R_0 .. R_1/2 joined
    assert "paper" in [t.get_text() for t in ax.get_legend().get_texts()]

    Result.paper = {"standard": {}}                             # planted data: no paper
    report.plot_table(Result(), str(tmp_path / "t2.png"), "Table 1")
    ax, _, _ = drawn[-1]
    assert "paper" not in [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_figure_without_paper_values_and_the_leakage_whiskers_say_so(tmp_path, drawn):
    """Figure 4 and the transfer figures have no numbers in the paper, and the leakage
    whiskers are a range over seeds: each figure says which at its foot."""
    import types

    from entangle.report import planted as planted_report
    from entangle.report.figures import write_curve
    from entangle.studies.figures import CurveResult

    curve = CurveResult("cifar10", {"eps-robust on test": {
        e: {"accuracy": a, "balanced_accuracy": a, "majority_rate": 0.1, "n": 500}
        for e, a in ((0.0, 0.6), (0.25, 0.5), (1.0, 0.4))}}, {}, 0.1, [], "Figure 4",
        "test accuracy (%)", note="No paper values drawn: a plot only.")
    write_curve(curve, str(tmp_path / "f4"))
    assert "No paper values drawn" in drawn[-1][2]

    runs = [types.SimpleNamespace(features=w, seed=s, leakage={1.0: {
        k: {t: {"accuracy": 0.1 + 0.05 * s} for t in "ABCD"} for k in ("zero_robust",
                                                                      "neg_robust")}})
            for w in ("A+B", "A+C") for s in (0, 3)]
    planted_report.plot_leakage(types.SimpleNamespace(budgets=[1.0], runs=runs, chance=0.1),
                                str(tmp_path / "leak.png"))
    ax, _, note = drawn[-1]
    assert "mean over seeds 0, 3" in note and "range" in note
    assert (tmp_path / "leak.png").stat().st_size > 0


def test_the_class_aware_legend_sits_outside_every_victims_bars(tmp_path, monkeypatch):
    import types

    import matplotlib.pyplot as plt

    from entangle.report import transfer as transfer_report

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    records = [{"attack": a, "model": v, "source_eps": e, "class_aware_n": 50,
                "class_aware_unfooled": 0.6, "class_aware_different": 0.2,
                "class_aware_same": 0.2}
               for a in ("untargeted", "targeted") for v in ("vgg16", "xception")
               for e in (0.0, 0.25, 1.0)]
    result = types.SimpleNamespace(records=records, victims=("vgg16", "xception"))
    transfer_report.plot_class_aware(result, str(tmp_path / "ca.png"), "transfer")
    for ax in figures[-1].axes:
        legend = ax.get_legend()
        assert legend is not None
        figures[-1].canvas.draw()
        bars = max(p.get_window_extent().x1 for p in ax.patches)
        assert legend.get_window_extent().x0 >= bars, "the legend covers a bar"
