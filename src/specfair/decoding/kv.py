"""The KV-cache calls every decoding module shares (engine, static caches, replay, batched continuations)."""

from __future__ import annotations

import inspect

from transformers import DynamicCache, PreTrainedModel

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
