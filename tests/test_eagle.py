"""`draft=eagle`: the EAGLE-style feature head as a drafter. Greedy decoding equals the target's for every gamma
and both fusions, sampling keeps the target's distribution, padded vocabularies keep their shapes, checkpoints
hold the head's own weights only and refuse another target, and replay reproduces decoding counter for counter
(the head rolled out block by block on the states of one batched target pass)."""

import pytest
import torch
from test_speculative import check_samples_follow, exact_distribution

from specfair.decoding.continuations import generate_batch
from specfair.decoding.eagle import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    EagleConfig,
    EagleDrafter,
    EagleHead,
    eagle_drafter,
    load_head,
    save_head,
    target_fingerprint,
    target_states,
)
from specfair.decoding.engine import autoregressive_generate, speculative_generate
from specfair.decoding.replay import REPLAYED_COUNTERS, replay_greedy, replay_rollout
from specfair.decoding.sampling import GREEDY, Sampling
from specfair.errors import SpecfairError

VOCAB = 32
PROMPTS = [[1, 2, 3], [5], [7, 7, 1, 0, 4, 2, 6, 3, 3, 1], [4, 4, 9, 30], [12, 0, 25, 3, 3, 8, 19]]
FUSIONS = ("top", "low_mid_top")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on shared cores: one intra-op thread is ~20x faster than two that spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def target(tiny_llama):
    return tiny_llama(3, vocab=VOCAB, layers=2)


def random_head(target, fusion="top", layers=1, seed=0) -> EagleHead:
    torch.manual_seed(seed)
    return EagleHead(target, EagleConfig(layers=layers, fusion=fusion)).eval()


def train_head(target, fusion: str, steps: int = 250, unroll: int = 2, seed: int = 0) -> EagleHead:
    """A head fitted to the target's own greedy continuations of PROMPTS and 16 random prompts: KL toward the
    target's next-token distribution plus a regression of the next final state (EAGLE-1's two losses), over
    `unroll` draft steps on its own predicted features (the training-time test), Adam, full batch."""
    generator = torch.Generator().manual_seed(seed)
    prompts = PROMPTS + [torch.randint(0, VOCAB, (int(n),), generator=generator).tolist()
                         for n in torch.randint(1, 10, (16,), generator=generator)]  # fmt: skip
    ys = [c.tokens for c in generate_batch(target, prompts, max_new_tokens=28, vocab=VOCAB, eos=frozenset())]
    sequences = [p + y for p, y in zip(prompts, ys, strict=True)]
    head = random_head(target, fusion, seed=seed).train()
    layers = (*head.config.hidden_layers, target.config.num_hidden_layers)  # + the last state, regressed
    states = target_states(target, sequences, layers)
    width = max(len(s) for s in sequences) - 1
    features = torch.zeros(len(sequences), width, len(layers), target.config.hidden_size)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    for i, (s, h) in enumerate(zip(sequences, states, strict=True)):
        features[i, : len(s) - 1] = h[:-1]
        ids[i, : len(s) - 1] = torch.tensor(s[1:])
        mask[i, : len(s) - 2] = True  # pair j predicts position j + 1, which needs a state at j + 1
    inputs = features[:, :, :-1].clone()  # the head's own layers (out of inference mode)
    future = torch.cat([features[:, 1:, -1], torch.zeros_like(features[:, :1, -1])], dim=1)  # h_L at j + 1
    with torch.no_grad():
        p_target = torch.log_softmax(target.lm_head(future).float(), -1)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    positions = torch.arange(width)[None]
    for _ in range(steps):
        loss = 0.0
        for k, (predicted, logits) in enumerate(head.unrolled(inputs, ids, unroll)):
            kept = mask & (positions >= k)  # step k + 1 at p belongs to the block after real pair p - k
            kl = torch.nn.functional.kl_div(torch.log_softmax(logits.float(), -1), p_target, log_target=True,
                                            reduction="none").sum(-1)  # fmt: skip
            regression = torch.nn.functional.smooth_l1_loss(predicted, future, reduction="none").mean(-1)
            loss = loss + ((kl + regression) * kept).sum() / kept.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def trained(target):
    return {fusion: train_head(target, fusion) for fusion in FUSIONS}


# --- the head ---------------------------------------------------------------------------------------------------


def test_head_holds_only_its_own_weights_and_shares_the_targets(target, tmp_path):
    head = random_head(target, "low_mid_top", layers=2)
    assert (
        head.embed_tokens is target.get_input_embeddings() and head.lm_head is target.get_output_embeddings()
    )
    state = head.state_dict()
    assert not [k for k in state if "embed" in k or "lm_head" in k]
    shared = {
        target.get_input_embeddings().weight.data_ptr(),
        target.get_output_embeddings().weight.data_ptr(),
    }
    embedding = target.get_input_embeddings().weight
    assert all(t.data_ptr() not in shared and not torch.equal(t, embedding) for t in state.values())
    assert sum(p.numel() for p in head.parameters()) == sum(t.numel() for t in state.values())
    from safetensors.torch import load_file

    save_head(head, tmp_path)
    assert set(load_file(str(tmp_path / WEIGHTS_FILE))) == set(
        state
    )  # the checkpoint: the same keys, no more
    again = load_head(tmp_path, target)
    assert again.config == head.config and again.fingerprint == target_fingerprint(target)
    features = torch.randn(2, 5, 3, target.config.hidden_size)
    ids = torch.randint(0, VOCAB, (2, 5))
    with torch.no_grad():
        for a, b in zip(head(features, ids), again(features, ids), strict=True):
            assert torch.equal(a, b)


def test_teacher_forced_forward_equals_feeding_pairs_one_by_one(target):
    """What training computes over a whole sequence is what the drafter computes on its cache."""
    head = random_head(target, "low_mid_top", layers=2)
    sequence = PROMPTS[2] + PROMPTS[4]
    (states,) = target_states(target, [sequence], head.config.hidden_layers)
    features, ids = states[:-1][None], torch.tensor([sequence[1:]])
    with torch.no_grad():
        whole, whole_logits = head(features, ids)
        cache = head.new_cache()
        steps = [head(features[:, j : j + 1], ids[:, j : j + 1], cache=cache) for j in range(ids.shape[1])]
    assert torch.allclose(whole, torch.cat([s[0] for s in steps], 1), atol=1e-5)
    assert torch.allclose(whole_logits, torch.cat([s[1] for s in steps], 1), atol=1e-4)
    assert cache.get_seq_length() == ids.shape[1]


def test_unrolled_training_steps_are_the_drafters_block_steps(target):
    """Step k of `unrolled` at position p is the k-th proposal's computation in a block after real pair p-k+1."""
    head = random_head(target, "low_mid_top", layers=2)
    sequence = PROMPTS[2] + PROMPTS[4]
    (states,) = target_states(target, [sequence], head.config.hidden_layers)
    features, ids = states[:-1][None], torch.tensor([sequence[1:]])
    with torch.no_grad():
        steps = head.unrolled(features, ids, 3)
        for last_real in (0, 4, 9):
            cache = head.new_cache()
            predicted, logits = head(features[:, : last_real + 1], ids[:, : last_real + 1], cache=cache)
            assert torch.allclose(logits[0, -1], steps[0][1][0, last_real], atol=1e-5)
            for k in (2, 3):
                p = last_real + k - 1
                predicted, logits = head(None, ids[:, p : p + 1], fused=predicted[:, -1:], cache=cache)
                assert torch.allclose(logits[0, -1], steps[k - 1][1][0, p], atol=1e-5), (last_real, k)


def test_config_is_checked_and_defaults_follow_eagle3(target):
    assert EagleConfig().resolved(2).hidden_layers == (2,)
    assert EagleConfig(fusion="low_mid_top").resolved(30).hidden_layers == (2, 15, 27)  # SpecForge's layers
    assert EagleConfig(fusion="low_mid_top").resolved(2).hidden_layers == (1, 1, 2)
    for config, message in [
        (EagleConfig(layers=0), "draft.eagle.layers=0"),
        (EagleConfig(fusion="mean"), "draft.eagle.fusion='mean'"),
        (EagleConfig(hidden_layers=(1,)), "fusion=top reads the last state only"),
        (EagleConfig(fusion="low_mid_top", hidden_layers=(0, 1, 3)), "0..2"),
    ]:
        with pytest.raises(SpecfairError, match=message):
            EagleHead(target, config)


def test_a_head_for_another_target_or_without_config_is_refused(target, tiny_llama, tmp_path):
    save_head(random_head(target), tmp_path / "head")
    other = tiny_llama(4, vocab=VOCAB, layers=2)  # the same shape, other weights
    with pytest.raises(SpecfairError, match=r"draft.path=.*head: head trained for another target") as err:
        load_head(tmp_path / "head", other)
    assert "\n" not in str(err.value)
    nudged = tiny_llama(3, vocab=VOCAB, layers=2)
    with torch.no_grad():
        nudged.lm_head.weight[5, 7] += 0.5
    with pytest.raises(SpecfairError, match="head trained for another target"):
        load_head(tmp_path / "head", nudged)
    as_bf16 = tiny_llama(3, vocab=VOCAB, layers=2).to(torch.bfloat16)
    assert target_fingerprint(as_bf16) == target_fingerprint(target)  # the same weights in another dtype
    (tmp_path / "head" / CONFIG_FILE).unlink()
    with pytest.raises(SpecfairError, match=rf"draft.path=.*head: no {CONFIG_FILE}"):
        load_head(tmp_path / "head", target)
    with pytest.raises(SpecfairError, match="draft.path is null"):
        eagle_drafter(target, {"name": "eagle", "path": None})
    save_head(random_head(target), tmp_path / "head")
    with pytest.raises(SpecfairError, match="draft.vocab_size=16: no vocab_map.json beside the head"):
        eagle_drafter(target, {"name": "eagle", "path": str(tmp_path / "head"), "vocab_size": 16})
    with pytest.raises(SpecfairError, match="draft.quantize: not supported for draft=eagle"):
        eagle_drafter(target, {"name": "eagle", "path": str(tmp_path / "head"), "quantize": "int8"})


def test_a_pruned_draft_vocabulary_proposes_kept_ids_only_and_stays_lossless(target, trained, tmp_path):
    """draft.vocab_size=N: EAGLE-3's reduced draft vocabulary, the first N ids of the map beside the head."""
    from specfair.vocab import save_id_map

    save_head(trained["top"], tmp_path)
    kept = list(range(0, VOCAB, 2))
    save_id_map(tmp_path, kept + [i for i in range(VOCAB) if i not in kept], "test")
    drafter = eagle_drafter(target, {"name": "eagle", "path": str(tmp_path), "vocab_size": len(kept)})
    proposed = set()
    for gamma in (1, 3, 5):
        for prompt in PROMPTS:
            ids = torch.tensor([prompt])
            out, stats = speculative_generate(target, drafter, ids, gamma=gamma, max_new_tokens=16)
            assert out.tolist() == autoregressive_generate(target, ids, max_new_tokens=16).tolist()
            if len(prompt) < 2:
                continue
            drafter.reset(64, False)
            drafter.prefill(prompt, target_states(target, [prompt], drafter.hidden_layers)[0][:-1])
            proposed |= set(drafter.propose(prompt, gamma, VOCAB, GREEDY, frozenset(), None)[0])
    assert proposed and proposed <= set(kept)


# --- decoding --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", FUSIONS)
def test_greedy_equals_the_target_for_every_gamma(target, trained, fusion):
    plain = {
        tuple(p): autoregressive_generate(target, torch.tensor([p]), max_new_tokens=24).tolist()
        for p in PROMPTS
    }
    for head, name in ((trained[fusion], "trained"), (random_head(target, fusion, layers=2), "random")):
        drafter = EagleDrafter(head, target)
        assert drafter.hidden_layers == head.config.hidden_layers and drafter.rows == VOCAB
        accepted = proposed = deep = 0
        for gamma in range(1, 7):
            for prompt in PROMPTS:
                out, stats = speculative_generate(target, drafter, torch.tensor([prompt]), gamma=gamma,
                                                  max_new_tokens=24)  # fmt: skip
                assert out.tolist() == plain[tuple(prompt)], (name, gamma, prompt)
                assert stats.new_tokens == 24 and 1 + sum(n + 1 for n in stats.accept_lengths) == 24
                accepted, proposed = accepted + stats.accepted, proposed + stats.proposed
                deep += sum(n >= 3 for n in stats.accept_lengths)
        if (
            name == "trained"
        ):  # the premise: the fitted head is often right, also on its own predicted features
            assert accepted / proposed > 0.45 and deep >= 10, (fusion, accepted / proposed, deep)


def test_confidence_threshold_ends_blocks_early_and_stays_lossless(target, trained):
    drafter = EagleDrafter(trained["low_mid_top"], target)
    totals = {None: 0, 0.9: 0}
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        plain = autoregressive_generate(target, ids, max_new_tokens=24).tolist()
        for threshold in totals:
            out, stats = speculative_generate(target, drafter, ids, gamma=6, max_new_tokens=24,
                                              confidence_threshold=threshold)  # fmt: skip
            assert out.tolist() == plain
            totals[threshold] += stats.proposed
    assert totals[0.9] < totals[None]  # unsure proposals ended some blocks


def test_proposing_again_after_the_same_context_repeats_the_proposals(target, trained):
    """What `adaptive.measure_costs` does to time one draft step: propose, kept with no new positions, again."""
    drafter = EagleDrafter(trained["top"], target)
    context = PROMPTS[2] + [3]
    (states,) = target_states(target, [context], drafter.hidden_layers)
    drafter.reset(64, False)
    drafter.prefill(context, states[:-1])
    first = drafter.propose(context, 4, VOCAB, GREEDY, frozenset(), None)[0]
    for _ in range(3):
        drafter.kept(context, states[:0])
        assert drafter.propose(context, 4, VOCAB, GREEDY, frozenset(), None)[0] == first
        assert drafter.cache.get_seq_length() == len(context) - 1 + len(first) - 1


def test_padded_vocabulary_rows_are_never_proposed(tiny_llama):
    """Head rows beyond the tokenizer (Pythia, Qwen): the engine decodes `vocab` ids, q has that many entries."""
    target = tiny_llama(5, vocab=40, layers=2)
    drafter = EagleDrafter(random_head(target, "low_mid_top"), target)
    assert drafter.rows == 40
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        out, _ = speculative_generate(target, drafter, ids, gamma=3, max_new_tokens=12, vocab=VOCAB)
        assert out.tolist() == autoregressive_generate(target, ids, max_new_tokens=12, vocab=VOCAB).tolist()
        generator = torch.Generator().manual_seed(0)
        out, _ = speculative_generate(target, drafter, ids, gamma=3, max_new_tokens=12, vocab=VOCAB,
                                      temperature=1.0, generator=generator)  # fmt: skip
        assert out.max() < VOCAB
    drafter.reset(64, False)
    (states,) = target_states(target, [PROMPTS[2]], drafter.hidden_layers)
    drafter.prefill(PROMPTS[2] + [3], states)
    tokens, qs = drafter.propose(
        PROMPTS[2] + [3], 4, VOCAB, Sampling(1.0, generator=generator), frozenset(), None
    )
    assert len(tokens) == len(qs) == 4 and all(
        q.shape == (VOCAB,) and t < VOCAB for t, q in zip(tokens, qs, strict=True)
    )


@pytest.mark.parametrize(
    "temperature, top_k, top_p, n",
    [(1.0, None, None, 1500), pytest.param(0.7, 5, 0.9, 1500, marks=pytest.mark.slow)],
)
def test_sampling_keeps_the_target_distribution(tiny_llama, temperature, top_k, top_p, n):
    target = tiny_llama(0)  # vocab 8
    drafter = EagleDrafter(random_head(target, "low_mid_top", seed=1), target)
    prompt, steps = [1, 2, 3], 4  # token 1 from the prefill, 2-4 from blocks of 2
    generator = torch.Generator().manual_seed(4321)
    samples, accepted, proposed = [], 0, 0
    for _ in range(n):
        out, stats = speculative_generate(target, drafter, torch.tensor([prompt]), gamma=2, max_new_tokens=steps,
                                          temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)  # fmt: skip
        samples.append(tuple(out[0].tolist()))
        accepted, proposed = accepted + stats.accepted, proposed + stats.proposed
    assert 0.05 < accepted / proposed < 0.95  # both the accept and the resample paths run
    joint = exact_distribution(target, prompt, steps, temperature, top_k, top_p)
    other = exact_distribution(target, prompt, steps, temperature * 2, top_k, top_p)
    check_samples_follow(samples, joint, other, "its distribution at 2T")


# --- replay ----------------------------------------------------------------------------------------------------


class Recording:
    """A drafter wrapper that logs what prefill and kept are handed: (context length, states)."""

    def __init__(self, drafter):
        self.inner, self.log = drafter, []
        self.name, self.rows, self.hidden_layers = drafter.name, drafter.rows, drafter.hidden_layers
        self.target = drafter.target

    def reset(self, max_len, compiled):
        self.log = []
        self.inner.reset(max_len, compiled)

    def prefill(self, tokens, hidden):
        self.log.append((len(tokens), hidden.clone()))
        self.inner.prefill(tokens, hidden)

    def propose(self, *args):
        return self.inner.propose(*args)

    def kept(self, tokens, hidden):
        self.log.append((len(tokens), hidden.clone()))
        self.inner.kept(tokens, hidden)


def test_replay_hands_the_drafter_the_states_decoding_hands_it(target, trained):
    drafter = Recording(EagleDrafter(trained["top"], target))
    for prompt in PROMPTS:
        out, _ = speculative_generate(target, drafter, torch.tensor([prompt]), gamma=3, max_new_tokens=20)
        decoded = drafter.log
        replay_rollout(
            drafter, [prompt], [out[0].tolist()], gamma=3, max_new_tokens=20, vocab=VOCAB, eos=frozenset()
        )
        assert [n for n, _ in drafter.log] == [n for n, _ in decoded]
        for (_, a), (_, b) in zip(drafter.log, decoded, strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_replay_needs_a_target_for_a_drafter_that_reads_states(target):
    drafter = EagleDrafter(random_head(target), target)
    drafter.target = None
    with pytest.raises(SpecfairError, match="mode=replay: draft=eagle reads the target's hidden states"):
        replay_greedy(
            drafter, [PROMPTS[0]], [[1, 2]], gamma=2, max_new_tokens=2, vocab=VOCAB, eos=frozenset()
        )


@pytest.mark.parametrize("fusion", FUSIONS)
def test_replay_equals_decoding_counter_for_counter(target, trained, fusion):
    drafter = EagleDrafter(trained[fusion], target)
    free = {
        tuple(p): autoregressive_generate(target, torch.tensor([p]), max_new_tokens=24)[0].tolist()
        for p in PROMPTS
    }
    common = max(
        set(t for y in free.values() for t in y), key=lambda t: sum(y.count(t) for y in free.values())
    )
    late = free[tuple(PROMPTS[2])][9]  # an EOS first met mid-continuation
    seen = {"empty": 0, "full": 0, "partial": 0, "eos_accepted": 0, "eos_cut": 0}
    gammas = range(1, 7) if fusion == "low_mid_top" else (1, 2, 4, 6)
    for eos_id in (None, common, late):
        eos = frozenset() if eos_id is None else frozenset({eos_id})
        for max_new in (1, 9, 24):
            ys = [
                c.tokens
                for c in generate_batch(target, PROMPTS, max_new_tokens=max_new, vocab=VOCAB, eos=eos)
            ]
            for gamma in gammas:
                replayed = replay_greedy(drafter, PROMPTS, ys, gamma=gamma, max_new_tokens=max_new, vocab=VOCAB,
                                         eos=eos)  # fmt: skip
                for prompt, y, counters in zip(PROMPTS, ys, replayed, strict=True):
                    out, stats = speculative_generate(target, drafter, torch.tensor([prompt]), gamma=gamma,
                                                      max_new_tokens=max_new, eos_token_id=eos_id)  # fmt: skip
                    assert out[0].tolist() == y
                    decoded = stats.as_dict()
                    assert {k: counters[k] for k in REPLAYED_COUNTERS} == {
                        k: decoded[k] for k in REPLAYED_COUNTERS
                    }, (prompt, gamma, max_new, eos_id)
                    for g, a in zip(stats.proposed_lengths, stats.accept_lengths, strict=True):
                        seen["empty"] += g == 0
                        seen["full"] += a == g > 0
                        seen["partial"] += a < g
                    budgets = [min(gamma, max_new - 2 - sum(stats.accept_lengths[:b]) - b)
                               for b in range(stats.blocks)]  # fmt: skip
                    seen["eos_cut"] += sum(
                        g < budget for g, budget in zip(stats.proposed_lengths, budgets, strict=True)
                    )
                    last = stats.accept_lengths[-1] if stats.blocks else 0
                    seen["eos_accepted"] += bool(
                        last and y[-1] == eos_id and stats.proposed_lengths[-1] == last
                    )
    assert all(v > 0 for v in seen.values()), seen  # every kind of block occurred


@pytest.mark.slow
def test_real_pair_eagle_is_lossless_and_replay_equals_decoding(real_pair, agnews_prompts):
    """SmolLM2-135M with an untrained low/mid/top head (hidden_states 2, 15, 27): decode equals the target, and
    replay (one batched pass of the 30-layer target for the states) reproduces every counter."""
    target, eos = real_pair.target, frozenset({real_pair.tokenizer.eos_token_id})
    drafter = EagleDrafter(random_head(target, "low_mid_top"), target)
    assert drafter.hidden_layers == (2, 15, 27)
    prompts = agnews_prompts[:4]
    ys = [
        c.tokens
        for c in generate_batch(target, prompts, max_new_tokens=24, vocab=real_pair.vocab_size, eos=eos)
    ]
    for gamma in (1, 4):
        replayed = replay_greedy(drafter, prompts, ys, gamma=gamma, max_new_tokens=24, vocab=real_pair.vocab_size,
                                 eos=eos)  # fmt: skip
        for prompt, y, counters in zip(prompts, ys, replayed, strict=True):
            out, stats = speculative_generate(target, drafter, torch.tensor([prompt]), gamma=gamma, max_new_tokens=24,
                                              vocab=real_pair.vocab_size, eos_token_id=list(eos))  # fmt: skip
            assert out[0].tolist() == y
            decoded = stats.as_dict()
            assert {k: counters[k] for k in REPLAYED_COUNTERS} == {k: decoded[k] for k in REPLAYED_COUNTERS}


def test_gamma_auto_times_the_head_and_stays_lossless(target, trained):
    """spec.gamma=auto's cost timing hands the head the target's states of the timing context."""
    from specfair.decoding.adaptive import measure_costs

    drafter = EagleDrafter(trained["top"], target)
    policy = measure_costs(target, drafter, PROMPTS[2], gamma_max=4)
    assert policy.c > 0 and len(policy.verify) == 5
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        out, _ = speculative_generate(target, drafter, ids, gamma=4, max_new_tokens=20, gamma_policy=policy)
        assert out.tolist() == autoregressive_generate(target, ids, max_new_tokens=20).tolist()
