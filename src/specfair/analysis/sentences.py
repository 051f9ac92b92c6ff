"""Every generated sentence of the report: the Q1 and Q2 answers of one comparison, Q2 across imbalance
ratios, and the transfer matrix. Each is read off the numbers already computed; nothing here computes a
statistic, so a sentence can never disagree with the table beside it. Numbers go through `format`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from specfair.analysis.exposure import smallest_p
from specfair.analysis.format import bounds, interval, num, speedups

# --- one comparison (base vs fine-tuned) ------------------------------------------------------------------


def q1_sentence(result: Mapping) -> str:
    """Q1: in how many categories alpha rose (and how many clearly), overall alpha and gain, speedup."""
    overall, cats = result["overall"], result["categories"]
    rose = [c for c in cats if (low := cats[c]["gain"]["alpha"]["low"]) is not None and low > 0]
    up = [c for c in cats if (value := cats[c]["gain"]["alpha"]["value"]) is not None and value > 0]
    return (
        f"{result['dataset']}: alpha rose in {len(up)}/{len(cats)} categories ({len(rose)} with a 95% CI above 0); "
        f"overall alpha {num(overall['base']['alpha']['value'])} → {num(overall['finetuned']['alpha']['value'])}, "
        f"gain 95% CI {bounds(overall['gain']['alpha'], sign=True)}; "
        f"speedup {speedups(overall['base']['speedup']['value'], overall['finetuned']['speedup']['value'])}."
    )


def q2_sentence(result: Mapping) -> str:
    """Q2 for one draft: the alpha gap across categories before → after, and gain against training share."""
    fair = result["fairness"]
    text = (
        f"{result['dataset']}: the alpha gap between categories went {num(fair['base']['gap'])} → "
        f"{num(fair['finetuned']['gap'])} (worst category {fair['finetuned']['worst_category']} at "
        f"{num(fair['finetuned']['worst'])}); gains ranged from {num(fair['gain']['worst'], sign=True)} "
        f"to {num(fair['gain']['best'], sign=True)}"
    )
    q = result.get("q2")
    imbalance = (q or {}).get("imbalance") or {}
    if q and float(imbalance.get("ratio", 1)) == 1 and imbalance.get("budget"):
        text += "; training shares are equal by design (rho = 1, one token budget), so no rank correlation"
    elif q and q["spearman_tokens_vs_gain"]["rho"] is not None:
        s = q["spearman_tokens_vs_gain"]
        token_shares = [v["tokens"] for v in q["shares"].values()]
        text += (
            f"; Spearman correlation between a category's share of training tokens "
            f"({num(min(token_shares), 2)}–{num(max(token_shares), 2)}) and its gain "
            f"{num(s['rho'], 2, sign=True)} (permutation p = {num(s['p_value'], 2)})"
        )
        if (floor := smallest_p(len(q["shares"]))) > 0.05:
            text += f" — with {len(q['shares'])} categories no p falls below {num(floor, 3)}: it cannot reject at 5%"
    elif q:
        text += "; training shares are known but too few categories vary for a rank correlation"
    return text + "."


# --- Q2 across imbalance ratios -----------------------------------------------------------------------


def estimate(d: Mapping, name: str = "δ") -> str:
    """`δ = +0.012 [-0.004, +0.029], detectable ≥ 0.023`; the reason instead where there is no interval."""
    if d["value"] is None:
        return f"no {name} ({d['why']})"
    if d["low"] is None:
        return f"{name} = {num(d['value'], sign=True)} (no interval: {d['why']})"
    return f"{name} = {interval(d, sign=True)}, detectable ≥ {num(d['mde'])}"


def verdict(d: Mapping) -> str:
    """What an estimate with its CI and minimum detectable effect (MDE) allows one to say, and no more."""
    if d["value"] is None or d["low"] is None:
        return "cannot tell (no interval)"
    if d["low"] > 0:
        return "the gain rises with the category's share of the data"
    if d["high"] < 0:
        return "the gain falls as the category's share of the data rises"
    reach = d["high"] if d["high"] >= -d["low"] else d["low"]
    if abs(reach) <= d["mde"]:
        return (
            f"cannot tell: no effect larger than ±{num(d['mde'])} (the CI excludes one), and a smaller one "
            "this design cannot detect"
        )
    return f"inconclusive, cannot tell: the CI still allows δ up to {num(reach, sign=True)}"


def _head_minus_rest(c: Mapping) -> str:
    h = c["head_minus_rest"]
    rotations = f"{len(c['heads'])} rotation(s) × {len(c['seeds'])} seed(s)"
    if c.get("missing_heads"):
        rotations += f", no run with head {', '.join(c['missing_heads'])}"
    if c["runs"] == 1:
        return f"{num(h['value'], sign=True)} at rho={c['ratio']:g} (one run, no interval)"
    if h["low"] is None:
        return (
            f"{num(h['value'], sign=True)} at rho={c['ratio']:g} (no interval: {h['why']}; range over "
            f"{c['runs']} run(s) [{num(h['min'], sign=True)}, {num(h['max'], sign=True)}]; {rotations})"
        )
    return (
        f"{num(h['value'], sign=True)} at rho={c['ratio']:g} [{num(h['low'], sign=True)}, "
        f"{num(h['high'], sign=True)}], detectable ≥ {num(h['mde'])} ({rotations})"
    )


def _rank_test(c: Mapping) -> str:
    t = c["rank_test"]
    how = "exact" if t["exact"] else "random reassignments"
    floor = f", smallest possible p {t['smallest_p']:.2g}" if t["smallest_p"] > 0.01 else ""
    return (
        f"δ {t['delta']['value']:+.3f} at rho={c['ratio']:g}, p = {t['delta']['p_value']:.3g} "
        f"(Spearman {t['rho']:+.2f}, p = {t['p_value']:.3g}; {t['runs']} runs, {how}{floor})"
    )


def _delta_sentence(dataset: str, arm: str, sampling: str, d: Mapping, scope: str) -> str:
    over = f" (95% CI over {d['over']})" if d["low"] is not None else ""
    return (
        f"{dataset}, {arm}, {sampling} sampling, {scope}: per unit of log training share, a category's alpha gain "
        f"moved by {estimate(d)}{over}: {verdict(d)}."
    )


def imbalance_sentences(result: Mapping) -> list[str]:
    """Per arm: δ under natural sampling (pooled over ratios) with its verdict, head minus rest per ratio;
    then each other sampler against natural at its ratio; then what limits the estimates."""
    text = []
    for arm in dict.fromkeys(c["arm"] for c in result["conditions"]):
        conditions = [c for c in result["conditions"] if c["arm"] == arm]
        natural = [c for c in conditions if c["sampling"] == "natural"]
        pooled = {p["sampling"]: p for p in result.get("pooled", []) if p["arm"] == arm}
        if "natural" in pooled:
            runs = pooled["natural"]["runs"]
            text.append(
                _delta_sentence(result["dataset"], arm, "natural", pooled["natural"]["delta"], f"{runs} runs")
            )
        else:
            text += [
                _delta_sentence(result["dataset"], arm, "natural", c["delta"], f"rho={c['ratio']:g}")
                for c in natural
                if c["ratio"] > 1
            ]
        if natural:
            text.append(
                "The head category's alpha gain minus the mean gain of the others, per rotation then averaged, "
                "was " + "; ".join(_head_minus_rest(c) for c in natural) + "."
            )
        tests = [c for c in natural if (c.get("rank_test") or {}).get("delta")]
        if tests:
            text.append(
                "Rank test (δ as the statistic, p from reassigning the mixes among the runs of each seed; the "
                "mean per-run Spearman of the category-centred gain on training share beside it): "
                + "; ".join(_rank_test(c) for c in tests)
                + "."
            )
        for c in conditions:
            if c["sampling"] == "natural":
                continue
            same = next((n for n in natural if n["ratio"] == c["ratio"]), None)
            text.append(
                f"With {c['sampling']} sampling at rho={c['ratio']:g}, head minus rest was "
                f"{num(c['head_minus_rest']['value'], sign=True)}"
                + (f" (natural sampling: {num(same['head_minus_rest']['value'], sign=True)})" if same else "")
                + f"; tail-category gain {num(c['gain_by_rank'][-1]['mean'], sign=True)}"
                + (f" vs {num(same['gain_by_rank'][-1]['mean'], sign=True)}" if same else "")
                + f"; {estimate(c['delta'])}."
            )
            if same and c.get("against_natural"):
                text.append(_fair_sampler(c, same))
    return text


def _fair_sampler(c: Mapping, natural: Mapping) -> str:
    """A fair sampler against natural sampling at one mix: worst-category and mean gain, and the moonshot's
    test (worst category at least natural's mean gain, mean gain down by at most 10%)."""
    f, n, vs = c["fairness"], natural["fairness"], c["against_natural"]
    bar, mean = vs["worst_minus_reference_mean"], vs["relative_mean_change"]
    met = [bar["low"] is not None and bar["low"] >= 0, mean["low"] is not None and mean["low"] >= -0.10]
    missed = [bar["high"] is not None and bar["high"] < 0, mean["high"] is not None and mean["high"] < -0.10]
    outcome = (
        "met" if all(met) else "missed" if any(missed) else "not shown either way (the CIs span the bars)"
    )
    if bar["low"] is None:
        outcome = f"cannot tell (no interval: {bar.get('why')})"
    return (
        f"{c['sampling']} against natural sampling at rho={c['ratio']:g} (mean per run over rotations and seeds): "
        f"worst-category gain {_ci(f['worst'], sign=True)} vs {_ci(n['worst'], sign=True)}, "
        f"mean gain {_ci(f['mean'], sign=True)} vs {_ci(n['mean'], sign=True)}, "
        f"gap (best − worst) {_ci(f['gap'])} vs {_ci(n['gap'])}. Its worst category minus natural's "
        f"mean gain: {_ci(bar, sign=True)} (bar ≥ 0); its mean gain against natural's: "
        f"{_pct(mean['value'])}"
        + (f" [{_pct(mean['low'])}, {_pct(mean['high'])}]" if mean["low"] is not None else "")
        + f" (bar ≥ −10%): {outcome}."
    )


def _ci(cell: Mapping, sign: bool = False) -> str:
    """`value [low, high]`, or the value alone where there is no interval (named once, after the sentence)."""
    return interval(cell, sign=sign) if cell.get("low") is not None else num(cell.get("value"), sign=sign)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


# --- transfer matrix ---------------------------------------------------------------------------------------


def _direction(cell: Mapping) -> int:
    """+1 / -1 when the 95% CI lies above / below 0, else 0."""
    if cell["low"] is not None and cell["low"] > 0:
        return 1
    if cell["high"] is not None and cell["high"] < 0:
        return -1
    return 0


def _cells(m: Mapping, in_domain: bool) -> list[tuple[str, str]]:
    """(draft row, dataset) cells with a measured change, in or out of the draft's training domain."""
    return [
        (r, d)
        for r in m["rows"][1:]
        for d in m["columns"]
        if m["trained_on"].get(r)
        is not None  # drafts trained on no dataset (generalist, control) are neither
        and (m["trained_on"].get(r) == d) == in_domain
        and m["delta"][r][d] is not None
    ]


def _out_of_domain(m: Mapping, outside: list[tuple[str, str]]) -> list[str]:
    """How many out-of-domain cells rose / fell / did not move, and the three categories that lost most."""
    dirs = [_direction(m["delta"][r][d]) for r, d in outside]
    mean = float(np.mean([m["delta"][r][d]["value"] for r, d in outside]))
    out = [
        f"Out of domain ({len(outside)} draft × dataset cells), alpha rose in {dirs.count(1)}, fell in "
        f"{dirs.count(-1)} and did not move clearly (95% CI spans 0) in {dirs.count(0)}; mean change "
        f"{num(mean, sign=True)}."
    ]
    lowest = sorted(
        (
            (cell["value"], d, category, r, cell)
            for r, d in outside
            for category, per_row in m["categories"][d].items()
            if (cell := per_row.get(r)) is not None and cell["value"] is not None
        ),
        key=lambda t: t[0],
    )[:3]
    if lowest:
        listed = "; ".join(
            f"{d}/{cat} {interval(cell, sign=True)} with the {r} draft" for _, d, cat, r, cell in lowest
        )
        if lowest[0][0] < 0:
            out.append(f"The categories that lose most out of domain: {listed}.")
        else:
            out.append(f"No category lost alpha out of domain; the smallest gains: {listed}.")
    return out


def transfer_sentences(m: Mapping) -> list[str]:
    """In-domain gains, out-of-domain changes, the categories that lose most, and the missing cells."""
    out = []
    inside = _cells(m, in_domain=True)
    if inside:
        out.append(
            "In domain, alpha changed by "
            + "; ".join(
                f"{num(m['delta'][r][d]['value'], sign=True)} on {d} ({r} draft, 95% CI "
                f"{bounds(m['delta'][r][d], sign=True)})"
                for r, d in inside
            )
            + "."
        )
    outside = _cells(m, in_domain=False)
    if outside:
        out += _out_of_domain(m, outside)
    if m["missing"]:
        out.append(
            "Missing cells (the run failed or was not made): "
            + ", ".join(f"{r} on {d}" for r, d in m["missing"])
            + "."
        )
    return out
