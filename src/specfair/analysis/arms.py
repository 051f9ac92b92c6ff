"""Q1 with arms and seeds: each fine-tuned draft against the draft it started from and against the control.

A *group* is every seed of one recipe: `agnews/kd_short@generalist` (fine-tuned on agnews by kd_short from the
generalist, any seed; no `@` suffix: from the truncated base),
`control` (the generalist recipe continued, any seed), `generalist`, `base`. A group's alpha on a dataset is
the mean over its seeds of each seed's ratio of sums over the prompts; a difference between two groups is
estimated on the same prompts, and its interval comes from a two-level bootstrap: seeds drawn with replacement
within each group, prompts drawn once for every run (the pairing), the difference recomputed. Seed-to-seed
variance is inside the interval, unlike an interval over prompts alone. With 3 seeds the seed level is coarse
(3 values): the interval then widens only as far as those seeds disagree, which is all 3 seeds can say.

`own_highest` tests the claim "a draft scores highest on the dataset it was fine-tuned on": on each dataset,
own group minus every other dataset's group of the same arm, each with its two-level interval and bootstrap p.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from specfair.analysis.comparisons import Run

RESAMPLES = 2000
REFERENCES = ("base", "generalist", "control")


def group_of(summary: Mapping) -> tuple[str, int]:
    """(group, seed) of a run's draft: `<trained on>/<arm>` for a fine-tuned draft, else its recipe."""
    draft = summary["draft"]
    seed = int(draft.get("seed") or 0)
    if draft.get("name") == "finetuned" and draft.get("trained_on"):
        variant = f"/{draft['variant']}" if draft.get("variant") else ""
        start = f"@{draft['start']}" if draft.get("start", "base") != "base" else ""
        return f"{draft['trained_on']}/{draft.get('train_name', 'kd')}{variant}{start}", seed
    if draft.get("name") == "generalist":
        recipe = draft.get("recipe") or "generalist"
        return ("generalist", 0) if recipe == "generalist" else (recipe, seed)
    return str(draft.get("name", "draft")), 0


def _alpha_parts(run: Run, ids: Sequence[str], category: str | None) -> tuple[np.ndarray, np.ndarray]:
    """alpha's per-prompt numerator and denominator in `ids` order (zeros outside `category`)."""
    by_id = {r["id"]: r for r in run.records}
    num = np.array([by_id[i]["accepted"] for i in ids], dtype=np.float64)
    den = np.array([by_id[i]["accepted"] + by_id[i]["rejections"] for i in ids], dtype=np.float64)
    if category is not None:
        keep = np.array([by_id[i]["category"] == category for i in ids])
        num, den = num * keep, den * keep
    return num, den


def _seed_ratios(runs: list[Run], ids, category, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's alpha on all prompts [S] and on each prompt resample [S, R] (NaN where undefined)."""
    point, resampled = [], []
    for run in runs:
        num, den = _alpha_parts(run, ids, category)
        point.append(num.sum() / den.sum() if den.sum() > 0 else np.nan)
        sums, dens = num[index].sum(1), den[index].sum(1)
        resampled.append(np.divide(sums, dens, out=np.full(len(index), np.nan), where=dens > 0))
    return np.array(point), np.array(resampled)


def difference(
    a: list[Run], b: list[Run], ids: Sequence[str], category: str | None = None, resamples: int = RESAMPLES
) -> dict:
    """mean-over-seeds alpha(a) − alpha(b) on the same prompts: {value, low, high, p_value, n, seeds}.

    b may be empty: then the group's own alpha (mean over seeds) with the same two-level interval.
    """
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(ids), size=(resamples, len(ids)))
    a_point, a_boot = _seed_ratios(a, ids, category, index)
    value = float(np.mean(a_point))
    draws = a_boot[rng.integers(0, len(a), size=(resamples, len(a))), np.arange(resamples)[:, None]].mean(1)
    if b:
        b_point, b_boot = _seed_ratios(b, ids, category, index)
        value -= float(np.mean(b_point))
        draws = draws - b_boot[
            rng.integers(0, len(b), size=(resamples, len(b))), np.arange(resamples)[:, None]
        ].mean(1)
    seeds = [len(a), len(b)] if b else [len(a)]
    if not np.isfinite(value) or len(ids) < 2:
        return {"value": None if not np.isfinite(value) else value, "low": None, "high": None,
                "p_value": None, "n": len(ids), "seeds": seeds}  # fmt: skip
    draws = draws[np.isfinite(draws)]
    low, high = np.percentile(draws, [2.5, 97.5])
    p = min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())) if b else None
    p = max(p, 1 / len(draws)) if p is not None else None
    return {
        "value": value,
        "low": float(low),
        "high": float(high),
        "p_value": p,
        "n": len(ids),
        "seeds": seeds,
    }


def _groups(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """dataset -> group -> its runs (one per seed; a repeated seed keeps the first run)."""
    out: dict[str, dict[str, dict[int, Run]]] = {}
    for run in runs:
        group, seed = group_of(run.summary)
        out.setdefault(run.dataset, {}).setdefault(group, {}).setdefault(seed, run)
    return {
        d: {g: [by_seed[s] for s in sorted(by_seed)] for g, by_seed in gs.items()} for d, gs in out.items()
    }


def applies(runs: list[Run]) -> bool:
    """Worth a section once some group was trained with several seeds or a control/generalist is present."""
    groups = _groups(runs)
    return any(
        len(rs) > 1 or g in ("generalist", "control") for gs in groups.values() for g, rs in gs.items()
    )


def analyze(runs: list[Run]) -> dict:
    """{datasets: {d: {alpha, vs_generalist, vs_control, vs_base, categories}}, own_highest}; see module doc."""
    result: dict = {"datasets": {}, "own_highest": {}}
    for dataset, groups in sorted(_groups(runs).items()):
        prompt_sets = {run.summary.get("prompt_set") for rs in groups.values() for run in rs}
        if len(prompt_sets) > 1:
            result["datasets"][dataset] = {"error": "runs evaluated different prompt sets"}
            continue
        ids = [r["id"] for r in next(iter(groups.values()))[0].records]
        categories = list(next(iter(groups.values()))[0].summary["categories"])
        entry = {"alpha": {g: difference(rs, [], ids) for g, rs in groups.items()}}
        for ref in REFERENCES:
            if ref in groups:
                entry[f"vs_{ref}"] = {
                    g: difference(rs, groups[ref], ids) for g, rs in groups.items() if g != ref
                }
        if "generalist" in groups:
            entry["categories"] = {
                c: {
                    g: difference(rs, groups["generalist"], ids, c)
                    for g, rs in groups.items()
                    if g not in REFERENCES
                }  # fmt: skip
                for c in categories
            }
        result["datasets"][dataset] = entry
    result["own_highest"] = own_highest(_groups(runs))
    return result


def own_highest(groups: Mapping[str, Mapping[str, list[Run]]]) -> dict:
    """arm -> dataset -> {other group: difference(own − other)}, plus holds: every difference's CI above 0."""
    out: dict = {}
    for dataset, gs in groups.items():
        for group, runs in gs.items():
            trained_on, _, arm = group.partition("/")
            if trained_on != dataset or not arm:
                continue
            ids = [r["id"] for r in runs[0].records]
            others = {g: rs for g, rs in gs.items() if g.partition("/")[2] == arm and g != group and "/" in g}
            if not others:
                continue
            diffs = {g: difference(runs, rs, ids) for g, rs in others.items()}
            holds = all(d["low"] is not None and d["low"] > 0 for d in diffs.values())
            out.setdefault(arm, {})[dataset] = {"own": group, "differences": diffs, "holds": holds}
    return out
