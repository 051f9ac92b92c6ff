"""Q2 as an estimate with an interval: how far a category's alpha gain follows its share of the training data.

Model, per fine-tuned run r and category c:  gain_rc = a_c + b_r + δ·log(share_rc) + e_rc.
a_c absorbs what a category gains anyway (its ease), b_r what a run gains everywhere (its seed, its mix); δ is
what Q2 asks, the gain per unit of log training share (at rho = 100 the head holds e^4.6 times the tail's
tokens, so head − tail ≈ 4.6·δ). Rotating the head gives every category several shares, which is what
identifies δ beside a_c. Least squares with both sets of fixed effects, by Frisch–Waugh: δ = Σ x̃·y / Σ x̃², x̃ the
log share with its run and category means removed. head − rest asks the same without a model: per rotation
the head's gain minus the others' mean, averaged over seeds, then over rotations (ease cancels only when
every category had its turn).

Intervals come from a cluster bootstrap. Runs (seeds × rotations) are drawn with replacement (for head − rest,
seeds within each rotation, so every rotation stays in). Every run was evaluated on the same prompts against
the same base run, so one prompt draw per category serves all runs, as in `arms`: drawing prompts per run
would turn the shared base's prompt noise into fake run-to-run noise. A shift that moves every category of a
run alike falls into b_r; what widens the interval is training noise that differs by category, which only
several runs reveal. r runs redrawn spread (r-1)/r too little, so run-level draws are widened by √(r/(r-1)).
A run's gain already holds its own prompt noise, which the prompt draw then adds again: the interval errs wide
where prompt noise dominates (95% CIs covered the true δ in 99% of simulations) and is near nominal where
training noise does (93% with 12 runs); prompts stay in because a prompt effect shared by every run but tied to
share would otherwise be missed. The minimum detectable effect at 80 % power, two-sided 5 %, is
(z_0.975 + z_0.8)·SE with SE the bootstrap standard error.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
Z_MDE = 1.959964 + 0.841621  # z_0.975 + z_0.80


def smallest_p(k: int) -> float:
    """The smallest two-sided p an exact rank correlation over k distinct points can reach: 2/k! (k=4: 0.083)."""
    return min(1.0, 2 / math.factorial(k)) if k >= 2 else 1.0


def _mean_run_spearman(x: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Mean over runs of Spearman(x_r, gains_r), for a stack of share assignments x: [P, R, K] -> [P]."""
    from scipy.stats import rankdata  # scipy, not torch: the analysis layer stays light

    ok = np.isfinite(x) & np.isfinite(gains)[None]
    rx = np.where(ok, rankdata(np.where(ok, x, np.inf), axis=-1), np.nan)
    ry = np.where(ok, rankdata(np.where(ok, np.broadcast_to(gains, x.shape), np.inf), axis=-1), np.nan)
    rx, ry = rx - np.nanmean(rx, -1, keepdims=True), ry - np.nanmean(ry, -1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.nansum(rx * ry, -1) / np.sqrt(np.nansum(rx**2, -1) * np.nansum(ry**2, -1))
    return np.nanmean(rho, -1) if np.isfinite(rho).any() else np.full(len(x), np.nan)


def rotation_test(
    panel: Panel, permutations: int = 10_000, seed: int = 0, seeds: Sequence | None = None
) -> dict:
    """A permutation test of "the gain follows the data": reassign which run got which mix, within seeds.

    Null: which run got which mix (rotation) does not matter, so the runs' share vectors are exchangeable
    among the runs of one seed (given `seeds`, one label per run; else among all runs). Permuting within
    seeds keeps every seed's set of mixes, the design that was run. Two statistics, on the same reassignments:
    - `delta` {value, p_value}: δ itself, the fixed-effects slope `fit_delta` estimates. It takes every run's
      gains at their size, so with 4 categories its null is near continuous and the test near nominal size:
      the test to quote.
    - `rho`, `p_value` (top level, the names reports have read): the mean over runs of each run's Spearman
      between log share and gain, the gain taken relative to its category's mean over all runs. Ranks of 4
      categories take few values, which makes it conservative (mean null p about 0.58).
    p: the share of reassignments (all of them when they number ≤ `permutations`, else random ones) whose
    |statistic| reaches the observed one. No test when no reassignment changes a run's mix.
    """
    blocks = _blocks(len(panel.x), seeds)
    within = "seeds" if seeds is not None else "all runs"
    rows = [tuple(np.nan_to_num(row, nan=-np.inf)) for row in panel.x]
    assignments = math.prod(_distinct_orders([rows[i] for i in b]) for b in blocks)
    observed = _rank_statistics(panel, panel.x[None])
    if assignments < 2 or not np.isfinite(observed["spearman"][0]):
        why = (
            f"no run's mix can be reassigned within {within}"
            if len(set(rows)) > 1
            else "every run had the same mix"
        )
        return {"rho": None, "p_value": None, "delta": None, "why": f"{why}: nothing to reassign"}
    orders, exact = _reassignments(blocks, len(panel.x), permutations, seed)
    null = _rank_statistics(panel, panel.x[orders])
    p = {}
    for name, values in null.items():
        hits = int(np.count_nonzero(np.abs(values) >= abs(observed[name][0]) - 1e-12))
        p[name] = hits / len(orders) if exact else (hits + 1) / (len(orders) + 1)
    return {
        "rho": float(observed["spearman"][0]),
        "p_value": p["spearman"],
        "delta": {"value": float(observed["delta"][0]), "p_value": p["delta"]},
        "runs": len(panel.x),
        "within": within,
        "exact": exact,
        "smallest_p": 1 / assignments,
    }


def _rank_statistics(panel: Panel, x: np.ndarray) -> dict[str, np.ndarray]:
    """δ and the mean per-run Spearman for a stack of share assignments x [P, R, K]: {name: [P]}."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a category with no gain in any run: all-NaN column
        centred = panel.gains - np.nanmean(panel.gains, axis=0, keepdims=True)
    return {"delta": fit_delta(panel.gains, x), "spearman": _mean_run_spearman(x, centred)}


def _blocks(runs: int, seeds: Sequence | None) -> list[np.ndarray]:
    """Run indices per seed label, in first-seen order (one block of every run without labels)."""
    if seeds is None:
        return [np.arange(runs)]
    if len(seeds) != runs:
        raise ValueError(f"rotation_test: {len(seeds)} seed labels for {runs} runs")
    labels = [str(s) for s in seeds]
    return [np.flatnonzero(np.array(labels) == v) for v in dict.fromkeys(labels)]


def _distinct_orders(rows: list[tuple]) -> int:
    """How many distinct ways a block's share vectors can be given to its runs (a multinomial count)."""
    return math.factorial(len(rows)) // math.prod(math.factorial(rows.count(v)) for v in set(rows))


def _reassignments(
    blocks: list[np.ndarray], runs: int, permutations: int, seed: int
) -> tuple[np.ndarray, bool]:
    """([P, R] run orders permuting only within blocks, exact): every combination of within-block
    permutations when they number ≤ `permutations`, else that many random ones."""
    if math.prod(math.factorial(len(b)) for b in blocks) <= permutations:
        per_block = [list(itertools.permutations(b)) for b in blocks]
        orders = np.empty((math.prod(len(p) for p in per_block), runs), dtype=int)
        for i, combination in enumerate(itertools.product(*per_block)):
            for b, order in zip(blocks, combination, strict=True):
                orders[i, b] = order
        return orders, True
    rng = np.random.default_rng(seed)
    orders = np.broadcast_to(np.arange(runs), (permutations, runs)).copy()
    for b in blocks:
        orders[:, b] = b[rng.permuted(np.broadcast_to(np.arange(len(b)), (permutations, len(b))), axis=1)]
    return orders, False


@dataclass
class Panel:
    """R runs × K categories. gains: point gains (NaN: undefined); x: log training share (NaN: no training
    data, left out of δ); heads: each run's head column; parts: per-prompt alpha [base num, base den, tuned num,
    tuned den] as [4, R, K, N], zero-padded past n[k] prompts; None when the records are not at hand."""

    gains: np.ndarray
    x: np.ndarray
    heads: np.ndarray
    parts: np.ndarray | None = None
    n: np.ndarray | None = None


def prompt_parts(categories: list[str], pairs: Sequence[tuple[Sequence[Mapping], Sequence[Mapping]]]):
    """(parts, n) of `Panel` from each run's (base records, fine-tuned records), prompts in one order for all.

    Raises ValueError when the runs were not evaluated on the same prompts (no shared draw is possible).
    """
    ids = [sorted({r["id"] for r in pairs[0][0] if r["category"] == c}, key=str) for c in categories]
    n = np.array([len(i) for i in ids])
    parts = np.zeros((4, len(pairs), len(categories), max(int(n.max(initial=0)), 1)))
    for i, pair in enumerate(pairs):
        for side, records in enumerate(pair):
            by_key = {(r["category"], r["id"]): r for r in records}
            for k, c in enumerate(categories):
                if {key[1] for key in by_key if key[0] == c} != set(ids[k]):
                    raise ValueError(f"run {i + 1} was not evaluated on the same {c} prompts as run 1")
                rows = [by_key[(c, j)] for j in ids[k]]
                parts[2 * side, i, k, : n[k]] = [r["accepted"] for r in rows]
                parts[2 * side + 1, i, k, : n[k]] = [r["accepted"] + r["rejections"] for r in rows]
    return parts, n


def resampled_gains(panel: Panel, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[B, R, K] gains on B prompt resamples (one draw per category, shared by every run); the point gains
    repeated when there are no per-prompt records."""
    if panel.parts is None:
        return np.broadcast_to(panel.gains, (resamples, *panel.gains.shape))
    weights = np.zeros((resamples, *panel.parts.shape[2:]))  # [B, K, N]: how often each prompt is drawn
    for k, n in enumerate(panel.n):
        if n:
            weights[:, k, :n] = rng.multinomial(n, np.full(n, 1 / n), size=resamples)
    sums = np.einsum("bkn,prkn->pbrk", weights, panel.parts, optimize=True)
    return _ratio(sums[2], sums[3]) - _ratio(sums[0], sums[1])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def residualize(x: np.ndarray, mask: np.ndarray, tol: float = 1e-12, sweeps: int = 1000) -> np.ndarray:
    """x minus its least-squares fit on run and category dummies, over the cells in mask ([..., R, K]).

    Alternating projections: exact after one sweep when no cell is missing, geometric otherwise.
    """
    x = np.where(mask, x, 0.0)
    per_run = np.maximum(mask.sum(-1, keepdims=True), 1)
    per_category = np.maximum(mask.sum(-2, keepdims=True), 1)
    for _ in range(sweeps):
        run_mean = np.where(mask, x.sum(-1, keepdims=True) / per_run, 0.0)
        x = x - run_mean
        category_mean = np.where(mask, x.sum(-2, keepdims=True) / per_category, 0.0)
        x = x - category_mean
        if max(np.abs(run_mean).max(), np.abs(category_mean).max()) < tol:
            break
    return x


def fit_delta(gains: np.ndarray, x: np.ndarray) -> np.ndarray:
    """δ of gain = a_c + b_r + δ·x per [..., R, K] panel; NaN where x does not vary beyond the fixed effects."""
    mask = np.isfinite(gains) & np.isfinite(x)
    xt = residualize(x, mask)
    sxx = (xt**2).sum((-2, -1))
    sxy = (xt * np.where(mask, gains, 0.0)).sum((-2, -1))
    ok = sxx > 1e-9
    return np.where(ok, sxy / np.where(ok, sxx, 1.0), np.nan)


def head_minus_rest(gains: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """[..., R] the head's gain minus the mean of the others' in each run."""
    r = np.arange(gains.shape[-2])
    head = gains[..., r, heads]
    others = np.where(np.arange(gains.shape[-1]) == heads[:, None], np.nan, gains)
    with np.errstate(invalid="ignore"):
        return head - np.nanmean(others, axis=-1)


def _interval(value: float, draws: np.ndarray, over: str) -> dict:
    """{value, low, high, se, mde, resamples, over}: percentile 95% CI and MDE from the defined draws."""
    draws = draws[np.isfinite(draws)]
    if draws.size < 2:
        return no_interval(value, "no resample defined it")
    low, high = np.percentile(draws, [2.5, 97.5])
    se = float(draws.std(ddof=1))
    return {
        "value": value,
        "low": float(low),
        "high": float(high),
        "se": se,
        "mde": Z_MDE * se,
        "resamples": int(draws.size),
        "over": over,
    }


def no_interval(value: float | None, why: str) -> dict:
    """An estimate that has no interval, and why (shown in place of one)."""
    return {"value": value, **dict.fromkeys(("low", "high", "se", "mde", "over")), "resamples": 0, "why": why}


def _over(panel: Panel, runs: bool, prompts: bool) -> str:
    prompts = prompts and panel.parts is not None
    return " and ".join(s for s, on in (("runs", runs), ("prompts", prompts)) if on) or "nothing"


def delta(
    panel: Panel, resamples: int = RESAMPLES, seed: int = 0, runs: bool = True, prompts: bool = True
) -> dict:
    """δ with its cluster-bootstrap 95% CI and MDE; runs=False / prompts=False hold that level fixed.

    value None (with `why`) where δ is not identified: the shares never vary within a category across runs.
    """
    r = len(panel.heads)
    value = float(fit_delta(panel.gains, panel.x))
    if r < 2 or not np.isfinite(value):
        return no_interval(None, "one run" if r < 2 else "shares do not vary within a category across runs")
    rng = np.random.default_rng(seed)
    gains = resampled_gains(panel if prompts else Panel(panel.gains, panel.x, panel.heads), resamples, rng)
    pick = rng.integers(0, r, (resamples, r)) if runs else np.broadcast_to(np.arange(r), (resamples, r))
    draws = fit_delta(gains[np.arange(resamples)[:, None], pick], panel.x[pick])
    if (
        runs
    ):  # r draws from r runs spread (r-1)/r too little: widen them around each prompt draw's all-run fit
        center = fit_delta(gains, panel.x)
        draws = center + np.sqrt(r / (r - 1)) * (draws - center)
    return _interval(value, draws, _over(panel, runs, prompts))


def _rotation_mean(
    per_run: np.ndarray, heads: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """[B] mean over rotations of the mean over seeds of [B, R] draws; given `rng`, seeds are redrawn within
    each rotation and widened by √(s/(s-1)) as in `delta`."""
    b = np.arange(per_run.shape[0])[:, None]
    out = []
    for h in np.unique(heads):
        i = np.flatnonzero(heads == h)
        mean = per_run[:, i].mean(1)
        if rng is not None and len(i) > 1:
            picked = per_run[b, i[rng.integers(0, len(i), (per_run.shape[0], len(i)))]].mean(1)
            mean = mean + np.sqrt(len(i) / (len(i) - 1)) * (picked - mean)
        out.append(mean)
    return np.mean(out, axis=0)


def _point(per_run: np.ndarray, heads: np.ndarray) -> float:
    """The mean over rotations of the mean over seeds, skipping runs where the statistic is undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean([np.nanmean(per_run[heads == h]) for h in np.unique(heads)]))


def head_minus_rest_ci(panel: Panel, resamples: int = RESAMPLES, seed: int = 0, runs: bool = True) -> dict:
    """Mean over rotations of the mean over seeds of head − rest, with min/max over runs, CI and MDE.

    Seeds are redrawn within each rotation. With one seed in every rotation there is no run level to draw:
    no interval (`why` says so, `prompts_only` holds the interval over prompts alone, for reference).
    """
    per_run = head_minus_rest(panel.gains, panel.heads)
    value = _point(per_run, panel.heads)
    spread = {"min": float(np.nanmin(per_run)), "max": float(np.nanmax(per_run))}
    if runs and _seeds_per_rotation(panel.heads) < 2:
        out = no_interval(value, "one run" if len(per_run) < 2 else "one seed per rotation")
        if panel.parts is not None:
            out["prompts_only"] = head_minus_rest_ci(panel, resamples, seed, runs=False)
        return out | spread
    rng = np.random.default_rng(seed)
    draws = head_minus_rest(resampled_gains(panel, resamples, rng), panel.heads)  # [B, R]
    draws = _rotation_mean(draws, panel.heads, rng if runs else None)
    return _interval(value, draws, _over(panel, runs, True)) | spread


def _seeds_per_rotation(heads: np.ndarray) -> int:
    return int(np.unique(heads, return_counts=True)[1].max(initial=0))


def run_fairness(gains: np.ndarray) -> dict[str, np.ndarray]:
    """[..., R] per run: the worst category's gain, the mean over categories, and the gap (best − worst)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a run with every gain undefined
        worst, best = np.nanmin(gains, -1), np.nanmax(gains, -1)
        return {"worst": worst, "mean": np.nanmean(gains, -1), "gap": best - worst}


FAIRNESS = ("worst", "mean", "gap")


def fairness_draws(panel: Panel, resamples: int = RESAMPLES, seed: int = 0) -> tuple[dict, dict]:
    """({stat: value}, {stat: [B] draws}) of the worst-category gain, mean gain and gap, each a mean over
    rotations of the mean over seeds. Draws share the prompt draw of any other panel drawn with the same seed
    and prompts, so differences between samplers keep their pairing on prompts; runs are redrawn per panel."""
    values = {k: _point(v, panel.heads) for k, v in run_fairness(panel.gains).items()}
    rng = np.random.default_rng(seed)
    per_run = run_fairness(resampled_gains(panel, resamples, rng))
    rng_runs = rng if _seeds_per_rotation(panel.heads) > 1 else None
    return values, {k: _rotation_mean(per_run[k], panel.heads, rng_runs) for k in FAIRNESS}


def fairness_ci(panel: Panel, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Worst-category gain, mean gain and gap, each with a 95% CI (over runs only with ≥ 2 seeds per rotation)."""
    values, draws = fairness_draws(panel, resamples, seed)
    if _seeds_per_rotation(panel.heads) < 2:
        why = "one run" if len(panel.heads) < 2 else "one seed per rotation"
        return {k: no_interval(values[k], why) for k in FAIRNESS}
    return {k: _interval(values[k], draws[k], _over(panel, True, True)) for k in FAIRNESS}


def fairness_against(
    reference: Panel, other: Panel, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, dict]:
    """The other sampler against the reference (natural) at the same mix: worst − worst, worst − the
    reference's mean (the moonshot's bar), and mean / reference mean − 1, each with a 95% CI."""
    (rv, rd), (ov, od) = fairness_draws(reference, resamples, seed), fairness_draws(other, resamples, seed)
    pairs = {
        "worst_change": (ov["worst"] - rv["worst"], od["worst"] - rd["worst"]),
        "worst_minus_reference_mean": (ov["worst"] - rv["mean"], od["worst"] - rd["mean"]),
        "relative_mean_change": (
            ov["mean"] / rv["mean"] - 1 if rv["mean"] else float("nan"),
            _ratio(od["mean"], rd["mean"]) - 1,
        ),
    }
    if min(_seeds_per_rotation(reference.heads), _seeds_per_rotation(other.heads)) < 2:
        return {k: no_interval(v, "one seed per rotation") for k, (v, _) in pairs.items()}
    return {k: _interval(v, d, _over(other, True, True)) for k, (v, d) in pairs.items()}
