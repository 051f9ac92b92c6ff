"""Q2 across imbalance ratios: does a category's alpha gain follow its share of the training data?

Each fine-tuned run of the imbalance experiment trained on one mix: ratio rho = n_head / n_tail, the head
category rotated over all categories, the same token budget. Ranking every category by its planned share
(0 = head, K-1 = tail) and averaging over rotations separates "this category has more data" from "this
category is easier", which a single run cannot. The fair-sampler runs (balanced, temperature, group DRO) show
whether a sampler closes the gap at the same data: worst-category gain, mean gain and gap, against natural
sampling at the same mix, each with a cluster-bootstrap CI. Per (arm, sampler, ratio), and pooled over ratios, `exposure` estimates δ, the gain
per unit of log training share, and head − rest, each with a cluster-bootstrap CI and the smallest effect the
design could detect. A pooled rank correlation over runs × categories is not reported: category ease and run
effects make its points unexchangeable, and per run, 4 categories cannot reach p < 0.083. The rank test
reported instead (`exposure.rotation_test`) permutes which run got which mix, so ease cancels.

Computation only: the sentences are in `sentences`, the table in `tables`, the plot in `plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from specfair.analysis import exposure, sentences
from specfair.analysis.format import bounds
from specfair.data.splits import imbalance_counts


def arm_of(comparison: Mapping) -> str:
    """The fine-tuning recipe of a run, from its label: `kd_short`, `lm_short@generalist` (start where not base)."""
    try:
        name = comparison["finetuned"].split(":", 1)[1].split("/")[1].split("@")[0]
    except (IndexError, AttributeError):
        name = "finetuned"
    start = comparison.get("base", "base")
    return name if start == "base" else f"{name}@{start}"


def run_entry(comparison: dict) -> dict | None:
    """One fine-tuned run of the experiment: its mix (ratio, head, sampler) and gain and share per category.

    rank: 0 for the category with the most planned training data (the head), K-1 for the tail. share: the
    category's share of the training tokens the run really had (train_summary.json's train_counts, not the
    planned mix); exposure: the same, or the share of texts where tokens were not counted. None for a
    comparison without an imbalance setting (not part of the experiment).
    """
    q = comparison.get("q2")
    if not q or not q.get("imbalance"):
        return None
    categories = list(comparison["categories"])
    planned = imbalance_counts(categories, 10**6, q["imbalance"])
    order = sorted(categories, key=lambda c: (-planned[c], categories.index(c)))
    tokens = {c: q["shares"][c]["tokens"] for c in categories}
    basis = "tokens" if any(tokens.values()) else "texts"
    return {
        "label": comparison["finetuned"],
        "run_dir": (comparison.get("runs") or [None, None])[-1],
        "arm": arm_of(comparison),
        "ratio": float(q["imbalance"].get("ratio", 1)),
        "sampling": q.get("sampling") or "natural",
        "seed": q.get("seed"),
        "head": order[0],
        "rank": {c: order.index(c) for c in categories},
        "gain": {c: comparison["categories"][c]["gain"]["alpha"]["value"] for c in categories},
        "share": tokens,
        "exposure": {c: q["shares"][c][basis] for c in categories},
        "exposure_basis": f"training {basis}",
        "validation_gain": q.get("validation_gain") or {},
    }


def head_minus_rest(run: dict, key: str = "gain") -> float | None:
    """The head's gain minus the others' mean; key=validation_gain uses the training run's own check."""
    gains = run[key]
    if set(gains) != set(run["rank"]) or None in gains.values():
        return None  # not recorded for every category (an older train_summary.json)
    return gains[run["head"]] - float(np.mean([g for c, g in gains.items() if c != run["head"]]))


def _spread(values: list[float | None]) -> dict:
    values = [v for v in values if v is not None]  # a category whose alpha was undefined in a run
    if not values:
        return dict.fromkeys(("mean", "min", "max"))
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}


def panel(group: list[dict], prompts: Mapping | None = None) -> tuple[exposure.Panel, list[str]]:
    """The runs as an `exposure.Panel` (per-prompt parts where `prompts` has every run), and any caveat."""
    categories = list(group[0]["rank"])
    gains = np.array([[np.nan if (g := r["gain"][c]) is None else g for c in categories] for r in group])
    shares = np.array([[r["exposure"][c] for c in categories] for r in group], dtype=float)
    x = np.log(np.where(shares > 0, shares, np.nan))
    heads = np.array([categories.index(r["head"]) for r in group])
    p, notes = exposure.Panel(gains, x, heads), []
    pairs = [(prompts or {}).get(r["run_dir"]) for r in group]
    if prompts is not None and not all(pairs):
        notes.append("per-prompt records missing for some runs: intervals over runs only")
    elif prompts is not None:
        try:
            p.parts, p.n = exposure.prompt_parts(categories, pairs)
        except (ValueError, KeyError) as err:
            notes.append(f"{err}: intervals over runs only")
    return p, notes


def _inference(
    group: list[dict],
    where: str,
    ratio: float | None,
    built: tuple[exposure.Panel, list[str]],
    resamples: int,
) -> dict:
    """δ (and head − rest, given a ratio) with CIs and MDEs for a set of runs (`built`: their `panel`), and a
    line for each limit."""
    p, notes = built[0], list(built[1])
    zero = [f"{c} in {r['label']}" for r in group for c, s in r["exposure"].items() if not s > 0]
    if zero:
        what = group[0]["exposure_basis"].split()[-1]
        notes.append(f"no training {what} (share 0, log undefined), left out of δ: {', '.join(zero)}")
    if len(group) < 2:
        notes.append("one run: no interval (needs at least 2 runs)")
    if ratio == 1:  # equal shares by design: a slope on their rounding differences would be noise
        delta = exposure.no_interval(None, "shares equal by design (rho = 1)")
    else:
        delta = exposure.delta(p, resamples)
        if delta["value"] is None and len(group) > 1:
            notes.append("every run has the same head, so no category's share varies: no δ")
        elif 0 < delta["resamples"] < 0.95 * resamples:
            notes.append(
                f"δ: {resamples - delta['resamples']} of {resamples} resamples drew too few rotations to "
                "estimate it; its interval is over the rest (few runs: read it as rough)"
            )
    out = {"delta": delta}
    if ratio is not None:
        out["head_minus_rest"] = hmr = exposure.head_minus_rest_ci(p, resamples)
        seeds = {h: sum(r["head"] == h for r in group) for h in dict.fromkeys(r["head"] for r in group)}
        single = [h for h, n in seeds.items() if n < 2]
        if hmr.get("why") == "one seed per rotation" and len(group) > 1:
            only = hmr.get("prompts_only") or {}
            ref = f" (over prompts alone: {bounds(only, sign=True)})" if only.get("low") is not None else ""
            notes.append(
                "one seed per rotation, so training-seed variance is unknown: no interval for head − rest"
                + ref
            )
        elif single and len(group) > 1:
            notes.append(
                f"head {', '.join(single)} has one seed: its seed variance is not in the head − rest interval"
            )
    out["notes"] = [f"{where}: {n}" for n in notes]
    return out


def condition(
    group: list[dict],
    ratio: float,
    sampling: str,
    arm: str = "",
    prompts: Mapping | None = None,
    resamples: int = exposure.RESAMPLES,
) -> dict:
    """Runs of one (arm, sampler, ratio), pooled over head rotations and seeds: gain by data rank,
    head − rest and δ with 95% CIs and detectable effects, and the lines that qualify them."""
    categories = list(group[0]["rank"])
    by_rank = []
    for rank in range(len(categories)):
        g = [r["gain"][c] for r in group for c in r["gain"] if r["rank"][c] == rank]
        by_rank.append({**_spread(g), "n": len(g)})
    validation = [head_minus_rest(r, "validation_gain") for r in group]
    heads = sorted({r["head"] for r in group})
    missing = [c for c in categories if c not in heads] if ratio > 1 else []
    where = f"{arm + ', ' if arm else ''}{sampling} sampling, rho={ratio:g}"
    built = panel(group, prompts)
    runs_panel = built[0]
    inference = _inference(group, where, ratio, built, resamples)
    fairness = exposure.fairness_ci(runs_panel, resamples)
    rank_test = exposure.rotation_test(runs_panel, seeds=[r["seed"] for r in group]) if ratio > 1 else None
    if missing:
        inference["notes"].insert(
            0,
            f"{where}: no run with head {', '.join(missing)}; head − rest is the mean over the {len(heads)} "
            "rotation(s) present, where category ease does not cancel",
        )
    return {
        "arm": arm,
        "ratio": ratio,
        "sampling": sampling,
        "runs": len(group),
        "seeds": sorted({r["seed"] for r in group}, key=str),
        "heads": heads,
        "missing_heads": missing,
        "gain_by_rank": by_rank,
        "head_minus_rest": inference["head_minus_rest"],
        "head_minus_rest_validation": None if None in validation else float(np.mean(validation)),
        "delta": inference["delta"],
        "fairness": fairness,
        "rank_test": rank_test,
        "notes": inference["notes"],
    }


def analyze(
    comparisons: list[dict],
    prompts: Mapping[str, Sequence] | None = None,
    resamples: int = exposure.RESAMPLES,
) -> dict[str, dict]:
    """Per dataset with at least two imbalance ratios: {dataset, runs, conditions, pooled, notes, sentences}.

    prompts: {fine-tuned run folder: (base records, fine-tuned records)}, the per-prompt records the
    intervals resample (without them they resample runs only). Conditions are ordered by arm, natural sampling
    first, then by ratio; `pooled` holds δ per (arm, sampler) over all its ratios. Gains are alpha gains over
    the draft each run started from.
    """
    out = {}
    for dataset in dict.fromkeys(c["dataset"] for c in comparisons):
        runs = [e for c in comparisons if c["dataset"] == dataset and (e := run_entry(c))]
        if len({r["ratio"] for r in runs}) < 2:
            continue
        groups: dict[tuple, list[dict]] = {}
        for r in runs:
            groups.setdefault((r["arm"], r["sampling"], r["ratio"]), []).append(r)
        keys = sorted(groups, key=lambda t: (t[0], t[1] != "natural", t[2]))
        conditions = [condition(groups[k], k[2], k[1], k[0], prompts, resamples) for k in keys]
        for key, c in zip(keys, conditions, strict=True):  # a fair sampler against natural at the same mix
            natural = groups.get((key[0], "natural", key[2]))
            if key[1] != "natural" and natural:
                c["against_natural"] = exposure.fairness_against(
                    panel(natural, prompts)[0], panel(groups[key], prompts)[0], resamples
                )
        pooled = []
        for arm, sampling in dict.fromkeys(k[:2] for k in keys):
            group = [r for r in runs if (r["arm"], r["sampling"]) == (arm, sampling)]
            if len({r["ratio"] for r in group}) > 1:
                where = f"{arm}, {sampling} sampling, all ratios"
                estimate = _inference(group, where, None, panel(group, prompts), resamples)
                pooled.append({"arm": arm, "sampling": sampling, "runs": len(group), **estimate})
        result = {"dataset": dataset, "runs": runs, "conditions": conditions, "pooled": pooled}
        result["notes"] = [n for c in conditions for n in c["notes"]]
        result["notes"] += [n for p in pooled for n in p["notes"] if "log undefined" not in n]
        result["sentences"] = sentences.imbalance_sentences(result)
        out[dataset] = result
    return out
