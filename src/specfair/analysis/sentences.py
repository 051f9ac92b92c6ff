"""Every generated sentence of the report: the Q1 and Q2 answers of one comparison, Q2 across imbalance
ratios, and the transfer matrix. Each is read off the numbers already computed; nothing here computes a
statistic, so a sentence can never disagree with the table beside it. Numbers go through `format`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

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
    if q and q["spearman_tokens_vs_gain"]["rho"] is not None:
        s = q["spearman_tokens_vs_gain"]
        token_shares = [v["tokens"] for v in q["shares"].values()]
        text += (
            f"; Spearman correlation between a category's share of training tokens "
            f"({num(min(token_shares), 2)}–{num(max(token_shares), 2)}) and its gain "
            f"{num(s['rho'], 2, sign=True)} (permutation p = {num(s['p_value'], 2)})"
        )
    elif q:
        text += "; training shares are known but too few categories vary for a rank correlation"
    return text + "."


# --- Q2 across imbalance ratios -----------------------------------------------------------------------


def _natural_condition(c: Mapping) -> str:
    hmr = c["head_minus_rest"]
    s = c["spearman_share_vs_gain"]
    spearman = (
        f", Spearman(token share, gain) {num(s['rho'], 2, sign=True)}, p = {num(s['p_value'], 2)})"
        if s["rho"] is not None
        else ")"
    )
    return (
        f"{num(hmr['mean'], sign=True)} at rho={c['ratio']:g} (range over {c['runs']} run(s) "
        f"[{num(hmr['min'], sign=True)}, {num(hmr['max'], sign=True)}]" + spearman
    )


def imbalance_sentences(result: Mapping) -> list[str]:
    """Head minus rest per ratio under natural sampling; then each other sampler against natural at its ratio."""
    natural = [c for c in result["conditions"] if c["sampling"] == "natural"]
    text = [
        f"{result['dataset']}, natural sampling: the head category's alpha gain minus the mean gain of the others "
        "was " + "; ".join(_natural_condition(c) for c in natural) + "."
    ]
    for c in result["conditions"]:
        if c["sampling"] == "natural":
            continue
        same = next((n for n in natural if n["ratio"] == c["ratio"]), None)
        text.append(
            f"With {c['sampling']} sampling at rho={c['ratio']:g}, head minus rest was "
            f"{num(c['head_minus_rest']['mean'], sign=True)}"
            + (f" (natural sampling: {num(same['head_minus_rest']['mean'], sign=True)})" if same else "")
            + f"; tail-category gain {num(c['gain_by_rank'][-1]['mean'], sign=True)}"
            + (f" vs {num(same['gain_by_rank'][-1]['mean'], sign=True)}" if same else "")
            + "."
        )
    return text


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
