"""spec.gamma=auto: the block length from the acceptance seen and measured costs, and the engine stays lossless."""

import pytest
import torch

from specfair.decoding.adaptive import GammaPolicy, best_gamma, measure_costs, tau
from specfair.decoding.engine import DecodeStats, autoregressive_generate, speculative_generate
from specfair.evaluation.acceptance import predicted_block_efficiency


def test_tau_is_the_one_definition_evaluation_reports():
    assert tau(0.0, 4) == 1.0 and tau(1.0, 4) == 5.0
    assert tau(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert predicted_block_efficiency(0.3, 5) == tau(0.3, 5) and predicted_block_efficiency(None, 5) is None


def test_best_gamma_follows_alpha_and_the_verify_cost():
    flat = [1.0] * 9  # a GPU-like verify pass: as cheap for 9 tokens as for 1
    assert best_gamma(0.05, 0.1, flat) == 1  # a draft that is almost never right: one guess per pass
    assert best_gamma(0.9, 0.02, flat) == 8  # almost always right and nearly free: as long as allowed
    steep = [1.0 + 0.15 * k for k in range(9)]  # a CPU-like one: each extra token costs 0.15 of a step
    assert best_gamma(0.6, 0.1, steep) < best_gamma(0.6, 0.1, flat)
    # the choice is the argmax of Leviathan's tokens per unit time, checked by brute force
    a, c = 0.45, 0.12
    rate = {g: (1 - a ** (g + 1)) / (1 - a) / (g * c + steep[g]) for g in range(1, 9)}
    assert best_gamma(a, c, steep) == max(rate, key=rate.get)


def test_policy_pools_the_acceptance_of_finished_and_running_generations():
    policy = GammaPolicy(c=0.1, verify=[1.0 + 0.1 * k for k in range(7)])
    assert policy.alpha() == pytest.approx(0.5)  # the prior alone
    policy.update(DecodeStats(accepted=40, rejections=10))
    running = DecodeStats(accepted=5, rejections=5)
    assert policy.alpha(running) == pytest.approx((45 + 2) / (60 + 4))
    low = GammaPolicy(c=0.1, verify=policy.verify, accepted=1, rejections=60)
    assert low(DecodeStats()) == 1 and policy(running) > 1


def test_auto_gamma_is_lossless_and_uses_the_blocks_it_chooses(close_pair):
    target, draft = close_pair
    ids = torch.tensor([[5, 9, 14, 3, 22, 7]])
    policy = measure_costs(target, draft, ids[0].tolist(), gamma_max=5, repeats=2)
    assert len(policy.verify) == 6 and policy.c > 0 and all(v > 0 for v in policy.verify)
    chosen = []
    choose = lambda stats: chosen.append(g := 1 + stats.blocks % 5) or g  # noqa: E731 - cycle 1..5
    out, stats = speculative_generate(target, draft, ids, gamma=4, max_new_tokens=30, gamma_policy=choose)
    assert torch.equal(out, autoregressive_generate(target, ids, max_new_tokens=30))
    # each block drafted what the policy asked, capped by gamma (4) and by the tokens left
    assert all(p <= min(c, 4) for p, c in zip(stats.proposed_lengths, chosen, strict=True))
    assert {1, 2, 3, 4} <= set(stats.proposed_lengths)
    out, stats = speculative_generate(target, draft, ids, gamma=5, max_new_tokens=30, gamma_policy=policy)
    assert torch.equal(out, autoregressive_generate(target, ids, max_new_tokens=30))
