"""Tests that fail on broken engines (issue 16, item 6).

Each test that names a mutant was checked to fail on a mutated copy of the engine (or of the speedup
formula) and to pass on the real one. The fast tests elsewhere use a random draft
that accepts almost nothing, so they cannot see mistakes on the fully-accepted path; here the draft is a
perturbed copy of the target, which accepts often but not always.
"""

import copy

import pytest
import torch
from conftest import feeds, perturbed_copy
from test_metrics import record
from torch import nn

from specfair.decoding.engine import autoregressive_generate, logits_to_probs, speculative_generate
from specfair.evaluation.acceptance import (
    CategoryAcceptance,
    predicted_block_efficiency,
    predicted_speedup,
)

VOCAB = 32
PROMPTS = [[1, 2, 3], [5], [7, 7, 1, 0, 4, 2, 6, 3, 3, 1], [30, 12, 9, 9], [17, 4, 25, 2, 11, 8]]


def expected_draft_feeds(
    prompt_len: int, proposed_lengths: list[int], accept_lengths: list[int]
) -> list[int]:
    """Tokens the draft must be fed per forward call, derived from draft_block / rollback.

    One prefill call with the prompt (prompt_len tokens, billed to prefill so that draft_s holds decode steps
    only), then one draft forward per proposed token. In block b the first call feeds what the draft cache lacks:
    the draft never reads its own last proposal, so after a fully accepted block (n = γ_b) it lacks that
    proposal and the bonus token (2 tokens); after a rejection its cache is cropped to the kept tokens and it
    lacks only the correction (1 token). Every later call in the block feeds its previous proposal (1 token).
    A block with γ_b = 0 (the budget is spent) makes no draft call.
    """
    feeds, catch_up = ([prompt_len] if proposed_lengths else []), 1  # first block: the target's prefill token
    for gamma_b, n_b in zip(proposed_lengths, accept_lengths, strict=True):
        if gamma_b:
            feeds += [catch_up] + [1] * (gamma_b - 1)
        catch_up = 2 if n_b == gamma_b else 1
    return feeds


def test_draft_is_fed_exactly_what_its_cache_lacks(close_pair):
    """Mutants: an extra, unused draft forward per block; a draft cache cropped one position too far.

    Both keep outputs and counters intact, so only counting the draft's inputs can see them. The premise
    (many fully accepted blocks and many rejections) is asserted: the cropping mutant shows only after a
    rejection, and the 2-token catch-up is only exercised after a fully accepted block.
    """
    target, draft = close_pair
    blocks = full = rejections = 0
    with feeds(target=target, draft=draft) as fed:
        for gamma, max_new, eos in [(2, 30, None), (4, 30, None), (5, 23, None), (3, 40, 9)]:
            for prompt in PROMPTS:
                fed["target"].clear()
                fed["draft"].clear()
                _, stats = speculative_generate(
                    target,
                    draft,
                    torch.tensor([prompt]),
                    gamma=gamma,
                    max_new_tokens=max_new,
                    eos_token_id=eos,
                )
                where = (prompt, gamma, max_new)
                assert len(fed["draft"]) == stats.proposed + (stats.blocks > 0), where
                assert stats.draft_steps == stats.proposed, where
                assert fed["draft"] == expected_draft_feeds(
                    len(prompt), stats.proposed_lengths, stats.accept_lengths
                ), where
                assert fed["target"] == [len(prompt)] + [g + 1 for g in stats.proposed_lengths], where
                blocks += stats.blocks
                rejections += stats.rejections
                full += sum(
                    n == g > 0 for n, g in zip(stats.accept_lengths, stats.proposed_lengths, strict=True)
                )
    assert full >= 0.2 * blocks and rejections >= 0.1 * blocks, (full, rejections, blocks)


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_greedy_is_lossless_with_a_draft_that_accepts_often(close_pair, gamma):
    """Long accepted runs and bonus tokens are the paths a near-silent random draft never reaches."""
    target, draft = close_pair
    accepted = proposed = 0
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        plain = autoregressive_generate(target, ids, max_new_tokens=25)
        spec, stats = speculative_generate(target, draft, ids, gamma=gamma, max_new_tokens=25)
        assert spec.tolist() == plain.tolist(), prompt
        accepted, proposed = accepted + stats.accepted, proposed + stats.proposed
    assert accepted >= 0.5 * proposed  # the premise: this draft agrees with the target most of the time


def test_draft_distribution_is_warped_like_the_target(tiny_llama):
    """Mutant: temperature / top-k / top-p applied to p but not to the draft's q.

    With the draft an exact copy of the target, q = p whenever both are warped the same way, so every proposal
    is accepted (min(1, p/q) = 1). A raw softmax q differs from the filtered p and is rejected at times.
    """
    target = tiny_llama(0, vocab=64, layers=2)
    draft = copy.deepcopy(target)
    settings = dict(temperature=0.7, top_k=5, top_p=0.8)
    with torch.no_grad():  # the premise: warping changes this model's distribution a lot
        logits = target(torch.tensor([PROMPTS[0]])).logits[0, -1]
    raw, warped = torch.softmax(logits, -1), logits_to_probs(logits, **settings)
    assert (raw - warped).abs().sum() > 0.3
    generator = torch.Generator().manual_seed(0)
    proposed = 0
    for prompt in PROMPTS:
        for _ in range(3):
            _, stats = speculative_generate(
                target,
                draft,
                torch.tensor([prompt]),
                gamma=4,
                max_new_tokens=16,
                generator=generator,
                **settings,
            )
            assert stats.accepted == stats.proposed and stats.rejections == 0, prompt
            proposed += stats.proposed
    assert proposed >= 100


def test_padded_target_vocabulary_is_sliced_in_greedy_decoding(tiny_llama):
    """Mutant: the target's logits not cut to the shared vocabulary before its greedy argmax.

    The target has 8 padding rows (ids 16-23) whose bias makes them win every argmax, so an unsliced engine
    emits a padding id at once. Sliced, the output is the greedy output of the target cut to 16 rows.
    """
    shared = 16
    target = tiny_llama(4, vocab=shared + 8, layers=2)
    with torch.no_grad():
        target.lm_head.bias = nn.Parameter(torch.zeros(shared + 8))
        target.lm_head.bias[shared:] = 1e3  # padding would win every argmax
    sliced = copy.deepcopy(target)
    with torch.no_grad():
        sliced.lm_head = nn.Linear(target.config.hidden_size, shared, bias=True)
        sliced.lm_head.weight.copy_(target.lm_head.weight[:shared])
        sliced.lm_head.bias.copy_(target.lm_head.bias[:shared])
    draft = perturbed_copy(sliced, seed=7, scale=0.05)
    for prompt in ([1, 2, 3], [9, 0, 15, 4]):
        ids = torch.tensor([prompt])
        unsliced = autoregressive_generate(target, ids, max_new_tokens=3)[0].tolist()
        assert min(unsliced) >= shared  # the premise: without slicing, padding ids win
        expected = autoregressive_generate(sliced, ids, max_new_tokens=20)
        for gamma in (1, 4):
            out, stats = speculative_generate(target, draft, ids, gamma=gamma, max_new_tokens=20)
            assert max(out[0].tolist()) < shared and out.tolist() == expected.tolist()
            assert stats.accepted > 0


# --- speedup and predicted speedup: values, not presence ---------------------------------------------


def leviathan_speedup(alpha: float, gamma: int, c: float, verify_cost: float = 1.0) -> float:
    """(1 - α^(γ+1)) / ((1 - α)(γc + v)) with its α → 1 limit (γ + 1) / (γc + v) (Leviathan et al., Thm 3.8)."""
    tau = gamma + 1 if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tau / (gamma * c + verify_cost)


@pytest.mark.parametrize(
    "alpha, gamma, c",
    [
        (0.0, 4, 0.25),
        (1.0, 4, 0.25),
        (1.0, 1, 0.0),
        (0.5, 2, 0.1),
        (0.8, 5, 0.05),
        (0.3, 1, 1.0),
        (0.99, 7, 0.0),
    ],
)
def test_predicted_speedup_is_the_leviathan_formula(alpha, gamma, c):
    """Mutant: any change to the closed forms (exponent, the γc + 1 denominator, the α = 1 limit)."""
    tau = predicted_block_efficiency(alpha, gamma)
    assert tau == pytest.approx(leviathan_speedup(alpha, gamma, 0.0), rel=1e-12)
    assert predicted_speedup(alpha, gamma, c) == pytest.approx(leviathan_speedup(alpha, gamma, c), rel=1e-12)
    assert predicted_speedup(alpha, gamma, c, verify_cost=1.55) == pytest.approx(
        leviathan_speedup(alpha, gamma, c, 1.55), rel=1e-12
    )
    # hand values of the edge cases: α = 0 emits 1 token per call, α = 1 emits γ + 1
    if alpha == 0:
        assert tau == 1 and predicted_speedup(alpha, gamma, c) == pytest.approx(1 / (gamma * c + 1))
    if alpha == 1:
        assert tau == gamma + 1 and predicted_speedup(alpha, gamma, c) == pytest.approx(
            (gamma + 1) / (gamma * c + 1)
        )
    assert predicted_speedup(None, gamma, c) is None and predicted_speedup(alpha, gamma, None) is None


def timed_record(category, accept, propose, wall, base_wall, draft_s):
    """A greedy record: the target alone emits as many tokens as the engine."""
    return record(category, accept, propose, 1 + sum(n + 1 for n in accept), wall, base_wall, draft_s=draft_s)


def test_speedup_and_predicted_speedup_values_from_known_wall_times():
    """`speedup` = Σ baseline wall / Σ speculative wall (glossary), which at equal token counts is target
    seconds per token over speculative seconds per token; `predicted_speedup` is the formula at the measured
    α and c = (draft seconds per draft step) / (target seconds per token)."""
    records = [
        timed_record("a", [3, 1, 0], [3, 3, 2], wall=1.0, base_wall=2.5, draft_s=0.4),  # 8 tokens
        timed_record("a", [2, 3], [3, 3], wall=2.0, base_wall=3.0, draft_s=0.6),  # 8 tokens
        timed_record("b", [0, 0], [3, 3], wall=1.5, base_wall=0.75, draft_s=0.3),  # 3 tokens
    ]
    metric = CategoryAcceptance(["a", "b"], gamma=3)
    for r in records:
        metric.update(r)
    out = metric.compute()
    a, b, overall = out["categories"]["a"], out["categories"]["b"], out["overall"]

    assert a["speedup"] == pytest.approx((2.5 + 3.0) / (1.0 + 2.0))  # ratio of sums, not mean of ratios 2.08
    assert b["speedup"] == pytest.approx(0.5)  # slower than the target alone
    assert overall["speedup"] == pytest.approx(6.25 / 4.5)
    for group, tokens in ((a, 16), (b, 3), (overall, 19)):
        target_s_per_token = group["baseline_wall_s"] / tokens
        spec_s_per_token = group["wall_s"] / tokens
        assert group["speedup"] == pytest.approx(target_s_per_token / spec_s_per_token)
        assert group["speedup"] == pytest.approx(group["tokens_per_s"] / group["baseline_tokens_per_s"])

    # overall: α = 9 / (9 + 5) (5 blocks rejected); c = (1.3 s / 20 draft steps) / (6.25 s / 19 tokens)
    alpha, c = 9 / 14, (1.3 / 20) / (6.25 / 19)
    assert overall["alpha"] == pytest.approx(alpha)
    assert overall["draft_target_cost_ratio"] == pytest.approx(c)
    assert overall["predicted_speedup"] == pytest.approx((1 - alpha**4) / ((1 - alpha) * (3 * c + 1)))
    assert overall["predicted_block_efficiency"] == pytest.approx((1 - alpha**4) / (1 - alpha))
    # category b accepted nothing: α = 0, one token per target call, so speculation can only cost
    c_b = (0.3 / 6) / (0.75 / 3)
    assert b["alpha"] == 0 and b["predicted_speedup"] == pytest.approx(1 / (3 * c_b + 1))
