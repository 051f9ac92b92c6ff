import itertools

import pytest
import torch
from conftest import feeds
from scipy.stats import chisquare

from specfair.decoding.engine import autoregressive_generate, logits_to_probs, speculative_generate
from specfair.errors import SpecfairError

PROMPTS = [[1, 2, 3], [5], [7, 7, 1, 0, 4, 2, 6, 3, 3, 1], [4, 4]]


@pytest.fixture(scope="module")
def tiny_pair(tiny_llama):
    return tiny_llama(0, vocab=64, layers=3), tiny_llama(1, vocab=64, layers=1)


@pytest.mark.parametrize("gamma", [1, 2, 4, 7])
def test_greedy_equals_target_greedy_and_transformers(tiny_pair, gamma):
    target, draft = tiny_pair
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        plain = autoregressive_generate(target, ids, max_new_tokens=20)
        spec, stats = speculative_generate(target, draft, ids, gamma=gamma, max_new_tokens=20)
        hf = target.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20, min_new_tokens=20
        )[:, ids.shape[1] :]
        assert spec.tolist() == plain.tolist() == hf.tolist()
        assert stats.new_tokens == 20


def test_greedy_with_draft_equal_to_target_accepts_everything(tiny_llama):
    target = tiny_llama(0, vocab=64, layers=2)
    out, stats = speculative_generate(target, target, torch.tensor([[1, 2]]), gamma=4, max_new_tokens=21)
    assert out.shape == (1, 21)
    # prefill emits 1 token, then 4 full blocks of 4 accepted + 1 bonus
    assert stats.accept_lengths == [4, 4, 4, 4] and stats.proposed == stats.accepted == 16
    assert stats.rejections == 0 and stats.target_calls == 5


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 5, 6, 13])
def test_max_new_tokens_is_exact_and_short_blocks_are_counted(tiny_pair, max_new_tokens):
    target, draft = tiny_pair
    ids = torch.tensor([PROMPTS[0]])
    out, stats = speculative_generate(target, draft, ids, gamma=4, max_new_tokens=max_new_tokens)
    assert out.shape[1] == max_new_tokens
    assert out.tolist() == autoregressive_generate(target, ids, max_new_tokens=max_new_tokens).tolist()
    # every block emits n_b + 1 tokens and never overshoots
    assert 1 + sum(n + 1 for n in stats.accept_lengths) == max_new_tokens
    assert all(g <= min(4, max_new_tokens - 1) for g in stats.proposed_lengths)
    assert sum(stats.proposed_lengths) == stats.proposed and sum(stats.accept_lengths) == stats.accepted
    assert stats.rejections == sum(
        n < g for n, g in zip(stats.accept_lengths, stats.proposed_lengths, strict=True)
    )


def test_eos_stops_exactly_like_the_target(tiny_pair):
    target, draft = tiny_pair
    ids = torch.tensor([PROMPTS[2]])
    free = autoregressive_generate(target, ids, max_new_tokens=30)[0].tolist()
    for position in (0, 3, 9, 17):
        eos = free[position]
        expected = free[: free.index(eos) + 1]
        for gamma in (1, 3, 5):
            out, stats = speculative_generate(
                target, draft, ids, gamma=gamma, max_new_tokens=30, eos_token_id=eos
            )
            assert out[0].tolist() == expected
            assert stats.new_tokens == len(expected)
        # the same draft as target: EOS arrives inside an accepted block, which must end there with no bonus
        out, stats = speculative_generate(
            target, target, ids, gamma=4, max_new_tokens=30, eos_token_id=[eos, 999]
        )
        assert out[0].tolist() == expected and stats.rejections == 0


def test_caches_are_reused_not_recomputed(tiny_pair):
    """The target is fed each prompt token once and then gamma_b + 1 tokens per block; the draft never more."""
    target, draft = tiny_pair
    prompt = PROMPTS[2]
    with feeds(target=target, draft=draft) as fed:
        out, stats = speculative_generate(target, draft, torch.tensor([prompt]), gamma=3, max_new_tokens=25)
    assert fed["target"] == [len(prompt)] + [g + 1 for g in stats.proposed_lengths]
    assert len(fed["target"]) == stats.target_calls
    # the draft reads the prompt once, then 1 token per step, or 2 after a fully accepted block (bonus catch-up)
    assert fed["draft"][0] == len(prompt) and all(
        n in (1, 2) for n in fed["draft"][1:]
    )  # prefill, then steps
    assert sum(fed["draft"]) <= len(prompt) + out.shape[1] + stats.proposed


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(gamma=0),
        dict(max_new_tokens=0),
        dict(temperature=-0.1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=0),
    ],
)
def test_bad_arguments_are_one_clear_error(tiny_pair, kwargs):
    target, draft = tiny_pair
    args = dict(gamma=2, max_new_tokens=4, temperature=1.0) | kwargs
    with pytest.raises(SpecfairError, match=next(iter(kwargs))):
        speculative_generate(target, draft, torch.tensor([[1]]), **args)


def test_top_k_top_p_filtering_matches_definition():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    full = torch.softmax(logits, -1)
    assert torch.allclose(logits_to_probs(logits, 1.0), full)
    top2 = logits_to_probs(logits, 1.0, top_k=2)
    assert torch.allclose(top2[:2], full[:2] / full[:2].sum()) and top2[2:].sum() == 0
    # nucleus: the smallest prefix whose mass reaches top_p (here the first two: 0.54 + 0.20 >= 0.7)
    nucleus = logits_to_probs(logits, 1.0, top_p=0.7)
    assert (nucleus > 0).tolist() == [True, True, False, False, False]
    assert torch.allclose(logits_to_probs(logits, 0.5), torch.softmax(logits / 0.5, -1))


# --- speculative sampling keeps the target's distribution ------------------------------------------


def exact_distribution(model, prompt, steps, temperature, top_k, top_p):
    """Exact joint probability of every continuation of `steps` tokens, by enumerating prefixes."""
    vocab = model.config.vocab_size
    joint = {(): 1.0}
    with torch.no_grad():
        for _ in range(steps):
            prefixes = list(joint)
            ids = torch.tensor([prompt + list(p) for p in prefixes])
            probs = logits_to_probs(model(ids).logits[:, -1].float(), temperature, top_k, top_p)
            joint = {
                p + (v,): joint[p] * float(probs[i, v]) for i, p in enumerate(prefixes) for v in range(vocab)
            }
    return joint


def chi_square_p(counts: dict, expected_probs: dict, n: int) -> float:
    """Chi-square goodness of fit; cells expected below 5 are pooled so the test stays valid."""
    obs, exp, pool_obs, pool_exp = [], [], 0.0, 0.0
    for cell, p in expected_probs.items():
        if p * n < 5:
            pool_obs, pool_exp = pool_obs + counts.get(cell, 0), pool_exp + p * n
        else:
            obs.append(counts.get(cell, 0))
            exp.append(p * n)
    if pool_exp > 0:
        obs.append(pool_obs)
        exp.append(pool_exp)
    scale = sum(obs) / sum(exp)
    return chisquare(obs, [e * scale for e in exp]).pvalue


def marginal(joint: dict, positions) -> dict:
    out = {}
    for seq, p in joint.items():
        key = tuple(seq[i] for i in positions)
        out[key] = out.get(key, 0.0) + p
    return out


MARGINALS = [(1,), (2,), (3,), (1, 2), (2, 3)]


def check_samples_follow(samples, joint: dict, wrong: dict, what: str, power: float = 1e-4) -> None:
    """χ² of the samples' marginals against `joint` (must not reject) and against a `wrong` distribution (must
    reject: the test has the power to see a biased engine)."""
    n = len(samples)
    for positions in MARGINALS:
        counts = {}
        for s in samples:
            key = tuple(s[i] for i in positions)
            counts[key] = counts.get(key, 0) + 1
        p_right = chi_square_p(counts, marginal(joint, positions), n)
        assert p_right > 1e-3, f"positions {positions}: samples do not follow the target (p={p_right:.2g})"
        p_wrong = chi_square_p(counts, marginal(wrong, positions), n)
        assert p_wrong < power, (
            f"positions {positions}: the test cannot tell the target from {what} (p={p_wrong:.2g})"
        )


@pytest.mark.parametrize(
    "temperature, top_k, top_p, n",
    [(1.0, None, None, 4000), (0.7, 5, 0.9, 3000)],
)
def test_sampling_preserves_the_target_distribution(tiny_llama, temperature, top_k, top_p, n):
    target, draft = tiny_llama(0), tiny_llama(1)
    prompt, steps = [1, 2, 3], 4  # token 1 from the prefill; tokens 2-4 from drafted blocks (gamma=2)
    generator = torch.Generator().manual_seed(1234)
    samples = []
    accepted = proposed = 0
    for _ in range(n):
        out, stats = speculative_generate(
            target,
            draft,
            torch.tensor([prompt]),
            gamma=2,
            max_new_tokens=steps,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
        )
        samples.append(tuple(out[0].tolist()))
        accepted, proposed = accepted + stats.accepted, proposed + stats.proposed
    assert 0.05 < accepted / proposed < 0.95  # both acceptance and rejection paths are exercised

    target_joint = exact_distribution(target, prompt, steps, temperature, top_k, top_p)
    draft_joint = exact_distribution(draft, prompt, steps, temperature, top_k, top_p)
    check_samples_follow(samples, target_joint, draft_joint, "the draft", power=1e-6)


def test_sampling_is_reproducible_with_a_seeded_generator(tiny_pair):
    target, draft = tiny_pair
    runs = [
        speculative_generate(
            target,
            draft,
            torch.tensor([[3, 1]]),
            gamma=3,
            max_new_tokens=12,
            temperature=1.0,
            generator=torch.Generator().manual_seed(7),
        )[0].tolist()
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_padded_vocabulary_rows_are_never_proposed(tiny_llama):
    """A draft with extra (padding) rows: only ids both models score can be drafted or emitted."""
    target, draft = tiny_llama(0, vocab=16), tiny_llama(1, vocab=24)
    with torch.no_grad():
        draft.lm_head.weight[16:] = 0
        draft.lm_head.bias = None
        draft.lm_head.weight[16:, :] = draft.lm_head.weight[:16].abs().max() * 50  # padding would win argmax
    ids = torch.tensor([[1, 2, 3]])
    out, _ = speculative_generate(target, draft, ids, gamma=3, max_new_tokens=10)
    assert out.tolist() == autoregressive_generate(target, ids, max_new_tokens=10).tolist()
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        out, _ = speculative_generate(
            target, draft, ids, gamma=3, max_new_tokens=6, temperature=1.0, generator=generator
        )
        assert max(out[0].tolist()) < 16


def test_all_prefixes_enumerated_sum_to_one(tiny_llama):
    joint = exact_distribution(tiny_llama(0), [1], 2, 1.0, None, None)
    assert abs(sum(joint.values()) - 1) < 1e-5 and len(joint) == 64
    assert set(itertools.product(range(8), repeat=2)) == set(joint)
