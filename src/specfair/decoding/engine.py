"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) as a few small pure functions.

One target prefill emits the first token; then each *block* drafts up to gamma tokens with the draft,
verifies them with one target forward pass, keeps the accepted prefix plus one target token (the
correction, or the bonus when all were accepted), and rolls both KV caches back to the kept tokens.
Both models read the same token list: each forward feeds exactly the tokens its cache lacks, so a
rollback is a `crop` and the draft catches up on the bonus token in its next pass.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

from specfair.decoding.static import StaticKV, static_kv
from specfair.errors import SpecfairError
from specfair.models import shared_vocab_size


@dataclass
class DecodeStats:
    """Counters of one speculative generation; glossary in DESIGN.md."""

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


def check_generation_args(
    *, gamma=1, max_new_tokens=1, temperature=0.0, top_k=None, top_p=None, confidence_threshold=None
) -> None:
    if gamma < 1:
        raise SpecfairError(f"spec.gamma={gamma}: must be >= 1 (tokens drafted per block)")
    if max_new_tokens < 1:
        raise SpecfairError(f"spec.max_new_tokens={max_new_tokens}: must be >= 1")
    if temperature < 0:
        raise SpecfairError(f"spec.temperature={temperature}: must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise SpecfairError(f"spec.top_k={top_k}: must be >= 1 or null")
    if top_p is not None and not 0 < top_p <= 1:
        raise SpecfairError(f"spec.top_p={top_p}: must be in (0, 1] or null")
    if confidence_threshold is not None and not 0 <= confidence_threshold < 1:
        raise SpecfairError(f"spec.confidence_threshold={confidence_threshold}: must be in [0, 1) or null")


# --- model calls -------------------------------------------------------------------------------------

_CACHE_KWARG: dict[type, str] = {}


def new_cache(model: PreTrainedModel) -> DynamicCache:
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def cache_kwarg(model: PreTrainedModel) -> str:
    """The forward() argument that takes the KV cache (transformers 5 renamed past_key_values -> cache)."""
    kind = type(model)
    if kind not in _CACHE_KWARG:
        params = inspect.signature(model.forward).parameters
        _CACHE_KWARG[kind] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[kind]


def new_caches(models, max_len: int, compiled: bool) -> list[DynamicCache | StaticKV]:
    """One empty cache per model: dynamic, or with `compiled` static with CUDA graphs (`static.py`)."""
    if compiled:
        return [static_kv(m, max_len, role=i) for i, m in enumerate(models)]
    return [new_cache(m) for m in models]


def forward(model: PreTrainedModel, cache, tokens: list[int], keep: int = 1) -> torch.Tensor:
    """Feed the tokens the cache lacks; return the logits of the last `keep` positions, float32 [keep, V]."""
    if isinstance(cache, StaticKV):
        return cache.feed(tokens[cache.length :], keep)
    start = cache.get_seq_length()
    ids = torch.tensor([tokens[start:]], device=model.device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=keep, **{cache_kwarg(model): cache})
    return out.logits[0, -keep:].float()


def rollback(cache, length: int) -> None:
    """Drop cached positions past `length` (a negative crop means "remove that many" in every version)."""
    if isinstance(cache, StaticKV):
        return cache.rollback(length)
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# --- sampling ----------------------------------------------------------------------------------------


def logits_to_probs(logits: torch.Tensor, temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering, then softmax; over the last dim."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


def pick(logits: torch.Tensor, temperature, top_k, top_p, generator) -> tuple[int, torch.Tensor | None]:
    """Next token from one row of logits, and its distribution when sampling (None when greedy)."""
    if temperature == 0:
        return int(logits.argmax()), None
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    return sample(probs, generator), probs


def eos_set(eos_token_id: int | Iterable[int] | None) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset([eos_token_id])
    return frozenset(int(t) for t in eos_token_id)


# --- the algorithm -----------------------------------------------------------------------------------


def draft_block(draft, cache, tokens, n, vocab, temperature, top_k, top_p, eos, generator, threshold=None):
    """Propose up to n tokens autoregressively; stop after an EOS (nothing after it can be kept), or after a
    token the draft gave less than `threshold` probability (spec.confidence_threshold: an unsure draft's next
    guesses are likely rejected, and each costs a draft step)."""
    proposals, dists = [], []
    seq = list(tokens)
    for _ in range(n):
        logits = forward(draft, cache, seq)[-1, :vocab]
        token, q = pick(logits, temperature, top_k, top_p, generator)
        proposals.append(token)
        dists.append(q)
        seq.append(token)
        if token in eos:
            break
        if (
            threshold is not None
            and float((q if q is not None else torch.softmax(logits, -1))[token]) < threshold
        ):
            break
    return proposals, dists


def accept(proposals, dists, target_logits, temperature, top_k, top_p, generator) -> tuple[int, int]:
    """Accepted count n and the next target token (correction at n, or bonus after all accepted).

    Greedy: keep the longest prefix equal to the target's argmax. Sampling: keep token x with
    probability min(1, p(x)/q(x)); on rejection draw from norm(max(0, p - q)), which makes every emitted
    token distributed exactly as the target's.
    """
    if temperature == 0:
        choice = target_logits.argmax(-1).tolist()
        n = 0
        while n < len(proposals) and proposals[n] == choice[n]:
            n += 1
        return n, choice[n]
    p = logits_to_probs(target_logits, temperature, top_k, top_p)
    for i, (token, q) in enumerate(zip(proposals, dists, strict=True)):
        r = torch.rand((), generator=generator, device=p.device)
        if r * q[token] < p[i, token]:  # r < p/q without dividing by zero
            continue
        residual = (p[i] - q).clamp_min(0.0)
        total = residual.sum()
        return i, sample(residual / total if total > 0 else p[i], generator)
    return len(proposals), sample(p[len(proposals)], generator)


def verify(target, cache, tokens, proposals, dists, vocab, eos, sampling) -> tuple[list[int], int]:
    """One target pass over the proposals: the emitted tokens (accepted prefix + correction or bonus, no token
    after an accepted EOS) and the accepted count n."""
    target_logits = forward(target, cache, tokens + proposals, keep=len(proposals) + 1)[:, :vocab]
    n, token = accept(proposals, dists, target_logits, *sampling)
    emitted = proposals[:n]
    if not (emitted and emitted[-1] in eos):
        emitted.append(token)
    return emitted, n


def speculative_generate(
    target: PreTrainedModel,
    draft: PreTrainedModel,
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

    Prefill, then blocks of draft → verify → roll both caches back to the kept tokens, until EOS or the budget.
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
    device = target.device
    vocab = min(vocab, shared_vocab_size(target, draft)) if vocab else shared_vocab_size(target, draft)
    eos = eos_set(eos_token_id)
    sampling = (temperature, top_k, top_p, generator)
    stats = DecodeStats()
    tokens = input_ids[0].tolist()
    start = len(tokens)
    t_cache, d_cache = new_caches((target, draft), start + max_new_tokens + gamma + 1, compiled)

    with torch.inference_mode():
        t0 = now(device)
        token, _ = pick(forward(target, t_cache, tokens)[-1, :vocab], *sampling)
        tokens.append(token)
        done = token in eos or max_new_tokens == 1
        if (
            not done
        ):  # the draft's prefill is billed here, so draft_s (the cost ratio c) holds decode steps only
            forward(draft, d_cache, tokens[:-1])
        t1 = now(device)
        stats.prefill_s = t1 - t0
        while not done:
            wanted = gamma if gamma_policy is None else max(1, min(gamma, gamma_policy(stats)))
            budget = min(wanted, max_new_tokens - (len(tokens) - start) - 1)
            proposals, dists = draft_block(
                draft, d_cache, tokens, budget, vocab, *sampling[:3], eos, generator, confidence_threshold
            )
            t2 = now(device)
            emitted, n = verify(target, t_cache, tokens, proposals, dists, vocab, eos, sampling)
            tokens.extend(emitted)
            rollback(t_cache, len(tokens) - 1)
            rollback(d_cache, len(tokens) - 1)
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
    with torch.inference_mode():
        t0 = now(model.device)
        for step in range(max_new_tokens):
            token, _ = pick(forward(model, cache, tokens)[-1, :vocab], temperature, top_k, top_p, generator)
            tokens.append(token)
            if step == 0 and stats is not None:
                stats.prefill_s = now(model.device) - t0
            if token in eos:
                break
    if stats is not None:
        stats.new_tokens = len(tokens) - start
    return torch.tensor([tokens[start:]], dtype=torch.long)
