"""Seed-level intervals that cover (issue 29): `arms.difference` at 3 seeds where seed variance dominates.

The simulation: a 3-seed draft against one fixed reference draft on 40 prompts drawn afresh each time (prompt
effects shared by both drafts, as on a real prompt set), each seed's acceptance rate shifted by a normal seed
effect 10 times the size of a seed's prompt-level noise. The t-based interval must cover the true difference
in ≥ 93% of replications; the percentile bootstrap that redrew the 3 seeds with replacement (kept here as
`percentile_over_seeds`, what arms.py computed before) covers under 90%, so the simulation tells them apart.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from specfair.analysis import arms

PROMPTS, SEEDS, TOKENS = 40, 3, 200
TRUE_A, TRUE_B = 0.60, 0.50
SEED_SD, PROMPT_SD, NOISE_SD = 0.03, 0.05, 0.005
REPLICATIONS, RESAMPLES = 400, 400


def fake_run(p_accept: np.ndarray, rng: np.random.Generator) -> SimpleNamespace:
    """A run's records: per prompt, TOKENS draft tokens proposed, each accepted with that prompt's rate."""
    accepted = rng.binomial(TOKENS, np.clip(p_accept, 0.01, 0.99))
    records = [
        {"id": f"p{i}", "category": "c", "accepted": int(k), "rejections": TOKENS - int(k)}
        for i, k in enumerate(accepted)
    ]
    return SimpleNamespace(records=records)


def experiment(rng: np.random.Generator, seeds: int = SEEDS) -> tuple[list, list]:
    """(the draft's seed runs, the reference's one run) on one fresh draw of prompts."""
    prompt = rng.normal(0, PROMPT_SD, PROMPTS)
    reference = [fake_run(TRUE_B + prompt, rng)]
    draft = [
        fake_run(TRUE_A + rng.normal(0, SEED_SD) + prompt + rng.normal(0, NOISE_SD, PROMPTS), rng)
        for _ in range(seeds)
    ]
    return draft, reference


def percentile_over_seeds(a, b, ids, resamples=RESAMPLES) -> tuple[float, float]:
    """The interval arms.py used before: seeds redrawn with replacement, prompts drawn once for every run,
    the 2.5th and 97.5th percentiles of the redrawn difference."""
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(ids), size=(resamples, len(ids)))
    rows = np.arange(resamples)[:, None]
    _, a_boot = arms._seed_ratios(a, ids, None, index)
    _, b_boot = arms._seed_ratios(b, ids, None, index)
    draws = a_boot[rng.integers(0, len(a), (resamples, len(a))), rows].mean(1)
    draws = draws - b_boot[rng.integers(0, len(b), (resamples, len(b))), rows].mean(1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def coverage(interval, seeds: int = SEEDS) -> float:
    """Share of replications whose interval (a, b, ids) -> (low, high) holds TRUE_A − TRUE_B."""
    rng = np.random.default_rng(29)
    ids = [f"p{i}" for i in range(PROMPTS)]
    hits = 0
    for _ in range(REPLICATIONS):
        a, b = experiment(rng, seeds)
        low, high = interval(a, b, ids)
        hits += low <= TRUE_A - TRUE_B <= high
    return hits / REPLICATIONS


def t_interval(a, b, ids):
    d = arms.difference(a, b, ids, resamples=RESAMPLES)
    return d["low"], d["high"]


def test_t_interval_covers_at_three_seeds_where_seed_variance_dominates():
    assert coverage(t_interval) >= 0.93


def test_the_percentile_bootstrap_over_seeds_under_covers_in_the_same_simulation():
    assert coverage(percentile_over_seeds) < 0.90


def test_the_interval_records_its_seeds_and_standard_errors():
    a, b = experiment(np.random.default_rng(1))
    ids = [f"p{i}" for i in range(PROMPTS)]
    d = arms.difference(a, b, ids, resamples=RESAMPLES)
    assert d["over"] == "seeds and prompts" and d["seeds"] == [3, 1]
    assert d["value"] == pytest.approx(np.mean(d["per_seed"])) and len(d["per_seed"]) == 3
    assert d["se"]["seeds"] > 0 and d["se"]["prompts"] > 0 and d["low"] < d["value"] < d["high"]


def test_p_is_below_5_percent_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(3)
    ids = [f"p{i}" for i in range(PROMPTS)]
    verdicts = set()
    for reference in np.linspace(0.5, 0.62, 13):  # the draft's true 0.60 from well above to below it
        a, _ = experiment(rng)
        d = arms.difference(a, [fake_run(np.full(PROMPTS, reference), rng)], ids, resamples=RESAMPLES)
        excludes = d["low"] > 0 or d["high"] < 0
        assert (d["p_value"] < 0.05) == excludes and 0 < d["p_value"] <= 1
        verdicts.add(excludes)
    assert verdicts == {True, False}


def test_one_seed_keeps_the_prompt_bootstrap():
    """With one seed a group's seed variance is unknown: the interval is over prompts only, and says so."""
    a, b = experiment(np.random.default_rng(2), seeds=1)
    ids = [f"p{i}" for i in range(PROMPTS)]
    d = arms.difference(a, b, ids, resamples=RESAMPLES)
    assert d["over"] == "prompts" and d["se"]["seeds"] is None and d["seeds"] == [1, 1]
    assert (d["low"], d["high"]) == pytest.approx(percentile_over_seeds(a, b, ids))  # as before, for 1 seed
    three = arms.difference(*experiment(np.random.default_rng(2)), ids, resamples=RESAMPLES)
    assert three["high"] - three["low"] > 2 * (d["high"] - d["low"])  # seed spread widens the interval
