"""Model calls on a KV cache: feed the tokens the cache lacks, read logits (and hidden states), roll back.

Both caches of the engine (dynamic, or static with CUDA graphs) answer the same three calls, so the decoding
algorithm never asks which one it holds.
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache, PreTrainedModel

from specfair.decoding.kv import cache_kwarg, new_cache
from specfair.decoding.static import StaticKV, static_kv
from specfair.errors import SpecfairError


def new_caches(models, max_len: int, compiled: bool, roles=None) -> list[DynamicCache | StaticKV]:
    """One empty cache per model: dynamic, or with `compiled` static with CUDA graphs (`static.py`). `roles`
    (default 0, 1, ...) keep one static cache per role when one model is both target and draft."""
    roles = range(len(models)) if roles is None else roles
    if compiled:
        return [static_kv(m, max_len, role=r) for m, r in zip(models, roles, strict=True)]
    return [new_cache(m) for m in models]


def forward(model: PreTrainedModel, cache, tokens: list[int], keep: int = 1) -> torch.Tensor:
    """Feed the tokens the cache lacks; return the logits of the last `keep` positions, float32 [keep, V]."""
    if isinstance(cache, StaticKV):
        return cache.feed(tokens[cache.length :], keep)
    start = cache.get_seq_length()
    ids = torch.tensor([tokens[start:]], device=model.device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=keep, **{cache_kwarg(model): cache})
    return out.logits[0, -keep:].float()


def forward_hidden(model, cache, tokens: list[int], keep: int, layers: tuple[int, ...]):
    """`forward`, plus the hidden states of every fed position at `layers` (indices into the model's
    `hidden_states`: 0 the embeddings, L the last layer), [fed, len(layers), H], from the same pass."""
    if isinstance(cache, StaticKV):
        raise SpecfairError(
            "spec.compile=true: a drafter that reads the target's hidden states needs eager caches"
        )
    start = cache.get_seq_length()
    ids = torch.tensor([tokens[start:]], device=model.device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=keep, output_hidden_states=True,
                **{cache_kwarg(model): cache})  # fmt: skip
    hidden = torch.stack([out.hidden_states[i][0] for i in layers], dim=1)
    return out.logits[0, -keep:].float(), hidden


def check_window(model, width: int, role: str, why: str = "") -> None:
    """A teacher-forced pass over `width` tokens sees past a sliding attention window differently from
    decoding: refused in one line (`role` names the model, `why` adds the reason)."""
    window = getattr(model.config, "sliding_window", None)
    if window and getattr(model.config, "use_sliding_window", True) and width > window:
        raise SpecfairError(
            f"mode=replay: the {role} attends through a {window}-token sliding window and a prompt plus its "
            f"continuation has {width} tokens; {why}use mode=decode"
        )


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
