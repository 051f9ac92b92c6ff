"""Property-based tests (issue 16, item 4): invariants that must hold for any input, not just hand-picked ones.

- the per-category metric's summed states merge in any sharding and any grouping order (what DDP relies on);
- replay equals decoding counter for counter on random tiny pairs, gammas, budgets, prompts and EOS ids;
- bootstrap intervals contain their point estimate and narrow with more prompts.

Hypothesis runs derandomized and without an example database, so every run tests the same examples.
"""

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specfair.analysis.stats import bootstrap_ci
from specfair.decoding.continuations import generate_batch
from specfair.decoding.engine import autoregressive_generate, speculative_generate
from specfair.decoding.replay import REPLAYED_COUNTERS, replay_greedy
from specfair.evaluation.acceptance import CategoryAcceptance
from specfair.records import COUNTERS, METRICS, SampleRecord


def fixed(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- 1. CategoryAcceptance: summed states merge across any sharding ------------------------------------

CATEGORIES = ["a", "b", "c"]
GAMMA = 4
# seconds as multiples of 1/64: sums of these are exact in float64, so any order gives identical results
seconds = st.integers(1, 4000).map(lambda k: k / 64)


@st.composite
def sample_records(draw, index: int) -> SampleRecord:
    """A prompt's record as decoding writes it: consistent blocks, new_tokens, and (maybe) wall times."""
    block = st.integers(0, GAMMA).flatmap(lambda g: st.tuples(st.just(g), st.integers(0, g)))  # (γ_b, n_b)
    blocks = draw(st.lists(block, max_size=6))
    proposed = [g for g, _ in blocks]
    accepted = [n for _, n in blocks]
    new_tokens = 1 + sum(n + 1 for n in accepted)
    timed = draw(st.booleans())  # decode runs are timed; replay runs are not (None, never 0)
    return SampleRecord(
        index=index,
        id=f"p{index}",
        category=draw(st.sampled_from(CATEGORIES)),
        prompt_ids=[1, 2],
        output_ids=[0] * new_tokens,
        new_tokens=new_tokens,
        proposed=sum(proposed),
        accepted=sum(accepted),
        blocks=len(blocks),
        rejections=sum(n < g for g, n in blocks),
        accept_lengths=accepted,
        proposed_lengths=proposed,
        baseline_new_tokens=new_tokens if timed else 0,
        wall_s=draw(seconds) if timed else None,
        baseline_wall_s=draw(seconds) if timed else None,
        draft_s=draw(seconds) if timed else None,
    )


@st.composite
def sharded_records(draw):
    """Records, a random split into shards (some possibly empty), and a random order of pairwise merges."""
    n = draw(st.integers(1, 14))
    records = [draw(sample_records(i)) for i in range(n)]
    shard_of = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    shards = [[r for r, s in zip(records, shard_of, strict=True) if s == k] for k in range(max(shard_of) + 1)]
    order = draw(st.permutations(range(len(shards))))
    merges = [draw(st.integers(0, k - 1)) for k in range(len(shards) - 1, 0, -1)]
    return records, [shards[i] for i in order], merges


def metric_over(records) -> CategoryAcceptance:
    metric = CategoryAcceptance(CATEGORIES, gamma=GAMMA)
    for r in records:
        metric.update(r)
    return metric


def check_ratios(group: dict) -> None:
    """Every ratio is the ratio of the summed counters, and the probabilities lie in [0, 1]."""
    accepted, proposed, rejections = group["accepted"], group["proposed"], group["rejections"]
    if proposed:
        assert group["acceptance_rate"] == accepted / proposed and 0 <= group["acceptance_rate"] <= 1
    else:
        assert group["acceptance_rate"] is None
    if accepted + rejections:
        assert group["alpha"] == accepted / (accepted + rejections) and 0 <= group["alpha"] <= 1
    else:
        assert group["alpha"] is None
    assert group["target_calls"] == group["prompts"] + group["blocks"]
    if group["prompts"]:
        assert group["block_efficiency"] == group["new_tokens"] / group["target_calls"]
        assert 1 <= group["block_efficiency"] <= GAMMA + 1
    assert all(p is None or 0 <= p <= 1 for p in group["position_acceptance"])


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
@fixed(max_examples=100)
@given(sharded_records())
def test_metric_states_merge_in_any_sharding_and_order(case):
    records, shards, merges = case
    single = metric_over(records).compute()

    # merge_state, folding neighbours in a random order: any bracketing of any permutation of the shards
    metrics = [metric_over(shard) for shard in shards]
    for i in merges:
        metrics[i].merge_state(metrics.pop(i + 1))
    (merged,) = metrics
    assert merged.compute() == single

    # the DDP reduction: every state gathered from the ranks and reduced with its dist_reduce_fx (a sum)
    ranks = [metric_over(shard) for shard in shards]
    reduced = CategoryAcceptance(CATEGORIES, gamma=GAMMA)
    for name in reduced._defaults:
        setattr(reduced, name, reduced._reductions[name](torch.stack([getattr(m, name) for m in ranks])))
    assert reduced.compute() == single

    check_ratios(single["overall"])
    for group in single["categories"].values():
        check_ratios(group)
    sums = {
        name: sum(float(r.get(name) or 0) for r in records) for name in ("accepted", "proposed", "blocks")
    }
    assert {k: single["overall"][k] for k in sums} == sums
    assert set(COUNTERS) <= set(reduced._defaults)  # every glossary counter is a summed (reduced) state


# --- 2. replay equals the engine on random tiny pairs --------------------------------------------------


@st.composite
def tiny_cases(draw):
    vocab = draw(st.integers(4, 16))
    return {
        "vocab": vocab,
        "target_seed": draw(st.integers(0, 10_000)),
        "layers": draw(st.integers(1, 2)),
        # copy: accepts everything; perturbed: every block length; independent: accepts almost nothing
        "draft": draw(
            st.integers(0, 9).map(lambda k: "copy" if k == 0 else "independent" if k < 3 else "perturbed")
        ),
        "draft_seed": draw(st.integers(0, 10_000)),
        "noise": draw(st.sampled_from([0.1, 0.25, 0.5])),
        "gamma": draw(st.integers(1, 6)),
        "max_new_tokens": draw(st.integers(1, 20)),
        "prompts": draw(
            st.lists(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=12), min_size=1, max_size=3)
        ),
        # None: no EOS; k: the k-th distinct token of the target's free continuations (one that occurs)
        "eos_pick": draw(st.none() | st.integers(0, 1000)),
    }


def make_draft(tiny_llama, target, case):
    if case["draft"] == "independent":
        return tiny_llama(case["draft_seed"], vocab=case["vocab"], layers=case["layers"], init=0.5)
    draft = copy.deepcopy(target)
    if case["draft"] == "perturbed":
        generator = torch.Generator().manual_seed(case["draft_seed"])
        with torch.no_grad():
            for p in draft.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * case["noise"] * p.std())
    return draft


@fixed(max_examples=30)
@given(case=tiny_cases())
def test_replay_equals_the_engine_on_random_tiny_pairs(tiny_llama, case):
    """Outputs and every replayed counter (proposed, accepted, blocks, rejections, per-block lengths,
    new_tokens) equal greedy decoding's, as tests/test_replay.py checks on its fixed pair."""
    vocab, gamma, max_new, prompts = case["vocab"], case["gamma"], case["max_new_tokens"], case["prompts"]
    target = tiny_llama(case["target_seed"], vocab=vocab, layers=case["layers"], init=0.5)
    draft = make_draft(tiny_llama, target, case)
    eos = frozenset()
    if case["eos_pick"] is not None:  # an EOS id the target emits for some prompt within the budget
        emitted = [
            autoregressive_generate(target, torch.tensor([p]), max_new_tokens=max_new) for p in prompts
        ]
        seen = sorted({t for out in emitted for t in out[0].tolist()})
        eos = frozenset({seen[case["eos_pick"] % len(seen)]})
    ys = [c.tokens for c in generate_batch(target, prompts, max_new_tokens=max_new, vocab=vocab, eos=eos)]
    replayed = replay_greedy(draft, prompts, ys, gamma=gamma, max_new_tokens=max_new, vocab=vocab, eos=eos)
    for prompt, y, counters in zip(prompts, ys, replayed, strict=True):
        ids = torch.tensor([prompt])
        eos_id = sorted(eos) or None
        out, stats = speculative_generate(
            target, draft, ids, gamma=gamma, max_new_tokens=max_new, eos_token_id=eos_id
        )
        assert out[0].tolist() == y
        decoded = stats.as_dict()
        assert {k: counters[k] for k in REPLAYED_COUNTERS} == {k: decoded[k] for k in REPLAYED_COUNTERS}


# --- 3. bootstrap intervals ----------------------------------------------------------------------------


def synthetic_records(n: int, seed: int, p_mean: float = 0.6, concentration: float = 10.0) -> list[dict]:
    """Prompts with their own acceptance p_i ~ Beta(mean p_mean): tokens within a prompt are correlated."""
    rng = np.random.default_rng(seed)
    p = rng.beta(p_mean * concentration, (1 - p_mean) * concentration, size=n)
    proposed = rng.integers(20, 61, size=n)
    accepted = rng.binomial(proposed, p)
    blocks = proposed // 4
    return [
        {
            "id": f"p{i}",
            "accepted": int(accepted[i]),
            "proposed": int(proposed[i]),
            "rejections": int(min(blocks[i], proposed[i] - accepted[i])),
            "blocks": int(blocks[i]),
            "new_tokens": int(1 + accepted[i] + blocks[i]),
            "wall_s": 1.0 + 0.01 * int(blocks[i]) + 0.1 * rng.random(),
            "baseline_wall_s": 1.0 + 0.02 * int(accepted[i]) + 0.1 * rng.random(),
            "baseline_new_tokens": int(1 + accepted[i] + blocks[i]),
        }
        for i in range(n)
    ]


@st.composite
def record_lists(draw):
    """Arbitrary small runs: integer counters (some prompts with no proposals) and timed or untimed prompts."""
    n = draw(st.integers(1, 30))
    records = []
    for i in range(n):
        proposed = draw(st.integers(0, 40))
        accepted = draw(st.integers(0, proposed))
        blocks = draw(st.integers(int(proposed > 0), max(1, proposed)))
        timed = draw(st.booleans())
        records.append(
            {
                "id": f"p{i}",
                "accepted": accepted,
                "proposed": proposed,
                "rejections": draw(st.integers(1, blocks)) if accepted < proposed else 0,
                "blocks": blocks,
                "new_tokens": 1 + accepted + blocks,
                "wall_s": draw(seconds) if timed else None,
                "baseline_wall_s": draw(seconds) if timed else None,
                "baseline_new_tokens": draw(st.integers(1, 40)) if timed else 0,  # T > 0: its own count
            }
        )
    return records


@fixed(max_examples=200)
@given(record_lists(), st.sampled_from(METRICS), st.integers(0, 3))
def test_bootstrap_interval_contains_the_point_estimate(records, metric, seed):
    ci = bootstrap_ci(records, metric, resamples=400, seed=seed)
    assert ci["n"] == len(records)
    if ci["low"] is None:
        assert ci["high"] is None and (len(records) < 2 or ci["value"] is None)
        return
    assert ci["value"] is not None
    assert ci["low"] - 1e-12 <= ci["value"] <= ci["high"] + 1e-12, ci
    if metric in ("alpha", "acceptance_rate"):
        assert 0 <= ci["low"] <= ci["high"] <= 1


@fixed(max_examples=40)
@given(st.integers(0, 10_000), st.floats(0.2, 0.8), st.sampled_from(METRICS))
def test_bootstrap_interval_narrows_with_more_prompts(seed, p_mean, metric):
    """16 vs 400 prompts from one distribution: the width should shrink about 5x (sqrt(400/16)); 2x is asked."""
    few = bootstrap_ci(synthetic_records(16, seed, p_mean), metric, seed=seed)
    many = bootstrap_ci(synthetic_records(400, seed + 1, p_mean), metric, seed=seed)
    assert many["high"] - many["low"] < 0.5 * (few["high"] - few["low"]), (few, many)
