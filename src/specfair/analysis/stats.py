"""Uncertainty and fairness statistics over the per-prompt records of `samples.jsonl`.

The unit of sampling is the prompt: tokens within a prompt are correlated (one easy prompt accepts long runs),
so every interval resamples whole records and recomputes the glossary ratio of sums, never a mean of
per-prompt ratios. Rank tests (Wilcoxon, Kruskal-Wallis, Spearman) take per-prompt or per-category values.

This module is pure numpy/scipy on purpose: the evaluation metric needs torch, and an analysis of finished runs
should not. The glossary ratios are the ones `CategoryAcceptance` reports (`records.METRICS`). A prompt without
wall times (baseline=false, or a `mode=replay` run) has no speedup: it adds nothing to either sum, so a run with
no timed prompt has speedup None, never 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from specfair.records import METRICS


def _timed(r: Mapping) -> bool:
    """Both wall times recorded: a decode run with the target-alone baseline (not baseline=false, not replay)."""
    return r.get("wall_s") is not None and r.get("baseline_wall_s") is not None


# metric -> (per-prompt numerator, per-prompt denominator); the metric is Σnumerator / Σdenominator.
_PARTS: dict[str, tuple[Callable[[Mapping], float], Callable[[Mapping], float]]] = {
    "alpha": (lambda r: r["accepted"], lambda r: r["accepted"] + r["rejections"]),
    "acceptance_rate": (lambda r: r["accepted"], lambda r: r["proposed"]),
    "block_efficiency": (lambda r: r["new_tokens"], lambda r: 1 + r["blocks"]),  # target calls
    # a ratio of per-token rates, (ΣN/ΣW) / (ΣN_base/ΣW_base): two columns, multiplied (N = N_base at
    # temperature 0, where it is ΣW_base/ΣW); an untimed prompt is left out of every sum, never a zero time
    "speedup": (
        lambda r: (r["new_tokens"], r["baseline_wall_s"]) if _timed(r) else (0.0, 0.0),
        lambda r: (r["wall_s"], r["baseline_new_tokens"]) if _timed(r) else (0.0, 0.0),
    ),
}
assert tuple(_PARTS) == METRICS, "stats._PARTS must define exactly records.METRICS, in its order"


def _parts(records: Iterable[Mapping], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt numerator and denominator arrays, so any resample is sums and divisions: [n], or [n, k] for
    a product of k ratios of sums (speedup)."""
    if metric not in _PARTS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    num_of, den_of = _PARTS[metric]
    records = list(records)
    num = np.array([num_of(r) for r in records], dtype=np.float64)
    den = np.array([den_of(r) for r in records], dtype=np.float64)
    return num, den


def _ratios(nums: np.ndarray, dens: np.ndarray) -> np.ndarray:
    """Σnum/Σden per row (the product over columns for a 2-D last axis); NaN where a denominator is 0."""
    if nums.ndim == dens.ndim and nums.shape[-1:] == dens.shape[-1:] and nums.ndim > 1 and nums.shape[-1] > 1:
        valid = (dens > 0).all(axis=-1)
        out = np.full(nums.shape[:-1], np.nan)
        out[valid] = np.prod(nums[valid] / dens[valid], axis=-1)
        return out
    out = np.full(nums.shape, np.nan)
    np.divide(nums, dens, out=out, where=dens > 0)
    return out


def _ratio_of_sums(num: np.ndarray, den: np.ndarray) -> float | None:
    value = _ratios(num.sum(axis=0)[None], den.sum(axis=0)[None])[0] if len(num) else np.nan
    return float(value) if np.isfinite(value) else None


def _resampled_ratios(num: np.ndarray, den: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Ratio of sums for each row of an index matrix; NaN where a resample's denominator is 0."""
    return _ratios(num[index].sum(axis=1), den[index].sum(axis=1))


def _index_matrix(n: int, resamples: int, seed: int) -> np.ndarray:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentile_interval(value: float | None, samples: np.ndarray, level: float, n: int) -> dict:
    """Percentile interval over the defined resamples; None when the value or every resample is undefined."""
    samples = samples[np.isfinite(samples)]
    if value is None or n < 2 or samples.size == 0:
        return {"value": value, "low": None, "high": None, "n": n}
    low, high = np.percentile(samples, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"value": value, "low": float(low), "high": float(high), "n": n}


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def metric_value(records: Iterable[Mapping], metric: str) -> float | None:
    """The glossary metric as a ratio of sums over prompts; None when the denominator sums to 0."""
    return _ratio_of_sums(*_parts(records, metric))


def per_prompt(records: Iterable[Mapping], metric: str) -> np.ndarray:
    """Each prompt's own ratio (NaN where its denominator is 0), in record order: for rank tests only."""
    return _ratios(*_parts(records, metric))


def bootstrap_ci(
    records: Sequence[Mapping], metric: str, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict:
    """Percentile bootstrap over prompts: resample records with replacement, recompute the ratio of sums.

    Returns {value, low, high, n}; low/high are None with fewer than 2 records (no spread to resample).
    Resamples whose denominator is 0 are dropped rather than counted as any value.
    """
    _check_level(level)
    num, den = _parts(records, metric)
    n, value = len(num), _ratio_of_sums(num, den)
    if n < 2:
        return {"value": value, "low": None, "high": None, "n": n}
    samples = _resampled_ratios(num, den, _index_matrix(n, resamples, seed))
    return _percentile_interval(value, samples, level, n)


def pair_by_id(before: Sequence[Mapping], after: Sequence[Mapping]) -> tuple[list[Mapping], list[Mapping]]:
    """Both record lists in the same prompt order (before's), so index i is one prompt in both runs.

    Raises ValueError naming the offending ids when a list repeats an id or the two id sets differ.
    """
    for name, records in (("before", before), ("after", after)):
        repeated = sorted(str(i) for i, c in Counter(r["id"] for r in records).items() if c > 1)
        if repeated:
            raise ValueError(f"{name} repeats prompt ids: {', '.join(repeated[:10])}")
    by_id = {r["id"]: r for r in after}
    ids = [r["id"] for r in before]
    only_before = sorted(str(i) for i in set(ids) - set(by_id))
    only_after = sorted(str(i) for i in set(by_id) - set(ids))
    if only_before or only_after:
        raise ValueError(
            "before and after are not the same prompts: "
            f"only in before: [{', '.join(only_before[:10])}], only in after: [{', '.join(only_after[:10])}]"
        )
    return list(before), [by_id[i] for i in ids]


def paired_difference_ci(
    before: Sequence[Mapping],
    after: Sequence[Mapping],
    metric: str,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Bootstrap CI of metric(after) - metric(before) on the same prompts, resampled jointly.

    Drawing one set of prompt indices for both runs keeps the pairing, so prompt difficulty (shared by both
    runs) cancels and the interval reflects only the change. Returns {value, low, high, n}.
    """
    _check_level(level)
    before, after = pair_by_id(before, after)
    b_num, b_den = _parts(before, metric)
    a_num, a_den = _parts(after, metric)
    n = len(b_num)
    b_value, a_value = _ratio_of_sums(b_num, b_den), _ratio_of_sums(a_num, a_den)
    value = a_value - b_value if a_value is not None and b_value is not None else None
    if n < 2:
        return {"value": value, "low": None, "high": None, "n": n}
    index = _index_matrix(n, resamples, seed)
    samples = _resampled_ratios(a_num, a_den, index) - _resampled_ratios(b_num, b_den, index)
    return _percentile_interval(value, samples, level, n)


def wilcoxon_paired(before_values: Sequence[float], after_values: Sequence[float]) -> dict:
    """Wilcoxon signed-rank test of after - before on paired per-prompt values (scipy defaults).

    Pairs with a NaN on either side are dropped; n is the number of pairs kept. With n < 2 there is no test
    (statistic and p_value None). When every difference is 0 there is no evidence of a shift, so the result
    is statistic 0.0, p_value 1.0 (scipy itself would return NaN for this case).
    """
    b = np.asarray(before_values, dtype=np.float64)
    a = np.asarray(after_values, dtype=np.float64)
    if b.shape != a.shape or b.ndim != 1:
        raise ValueError(
            f"paired values must be two 1-d sequences of one length, got {b.shape} and {a.shape}"
        )
    keep = np.isfinite(b) & np.isfinite(a)
    diff, n = a[keep] - b[keep], int(keep.sum())
    if n < 2:
        return {"statistic": None, "p_value": None, "n": n}
    if not np.any(diff != 0):
        return {"statistic": 0.0, "p_value": 1.0, "n": n}
    result = sps.wilcoxon(diff)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "n": n}


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni step-down adjusted p-values: controls the family-wise error over the tests given.

    The i-th smallest of m p-values becomes max over j <= i of (m - j + 1) * p_(j), capped at 1, so the
    adjusted values keep the order of the raw ones. None (no test) passes through and does not count in m.
    """
    tested = {k: p for k, p in p_values.items() if p is not None}
    for key, p in tested.items():
        if not 0 <= p <= 1:
            raise ValueError(f"p-value for {key!r} is not in [0, 1]: {p}")
    ranked = sorted(tested, key=tested.__getitem__)
    m, running, adjusted = len(ranked), 0.0, {}
    for i, key in enumerate(ranked):
        running = max(running, min(1.0, (m - i) * tested[key]))
        adjusted[key] = running
    return {k: adjusted.get(k) for k in p_values}


def kruskal_wallis(groups: Mapping[str, Sequence[float]]) -> dict:
    """Kruskal-Wallis H test that all categories share one distribution (e.g. of per-prompt acceptance).

    NaN values and empty groups are dropped. The test is undefined (statistic and p_value None) with fewer
    than 2 non-empty groups or when every value is identical (no ranks to compare).
    """
    samples = [np.asarray(v, dtype=np.float64) for v in groups.values()]
    samples = [s[np.isfinite(s)] for s in samples]
    samples = [s for s in samples if s.size]
    if len(samples) < 2 or np.ptp(np.concatenate(samples)) == 0:
        return {"statistic": None, "p_value": None}
    result = sps.kruskal(*samples)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue)}


def fairness(values: Mapping[str, float | None]) -> dict:
    """Spread of a higher-is-better metric across categories: who is worst, and by how much.

    None values are ignored. gap = max - min; min_max_ratio = min / max (1 is perfectly even), and
    cv = population std / mean; the two ratios are None unless the values are non-negative with a positive
    max / mean, where they are meaningful. With no values every field is None.
    """
    kept = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
    if not kept:
        keys = ("worst_category", "worst", "best_category", "best", "gap", "min_max_ratio", "cv")
        return dict.fromkeys(keys)
    worst_category = min(kept, key=kept.__getitem__)
    best_category = max(kept, key=kept.__getitem__)
    worst, best = kept[worst_category], kept[best_category]
    arr = np.array(list(kept.values()))
    mean, nonneg = float(arr.mean()), worst >= 0
    return {
        "worst_category": worst_category,
        "worst": worst,
        "best_category": best_category,
        "best": best,
        "gap": best - worst,
        "min_max_ratio": worst / best if nonneg and best > 0 else None,
        "cv": float(arr.std()) / mean if nonneg and mean > 0 else None,
    }


def spearman_permutation(
    x: Sequence[float], y: Sequence[float], *, permutations: int = 10000, seed: int = 0
) -> dict:
    """Spearman rho with a two-sided permutation p-value: valid for the few points of a per-category table.

    p = (#{|rho_perm| >= |rho|} + 1) / (permutations + 1), which is never 0. Pairs with a NaN are dropped;
    with fewer than 3 points, or a constant side (rho undefined), rho and p_value are None.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be two 1-d sequences of one length, got {xa.shape} and {ya.shape}")
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    if xa.size < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"rho": None, "p_value": None}
    rho = float(sps.spearmanr(xa, ya).statistic)
    # Spearman rho is Pearson r of the (average) ranks; permuting y's ranks keeps their centred norm.
    rx = sps.rankdata(xa) - (xa.size + 1) / 2
    ry = sps.rankdata(ya) - (ya.size + 1) / 2
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.broadcast_to(ry, (permutations, ry.size)), axis=1)
    rho_perm = shuffled @ rx / (np.linalg.norm(rx) * np.linalg.norm(ry))
    hits = int(np.count_nonzero(np.abs(rho_perm) >= abs(rho) - 1e-12))  # tolerance: ties count as extreme
    return {"rho": rho, "p_value": (hits + 1) / (permutations + 1)}


def gain_shares(gains: Mapping[str, float | None], data_shares: Mapping[str, float]) -> dict[str, dict]:
    """Each category's share of the total gain next to its share of the training data.

    A category that takes much more of the gain than of the data is where fine-tuning's benefit concentrates.
    data_shares may be counts or fractions (normalised over all its entries); a category missing from it gets
    data_share None. gain_share is gain / Σgain over non-None gains, None when that sum is 0; with gains of
    mixed sign the shares can fall outside [0, 1].
    """
    total_gain = sum(float(g) for g in gains.values() if g is not None)
    total_data = sum(float(s) for s in data_shares.values())
    out = {}
    for category, gain in gains.items():
        share = data_shares.get(category)
        out[category] = {
            "gain_share": float(gain) / total_gain if gain is not None and total_gain != 0 else None,
            "data_share": float(share) / total_data if share is not None and total_data > 0 else None,
        }
    return out
