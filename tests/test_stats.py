import inspect
import math

import numpy as np
import pytest
from scipy import stats as sps

from specfair.analysis.stats import (
    bootstrap_ci,
    fairness,
    gain_shares,
    holm,
    kruskal_wallis,
    metric_value,
    pair_by_id,
    paired_difference_ci,
    per_prompt,
    spearman_permutation,
    wilcoxon_paired,
)


def rec(id, accepted, proposed, rejections, blocks, new_tokens, wall_s, baseline_wall_s, category="a"):
    return {
        "id": id,
        "category": category,
        "accepted": accepted,
        "proposed": proposed,
        "rejections": rejections,
        "blocks": blocks,
        "new_tokens": new_tokens,
        "wall_s": wall_s,
        "baseline_wall_s": baseline_wall_s,
        "baseline_new_tokens": new_tokens,
    }


FIXTURE = [
    rec("p0", accepted=3, proposed=4, rejections=1, blocks=2, new_tokens=6, wall_s=1.0, baseline_wall_s=3.0),
    rec("p1", accepted=1, proposed=8, rejections=2, blocks=3, new_tokens=5, wall_s=4.0, baseline_wall_s=4.0),
]


def synthetic(n, *, seed, p_mean=0.6, concentration=10.0, lift=0.0):
    """Prompts with their own acceptance p_i ~ Beta (mean p_mean): tokens within a prompt are correlated.

    Returns (before, after) on the same prompts; after accepts with p_i + lift * (1 - p_i), so the true
    acceptance rates are p_mean and p_mean + lift * (1 - p_mean).
    """
    rng = np.random.default_rng(seed)
    p = rng.beta(p_mean * concentration, (1 - p_mean) * concentration, size=n)
    proposed = rng.integers(20, 61, size=n)
    runs = []
    for prob in (p, p + lift * (1 - p)):
        accepted = rng.binomial(proposed, prob)
        blocks = proposed // 4
        runs.append(
            [
                rec(
                    f"p{i}",
                    accepted=int(accepted[i]),
                    proposed=int(proposed[i]),
                    rejections=int(min(blocks[i], proposed[i] - accepted[i])),
                    blocks=int(blocks[i]),
                    new_tokens=int(1 + accepted[i] + blocks[i]),
                    wall_s=1.0 + 0.01 * blocks[i],
                    baseline_wall_s=1.0 + 0.02 * accepted[i],
                )
                for i in range(n)
            ]
        )
    return runs


# --- metric_value / per_prompt ---------------------------------------------------------------------------


def test_metric_value_is_ratio_of_sums_not_mean_of_ratios():
    assert metric_value(FIXTURE, "acceptance_rate") == pytest.approx((3 + 1) / (4 + 8))
    assert metric_value(FIXTURE, "alpha") == pytest.approx((3 + 1) / ((3 + 1) + (1 + 2)))
    assert metric_value(FIXTURE, "block_efficiency") == pytest.approx((6 + 5) / ((1 + 2) + (1 + 3)))
    assert metric_value(FIXTURE, "speedup") == pytest.approx((3.0 + 4.0) / (1.0 + 4.0))
    # the mean of per-prompt ratios is a different (prompt-weighted) number on this fixture
    assert np.mean(per_prompt(FIXTURE, "acceptance_rate")) == pytest.approx((3 / 4 + 1 / 8) / 2)
    for metric in ("acceptance_rate", "block_efficiency", "speedup"):
        assert metric_value(FIXTURE, metric) != pytest.approx(np.mean(per_prompt(FIXTURE, metric)))


def test_metric_value_undefined_and_unknown():
    assert metric_value([], "acceptance_rate") is None
    no_drafts = [rec("z", 0, 0, 0, 0, 5, 1.0, 1.0)]
    assert metric_value(no_drafts, "acceptance_rate") is None
    assert metric_value(no_drafts, "alpha") is None
    assert metric_value(no_drafts, "block_efficiency") == pytest.approx(5.0)  # one target call
    with pytest.raises(ValueError, match="acceptance_rate"):
        metric_value(FIXTURE, "acceptance")


def test_per_prompt_values_and_nan_when_undefined():
    values = per_prompt([*FIXTURE, rec("z", 0, 0, 0, 0, 5, 1.0, 1.0)], "acceptance_rate")
    assert values[:2] == pytest.approx([0.75, 0.125])
    assert math.isnan(values[2])
    assert per_prompt(FIXTURE, "block_efficiency") == pytest.approx([6 / 3, 5 / 4])


# --- bootstrap_ci ----------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_true_value_and_is_ordered():
    before, _ = synthetic(300, seed=1)
    ci = bootstrap_ci(before, "acceptance_rate")
    assert ci["n"] == 300
    assert ci["value"] == pytest.approx(metric_value(before, "acceptance_rate"))
    assert ci["low"] < ci["value"] < ci["high"]
    assert ci["low"] <= 0.6 <= ci["high"]


def test_bootstrap_resamples_ratio_of_sums_not_per_prompt_ratios():
    """Long prompts that accept little and short ones that accept a lot: the two estimands are far apart."""
    long = [rec(f"l{i}", 20, 100, 20, 25, 46, 1.0, 1.0) for i in range(100)]
    short = [rec(f"s{i}", 9, 10, 1, 3, 13, 1.0, 1.0) for i in range(100)]
    ci = bootstrap_ci(long + short, "acceptance_rate")
    assert ci["value"] == pytest.approx(29 / 110)  # the mean of per-prompt ratios would be 0.55
    assert ci["low"] < 29 / 110 < ci["high"] < 0.35


def test_bootstrap_ci_covers_at_about_the_nominal_rate():
    """Resampling prompts (not tokens) must cover the truth ~95% of the time despite prompt heterogeneity."""
    trials = 100
    covered = 0
    for seed in range(trials):
        before, _ = synthetic(100, seed=1000 + seed)
        ci = bootstrap_ci(before, "acceptance_rate", resamples=1000, seed=seed)
        covered += ci["low"] <= 0.6 <= ci["high"]
    assert 0.88 <= covered / trials <= 0.995


def test_bootstrap_ci_narrower_with_more_prompts_and_lower_level():
    small, _ = synthetic(50, seed=2)
    large, _ = synthetic(800, seed=2)
    width = lambda ci: ci["high"] - ci["low"]  # noqa: E731
    assert width(bootstrap_ci(large, "acceptance_rate")) < width(bootstrap_ci(small, "acceptance_rate")) / 2
    assert width(bootstrap_ci(small, "acceptance_rate", level=0.5)) < width(
        bootstrap_ci(small, "acceptance_rate", level=0.95)
    )


def test_bootstrap_ci_deterministic_for_seed_and_default_resamples():
    before, _ = synthetic(100, seed=3)
    assert bootstrap_ci(before, "speedup", seed=7) == bootstrap_ci(before, "speedup", seed=7)
    assert bootstrap_ci(before, "speedup", seed=7)["low"] != bootstrap_ci(before, "speedup", seed=8)["low"]
    assert inspect.signature(bootstrap_ci).parameters["resamples"].default >= 1000


def test_bootstrap_ci_undefined_with_one_record():
    ci = bootstrap_ci(FIXTURE[:1], "acceptance_rate")
    assert ci == {"value": pytest.approx(0.75), "low": None, "high": None, "n": 1}
    assert bootstrap_ci([], "acceptance_rate") == {"value": None, "low": None, "high": None, "n": 0}
    with pytest.raises(ValueError):
        bootstrap_ci(FIXTURE, "acceptance_rate", level=95)


# --- paired_difference_ci --------------------------------------------------------------------------------


def test_paired_difference_recovers_known_lift_and_excludes_zero():
    before, after = synthetic(300, seed=4, lift=0.25)  # true difference 0.25 * (1 - 0.6) = 0.1
    ci = paired_difference_ci(before, after, "acceptance_rate")
    assert ci["n"] == 300
    assert ci["value"] == pytest.approx(
        metric_value(after, "acceptance_rate") - metric_value(before, "acceptance_rate")
    )
    assert ci["low"] <= 0.1 <= ci["high"]
    assert ci["low"] > 0


def test_paired_difference_pairs_by_id_not_position():
    before, after = synthetic(200, seed=5, lift=0.25)
    shuffled = [after[i] for i in np.random.default_rng(0).permutation(len(after))]
    assert paired_difference_ci(before, shuffled, "acceptance_rate") == paired_difference_ci(
        before, after, "acceptance_rate"
    )
    ordered_before, ordered_after = pair_by_id(before, shuffled)
    assert [r["id"] for r in ordered_after] == [r["id"] for r in ordered_before]


def test_paired_interval_is_narrower_than_unpaired():
    """Shared prompt difficulty cancels only if both runs are resampled with the same indices."""
    before, after = synthetic(300, seed=6, lift=0.25)
    paired = paired_difference_ci(before, after, "acceptance_rate")
    b, a = bootstrap_ci(before, "acceptance_rate", seed=1), bootstrap_ci(after, "acceptance_rate", seed=2)
    unpaired_width = math.hypot(b["high"] - b["low"], a["high"] - a["low"])
    assert paired["high"] - paired["low"] < 0.7 * unpaired_width


def test_paired_difference_of_identical_runs_is_zero():
    before, _ = synthetic(50, seed=7)
    assert paired_difference_ci(before, before, "alpha") == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 50}


def test_paired_difference_rejects_mismatched_or_repeated_ids():
    before, after = synthetic(10, seed=8)
    after = [*after[:3], {**after[3], "id": "x9"}, *after[4:]]
    with pytest.raises(ValueError, match=r"p3.*x9"):
        paired_difference_ci(before, after, "acceptance_rate")
    with pytest.raises(ValueError, match="p0"):
        paired_difference_ci(before, [*before, before[0]], "acceptance_rate")


# --- rank tests ------------------------------------------------------------------------------------------


def test_wilcoxon_matches_scipy_and_drops_nan_pairs():
    rng = np.random.default_rng(9)
    before = rng.random(30)
    after = before + rng.normal(0.05, 0.1, size=30)
    expected = sps.wilcoxon(after, before)
    result = wilcoxon_paired(before, after)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert result["n"] == 30

    with_nan = wilcoxon_paired([*before, np.nan, 0.3], [*after, 0.5, np.nan])
    assert with_nan == {**result, "statistic": pytest.approx(expected.statistic)}


def test_wilcoxon_degenerate_cases():
    assert wilcoxon_paired([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == {"statistic": 0.0, "p_value": 1.0, "n": 3}
    assert wilcoxon_paired([0.1, np.nan], [0.2, 0.3]) == {"statistic": None, "p_value": None, "n": 1}
    with pytest.raises(ValueError):
        wilcoxon_paired([0.1, 0.2], [0.1])


def test_kruskal_matches_scipy_and_ignores_nan_and_empty():
    rng = np.random.default_rng(10)
    groups = {"a": rng.random(12), "b": rng.random(15) + 0.3, "c": rng.random(9)}
    expected = sps.kruskal(*groups.values())
    assert kruskal_wallis(groups) == {
        "statistic": pytest.approx(expected.statistic),
        "p_value": pytest.approx(expected.pvalue),
    }
    noisy = {**{k: [*v, np.nan] for k, v in groups.items()}, "empty": []}
    assert kruskal_wallis(noisy) == kruskal_wallis(groups)


def test_kruskal_undefined_cases():
    assert kruskal_wallis({"a": [0.1, 0.2], "b": []}) == {"statistic": None, "p_value": None}
    assert kruskal_wallis({"a": [0.5, 0.5], "b": [0.5]}) == {"statistic": None, "p_value": None}


# --- holm ------------------------------------------------------------------------------------------------


def test_holm_by_hand():
    # sorted: a 0.01*4 = 0.04; c 0.03*3 = 0.09; b 0.04*2 = 0.08 -> 0.09 (monotone); d 0.20*1 = 0.20
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.20})
    assert list(adjusted) == ["a", "b", "c", "d"]
    assert adjusted == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.20})


def test_holm_caps_at_one_is_monotone_and_passes_none_through():
    # m = 2 (None does not count): x 0.6*2 = 1.2 -> 1; y max(1, 0.7) = 1
    assert holm({"x": 0.6, "skip": None, "y": 0.7}) == {"x": 1.0, "skip": None, "y": 1.0}
    raw = dict(zip("abcdefgh", np.random.default_rng(11).random(8) / 5, strict=True))
    adjusted = holm(raw)
    order = sorted(raw, key=raw.get)
    assert all(adjusted[k] >= raw[k] for k in raw)
    assert all(adjusted[a] <= adjusted[b] for a, b in zip(order, order[1:]))  # noqa: B905
    assert holm({}) == {}
    with pytest.raises(ValueError):
        holm({"a": float("nan")})


# --- fairness / spearman / gain shares -------------------------------------------------------------------


def test_fairness_by_hand():
    result = fairness({"a": 0.5, "b": 0.8, "c": None, "d": 0.6})
    mean = (0.5 + 0.8 + 0.6) / 3
    std = math.sqrt(((0.5 - mean) ** 2 + (0.8 - mean) ** 2 + (0.6 - mean) ** 2) / 3)
    assert result == {
        "worst_category": "a",
        "worst": 0.5,
        "best_category": "b",
        "best": 0.8,
        "gap": pytest.approx(0.3),
        "min_max_ratio": pytest.approx(0.625),
        "cv": pytest.approx(std / mean),
    }
    assert result["cv"] == pytest.approx(0.19693, abs=1e-5)
    assert fairness({"a": None})["worst_category"] is None
    assert fairness({"a": -0.1, "b": 0.2})["min_max_ratio"] is None  # ratio meaningless across signs


def test_spearman_monotone_data_gives_rho_one_and_small_p():
    x = np.arange(10.0)
    result = spearman_permutation(x, x**3 + 1)
    assert result["rho"] == pytest.approx(1.0)
    assert result["p_value"] < 0.001  # exact two-sided p is 2 / 10!
    assert spearman_permutation(x, -x)["rho"] == pytest.approx(-1.0)
    assert spearman_permutation(x, -x)["p_value"] < 0.001


def test_spearman_unrelated_data_gives_large_p():
    x = np.arange(11.0)
    v_shape = np.abs(x - 5)  # falls then rises symmetrically: rho is 0
    result = spearman_permutation(x, v_shape)
    assert result["rho"] == pytest.approx(0.0, abs=1e-12)
    assert result["p_value"] > 0.8


def test_spearman_permutation_p_agrees_with_scipy_and_is_calibrated_under_independence():
    rng = np.random.default_rng(12)
    x, y = rng.random(25), rng.random(25)
    result, expected = spearman_permutation(x, y), sps.spearmanr(x, y)
    assert result["rho"] == pytest.approx(expected.statistic)
    assert result["p_value"] == pytest.approx(expected.pvalue, abs=0.01)
    # independent data: p-values roughly uniform, so about 5% fall below 0.05
    p = [
        spearman_permutation(rng.random(12), rng.random(12), permutations=999, seed=s)["p_value"]
        for s in range(200)
    ]
    assert 0.01 <= np.mean(np.array(p) < 0.05) <= 0.10
    assert 0.4 <= np.median(p) <= 0.6


def test_spearman_deterministic_and_undefined_cases():
    rng = np.random.default_rng(13)
    x, y = rng.random(8), rng.random(8)
    assert spearman_permutation(x, y, seed=3) == spearman_permutation(x, y, seed=3)
    assert spearman_permutation([1, 2], [2, 1]) == {"rho": None, "p_value": None}
    assert spearman_permutation([1, 2, np.nan, 4], [1, 2, 3, np.nan]) == {"rho": None, "p_value": None}
    assert spearman_permutation([1, 2, 3], [5, 5, 5]) == {"rho": None, "p_value": None}
    p = spearman_permutation(x, y, permutations=99)["p_value"]
    assert p * 100 == pytest.approx(round(p * 100))  # (count + 1) / (permutations + 1)


def test_gain_shares():
    shares = gain_shares({"a": 0.1, "b": 0.3, "c": 0.0}, {"a": 1, "b": 1, "c": 2})
    assert shares == {
        "a": {"gain_share": pytest.approx(0.25), "data_share": pytest.approx(0.25)},
        "b": {"gain_share": pytest.approx(0.75), "data_share": pytest.approx(0.25)},
        "c": {"gain_share": pytest.approx(0.0), "data_share": pytest.approx(0.5)},
    }
    zero = gain_shares({"a": 0.1, "b": -0.1, "new": None}, {"a": 0.5, "b": 0.5})
    assert zero == {
        "a": {"gain_share": None, "data_share": 0.5},
        "b": {"gain_share": None, "data_share": 0.5},
        "new": {"gain_share": None, "data_share": None},
    }


def test_speedup_is_a_ratio_of_per_token_rates_when_token_counts_differ():
    """At temperature > 0 the engine and the target alone emit different numbers of tokens: 10 tokens in 1 s
    against 20 in 4 s is twice as fast per token (a wall-time ratio would say 4x)."""
    from specfair.evaluation.acceptance import CategoryAcceptance

    records = [
        {**rec("p0", 2, 4, 1, 2, 10, 1.0, 4.0), "baseline_new_tokens": 20, "proposed_lengths": [2, 2],
         "accept_lengths": [1, 1]},
        {**rec("p1", 2, 4, 1, 2, 6, 1.0, 1.0), "baseline_new_tokens": 2, "proposed_lengths": [2, 2],
         "accept_lengths": [1, 1]},
    ]  # fmt: skip
    want = (16 / 2.0) / (22 / 5.0)
    assert metric_value(records, "speedup") == pytest.approx(want)
    metric = CategoryAcceptance(["a"], gamma=2)
    for r in records:
        metric.update(r)
    assert metric.compute()["overall"]["speedup"] == pytest.approx(want)
    ci = bootstrap_ci(records, "speedup", resamples=200)
    assert ci["low"] <= want <= ci["high"]
