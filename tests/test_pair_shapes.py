"""Lossless on the vocabulary shapes of every shipped pair config, offline: tiny random models whose heads have
the real pairs' sizes, with their padding rows made to win every argmax. The engine and the target-alone
baseline must both decode from the tokenizer's ids only, the same slice, and agree token for token."""

import copy

import pytest
import torch
from torch import nn

from specfair.decoding.engine import autoregressive_generate, speculative_generate
from specfair.models import shared_vocab_size

# (pair config, tokenizer size, target head rows, draft head rows)
SHAPES = [
    ("smollm2_135m", 49152, 49152, 49152),
    ("pythia_70m_1.4b", 50277, 50304, 50304),
    ("qwen2.5", 151665, 151936, 151936),
    ("llama-2", 32000, 32000, 32000),
]


def padded_model(rows: int, tokens: int, seed: int, tiny_llama, base=None):
    """A 1-layer Llama with `rows` output rows; ids >= `tokens` (padding) get a bias that wins any argmax."""
    model = copy.deepcopy(base) if base is not None else tiny_llama(seed, vocab=rows, layers=1)
    with torch.no_grad():
        if base is not None:  # a perturbed copy: a draft that agrees often
            g = torch.Generator().manual_seed(seed)
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        model.lm_head.bias = nn.Parameter(torch.zeros(rows))
        model.lm_head.bias[tokens:] = 1e3
        # real ids: a few strong candidates, so greedy output is varied and the draft can agree
        model.lm_head.bias[:tokens] = -5.0
        model.lm_head.bias[torch.arange(0, tokens, max(1, tokens // 12))] = 5.0
    return model


@pytest.mark.parametrize("name, tokens, target_rows, draft_rows", SHAPES, ids=[s[0] for s in SHAPES])
def test_engine_and_baseline_decode_the_same_ids_on_every_pair_shape(tiny_llama, name, tokens, target_rows,
                                                                     draft_rows):  # fmt: skip
    target = padded_model(target_rows, tokens, 0, tiny_llama)
    draft = padded_model(draft_rows, tokens, 1, tiny_llama, base=target)
    vocab = shared_vocab_size(target, draft, tokens)
    assert vocab == tokens
    prompt = torch.tensor([[5, 17, 301, 2000]])
    if target_rows > tokens:  # the premise: unsliced, the padding ids would win
        assert autoregressive_generate(target, prompt, max_new_tokens=2)[0].min() >= tokens
    expected = autoregressive_generate(target, prompt, max_new_tokens=12, vocab=vocab)
    assert expected.max() < tokens
    out, stats = speculative_generate(target, draft, prompt, gamma=3, max_new_tokens=12, vocab=vocab)
    assert out.tolist() == expected.tolist() and stats.proposed > 0
    for seed in range(3):  # sampling: both draw from the same ids
        g1, g2 = (torch.Generator().manual_seed(seed) for _ in range(2))
        sampled, _ = speculative_generate(target, draft, prompt, gamma=3, max_new_tokens=8, vocab=vocab,
                                          temperature=1.0, generator=g1)  # fmt: skip
        alone = autoregressive_generate(target, prompt, max_new_tokens=8, vocab=vocab, temperature=1.0,
                                        generator=g2)  # fmt: skip
        assert sampled.max() < tokens and alone.max() < tokens
