"""Q2 across imbalance ratios: does a category's alpha gain follow its share of the training data?

Each fine-tuned run of the imbalance experiment trained on one mix: ratio rho = n_head / n_tail, the head
category rotated over all categories, the same token budget. Ranking every category by its planned share
(0 = head, K-1 = tail) and averaging over rotations separates "this category has more data" from "this
category is easier", which a single run cannot. The balanced-sampler runs show whether a fair sampler closes
the gap at the same data.

Computation only: the sentences are in `sentences`, the table in `tables`, the plot in `plots`.
"""

from __future__ import annotations

import numpy as np

from specfair.analysis import sentences, stats
from specfair.data.splits import imbalance_counts


def run_entry(comparison: dict) -> dict | None:
    """One fine-tuned run of the experiment: its mix (ratio, head, sampler) and gain and share per category.

    rank: 0 for the category with the most planned training data (the head), K-1 for the tail. None for a
    comparison without an imbalance setting (not part of the experiment).
    """
    q = comparison.get("q2")
    if not q or not q.get("imbalance"):
        return None
    categories = list(comparison["categories"])
    planned = imbalance_counts(categories, 10**6, q["imbalance"])
    order = sorted(categories, key=lambda c: (-planned[c], categories.index(c)))
    return {
        "label": comparison["finetuned"],
        "ratio": float(q["imbalance"].get("ratio", 1)),
        "sampling": q.get("sampling", "natural"),
        "seed": q.get("seed"),
        "head": order[0],
        "rank": {c: order.index(c) for c in categories},
        "gain": {c: comparison["categories"][c]["gain"]["alpha"]["value"] for c in categories},
        "share": {c: q["shares"][c]["tokens"] for c in categories},
        "validation_gain": q.get("validation_gain") or {},
    }


def head_minus_rest(run: dict, key: str = "gain") -> float | None:
    """The head's gain minus the others' mean; key=validation_gain uses the training run's own check."""
    gains = run[key]
    if set(gains) != set(run["rank"]):
        return None  # not recorded for every category (an older train_summary.json)
    return gains[run["head"]] - float(np.mean([g for c, g in gains.items() if c != run["head"]]))


def _spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}


def condition(group: list[dict], ratio: float, sampling: str) -> dict:
    """Runs of one (ratio, sampler), pooled over head rotations: gain by data rank, head − rest, Spearman."""
    k = len(group[0]["gain"])
    by_rank = []
    for rank in range(k):
        g = [r["gain"][c] for r in group for c in r["gain"] if r["rank"][c] == rank]
        by_rank.append({**_spread(g), "n": len(g)})
    validation = [head_minus_rest(r, "validation_gain") for r in group]
    shares = [r["share"][c] for r in group for c in r["gain"]]
    gains = [r["gain"][c] for r in group for c in r["gain"]]
    return {
        "ratio": ratio,
        "sampling": sampling,
        "runs": len(group),
        "heads": sorted({r["head"] for r in group}),
        "gain_by_rank": by_rank,
        "head_minus_rest": _spread([head_minus_rest(r) for r in group]),
        "head_minus_rest_validation": None if None in validation else float(np.mean(validation)),
        "spearman_share_vs_gain": stats.spearman_permutation(shares, gains, seed=0)
        if ratio > 1  # at rho = 1 the shares are equal by design: any order among them is noise
        else {"rho": None, "p_value": None},
    }


def analyze(comparisons: list[dict]) -> dict[str, dict]:
    """Per dataset with at least two imbalance ratios: {dataset, runs, conditions, sentences}.

    Conditions are ordered natural sampling first, then by ratio; gains are alpha gains over the base draft.
    """
    out = {}
    for dataset in dict.fromkeys(c["dataset"] for c in comparisons):
        runs = [e for c in comparisons if c["dataset"] == dataset and (e := run_entry(c))]
        if len({r["ratio"] for r in runs}) < 2:
            continue
        keys = sorted({(r["ratio"], r["sampling"]) for r in runs}, key=lambda t: (t[1] != "natural", t[0]))
        conditions = [
            condition([r for r in runs if (r["ratio"], r["sampling"]) == key], *key) for key in keys
        ]
        result = {"dataset": dataset, "runs": runs, "conditions": conditions}
        result["sentences"] = sentences.imbalance_sentences(result)
        out[dataset] = result
    return out
