"""Drafters: what proposes the tokens the target verifies.

The engine and replay speak to a drafter, never to a model: before a prompt it is reset and shown the prompt
(with the target's hidden states of it, if it asked for any); before each block it proposes up to n tokens,
each with its distribution q when sampling; after the verify pass it is told which tokens the target kept (and
the target's hidden states of the newly kept positions, computed in that same pass). The lossless rule, the
counters and the metric do not depend on which drafter runs.

- `ModelDrafter`: a small causal LM with its own KV cache (the target's first layers, the generalist, a
  fine-tuned draft); it proposes autoregressively.
- `EagleDrafter` (`eagle.py`): a feature head over the target's own hidden states (EAGLE / EAGLE-3).
- `LookupDrafter`: prompt lookup (Saxena 2023): the tokens that followed the first earlier occurrence of the
  context's longest suffix n-gram; no model, q one-hot, so the standard accept/resample rule stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from specfair.decoding.calls import forward, new_caches, rollback
from specfair.decoding.eagle import eagle_drafter
from specfair.decoding.sampling import Sampling, pick
from specfair.errors import SpecfairError
from specfair.vocab import head_rows


class Drafter(Protocol):
    name: str
    rows: int | None  # vocabulary rows it scores (None: any id the target scores)
    hidden_layers: tuple[int, ...]  # target hidden states it reads (indices into hidden_states); () for none

    def reset(self, max_len: int, compiled: bool) -> None:
        """Forget the previous prompt; `max_len` bounds the context it will see."""

    def prefill(self, tokens: list[int], hidden: torch.Tensor | None) -> None:
        """The prompt plus the target's first token; `hidden`: the target's states of tokens[:-1]."""

    def propose(self, tokens: list[int], n: int, vocab: int, sampling: Sampling, eos: frozenset[int],
                threshold: float | None) -> tuple[list[int], list[torch.Tensor | None]]:  # fmt: skip
        """Up to n tokens after `tokens` and their q (None when greedy); none after a proposed EOS."""

    def kept(self, tokens: list[int], hidden: torch.Tensor | None) -> None:
        """The context the target kept; `hidden`: its states of the positions it newly cached."""


class ModelDrafter:
    """A small causal LM drafting autoregressively on its own KV cache, rolled back to what the target kept."""

    name = "model"
    hidden_layers: tuple[int, ...] = ()

    def __init__(self, model: nn.Module):
        self.model = model
        self.cache = None

    @property
    def rows(self) -> int:
        return head_rows(self.model)

    def reset(self, max_len: int, compiled: bool) -> None:
        (self.cache,) = new_caches((self.model,), max_len, compiled, roles=(1,))

    def prefill(self, tokens: list[int], hidden=None) -> None:
        forward(self.model, self.cache, tokens[:-1])  # the last token is fed with the first proposal

    def propose(self, tokens, n, vocab, sampling, eos, threshold=None):
        """Stop after an EOS (nothing after it can be kept), or after a token the draft gave less than
        `threshold` probability (spec.confidence_threshold: an unsure draft's next guesses are likely rejected,
        and each costs a draft step)."""
        proposals, dists = [], []
        seq = list(tokens)
        for _ in range(n):
            logits = forward(self.model, self.cache, seq)[-1, :vocab]
            token, q = pick(logits, sampling)
            proposals.append(token)
            dists.append(q)
            seq.append(token)
            if token in eos:
                break
            if threshold is not None:
                confidence = float((q if q is not None else torch.softmax(logits, -1))[token])
                if confidence < threshold:
                    break
        return proposals, dists

    def kept(self, tokens, hidden=None) -> None:
        rollback(self.cache, len(tokens) - 1)


def lookup(tokens: list[int], n: int, max_ngram: int, min_ngram: int = 1) -> list[int]:
    """The up to n tokens that followed the first earlier occurrence of the context's longest suffix n-gram
    (sizes `max_ngram` down to `min_ngram`), as transformers' prompt lookup searches: left to right, the
    suffix itself excluded; [] when no n-gram recurs."""
    length = len(tokens)
    if n < 1:
        return []
    for size in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = tokens[-size:]
        first = suffix[0]
        for i in range(length - size):
            if tokens[i] == first and tokens[i : i + size] == suffix:
                return tokens[i + size : i + size + n]
    return []


@dataclass
class LookupDrafter:
    """Prompt lookup decoding: proposals copied from the context, each with all its probability (q one-hot)."""

    max_ngram: int = 3
    min_ngram: int = 1
    name = "lookup"
    rows = None
    hidden_layers = ()

    def __post_init__(self):
        if not isinstance(self.min_ngram, int) or self.min_ngram < 1:
            raise SpecfairError(f"draft.lookup.min_ngram={self.min_ngram!r}: expected an integer >= 1")
        if not isinstance(self.max_ngram, int) or self.max_ngram < self.min_ngram:
            raise SpecfairError(
                f"draft.lookup.max_ngram={self.max_ngram!r}: expected an integer >= draft.lookup.min_ngram "
                f"({self.min_ngram})"
            )

    def reset(self, max_len: int, compiled: bool) -> None:
        pass

    def prefill(self, tokens, hidden=None) -> None:
        pass

    def propose(self, tokens, n, vocab, sampling, eos, threshold=None):
        proposals = []
        for token in lookup(tokens, n, self.max_ngram, self.min_ngram):
            if token >= vocab:  # an id outside the decoded rows can never be accepted
                break
            proposals.append(token)
            if token in eos:
                break
        if sampling.greedy:
            return proposals, [None] * len(proposals)
        return proposals, [one_hot(t, vocab) for t in proposals]

    def kept(self, tokens, hidden=None) -> None:
        pass


def one_hot(token: int, vocab: int) -> torch.Tensor:
    q = torch.zeros(vocab)
    q[token] = 1.0
    return q


def as_drafter(draft) -> Drafter:
    """A model becomes a `ModelDrafter`; a drafter is used as it is."""
    return ModelDrafter(draft) if isinstance(draft, nn.Module) else draft


def build_drafter(model: nn.Module | None, draft_cfg, target: nn.Module | None = None) -> Drafter:
    """The drafter a `draft=` config names: `lookup`, `eagle` (a feature head over `target`), else the loaded
    draft model."""
    if draft_cfg.get("name") == "lookup":
        options = draft_cfg.get("lookup") or {}
        return LookupDrafter(max_ngram=options.get("max_ngram", 3), min_ngram=options.get("min_ngram", 1))
    if draft_cfg.get("name") == "eagle":
        if target is None:
            raise SpecfairError(
                "draft=eagle: the head reads the target's hidden states; no target was loaded"
            )
        return eagle_drafter(target, draft_cfg)
    if model is None:
        raise SpecfairError(f"draft={draft_cfg.get('name')}: no draft model was loaded")
    return ModelDrafter(model)
