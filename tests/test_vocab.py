"""Cheaper drafts stay lossless (issue 14): a pruned-vocabulary head (`draft.vocab_size`), an int8 draft
(`draft.quantize=int8`) and early-ended blocks (`spec.confidence_threshold`)."""

import copy
import json

import pytest
import torch
from test_engine_mutants import PROMPTS, VOCAB
from test_speculative import chi_square_p, exact_distribution, marginal

from specfair.decoding.continuations import generate_batch
from specfair.decoding.engine import autoregressive_generate, speculative_generate
from specfair.decoding.replay import REPLAYED_COUNTERS, replay_greedy
from specfair.errors import SpecfairError
from specfair.models import shared_vocab_size
from specfair.vocab import (
    VOCAB_MAP,
    frequent_ids,
    load_id_map,
    pad_ids,
    prune_head,
    pruned_head_ids,
    quantize_int8,
    save_id_map,
)


def target_ids(target, prompts, max_new=30) -> list[list[int]]:
    return [
        autoregressive_generate(target, torch.tensor([p]), max_new_tokens=max_new)[0].tolist()
        for p in prompts
    ]


@pytest.fixture(scope="module")
def pruned_pair(close_pair):
    """The close draft cut to the 12 ids the target emits most (of 32): most target tokens stay proposable."""
    target, draft = close_pair
    ids = frequent_ids(target_ids(target, PROMPTS), 12)
    return target, prune_head(copy.deepcopy(draft), ids), ids


def test_frequent_ids_rank_by_count_then_id_and_keep_forced_ids():
    assert frequent_ids([[5, 5, 3, 3, 9], [9, 9, 1]], 3) == [9, 3, 5]
    assert frequent_ids([[5, 5, 3]], 2, always=[7]) == [7, 5]
    assert pad_ids([4, 0], 4, vocab=10) == [4, 0, 1, 2]


class NumberTokenizer:
    """Whitespace-separated integers are their own ids, EOS is 0: enough of a tokenizer to choose ids with."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[int(word) for word in text.split()] for text in texts]}


def test_pruned_head_ids_come_from_the_map_beside_the_draft_else_the_training_texts(tmp_path):
    read = []

    def texts():
        read.append(True)
        return ["5 5 3", "3 5 9"]

    tokenizer = NumberTokenizer()
    assert pruned_head_ids(3, 10, tmp_path, tokenizer, texts, "train") == ([0, 5, 3], "train")  # EOS first
    assert pruned_head_ids(4, 10, None, tokenizer, list, "none") == ([0, 1, 2, 3], "none")  # padded
    save_id_map(tmp_path, [7, 2, 4], "kd")
    read.clear()
    assert pruned_head_ids(2, 10, tmp_path, tokenizer, texts, "train") == ([7, 2], "kd")
    assert not read  # with a map, the training texts are never read


def test_pruned_head_scores_kept_ids_and_nothing_else(pruned_pair, close_pair):
    _, pruned, ids = pruned_pair
    draft = close_pair[1]
    assert shared_vocab_size(close_pair[0], pruned) == VOCAB  # it still answers for the full vocabulary
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        full, cut = draft(x).logits[0], pruned(x).logits[0]
    kept = torch.zeros(VOCAB, dtype=torch.bool)
    kept[ids] = True
    torch.testing.assert_close(cut[:, kept], full[:, kept])
    assert torch.isinf(cut[:, ~kept]).all() and (cut[:, ~kept] < 0).all()


@pytest.mark.parametrize("gamma", [1, 4])
def test_pruned_draft_greedy_is_lossless_and_proposes_only_kept_ids(pruned_pair, gamma):
    target, draft, ids = pruned_pair
    outside = 0
    for prompt in PROMPTS:
        ids_in = torch.tensor([prompt])
        plain = autoregressive_generate(target, ids_in, max_new_tokens=40)
        out, stats = speculative_generate(target, draft, ids_in, gamma=gamma, max_new_tokens=40)
        assert torch.equal(out, plain)
        outside += sum(t not in ids for t in plain[0].tolist())
        assert stats.accepted > 0
    assert (
        outside > 0
    )  # some target tokens were not proposable: those were rejections, and output still exact


def test_pruned_draft_replay_equals_the_engine(pruned_pair):
    target, draft, _ = pruned_pair
    ys = [c.tokens for c in generate_batch(target, PROMPTS, max_new_tokens=25, vocab=VOCAB, eos=frozenset())]
    replayed = replay_greedy(draft, PROMPTS, ys, gamma=3, max_new_tokens=25, vocab=VOCAB, eos=frozenset())
    for prompt, counters in zip(PROMPTS, replayed, strict=True):
        _, stats = speculative_generate(target, draft, torch.tensor([prompt]), gamma=3, max_new_tokens=25)
        decoded = stats.as_dict()
        assert {k: counters[k] for k in REPLAYED_COUNTERS} == {k: decoded[k] for k in REPLAYED_COUNTERS}


def test_pruned_draft_sampling_keeps_the_target_distribution(tiny_llama):
    """q is 0 outside the kept ids, so the residual max(0, p - q) there is p: the target's mass is restored."""
    target, draft = tiny_llama(0), prune_head(tiny_llama(1), [0, 2, 3, 5, 6])
    prompt, steps, n = [1, 2, 3], 4, 3000
    generator = torch.Generator().manual_seed(7)
    samples, accepted = [], 0
    for _ in range(n):
        out, stats = speculative_generate(
            target, draft, torch.tensor([prompt]), gamma=2, max_new_tokens=steps, temperature=1.0,
            generator=generator,
        )  # fmt: skip
        samples.append(tuple(out[0].tolist()))
        accepted += stats.accepted
    assert accepted > 0 and any(t in (1, 4, 7) for s in samples for t in s[1:])  # pruned ids still emitted
    target_joint = exact_distribution(target, prompt, steps, 1.0, None, None)
    for positions in [(1,), (2,), (3,), (1, 2)]:
        counts = {}
        for s in samples:
            key = tuple(s[i] for i in positions)
            counts[key] = counts.get(key, 0) + 1
        assert chi_square_p(counts, marginal(target_joint, positions), n) > 1e-3, positions


def test_int8_draft_is_lossless(close_pair):
    target, draft = close_pair
    quantized = quantize_int8(copy.deepcopy(draft))
    assert "quantized" in type(quantized.get_output_embeddings()).__module__
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        out, stats = speculative_generate(target, quantized, ids, gamma=4, max_new_tokens=30)
        assert torch.equal(out, autoregressive_generate(target, ids, max_new_tokens=30))
    assert stats.accepted > 0


def test_int8_draft_of_a_bfloat16_pair_is_lossless(close_pair):
    """The int8 kernels take float32: a bfloat16 draft is quantised from float32, beside a bfloat16 target."""
    target, draft = (m.to(torch.bfloat16) for m in map(copy.deepcopy, close_pair))
    quantized = quantize_int8(draft)
    ids = torch.tensor([PROMPTS[0]])
    out, stats = speculative_generate(target, quantized, ids, gamma=4, max_new_tokens=20)
    assert torch.equal(out, autoregressive_generate(target, ids, max_new_tokens=20))
    assert stats.proposed > 0


def test_int8_on_cuda_is_refused_in_one_line(close_pair):
    with pytest.raises(SpecfairError, match="draft.quantize=int8 runs on CPU only"):
        quantize_int8(close_pair[1], "cuda")


def test_confidence_threshold_ends_blocks_early_and_stays_lossless(close_pair):
    target, draft = close_pair
    short = 0
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        plain = autoregressive_generate(target, ids, max_new_tokens=40)
        fixed, fixed_stats = speculative_generate(target, draft, ids, gamma=6, max_new_tokens=40)
        early, stats = speculative_generate(
            target, draft, ids, gamma=6, max_new_tokens=40, confidence_threshold=0.9
        )
        none, none_stats = speculative_generate(
            target, draft, ids, gamma=6, max_new_tokens=40, confidence_threshold=0
        )
        assert torch.equal(early, plain) and torch.equal(none, plain) and torch.equal(fixed, plain)
        assert none_stats.proposed_lengths == fixed_stats.proposed_lengths  # threshold 0 never stops a block
        budget = [min(6, 40 - 1 - sum(1 + a for a in stats.accept_lengths[:i])) for i in range(stats.blocks)]
        short += sum(p < b for p, b in zip(stats.proposed_lengths, budget, strict=True))
    assert short > 5  # blocks really ended early


def test_id_map_beside_a_draft_round_trips_and_bad_maps_are_refused(tmp_path, tiny_llama):
    save_id_map(tmp_path, [5, 1, 9, 2], "agnews training texts")
    assert load_id_map(tmp_path, 3, tokens=10) == ([5, 1, 9], "agnews training texts")
    assert load_id_map(tmp_path / "none", 3, tokens=10) is None
    with pytest.raises(SpecfairError, match="id 9 is outside the tokenizer's 8 ids"):
        load_id_map(tmp_path, 3, tokens=8)
    with pytest.raises(SpecfairError, match="holds only 4 ids"):
        load_id_map(tmp_path, 6, tokens=10)
    (tmp_path / VOCAB_MAP).write_text(json.dumps({"nope": 1}))
    with pytest.raises(SpecfairError, match="not an id map"):
        load_id_map(tmp_path, 3, tokens=10)
    with pytest.raises(SpecfairError, match="the draft scores only"):
        prune_head(tiny_llama(0, vocab=16, layers=1), [0, 99])
