"""`spec.compile`: static KV caches (CUDA graphs on a GPU, `tests/test_gpu.py`) decode exactly as the dynamic
caches do. On CPU the static path runs eagerly, so these tests check its cache arithmetic: lengths, rollbacks,
stale entries masked, one cache per model and role kept across prompts."""

import pytest
import torch
from conftest import feeds
from test_engine_mutants import PROMPTS

from specfair.decoding import static
from specfair.decoding.engine import autoregressive_generate, speculative_generate
from specfair.decoding.static import StaticKV, static_kv
from specfair.errors import SpecfairError


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_compiled_greedy_equals_dynamic_and_the_target(close_pair, gamma):
    target, draft = close_pair
    full = rejected = 0
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        plain = autoregressive_generate(target, ids, max_new_tokens=40)
        assert torch.equal(autoregressive_generate(target, ids, max_new_tokens=40, compiled=True), plain)
        eager, eager_stats = speculative_generate(target, draft, ids, gamma=gamma, max_new_tokens=40)
        out, stats = speculative_generate(target, draft, ids, gamma=gamma, max_new_tokens=40, compiled=True)
        assert torch.equal(out, plain) and torch.equal(eager, plain)
        assert stats.accept_lengths == eager_stats.accept_lengths
        assert stats.proposed_lengths == eager_stats.proposed_lengths
        full += sum(a == p for a, p in zip(stats.accept_lengths, stats.proposed_lengths, strict=True))
        rejected += stats.rejections
    assert full > 5 and rejected > 5  # both the fully-accepted path (draft catches up 2 tokens) and rollbacks


def test_compiled_sampling_draws_the_same_tokens(close_pair):
    target, draft = close_pair
    for seed in range(5):
        runs = []
        for compiled in (False, True):
            generator = torch.Generator().manual_seed(seed)
            out, stats = speculative_generate(
                target, draft, torch.tensor([[1, 2, 3]]), gamma=3, max_new_tokens=20, temperature=1.0,
                top_k=5, generator=generator, compiled=compiled,
            )  # fmt: skip
            runs.append((out.tolist(), stats.accept_lengths))
        assert runs[0] == runs[1]


def test_one_cache_per_model_and_role_kept_across_prompts(close_pair):
    target, draft = close_pair
    speculative_generate(target, target, torch.tensor([[1, 2]]), gamma=2, max_new_tokens=5, compiled=True)
    as_target, as_draft = static_kv(target, 8, role=0), static_kv(target, 8, role=1)
    assert as_target is not as_draft and as_target.length == 0  # a model drafting for itself: two caches
    assert static_kv(target, 8, role=0) is as_target  # kept, emptied
    bigger = static_kv(target, as_target.max_len + 1, role=0)
    assert bigger is not as_target and bigger.max_len >= as_target.max_len + 1
    with feeds(target=target) as fed:  # decoding feeds only what each cache lacks, as with dynamic caches
        speculative_generate(
            target, draft, torch.tensor([[4, 5, 6]]), gamma=2, max_new_tokens=6, compiled=True
        )
    assert fed["target"][0] == 3 and all(n <= 3 for n in fed["target"][1:])


def test_rollback_masks_stale_entries(close_pair):
    """Feed junk, roll it back, feed the real continuation: the logits are those of a clean cache."""
    target, _ = close_pair
    kv = StaticKV(target, max_len=32, graphs=False)
    clean = StaticKV(target, max_len=32, graphs=False)
    with torch.inference_mode():
        kv.feed([1, 2, 3], keep=1)
        kv.feed([9, 9, 9, 9], keep=1)
        kv.rollback(3)
        assert kv.length == 3
        got = kv.feed([4, 5], keep=2)
        want = clean.feed([1, 2, 3, 4, 5], keep=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_full_cache_is_a_clear_error(close_pair):
    kv = StaticKV(close_pair[0], max_len=4, graphs=False)
    with torch.inference_mode(), pytest.raises(SpecfairError, match="static cache of 4 tokens is full"):
        kv.feed([1, 2, 3, 4, 5], keep=1)


def test_cache_sizes_are_rounded_so_prompts_share_graphs():
    assert static.round_up(1) == 256 and static.round_up(256) == 256 and static.round_up(257) == 512
