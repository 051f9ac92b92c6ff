"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) as a few small pure functions.

One target prefill emits the first token; then each *block* drafts up to gamma tokens with the draft,
verifies them with one target forward pass, keeps the accepted prefix plus one target token (the
correction, or the bonus when all were accepted), and rolls both KV caches back to the kept tokens.
Both models read the same token list: each forward feeds exactly the tokens its cache lacks, so a
rollback is a `crop` and the draft catches up on the bonus token in its next pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from transformers import PreTrainedModel

from specfair.decoding.calls import forward, forward_hidden, new_caches, now, rollback
from specfair.decoding.drafters import Drafter, as_drafter
from specfair.decoding.kv import cache_kwarg, new_cache
from specfair.decoding.sampling import Sampling, eos_set, logits_to_probs, pick, sample
from specfair.decoding.spec import check_generation_args
from specfair.vocab import head_rows

__all__ = [  # the names other modules import from here
    "DecodeStats", "autoregressive_generate", "cache_kwarg", "check_generation_args", "eos_set", "forward",
    "logits_to_probs", "new_cache", "new_caches", "now", "rollback", "speculative_generate",
]  # fmt: skip


@dataclass
class DecodeStats:
    """Counters of one speculative generation; glossary in the README."""

    new_tokens: int = 0
    proposed: int = 0
    accepted: int = 0
    blocks: int = 0
    rejections: int = 0
    accept_lengths: list[int] = field(default_factory=list)
    proposed_lengths: list[int] = field(default_factory=list)
    draft_steps: int = 0
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0

    @property
    def target_calls(self) -> int:
        return 1 + self.blocks

    @property
    def wall_s(self) -> float:
        return self.prefill_s + self.draft_s + self.verify_s

    def add_block(self, proposed: int, accepted: int, draft_s: float, verify_s: float) -> None:
        """Count one verify pass: γ_b = proposed, n_b = accepted, and its draft and verify seconds."""
        self.draft_s += draft_s
        self.verify_s += verify_s
        self.draft_steps += proposed
        self.blocks += 1
        self.proposed += proposed
        self.accepted += accepted
        self.rejections += int(accepted < proposed)
        self.proposed_lengths.append(proposed)
        self.accept_lengths.append(accepted)

    def as_dict(self) -> dict:
        return {**asdict(self), "target_calls": self.target_calls, "wall_s": self.wall_s}


# --- the algorithm -----------------------------------------------------------------------------------


def accept(proposals, dists, target_logits, sampling: Sampling) -> tuple[int, int]:
    """Accepted count n and the next target token (correction at n, or bonus after all accepted).

    Greedy: keep the longest prefix equal to the target's argmax. Sampling: keep token x with
    probability min(1, p(x)/q(x)); on rejection draw from norm(max(0, p - q)), which makes every emitted
    token distributed exactly as the target's.
    """
    if sampling.greedy:
        choice = target_logits.argmax(-1).tolist()
        n = 0
        while n < len(proposals) and proposals[n] == choice[n]:
            n += 1
        return n, choice[n]
    p = sampling.probs(target_logits)
    generator = sampling.generator
    for i, (token, q) in enumerate(zip(proposals, dists, strict=True)):
        q = q.to(p.device)
        r = torch.rand((), generator=generator, device=p.device)
        if r * q[token] < p[i, token]:  # r < p/q without dividing by zero
            continue
        residual = (p[i] - q).clamp_min(0.0)
        total = residual.sum()
        return i, sample(residual / total if total > 0 else p[i], generator)
    return len(proposals), sample(p[len(proposals)], generator)


def target_pass(target, cache, tokens: list[int], keep: int, layers: tuple[int, ...]):
    """The target's logits of the last `keep` positions, and its hidden states at `layers` of every fed
    position when a drafter reads them (None otherwise): one forward either way."""
    if not layers:
        return forward(target, cache, tokens, keep), None
    return forward_hidden(target, cache, tokens, keep, layers)


def verify(target, cache, tokens, proposals, dists, vocab, eos, sampling, layers=()):
    """One target pass over the proposals: the emitted tokens (accepted prefix + correction or bonus, no token
    after an accepted EOS), the accepted count n, and the hidden states of the fed positions (or None)."""
    logits, hidden = target_pass(target, cache, tokens + proposals, len(proposals) + 1, layers)
    n, token = accept(proposals, dists, logits[:, :vocab], sampling)
    emitted = proposals[:n]
    if not (emitted and emitted[-1] in eos):
        emitted.append(token)
    return emitted, n, hidden


def decoded_rows(target: PreTrainedModel, drafter: Drafter, vocab: int | None) -> int:
    """The ids decoded: the rows the target and the drafter both score, cut to `vocab` when given."""
    return min(v for v in (vocab, head_rows(target), drafter.rows) if v)


def speculative_generate(
    target: PreTrainedModel,
    draft: PreTrainedModel | Drafter,
    input_ids: torch.Tensor,
    *,
    gamma: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    vocab: int | None = None,
    compiled: bool = False,
    confidence_threshold: float | None = None,
    gamma_policy=None,
) -> tuple[torch.Tensor, DecodeStats]:
    """New tokens `[1, n]` and counters; at temperature 0 identical to the target's greedy output.

    Prefill, then blocks of draft → verify → roll the caches back to the kept tokens, until EOS or the budget.
    `draft`: a model (drafted autoregressively on its own cache) or any `Drafter` (`drafters.py`).
    `vocab`: the ids decoded (default: the rows both heads have; `Pair.vocab_size` also bounds it by the
    tokenizer); pass the same to `autoregressive_generate` so the baseline draws from the same ids.
    `compiled`: static caches, CUDA graphs on a GPU (`spec.compile`); the same tokens either way.
    `confidence_threshold`: end a block early after a proposal the draft was unsure of (realised γ_b counted).
    `gamma_policy(stats)`: the block length before each block, at most `gamma` (spec.gamma=auto, `adaptive.py`).
    """
    check_generation_args(
        gamma=gamma, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        confidence_threshold=confidence_threshold,
    )  # fmt: skip
    drafter = as_drafter(draft)
    device = target.device
    vocab = decoded_rows(target, drafter, vocab)
    eos = eos_set(eos_token_id)
    sampling = Sampling(temperature, top_k, top_p, generator)
    layers = tuple(drafter.hidden_layers)
    stats = DecodeStats()
    tokens = input_ids[0].tolist()
    start = len(tokens)
    (t_cache,) = new_caches((target,), start + max_new_tokens + gamma + 1, compiled)
    drafter.reset(start + max_new_tokens + gamma + 1, compiled)

    with torch.inference_mode():
        t0 = now(device)
        logits, hidden = target_pass(target, t_cache, tokens, 1, layers)
        token, _ = pick(logits[-1, :vocab], sampling)
        tokens.append(token)
        done = token in eos or max_new_tokens == 1
        # the drafter's prefill is billed here, so draft_s (the cost ratio c) holds decode steps only
        if not done:
            drafter.prefill(tokens, hidden)
        t1 = now(device)
        stats.prefill_s = t1 - t0
        while not done:
            wanted = gamma if gamma_policy is None else max(1, min(gamma, gamma_policy(stats)))
            budget = min(wanted, max_new_tokens - (len(tokens) - start) - 1)
            proposals, dists = drafter.propose(tokens, budget, vocab, sampling, eos, confidence_threshold)
            t2 = now(device)
            cached = len(tokens) - 1
            emitted, n, hidden = verify(
                target, t_cache, tokens, proposals, dists, vocab, eos, sampling, layers
            )
            tokens.extend(emitted)
            rollback(t_cache, len(tokens) - 1)
            drafter.kept(tokens, None if hidden is None else hidden[: len(tokens) - 1 - cached])
            t3 = now(device)
            stats.add_block(len(proposals), n, draft_s=t2 - t1, verify_s=t3 - t2)
            done = emitted[-1] in eos or len(tokens) - start >= max_new_tokens
            t1 = t3

    stats.new_tokens = len(tokens) - start
    return torch.tensor([tokens[start:]], dtype=torch.long), stats


def autoregressive_generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    vocab: int | None = None,
    compiled: bool = False,
    stats: DecodeStats | None = None,
) -> torch.Tensor:
    """Plain decoding with the same cache code: the baseline for speedup and for losslessness (`vocab`: the
    ids it may emit, the engine's slice; `compiled`: as in `speculative_generate`). `stats`, if given, gets
    prefill_s and new_tokens, so that a target decode step can be timed without the prefill."""
    check_generation_args(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    eos = eos_set(eos_token_id)
    tokens = input_ids[0].tolist()
    start = len(tokens)
    (cache,) = new_caches((model,), start + max_new_tokens + 1, compiled)
    sampling = Sampling(temperature, top_k, top_p, generator)
    with torch.inference_mode():
        t0 = now(model.device)
        for step in range(max_new_tokens):
            token, _ = pick(forward(model, cache, tokens)[-1, :vocab], sampling)
            tokens.append(token)
            if step == 0 and stats is not None:
                stats.prefill_s = now(model.device) - t0
            if token in eos:
                break
    if stats is not None:
        stats.new_tokens = len(tokens) - start
    return torch.tensor([tokens[start:]], dtype=torch.long)
