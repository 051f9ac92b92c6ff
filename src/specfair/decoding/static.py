"""A preallocated KV cache whose fixed-length feeds replay as CUDA graphs (`spec.compile=true`).

On a GPU a small model's decode step is bound by kernel launches, not by the GPU: an eager forward of a
30-layer model issues hundreds of them. A CUDA graph replays the whole forward as one launch, but only with
fixed shapes and fixed addresses. So the cache is transformers' `StaticCache` (its length lives in a device
tensor that the forward itself advances), and every feed length the engine uses — 1 and 2 tokens for the draft,
1 … γ+1 for a verify pass — gets one graph, captured on first use and kept with the model for later prompts.
A rollback only moves the length back: entries past it are masked out and overwritten later, so every
forward computes what the eager path computes. Prefills (variable length) stay eager. On CPU the same cache
runs without graphs, which is how CI tests it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, StaticCache

from specfair.decoding.kv import cache_kwarg
from specfair.errors import SpecfairError

GRAPHED_LENGTHS = 8  # feeds of up to this many tokens are graphed (γ ≤ 7); longer ones run eagerly


@dataclass
class Graph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor  # [1, L] input buffer the graph reads
    logits: torch.Tensor  # [1, L, V] output buffer the graph writes


class StaticKV:
    """One model's static cache, the token count it holds, and its graphs by feed length."""

    def __init__(self, model: PreTrainedModel, max_len: int, graphs: bool, cache_kwarg: str = "cache"):
        self.model = model
        self.cache_kwarg = cache_kwarg  # transformers 5 renamed past_key_values -> cache
        self.max_len = max_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.length = 0
        self.device, self.dtype = model.device, model.dtype  # the cache is allocated for these
        self.use_graphs = graphs and model.device.type == "cuda"
        self.graphs: dict[int, Graph] = {}

    def feed(self, new: list[int], keep: int) -> torch.Tensor:
        """Append `new` tokens; the float32 logits of the last `keep` positions, [keep, V]."""
        if self.length + len(new) > self.max_len:
            raise SpecfairError(f"static cache of {self.max_len} tokens is full ({self.length} + {len(new)})")
        if self.use_graphs and len(new) <= GRAPHED_LENGTHS and self.length > 0:
            graph = self.graphs.get(len(new)) or self._capture(len(new))
            graph.ids.copy_(torch.tensor([new]), non_blocking=False)
            graph.graph.replay()
            logits = graph.logits[0, -keep:].float().clone()
        else:
            ids = torch.tensor([new], device=self.model.device)
            logits = self._forward(ids, keep)[0, -keep:].float()
        self.length += len(new)
        return logits

    def rollback(self, length: int) -> None:
        if length < self.length:
            self._shift(length - self.length)
            self.length = length

    def _forward(self, ids: torch.Tensor, keep: int) -> torch.Tensor:
        kwargs = {self.cache_kwarg: self.cache}
        return self.model(input_ids=ids, use_cache=True, logits_to_keep=keep, **kwargs).logits

    def _shift(self, tokens: int) -> None:
        """Move every layer's device-side length by `tokens` (in place: the graphs hold its address). The cache
        was made under inference mode, so it is only writable there."""
        with torch.inference_mode():
            for layer in self.cache.layers:
                if getattr(layer, "is_initialized", False):
                    layer.cumulative_length.add_(tokens)

    def _capture(self, length: int) -> Graph:
        """Warm up on a side stream (cuBLAS workspaces), undo its cache write, then record the forward. The
        writes land at positions the next real feed overwrites, and past `self.length` they are masked."""
        if self.length + length > self.max_len:
            raise SpecfairError(f"static cache of {self.max_len} tokens has no room to capture {length}")
        ids = torch.zeros((1, length), dtype=torch.long, device=self.model.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward(ids, length)
            self._shift(-length)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # recorded, not run: the cache is unchanged until replay
            logits = self._forward(ids, length)
        self.graphs[length] = Graph(graph, ids, logits)
        return self.graphs[length]


_KEPT: weakref.WeakKeyDictionary[PreTrainedModel, dict[int, StaticKV]] = weakref.WeakKeyDictionary()


def static_kv(model: PreTrainedModel, max_len: int, role: int = 0, graphs: bool = True) -> StaticKV:
    """The model's kept StaticKV for `role` (target 0, draft 1: one model may be both), emptied; a new one
    (graphs recaptured) when the kept one is too short or sits on another device."""
    kept = _KEPT.setdefault(model, {})
    kv = kept.get(role)
    stale = kv is None or kv.max_len < max_len or (kv.device, kv.dtype) != (model.device, model.dtype)
    if stale or kv.use_graphs != (graphs and model.device.type == "cuda"):
        kv = kept[role] = StaticKV(model, round_up(max_len), graphs, cache_kwarg(model))
    kv.rollback(0)
    return kv


def round_up(n: int, step: int = 256) -> int:
    """Cache sizes in steps, so prompts of similar length share one cache and its graphs."""
    return -(-n // step) * step
