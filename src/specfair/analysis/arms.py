"""Q1 with arms and seeds: each fine-tuned draft against the draft it started from and against the control.

A *group* is every seed of one recipe: `agnews/kd_short@generalist` (fine-tuned on agnews by kd_short from the
generalist, any seed; no `@` suffix: from the truncated base),
`control` (the generalist recipe continued, any seed), `generalist`, `base`. A group's alpha on a dataset is
the mean over its seeds of each seed's ratio of sums over the prompts; a difference between two groups is
estimated on the same prompts (the pairing), with each seed's own value shown beside the pooled one.

Its interval is t-based over seeds: value ± √(Σ_groups (t_{n−1,0.975}·s/√n)² + (z_0.975·SE_prompts)²), s
the spread of a group's per-seed values, SE_prompts the standard error of the difference over one prompt
bootstrap shared by every run (seeds held fixed). Where seed variance dominates it is the textbook t interval
over seeds, so 3 seeds use t_2 = 4.30, not 1.96: the bootstrap that redrew 3 seeds with replacement, used
before, spreads (n−1)/n too little and takes s, a 3-value estimate, as known: its nominal 95% covered
81% in tests/test_seed_intervals.py's simulation (this interval: 95%). Each level keeps its own quantile rather than one Welch–Satterthwaite
df: that df is computed from the same 3 seeds and rises exactly when s is small by chance, which under-covered
(92% in the same simulation). Where prompt noise dominates the interval tends to the prompt bootstrap's; a
seed's own prompt noise sits in s as well, so the interval errs wide there. p is the level at which the
interval just reaches 0. A group with one seed adds no seed term (its seed variance is unknown, or absent
for one fixed model such as the generalist); when every group has one seed the interval is the prompt
bootstrap's percentile interval alone, as before, and `over` says "prompts".

`own_highest` tests the claim "a draft scores highest on the dataset it was fine-tuned on": on each dataset,
own group minus every other dataset's group of the same arm, each with its interval and p-value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm as normal
from scipy.stats import t as student_t

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
    """mean-over-seeds alpha(a) − alpha(b) on the same prompts: {value, low, high, p_value, n, seeds,
    per_seed, se, over}; see the module doc. per_seed: each seed of a minus b's mean; se: {seeds, prompts},
    the two standard errors the interval combines (seeds None with one seed a group).

    b may be empty: then the group's own alpha (mean over seeds) with the same interval.
    """
    index = np.random.default_rng(0).integers(0, len(ids), size=(resamples, len(ids)))
    a_point, a_boot = _seed_ratios(a, ids, category, index)
    b_point, b_boot = _seed_ratios(b, ids, category, index) if b else (np.zeros(1), np.zeros((1, resamples)))
    value = float(np.mean(a_point) - np.mean(b_point))
    out = {
        "value": value if np.isfinite(value) else None,
        **dict.fromkeys(("low", "high", "p_value", "se")),
        "n": len(ids),
        "seeds": [len(a), len(b)] if b else [len(a)],
        "per_seed": [float(v) for v in a_point - np.mean(b_point)],
        "over": None,
    }
    if not np.isfinite(value) or len(ids) < 2:
        return out
    prompt_draws = a_boot.mean(0) - b_boot.mean(0)  # seeds fixed, one prompt draw shared by every run
    prompt_draws = prompt_draws[np.isfinite(prompt_draws)]
    if prompt_draws.size < 2:
        return out
    seed_terms = [(np.var(p, ddof=1) / len(p), len(p) - 1) for p in (a_point, b_point) if len(p) > 1]
    if not seed_terms:
        return out | _percentile(value, prompt_draws, paired=bool(b))
    return out | _t_interval(value, seed_terms, float(np.var(prompt_draws, ddof=1)), paired=bool(b))


def _percentile(value: float, draws: np.ndarray, paired: bool) -> dict:
    """One seed a group: the prompt bootstrap's percentile 95% interval and two-sided p (seed variance
    unknown, so none is added)."""
    low, high = np.percentile(draws, [2.5, 97.5])
    p = None
    if paired:
        p = max(min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())), 1 / len(draws))
    se = {"seeds": None, "prompts": float(draws.std(ddof=1))}
    return {"low": float(low), "high": float(high), "p_value": p, "se": se, "over": "prompts"}


def _t_interval(value: float, seed_terms: list[tuple[float, int]], prompt_var: float, paired: bool) -> dict:
    """value ± half(0.05), half(level)² = Σ_groups (t_{n−1}·s/√n)² + (z·SE_prompts)² at that level; p: the
    level at which the interval just reaches 0, so p < 0.05 exactly when the 95% interval excludes 0."""
    se_seeds = [np.sqrt(v) for v, _ in seed_terms]
    se_prompts = float(np.sqrt(prompt_var))

    def half(level: float) -> float:
        q = 1 - level / 2
        seeds = sum(
            (student_t.ppf(q, df) * se) ** 2 for se, (_, df) in zip(se_seeds, seed_terms, strict=True)
        )
        return float(np.sqrt(seeds + (normal.ppf(q) * se_prompts) ** 2))

    width = half(0.05)
    p = None
    if paired:
        p = _level_reaching(abs(value), half)
    return {
        "low": value - width,
        "high": value + width,
        "p_value": p,
        "se": {"seeds": float(np.sqrt(sum(v for v, _ in seed_terms))), "prompts": se_prompts},
        "over": "seeds and prompts",
    }


def _level_reaching(distance: float, half) -> float:
    """The level whose half-width equals `distance` (half falls as the level rises): the two-sided p."""
    if half(1.0 - 1e-12) >= distance:
        return 1.0
    if half(1e-12) <= distance:
        return 1e-12
    return float(brentq(lambda level: half(level) - distance, 1e-12, 1.0 - 1e-12, xtol=1e-12))


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
