"""The target's own continuations of many prompts at once, cached on disk for every draft evaluated on them.

At temperature 0 the target's greedy continuation is all a replay needs from the target, and it does not depend
on the draft: it is generated once, batched (left padding with an attention mask), and cached under
`paths.cache_dir`, keyed by everything that could change it: the target's weights, the prompt's tokens, the
vocabulary rows scored, `max_new_tokens`, the EOS ids and the sampling settings and seed. At temperature > 0 a
continuation is a sample, and the cache also keeps the target's warped distribution along it (its top-K entries)
so that the expected acceptance needs no second target pass.

Selection rules are the engine's (`engine.pick`): argmax, or `logits_to_probs` then a per-prompt generator,
over the first `vocab` rows only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from specfair.decoding.engine import logits_to_probs
from specfair.decoding.kv import cache_kwarg, new_cache
from specfair.errors import SpecfairError
from specfair.records import write_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = 1
TOP_PROBS = 512  # entries of the target's warped distribution kept per position when sampling


@dataclass
class Continuation:
    """One prompt's continuation: `tokens` (new tokens, cut after EOS or at max_new_tokens); when sampled, the
    target's warped distribution at each new position as its `top_ids` / `top_probs` [len(tokens), K]; when
    asked for (distillation corpora), its unwarped top-k log-probabilities as `teacher_*`."""

    tokens: list[int]
    top_ids: torch.Tensor | None = None
    top_probs: torch.Tensor | None = None
    teacher_ids: torch.Tensor | None = None  # [len(tokens), k] int32: the unwarped top-k (teacher_k > 0)
    teacher_logprobs: torch.Tensor | None = None  # [len(tokens), k] float16 log-probabilities at T = 1


def weights_fingerprint(model: PreTrainedModel) -> str:
    """A hash of every parameter's bytes (about 1 s per 100M float32 parameters on CPU): another fine-tune of
    the same architecture gets another key."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask, both [B, max_len], real tokens flush right (what batched generation needs)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _next_tokens(logits, temperature, top_k, top_p, generators):
    """Per row: argmax, or a sample from the engine's warped distribution with that row's generator."""
    if temperature == 0:
        return logits.argmax(-1), None
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    picks = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)]
    return torch.cat(picks), probs


def generate_batch(
    model: PreTrainedModel,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    vocab: int,
    eos: frozenset[int],
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generators: list[torch.Generator] | None = None,
    keep_top: int = TOP_PROBS,
    teacher_k: int = 0,
) -> list[Continuation]:
    """Decode B prompts together with one KV cache: prefill [B, L] left-padded, then [B, 1] per step.

    A row stops at its first EOS (kept) or at `max_new_tokens`; finished rows keep stepping on a pad token
    (masked out) until every row is done. Greedy output equals one-prompt decoding up to float near-ties.
    `teacher_k` > 0 also keeps the top-`teacher_k` of log_softmax(logits) at every new position: the target's
    own distribution (temperature 1, no top-k/top-p), which offline distillation trains toward.
    """
    device = model.device
    ids, mask = left_pad(prompts, 0, device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = new_cache(model)
    kwarg = cache_kwarg(model)
    out_tokens: list[list[int]] = [[] for _ in prompts]
    dists: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in prompts]
    teacher: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in prompts]
    live = torch.ones(len(prompts), dtype=torch.bool)
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1, **{kwarg: cache})  # fmt: skip
            logits = out.logits[:, -1, :vocab].float()
            tokens, probs = _next_tokens(logits, temperature, top_k, top_p, generators)
            top = torch.topk(probs, min(keep_top, vocab)) if probs is not None else None
            best = torch.topk(torch.log_softmax(logits, -1), min(teacher_k, vocab)) if teacher_k else None
            for i in torch.nonzero(live).flatten().tolist():
                out_tokens[i].append(int(tokens[i]))
                if top is not None:
                    dists[i].append((top.indices[i].to(torch.int32).cpu(), top.values[i].cpu()))
                if best is not None:
                    teacher[i].append((best.indices[i].to(torch.int32).cpu(), best.values[i].half().cpu()))
                if int(tokens[i]) in eos:
                    live[i] = False
            if not live.any():
                break
            ids = tokens.masked_fill(~live.to(device), 0)[:, None]
            mask = torch.cat([mask, live.to(device, torch.long)[:, None]], dim=1)
            positions = positions[:, -1:] + 1
    return [
        Continuation(tokens, *_stacked(dist), *_stacked(best))
        for tokens, dist, best in zip(out_tokens, dists, teacher, strict=True)
    ]


def _stacked(
    rows: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-position (ids, values) pairs as two [positions, K] tensors; (None, None) when none were kept."""
    if not rows:
        return None, None
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def keyed_folder(root: str | Path, kind: str, settings: dict, what: str) -> Path:
    """`root/kind/<hash of settings>/` with the settings beside the files, created and checked writable: one
    folder per settings, so a changed setting never reads another's files. `what` names it in the error."""
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(root).expanduser() / kind / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        write_atomic(folder / "settings.json", json.dumps(settings, indent=2) + "\n")
    except OSError as err:
        raise SpecfairError(
            f"paths.cache_dir={root}: cannot write {what} there ({err.strerror}); "
            "point paths.cache_dir (or SPECFAIR_CACHE) at a writable folder"
        ) from None
    return folder


class ContinuationCache:
    """One file per (settings, prompt) under `root/<settings key>/`: resumable, shareable across drafts and
    processes, cleared by deleting the folder. A file that cannot be read (cut short by a kill) is recomputed;
    a file whose stored key differs from the expected one is never used."""

    def __init__(self, root: str | Path, settings: dict):
        self.settings = {"cache_version": CACHE_VERSION, **settings}
        self.folder = keyed_folder(root, "continuations", self.settings, "the continuation cache")

    def _path(self, prompt: list[int], index: int) -> Path:
        # a greedy continuation depends on the prompt alone; a sample also on its per-prompt random stream
        salt = index if self.settings.get("temperature") else None
        digest = hashlib.sha1(json.dumps([salt, prompt]).encode()).hexdigest()[:20]
        return self.folder / f"{digest}.pt"

    def get(self, prompt: list[int], index: int) -> Continuation | None:
        path = self._path(prompt, index)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, weights_only=True)
        except Exception:  # a partial write from a killed run: recompute, never trust
            log.warning("unreadable cache entry %s: recomputing it", path)
            return None
        if data.get("settings") != json.dumps(self.settings, sort_keys=True) or data.get("prompt") != prompt:
            log.warning("cache entry %s was made for other settings or another prompt: recomputing it", path)
            return None
        return Continuation(data["tokens"], data.get("top_ids"), data.get("top_probs"))

    def put(self, prompt: list[int], index: int, value: Continuation) -> None:
        path = self._path(prompt, index)
        data = {
            "settings": json.dumps(self.settings, sort_keys=True),
            "prompt": prompt,
            "tokens": value.tokens,
            "top_ids": value.top_ids,
            "top_probs": value.top_probs,
        }
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(data, tmp)
        tmp.replace(path)


def prompt_generator(seed: int, index: int, device) -> torch.Generator:
    """The per-prompt random stream the decode path also uses, so sampling never depends on batching."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)


def continuations(
    model: PreTrainedModel,
    prompts: list[list[int]],
    indices: Iterable[int],
    cache: ContinuationCache | None,
    *,
    batch_size: int,
    seed: int,
    **generation,
) -> tuple[list[Continuation], int]:
    """The target's continuation of each prompt (cached ones loaded, the rest generated in batches of similar
    length and stored); also how many were generated."""
    indices = list(indices)
    found = [cache.get(p, i) if cache else None for p, i in zip(prompts, indices, strict=True)]
    todo = sorted((j for j, c in enumerate(found) if c is None), key=lambda j: len(prompts[j]))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        generators = [prompt_generator(seed, indices[j], model.device) for j in chunk]
        made = generate_batch(model, [prompts[j] for j in chunk], generators=generators, **generation)
        for j, value in zip(chunk, made, strict=True):
            found[j] = value
            if cache:
                cache.put(prompts[j], indices[j], value)
    return found, len(todo)
