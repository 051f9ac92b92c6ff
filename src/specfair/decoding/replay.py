"""Replay: the engine's block counters without decoding, from the target's continuation and one draft pass.

At temperature 0 every accepted token is the target's greedy token, so with y the target's greedy continuation
and a[j] the draft's argmax after prompt + y[:j] (one teacher-forced forward), the engine's blocks follow:
block b starts after k emitted tokens, may propose n_prop = min(gamma, max_new_tokens - k - 1) tokens, accepts
while a[k+i] == y[k+i] (stopping after an accepted EOS), and emits y[k+n] unless it accepted an EOS. What the
draft proposes *after* its first wrong token only matters through the block's length (the draft stops after
proposing an EOS), so those free-running steps are computed exactly, batched, on the teacher-forced KV cache.

At temperature > 0 the analogue is the expected acceptance β_j = Σ_v min(p_j, q_j) along a target sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from specfair.decoding.calls import check_window
from specfair.decoding.drafters import ModelDrafter, as_drafter
from specfair.decoding.kv import cache_kwarg
from specfair.decoding.sampling import GREEDY, logits_to_probs
from specfair.errors import SpecfairError

# the per-prompt counters replay reproduces exactly (DecodeStats / samples.jsonl names)
REPLAYED_COUNTERS = (
    "new_tokens",
    "proposed",
    "accepted",
    "blocks",
    "rejections",
    "accept_lengths",
    "proposed_lengths",
)


@dataclass
class Block:
    """One verify pass: `start` tokens emitted before it, `budget` = proposals allowed (γ_b before EOS cuts),
    `accepted` = n_b, `accepted_eos` when the last accepted token is an EOS (then no target token follows)."""

    start: int
    budget: int
    accepted: int
    accepted_eos: bool


def walk_blocks(
    y: list[int], a: list[int], *, gamma: int, max_new_tokens: int, eos: frozenset[int]
) -> list[Block]:
    """The engine's blocks for target continuation y and draft argmaxes a (len(a) >= len(y)).

    y must be the target's greedy output: cut after its first EOS or at max_new_tokens.
    """
    blocks = []
    k = 1  # the target's prefill emitted y[0]
    done = y[0] in eos or max_new_tokens == 1
    while not done:
        budget = min(gamma, max_new_tokens - k - 1)
        n, accepted_eos = 0, False
        while n < budget and a[k + n] == y[k + n]:
            n += 1
            if y[k + n - 1] in eos:
                accepted_eos = True
                break
        blocks.append(Block(k, budget, n, accepted_eos))
        k += n if accepted_eos else n + 1
        done = accepted_eos or y[k - 1] in eos or k >= max_new_tokens
    if k != len(y):
        raise AssertionError(f"replay emitted {k} tokens but the continuation has {len(y)}")
    return blocks


def free_run_request(block: Block, a: list[int], eos: frozenset[int]) -> int:
    """How many draft steps past its first wrong token decide this block's length (0: none needed)."""
    if block.accepted_eos or block.accepted == block.budget or not eos:
        return 0
    if a[block.start + block.accepted] in eos:  # the wrong token itself ends the proposal
        return 0
    return block.budget - block.accepted - 1


def proposed_length(block: Block, a: list[int], eos: frozenset[int], free_run: list[int] | None) -> int:
    """γ_b: the budget, cut after the first EOS the draft proposes (accepted, wrong, or in its free run)."""
    if block.accepted_eos:
        return block.accepted
    if block.accepted == block.budget:
        return block.budget
    if a[block.start + block.accepted] in eos:
        return block.accepted + 1
    for step, token in enumerate(free_run or []):
        if token in eos:
            return block.accepted + 2 + step
    return block.budget


def counters(y: list[int], blocks: list[Block], proposed: list[int]) -> dict:
    """The engine's DecodeStats counters (glossary names) for one prompt."""
    accepted = [b.accepted for b in blocks]
    return {
        "new_tokens": len(y),
        "proposed": sum(proposed),
        "accepted": sum(accepted),
        "blocks": len(blocks),
        "rejections": sum(n < g for n, g in zip(accepted, proposed, strict=True)),
        "target_calls": 1 + len(blocks),
        "accept_lengths": accepted,
        "proposed_lengths": proposed,
    }


# --- the draft's side, batched ---------------------------------------------------------------------


def right_padded(sequences: list[list[int]]) -> torch.Tensor:
    """Ids [B, T], zeros after each row: under causal attention every real position's inputs are unchanged,
    so a teacher-forced pass needs no mask."""
    ids = torch.zeros((len(sequences), max(len(s) for s in sequences)), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
    return ids


def teacher_forced(draft: PreTrainedModel, sequences: list[list[int]], vocab: int):
    """One forward over right-padded sequences [B, T]: logits float32 [B, T, vocab] and the KV cache.

    Right padding leaves every real position's inputs unchanged under causal attention, so no mask is needed.
    """
    check_window(draft, max(len(s) for s in sequences), "draft", "replay reuses full-length KV caches, so ")
    ids = right_padded(sequences)
    cache = DynamicCache(config=draft.config)
    with torch.inference_mode():
        out = draft(input_ids=ids.to(draft.device), use_cache=True, **{cache_kwarg(draft): cache})
    return out.logits[..., :vocab].float(), cache


def _layer_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # older transformers


def free_runs(draft, cache, requests: list[tuple[int, int, int, int]], vocab: int, eos: frozenset[int]):
    """The draft's greedy tokens after a wrong proposal, for many blocks at once.

    requests: (row in the teacher-forced batch, prefix length m, the wrong token, steps). Each run reuses the
    cached keys/values of its row's first m positions (masked where shorter than the longest prefix) and
    decodes `steps` tokens; a run stops being read at its first EOS. Returns one token list per request.
    """
    if not requests:
        return []
    rows = torch.tensor([r[0] for r in requests], device=draft.device)
    lengths = torch.tensor([r[1] for r in requests], device=draft.device)
    width = int(lengths.max())
    seeded = [(k[rows, :, :width], v[rows, :, :width]) for k, v in _layer_kv(cache)]
    run_cache = DynamicCache(seeded, config=draft.config)
    mask = (torch.arange(width, device=draft.device)[None, :] < lengths[:, None]).long()
    token = torch.tensor([r[2] for r in requests], device=draft.device)[:, None]
    position = lengths[:, None]
    steps = max(r[3] for r in requests)
    out_tokens = []
    with torch.inference_mode():
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = draft(input_ids=token, attention_mask=mask, position_ids=position, use_cache=True,
                        **{cache_kwarg(draft): run_cache})  # fmt: skip
            token = out.logits[:, -1, :vocab].argmax(-1, keepdim=True)
            out_tokens.append(token[:, 0].tolist())
            position = position + 1
    runs = [list(col) for col in zip(*out_tokens, strict=True)]
    return [run[: r[3]] for run, r in zip(runs, requests, strict=True)]


def replay_greedy(draft, prompts, ys, *, gamma: int, max_new_tokens: int, vocab: int, eos: frozenset[int]):
    """Counters for a batch of prompts (token lists) with the target's greedy continuations ys; `draft` a model,
    or a drafter (one without a model of its own is rolled out block by block: `replay_rollout`)."""
    drafter = as_drafter(draft)
    if not isinstance(drafter, ModelDrafter):
        return replay_rollout(
            drafter, prompts, ys, gamma=gamma, max_new_tokens=max_new_tokens, vocab=vocab, eos=eos
        )
    draft = drafter.model
    sequences = [p + y for p, y in zip(prompts, ys, strict=True)]
    logits, cache = teacher_forced(draft, sequences, vocab)
    argmax = logits.argmax(-1).tolist()
    walks, requests, owners = [], [], []
    for row, (prompt, y) in enumerate(zip(prompts, ys, strict=True)):
        a = argmax[row][len(prompt) - 1 : len(prompt) - 1 + len(y)]  # a[j]: draft's guess for y[j]
        blocks = walk_blocks(y, a, gamma=gamma, max_new_tokens=max_new_tokens, eos=eos)
        walks.append((y, a, blocks))
        for b, block in enumerate(blocks):
            steps = free_run_request(block, a, eos)
            if steps:
                wrong = block.start + block.accepted
                requests.append((row, len(prompt) + wrong, a[wrong], steps))
                owners.append((row, b))
    runs = dict(zip(owners, free_runs(draft, cache, requests, vocab, eos), strict=True))
    result = []
    for row, (y, a, blocks) in enumerate(walks):
        proposed = [proposed_length(block, a, eos, runs.get((row, b))) for b, block in enumerate(blocks)]
        result.append(counters(y, blocks, proposed))
    return result


def expected_acceptance(
    draft, prompts, continuations, *, vocab: int, temperature, top_k, top_p
) -> list[dict]:
    """Σ_j β_j and the position count per prompt, β_j = Σ_v min(p_j, q_j) with the engine's warping.

    Positions j >= 1 only: the first new token comes from the target's prefill and is never proposed. p_j is
    the target's cached top-K distribution (exact whenever the warped p has at most K non-zero entries; else
    a lower bound whose slack is the reported tail mass).
    """
    sequences = [p + c.tokens for p, c in zip(prompts, continuations, strict=True)]
    logits, _ = teacher_forced(draft, sequences, vocab)
    result = []
    for row, (prompt, c) in enumerate(zip(prompts, continuations, strict=True)):
        n = len(c.tokens)
        q = logits_to_probs(logits[row, len(prompt) - 1 : len(prompt) - 1 + n], temperature, top_k, top_p)
        ids, p = c.top_ids.long()[1:].to(q.device), c.top_probs.float()[1:].to(q.device)
        beta = torch.minimum(p, q[1:].gather(-1, ids)).sum(-1)
        result.append(
            {
                "expected_accept_sum": float(beta.sum()),
                "expected_positions": n - 1,
                "expected_tail_mass": float((1 - p.sum(-1)).clamp_min(0).sum()),
            }
        )
    return result


# --- drafters without a model of their own: the engine's loop with the target's tokens read from y -------------


def replay_rollout(drafter, prompts, ys, *, gamma: int, max_new_tokens: int, vocab: int, eos: frozenset[int],
                   target=None):  # fmt: skip
    """Counters for a drafter rolled out block by block (prompt lookup, a feature head): each block asks it for
    its proposals after the tokens kept so far, exactly as decoding does, and reads the target's tokens from its
    greedy continuation y instead of running the target.

    A drafter that reads the target's hidden states (`draft=eagle`) is handed the slices decoding hands it, cut
    from one batched teacher-forced pass of `target` (default: the drafter's own `target`) along prompt + y:
    its prefill the states of the prompt, each `kept` those of the positions the target newly cached. Only the
    states differ from decoding's, by float rounding of a batched pass (as teacher forcing does for model drafts).
    """
    layers = tuple(drafter.hidden_layers)
    states = [None] * len(prompts)
    if layers:
        target = target if target is not None else getattr(drafter, "target", None)
        if target is None:
            raise SpecfairError(
                f"mode=replay: draft={drafter.name} reads the target's hidden states, and replay was given no "
                "target to compute them; use mode=decode"
            )
        from specfair.decoding.eagle import target_states

        # the last emitted token is never cached by the target, so its state is never handed over
        states = target_states(target, [p + y[:-1] for p, y in zip(prompts, ys, strict=True)], layers)
    return [
        _rollout(drafter, p, y, gamma, max_new_tokens, vocab, eos, s)
        for p, y, s in zip(prompts, ys, states, strict=True)
    ]


def _rollout(drafter, prompt, y, gamma, max_new_tokens, vocab, eos, states=None) -> dict:
    """One prompt through the engine's loop; `states` [len(prompt + y) - 1, len(layers), H] or None."""

    def cached(start: int, end: int):  # the states of positions start..end-1, as the engine slices them
        return None if states is None else states[start:end]

    drafter.reset(len(prompt) + max_new_tokens + gamma + 1, False)
    tokens, k = prompt + y[:1], 1
    done = y[0] in eos or max_new_tokens == 1
    if not done:
        drafter.prefill(tokens, cached(0, len(tokens) - 1))
    blocks, proposed = [], []
    while not done:
        budget = min(gamma, max_new_tokens - k - 1)
        proposals, _ = drafter.propose(tokens, budget, vocab, GREEDY, eos, None)
        n = 0
        while n < len(proposals) and k + n < len(y) and proposals[n] == y[k + n]:
            n += 1
        accepted_eos = n > 0 and proposals[n - 1] in eos
        blocks.append(Block(k, budget, n, accepted_eos))
        proposed.append(len(proposals))
        k += n if accepted_eos else n + 1
        before = len(tokens) - 1
        tokens = prompt + y[:k]
        drafter.kept(tokens, cached(before, len(tokens) - 1))
        done = accepted_eos or y[k - 1] in eos or k >= max_new_tokens
    if k != len(y):
        raise AssertionError(f"replay emitted {k} tokens but the continuation has {len(y)}")
    return counters(y, blocks, proposed)
