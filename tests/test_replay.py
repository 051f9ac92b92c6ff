"""Replay equals decoding counter for counter; batched generation equals one-prompt decoding token for token."""

import copy

import pytest
import torch

from specfair.decoding.continuations import ContinuationCache, continuations, generate_batch
from specfair.decoding.engine import autoregressive_generate, speculative_generate
from specfair.decoding.replay import REPLAYED_COUNTERS as COUNTERS
from specfair.decoding.replay import Block, proposed_length, replay_greedy, teacher_forced, walk_blocks
from specfair.errors import SpecfairError


@pytest.fixture(scope="module")
def tiny_pair(tiny_llama):
    """A random target and a perturbed copy as draft: blocks of every accepted length occur."""
    target = tiny_llama(11, vocab=12, layers=2, init=0.5)
    draft = copy.deepcopy(target)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.25 * p.std())
    return target, draft


def random_prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(
        1, 24, (n,), generator=g
    ).tolist()  # very different lengths: left padding is tested
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lengths]


def test_batched_greedy_generation_equals_one_prompt_decoding(tiny_pair):
    target, _ = tiny_pair
    prompts = random_prompts(24, 12, seed=1)
    for eos in (frozenset(), frozenset({3})):
        batched = generate_batch(target, prompts, max_new_tokens=20, vocab=12, eos=eos)
        for prompt, cont in zip(prompts, batched, strict=True):
            alone = autoregressive_generate(
                target, torch.tensor([prompt]), max_new_tokens=20, eos_token_id=list(eos) or None
            )
            assert cont.tokens == alone[0].tolist()
        if eos:  # the test has power: some rows stop early at EOS, others run to the budget
            lengths = {len(c.tokens) for c in batched}
            assert min(lengths) < 20 and max(lengths) == 20


@pytest.mark.parametrize("gamma", [1, 2, 3, 4, 5, 6])
def test_replay_counters_equal_the_engine_on_every_prompt(tiny_pair, gamma):
    target, draft = tiny_pair
    prompts = random_prompts(16, 12, seed=gamma)
    eos = frozenset({3})
    for max_new in (1, 2, 7, 19):
        ys = [c.tokens for c in generate_batch(target, prompts, max_new_tokens=max_new, vocab=12, eos=eos)]
        replayed = replay_greedy(draft, prompts, ys, gamma=gamma, max_new_tokens=max_new, vocab=12, eos=eos)
        for prompt, y, counters in zip(prompts, ys, replayed, strict=True):
            out, stats = speculative_generate(
                target, draft, torch.tensor([prompt]), gamma=gamma, max_new_tokens=max_new, eos_token_id=3
            )
            assert out[0].tolist() == y
            decoded = stats.as_dict()
            assert {k: counters[k] for k in COUNTERS} == {k: decoded[k] for k in COUNTERS}, (prompt, max_new)


def test_replay_sees_every_kind_of_block(tiny_pair):
    """The equality above is only convincing if the cases it claims to cover occur."""
    target, draft = tiny_pair
    prompts = random_prompts(48, 12, seed=99)
    eos = frozenset({3})
    seen = {"accepted": set(), "zero_budget": 0, "eos_accepted": 0, "eos_wrong": 0, "eos_free_run": 0}
    for max_new in (2, 19):
        ys = [c.tokens for c in generate_batch(target, prompts, max_new_tokens=max_new, vocab=12, eos=eos)]
        replayed = replay_greedy(draft, prompts, ys, gamma=4, max_new_tokens=max_new, vocab=12, eos=eos)
        logits, _ = teacher_forced(draft, [p + y for p, y in zip(prompts, ys, strict=True)], 12)
        for row, (prompt, y, r) in enumerate(zip(prompts, ys, replayed, strict=True)):
            a = logits[row].argmax(-1).tolist()[len(prompt) - 1 :]
            blocks = walk_blocks(y, a, gamma=4, max_new_tokens=max_new, eos=eos)
            for block, g in zip(blocks, r["proposed_lengths"], strict=True):
                seen["accepted"].add(block.accepted)
                seen["zero_budget"] += block.budget == 0
                seen["eos_accepted"] += block.accepted_eos
                wrong = block.accepted < block.budget and a[block.start + block.accepted] in eos
                seen["eos_wrong"] += wrong
                seen["eos_free_run"] += not wrong and block.accepted + 1 < g < block.budget
    assert seen["accepted"] == {0, 1, 2, 3, 4}
    assert all(seen[k] > 0 for k in ("zero_budget", "eos_accepted", "eos_wrong", "eos_free_run")), seen


def test_walk_by_hand():
    """y = 5 6 7 8 9 (no EOS), draft right on 6 and 8 only, gamma 2, budget 5."""
    y, a = [5, 6, 7, 8, 9], [0, 6, 0, 8, 0]
    blocks = walk_blocks(y, a, gamma=2, max_new_tokens=5, eos=frozenset())
    # block 1 after y0: proposes a1=6 (right), a2 wrong -> accepts 1, emits 6 and 7
    # block 2 after 3 tokens: budget min(2, 5-3-1)=1 -> a3=8 right -> accepts 1, emits 8 and bonus 9
    assert blocks == [Block(1, 2, 1, False), Block(3, 1, 1, False)]
    eos = frozenset({4})
    # a wrong EOS ends the proposal at once; a free-run EOS one step later
    assert proposed_length(Block(1, 4, 0, False), [0, 4, 0, 0, 0], eos, None) == 1
    assert proposed_length(Block(1, 4, 0, False), [0, 1, 0, 0, 0], eos, [2, 4]) == 3
    assert proposed_length(Block(1, 4, 0, False), [0, 1, 0, 0, 0], eos, [2, 2]) == 4


def test_cache_reuses_and_never_serves_stale_entries(tiny_pair, tmp_path):
    target, _ = tiny_pair
    prompts = random_prompts(6, 12, seed=3)
    settings = dict(max_new_tokens=9, vocab=12, eos=frozenset({3}))
    cache = ContinuationCache(tmp_path, {"target": "a", "max_new_tokens": 9})
    first, made = continuations(target, prompts, range(6), cache, batch_size=4, seed=0, **settings)
    assert made == 6
    again, made = continuations(target, prompts, range(6), cache, batch_size=4, seed=0, **settings)
    assert made == 0 and [c.tokens for c in again] == [c.tokens for c in first]
    other = ContinuationCache(tmp_path, {"target": "b", "max_new_tokens": 9})  # other weights: other key
    _, made = continuations(target, prompts, range(6), other, batch_size=4, seed=0, **settings)
    assert made == 6
    # a file cut short by a kill is recomputed, not trusted
    victim = next(cache.folder.glob("*.pt"))
    victim.write_bytes(victim.read_bytes()[:20])
    _, made = continuations(target, prompts, range(6), cache, batch_size=4, seed=0, **settings)
    assert made == 1


def test_unwritable_cache_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpecfairError, match="paths.cache_dir=.*cannot write"):
        ContinuationCache(blocker, {"target": "a"})


def test_sampled_continuations_carry_the_target_distribution(tiny_pair):
    target, draft = tiny_pair
    from specfair.decoding.replay import expected_acceptance

    prompts = random_prompts(4, 12, seed=4)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    conts = generate_batch(target, prompts, max_new_tokens=6, vocab=12, eos=frozenset(), temperature=1.0,
                           generators=gens)  # fmt: skip
    for c in conts:
        assert c.top_probs.shape == (6, 12) and torch.allclose(c.top_probs.sum(-1), torch.ones(6))
    same = expected_acceptance(target, prompts, conts, vocab=12, temperature=1.0, top_k=None, top_p=None)
    other = expected_acceptance(draft, prompts, conts, vocab=12, temperature=1.0, top_k=None, top_p=None)
    for s, o in zip(same, other, strict=True):
        assert s["expected_accept_sum"] == pytest.approx(s["expected_positions"], abs=1e-4)  # q = p: β = 1
        assert o["expected_accept_sum"] < s["expected_accept_sum"]


@pytest.mark.slow
def test_real_pair_replay_equals_decoding_on_64_bundled_prompts(real_pair, tmp_path):
    """The embedded SmolLM2 pair on 64 AG News prompts x 32 tokens: counters and outputs equal decoding's."""
    import json

    from specfair import ROOT
    from specfair.decoding.engine import eos_set

    rows = [json.loads(line) for line in (ROOT / "data/samples/agnews.jsonl").open()]
    texts = [r["text"] for r in rows if r["split"] == "eval"][:64]
    tok = real_pair.tokenizer
    prompts = [tok(t, add_special_tokens=False)["input_ids"][:32] for t in texts]
    eos, vocab = eos_set(tok.eos_token_id), real_pair.vocab_size
    cache = ContinuationCache(tmp_path, {"target": "smollm2"})
    conts, _ = continuations(real_pair.target, prompts, range(64), cache, batch_size=16, seed=0,
                             max_new_tokens=32, vocab=vocab, eos=eos)  # fmt: skip
    ys = [c.tokens for c in conts]
    replayed = []
    for i in range(0, 64, 16):
        replayed += replay_greedy(real_pair.draft, prompts[i : i + 16], ys[i : i + 16], gamma=4,
                                  max_new_tokens=32, vocab=vocab, eos=eos)  # fmt: skip
    for prompt, y, counters in zip(prompts, ys, replayed, strict=True):
        out, stats = speculative_generate(real_pair.target, real_pair.draft, torch.tensor([prompt]), gamma=4,
                                          max_new_tokens=32, eos_token_id=tok.eos_token_id)  # fmt: skip
        assert out[0].tolist() == y
        decoded = stats.as_dict()
        assert {k: counters[k] for k in COUNTERS} == {k: decoded[k] for k in COUNTERS}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replay_equals_the_engine_on_cuda(tiny_pair):
    """The same exactness on a GPU (float32), and the sampled expectation runs with every tensor on the device."""
    from specfair.decoding.replay import expected_acceptance

    target, draft = (copy.deepcopy(m).to("cuda") for m in tiny_pair)
    prompts, eos = random_prompts(32, 12, seed=7), frozenset({3})
    ys = [c.tokens for c in generate_batch(target, prompts, max_new_tokens=19, vocab=12, eos=eos)]
    replayed = replay_greedy(draft, prompts, ys, gamma=4, max_new_tokens=19, vocab=12, eos=eos)
    for prompt, y, counters in zip(prompts, ys, replayed, strict=True):
        ids = torch.tensor([prompt], device="cuda")
        out, stats = speculative_generate(target, draft, ids, gamma=4, max_new_tokens=19, eos_token_id=3)
        assert out[0].tolist() == y
        assert {k: counters[k] for k in COUNTERS} == {k: stats.as_dict()[k] for k in COUNTERS}
    gens = [torch.Generator(device="cuda").manual_seed(i) for i in range(4)]
    conts = generate_batch(target, prompts[:4], max_new_tokens=6, vocab=12, eos=frozenset(), temperature=1.0,
                           generators=gens)  # fmt: skip
    same = expected_acceptance(target, prompts[:4], conts, vocab=12, temperature=1.0, top_k=None, top_p=None)
    assert all(s["expected_accept_sum"] == pytest.approx(s["expected_positions"], abs=1e-4) for s in same)


def test_a_sliding_window_draft_longer_than_its_window_is_refused():
    """Replay reuses full-length KV caches; a sliding-window layer keeps fewer positions, so it must refuse."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4)  # fmt: skip
    draft = MistralForCausalLM(config).eval()
    with pytest.raises(SpecfairError, match="4-token sliding window.*use mode=decode"):
        replay_greedy(draft, [[1, 2, 3]], [[4, 5, 6]], gamma=2, max_new_tokens=3, vocab=12, eos=frozenset())
