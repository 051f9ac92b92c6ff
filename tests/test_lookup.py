"""Prompt lookup (`draft=lookup`): the n-gram search, lossless decoding, exact sampling, replay == decoding,
and the same tokens as transformers' own prompt lookup."""

import json

import pytest
import torch
from test_speculative import check_samples_follow, exact_distribution

from specfair.decoding.drafters import LookupDrafter, lookup
from specfair.decoding.engine import autoregressive_generate, speculative_generate
from specfair.decoding.replay import REPLAYED_COUNTERS, replay_greedy
from specfair.errors import SpecfairError

# repetitive prompts, so that n-grams recur; the last one never repeats a token
PROMPTS = [
    [1, 2, 3, 1, 2],
    [5, 5, 5, 5],
    [7, 1, 0, 4, 7, 1, 0, 6, 3, 7, 1],
    [4, 2, 9, 4, 2, 9, 4],
    [0, 1, 2, 3],
]


def test_lookup_finds_the_first_earlier_occurrence_of_the_longest_suffix():
    assert lookup([1, 2, 3, 1, 2], 2, max_ngram=3) == [3, 1]  # "1 2" recurs at 0; "3 1 2" does not
    assert lookup([1, 2, 3, 9, 2], 3, max_ngram=3) == [3, 9, 2]  # only the 1-gram "2" recurs
    assert lookup([1, 2, 3, 9, 2], 3, max_ngram=3, min_ngram=2) == []  # ... and 1-grams are not searched
    assert lookup([4, 5, 4, 6, 4, 5], 2, max_ngram=2) == [4, 6]  # first match, left to right
    assert lookup([4, 5, 4, 6, 4, 5], 9, max_ngram=2) == [4, 6, 4, 5]  # cut at the context's end
    assert lookup([1, 2, 3], 4, max_ngram=3) == [] and lookup([7], 4, max_ngram=3) == []
    assert lookup([5, 5, 5], 0, max_ngram=3) == []


def test_lookup_settings_are_checked():
    with pytest.raises(
        SpecfairError, match="draft.lookup.max_ngram=1: expected an integer >= draft.lookup.min_ngram"
    ):
        LookupDrafter(max_ngram=1, min_ngram=2)
    with pytest.raises(SpecfairError, match="draft.lookup.min_ngram=0"):
        LookupDrafter(max_ngram=3, min_ngram=0)


@pytest.fixture(scope="module")
def target(tiny_llama):
    return tiny_llama(2, vocab=16, layers=2, init=0.5)


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_greedy_lookup_is_lossless_and_matches_transformers_prompt_lookup(target, gamma):
    drafter = LookupDrafter(max_ngram=2)
    accepted = 0
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        plain = autoregressive_generate(target, ids, max_new_tokens=30)
        out, stats = speculative_generate(target, drafter, ids, gamma=gamma, max_new_tokens=30)
        hf = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=30,
                             min_new_tokens=30, prompt_lookup_num_tokens=gamma, max_matching_ngram_size=2)  # fmt: skip
        assert out.tolist() == plain.tolist() == hf[:, len(prompt) :].tolist(), prompt
        assert stats.new_tokens == 30 and stats.blocks == stats.target_calls - 1
        accepted += stats.accepted
    assert accepted >= 20  # the premise: lookup's proposals are often right on this looping model


@pytest.mark.parametrize(
    "temperature, top_k, top_p, n",
    [(1.0, None, None, 2000), pytest.param(1.5, 6, 0.95, 2000, marks=pytest.mark.slow)],
)
def test_sampled_lookup_keeps_the_target_distribution(tiny_llama, temperature, top_k, top_p, n):
    """q is one-hot: a proposal x is kept with probability p(x) and a rejection resamples from p without x."""
    target = tiny_llama(0)  # vocab 8
    prompt, steps = [1, 2, 1, 2, 1], 4
    generator = torch.Generator().manual_seed(99)
    samples, accepted, proposed = [], 0, 0
    for _ in range(n):
        out, stats = speculative_generate(target, LookupDrafter(max_ngram=2), torch.tensor([prompt]), gamma=2,
                                          max_new_tokens=steps, temperature=temperature, top_k=top_k, top_p=top_p,
                                          generator=generator)  # fmt: skip
        samples.append(tuple(out[0].tolist()))
        accepted, proposed = accepted + stats.accepted, proposed + stats.proposed
    assert 0.05 < accepted / proposed < 0.95  # both the accept and the resample paths run
    joint = exact_distribution(target, prompt, steps, temperature, top_k, top_p)
    other = exact_distribution(target, prompt, steps, temperature * 2, top_k, top_p)
    check_samples_follow(samples, joint, other, "its distribution at 2T")


def test_lookup_replay_equals_decoding_counter_for_counter(target):
    from specfair.decoding.continuations import generate_batch

    # the model's own looping output as context, so that lookup proposes (and the target accepts) an EOS
    looped = [p + autoregressive_generate(target, torch.tensor([p]), max_new_tokens=16)[0].tolist()[:cut]
              for p in PROMPTS[2:4] for cut in (6, 9, 12)]  # fmt: skip
    prompts = PROMPTS + looped
    seen = {"empty": 0, "full": 0, "partial": 0, "eos_accepted": 0}
    for eos_id in (3, 12):
        eos = frozenset({eos_id})
        for gamma in (1, 3, 6):
            for max_new in (1, 9, 30):
                ys = [
                    c.tokens
                    for c in generate_batch(target, prompts, max_new_tokens=max_new, vocab=16, eos=eos)
                ]
                for max_ngram, min_ngram in ((3, 1), (2, 2)):
                    drafter = LookupDrafter(max_ngram=max_ngram, min_ngram=min_ngram)
                    replayed = replay_greedy(drafter, prompts, ys, gamma=gamma, max_new_tokens=max_new, vocab=16,
                                             eos=eos)  # fmt: skip
                    for prompt, y, counters in zip(prompts, ys, replayed, strict=True):
                        out, stats = speculative_generate(target, drafter, torch.tensor([prompt]), gamma=gamma,
                                                          max_new_tokens=max_new, eos_token_id=eos_id)  # fmt: skip
                        assert out[0].tolist() == y
                        decoded = stats.as_dict()
                        where = (prompt, gamma, max_new, max_ngram, eos_id)
                        assert {k: counters[k] for k in REPLAYED_COUNTERS} == {
                            k: decoded[k] for k in REPLAYED_COUNTERS
                        }, where
                        for g, a in zip(stats.proposed_lengths, stats.accept_lengths, strict=True):
                            seen["empty"] += g == 0
                            seen["full"] += a == g > 0
                            seen["partial"] += a < g
                        last = stats.accept_lengths[-1] if stats.blocks else 0
                        seen["eos_accepted"] += bool(
                            last and y[-1] == eos_id and stats.proposed_lengths[-1] == last
                        )
    assert all(v > 0 for v in seen.values()), seen  # every kind of block occurred


@pytest.mark.slow
def test_evaluate_with_lookup_is_lossless_and_replay_equals_decoding(tmp_path):
    """`evaluate.py draft=lookup` on the real embedded target: decode (lossless), then replay of the same
    prompts counted against it."""
    from test_evaluate import run_evaluate

    small = [
        "draft=lookup",
        "dataset=cnn_dm",
        "dataset.per_category=1",
        "spec.max_new_tokens=24",
        "logger=none",
    ]
    decoded = run_evaluate(*small, f"hydra.run.dir={tmp_path / 'decode'}")
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    summary = json.loads((tmp_path / "decode" / "summary.json").read_text())
    assert summary["lossless_mismatches"] == 0 and summary["draft"]["name"] == "lookup"
    assert summary["overall"]["accepted"] > 0 and summary["draft_layers"] == 0
    replayed = run_evaluate(*small, "mode=replay", f"compare_to={tmp_path / 'decode'}",
                            f"hydra.run.dir={tmp_path / 'replay'}")  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    again = json.loads((tmp_path / "replay" / "summary.json").read_text())
    assert again["replay_mismatches"] == 0 and again["overall"]["accepted"] == summary["overall"]["accepted"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["draft.lookup.max_ngram=1", "draft.lookup.min_ngram=2"],
            "draft.lookup.max_ngram=1: expected an integer",
        ),
        (["draft.vocab_size=512"], "draft.vocab_size: draft=lookup has no model to prune or quantize"),
        (["mode=replay", "spec.temperature=1"], "draft=lookup: sampled replay needs"),
    ],
)
def test_bad_lookup_settings_are_one_line(one_line_error, overrides, message):
    error = one_line_error("evaluate", "draft=lookup", *overrides)
    assert message in error, error
