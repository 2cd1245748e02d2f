"""Transfer as measured per image: targets drawn for targeted attacks, Waseda et al.'s
class-aware ratios, the paper's rates conditioned on the victim's clean accuracy, and the
paper's direction (section 5.2) as paired tests over sources and a sign test over victims."""

from __future__ import annotations

import math

import numpy as np

from entangle import stats
from entangle.stats import findings as table_findings, paper


def draw_targets(y: np.ndarray, num_classes: int, k: int = 1, seed: int = 0) -> np.ndarray:
    """(k, n) targets: per image, k distinct classes drawn uniformly from the wrong ones.

    Row 0 is the same for every k (same seed), so the targeted attack and the N-targeted
    attack's first source share their targets.
    """
    y = np.asarray(y)
    if not 1 <= k < num_classes:
        raise ValueError(f"need 1 <= k < num_classes ({num_classes}) targets; got {k}")
    keys = np.random.default_rng([seed, 9173]).random((len(y), num_classes))
    keys[np.arange(len(y)), y] = np.inf
    return np.argsort(keys, axis=1, kind="stable")[:, :k].T.astype(np.int64)


def class_aware(y, source_clean, source_adv, victim_adv, victim_clean=None) -> dict:
    """Waseda et al.'s ratios over D'_F1 = {source right on x, wrong on x' (as y1)}.

    Returns un-fooled (victim says y), different (another wrong class), same (y1): they sum
    to 1; n is |D'_F1| (ratios are NaN when it is empty). With ``victim_clean`` (the
    victim's predictions on the clean images), D'_F1 is restricted to the images the victim
    classifies correctly: a victim's own mistakes then cannot count as transfer.
    """
    y, sc, sa, va = (np.asarray(a) for a in (y, source_clean, source_adv, victim_adv))
    mask = (sc == y) & (sa != y)
    if victim_clean is not None:
        mask &= np.asarray(victim_clean) == y
    n = int(mask.sum())
    if n == 0:
        return {"unfooled": math.nan, "different": math.nan, "same": math.nan, "n": 0}
    v, y1, yy = va[mask], sa[mask], y[mask]
    unfooled, same = float(np.mean(v == yy)), float(np.mean(v == y1))
    return {"unfooled": unfooled, "different": 1.0 - unfooled - same, "same": same, "n": n}


def outcome_key(attack: str, eps: float | None, model: str) -> str:
    """The key of a per-image outcome array: untargeted -> the model is wrong, targeted and
    N-targeted -> it says the target, clean -> it is right on the clean image."""
    return f"{attack}|{'' if eps is None else f'{eps:g}'}|{model}"


def conditioned(y, pred, model_clean, target=None) -> dict:
    """The paper's rates and the same conditioned on the model: untargeted error in excess of
    its clean error, and error and target-hit rates over the images it classifies correctly
    when clean (the rest would count the model's own mistakes as transfer)."""
    y, pred, model_clean = (np.asarray(a) for a in (y, pred, model_clean))
    right = model_clean == y
    out = {"error_rate": float(np.mean(pred != y)),
           "clean_error": float(np.mean(~right)),
           "excess_error": float(np.mean(pred != y) - np.mean(~right)),
           "victim_right_n": int(right.sum()),
           "error_rate_victim_right": (float(np.mean(pred[right] != y[right])) if right.any()
                                       else math.nan),
           "target_hit_rate": None, "target_hit_rate_victim_right": None}
    if target is not None:
        target = np.asarray(target)
        out["target_hit_rate"] = float(np.mean(pred == target))
        out["target_hit_rate_victim_right"] = (float(np.mean(pred[right] == target[right]))
                                               if right.any() else math.nan)
    return out


VIEWS = ("all images", "victim right on clean")


def findings(result, alpha: float = stats.ALPHA) -> list[dict]:
    """The paper's direction (section 5.2, Figures 5/6), tested without selection: per victim,
    each eps > 0 source against eps 0 on the same images and targets (exact McNemar, Holm over
    the sources within the victim; held where some source is significantly higher); over
    victims, a one-sided sign test of (mean rate over the small-eps sources, 0 < eps <= 1/4)
    minus (the eps 0 rate). Once over all test images and once over the images the victim
    classifies correctly when clean. With the N-targeted attack: whether the victims say a
    robust source's target more often than the standard source's, the same way."""
    if 0.0 not in result.sources or len(result.sources) < 2 or not result.outcomes:
        return []
    attacks_ = (["n_targeted"] if result.mode == "n_targeted" else ["targeted", "untargeted"])
    positive = [e for e in result.sources if e > 0]
    small = [e for e in positive if e <= table_findings.SMALL_EPS] or positive[:1]
    out = []
    for attack in attacks_:
        for view in VIEWS:
            per_victim, diffs = {}, []
            for v in result.victims:
                rows = (result.outcomes[outcome_key("clean", 0.0, v)] if view == VIEWS[1]
                        else np.ones(len(result.outcomes[outcome_key(attack, 0.0, v)]), bool))
                base = result.outcomes[outcome_key(attack, 0.0, v)][rows]
                cols = {e: result.outcomes[outcome_key(attack, e, v)][rows] for e in positive}
                tests = stats.paired_vs(base, cols, alpha)
                diff = float(np.mean([cols[e].mean() for e in small]) - base.mean()) \
                    if len(base) else math.nan
                diffs.append(diff)
                per_victim[v] = {"held": any(t["significant"] for t in tests.values()),
                                 "eps0": float(base.mean()) if len(base) else math.nan,
                                 "n": int(rows.sum()), "small_minus_eps0": diff,
                                 "tests": {paper.eps_label(e): t for e, t in tests.items()}}
            sign = stats.sign_test(diffs)
            what = {"targeted": "targeted transfer (target hit rate)",
                    "untargeted": "untargeted transfer (error rate)",
                    "n_targeted": "N-targeted: victims say a robust source's target"}[attack]
            out.append({"finding": f"{attack}, {view}", "attack": attack, "view": view,
                        "text": f"{what} is higher from small-eps robust sources than from the "
                                f"standard source" if attack != "n_targeted" else
                                f"{what} more often than the standard source's "
                                f"({result.n_targeted_loss} loss)",
                        "test": "per victim exact McNemar of each eps > 0 source vs eps 0, "
                                "Holm; over victims a one-sided sign test of the mean over "
                                f"eps in ({', '.join(paper.eps_label(e) for e in small)}) "
                                "minus eps 0",
                        "held": sign["p"] <= alpha, "sign_test": sign,
                        "victims_held": sum(d["held"] for d in per_victim.values()),
                        "victims": len(result.victims), "per_victim": per_victim})
    out += peak_findings(result, alpha)
    return out


PEAK_MAX_EPS = 0.125    # Figure 5: "0 < eps <= 1/8 with a peak at eps ~ 1/16"


def peak_findings(result, alpha: float = stats.ALPHA) -> list[dict]:
    """Figure 5's shape as the paper states it ("benefit ... if generated with respect to a
    robust classifier with a small robustness parameter, 0 < eps <= 1/8 ... The success ...
    decreases as eps is further increased"): per victim, the untargeted error from the best
    source with 0 < eps <= 1/8 minus that from the eps 1 source; over victims a one-sided
    sign test. Once over all images and once over the images the victim gets right."""
    small = [e for e in result.sources if 0 < e <= PEAK_MAX_EPS + 1e-9]
    large = next((e for e in result.sources if abs(e - 1.0) < 1e-9), None)
    if result.mode == "n_targeted" or not small or large is None or not result.outcomes:
        return []
    out = []
    for view in VIEWS:
        per_victim, diffs = {}, []
        for v in result.victims:
            rows = (result.outcomes[outcome_key("clean", 0.0, v)] if view == VIEWS[1]
                    else np.ones(len(result.outcomes[outcome_key("untargeted", large, v)]),
                                 bool))
            rate = {e: float(result.outcomes[outcome_key("untargeted", e, v)][rows].mean())
                    if rows.any() else math.nan for e in small + [large]}
            best = max(small, key=lambda e: rate[e])
            diffs.append(rate[best] - rate[large])
            per_victim[v] = {"best_small": paper.eps_label(best), "best_small_rate": rate[best],
                             "eps1_rate": rate[large], "difference": rate[best] - rate[large],
                             "n": int(rows.sum())}
        sign = stats.sign_test(diffs)
        out.append({"finding": f"untargeted peak, {view}", "attack": "untargeted", "view": view,
                    "text": "untargeted transfer (error rate) from the best source with 0 < "
                            "eps <= 1/8 exceeds that from the eps 1 source (Figure 5's peak)",
                    "test": "per victim the best small-eps source's error minus the eps 1 "
                            "source's; over victims a one-sided sign test",
                    "held": sign["p"] <= alpha, "sign_test": sign,
                    "victims_held": sum(d["difference"] > 0 for d in per_victim.values()),
                    "victims": len(result.victims), "per_victim": per_victim})
    return out
