"""Training text the target writes itself, with its next-token distributions stored (offline white-box KD).

`generalist_corpus` uses no dataset text (Magpie-style, Xu et al. 2024): the chat template's user prefix alone,
completed by the target into a request, then answered by the target; and unconditional text from
`<|endoftext|>`: a sampled opening continued greedily or by sampling. `continuation_corpus` is the target's
greedy continuation of given prompts (`train.data=target`, and the validation texts of every run).

Every generated position keeps the target's top-k log-probabilities (temperature 1, unwarped), so training
needs no second target pass: k = 32 in float16 plus int32 ids is 192 bytes per token, against 98 KB for the
full float16 row of the 49k vocabulary (512x less). A corpus is written in parts under
`<cache_dir>/corpora/<settings key>/`, so an interrupted build resumes and a changed setting rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specfair.decoding.continuations import (
    generate_batch,
    keyed_folder,
    prompt_generator,
    weights_fingerprint,
)
from specfair.decoding.engine import eos_set
from specfair.errors import SpecfairError

log = logging.getLogger(__name__)

CORPUS_VERSION = 1
GENERALIST_CATEGORIES = ("chat/greedy", "chat/sampled", "text/greedy", "text/sampled")


@dataclass
class TeacherText:
    """Token ids with the target's top-k next-token log-probabilities where the target wrote the token.

    `top_ids` / `top_logprobs` [len(ids), k]: row j is the target's distribution over token j given ids[:j];
    `taught` [len(ids)] marks the rows that hold one (tokens the target generated; template and prompt
    tokens are context only).
    """

    ids: list[int]
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    taught: torch.Tensor
    category: str

    @classmethod
    def build(cls, context: list[int], pieces: list, category: str, k: int) -> TeacherText:
        """`context` then each piece: a list of template ids (untaught) or a generated Continuation."""
        ids, top_ids, top_lp, taught = list(context), [], [], []
        top_ids.append(torch.zeros(len(context), k, dtype=torch.int32))
        top_lp.append(torch.zeros(len(context), k, dtype=torch.float16))
        taught.append(torch.zeros(len(context), dtype=torch.bool))
        for piece in pieces:
            if isinstance(piece, list):
                piece_ids, ti, tl = piece, None, None
            else:
                piece_ids, ti, tl = piece.tokens, piece.teacher_ids, piece.teacher_logprobs
            ids += piece_ids
            n = len(piece_ids)
            top_ids.append(ti if ti is not None else torch.zeros(n, k, dtype=torch.int32))
            top_lp.append(tl if tl is not None else torch.zeros(n, k, dtype=torch.float16))
            taught.append(torch.full((n,), ti is not None, dtype=torch.bool))
        return cls(ids, torch.cat(top_ids), torch.cat(top_lp), torch.cat(taught), category)

    def as_dict(self) -> dict:
        return {"ids": self.ids, "top_ids": self.top_ids, "top_logprobs": self.top_logprobs,
                "taught": self.taught, "category": self.category}  # fmt: skip


class PartStore:
    """Corpus parts as files `<folder>/part-<name>.pt`, written atomically; a folder per settings key."""

    def __init__(self, root: str | Path, settings: dict):
        self.settings = {"corpus_version": CORPUS_VERSION, **settings}
        self.folder = keyed_folder(root, "corpora", self.settings, "the training corpus")

    def get(self, name: str) -> list[TeacherText] | None:
        path = self.folder / f"part-{name}.pt"
        if not path.is_file():
            return None
        try:
            rows = torch.load(path, weights_only=True)
        except Exception:  # cut short by a kill: rebuild the part
            log.warning("unreadable corpus part %s: rebuilding it", path)
            return None
        return [TeacherText(**r) for r in rows]

    def put(self, name: str, texts: list[TeacherText]) -> None:
        path = self.folder / f"part-{name}.pt"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save([t.as_dict() for t in texts], tmp)
        tmp.replace(path)


def target_settings(target, vocab: int) -> dict:
    config = target.config.to_json_string(use_diff=False)
    return {
        "target": weights_fingerprint(target),
        "config": hashlib.sha1(config.encode()).hexdigest()[:20],
        "dtype": str(target.dtype),
        "vocab": vocab,
    }


def chat_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The chat template around a user message: (ids before its content, ids from its end to the
    assistant's first token). A tokenizer without a chat template cannot make Magpie requests."""
    if not getattr(tokenizer, "chat_template", None):
        raise SpecfairError(
            "train.corpus.requests > 0 needs a tokenizer with a chat template (Magpie-style requests); "
            "set train.corpus.requests=0 for a text-only corpus"
        )
    marker = "\u2063MARK\u2063"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True
    )
    before, after = text.split(marker, 1)
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(before), encode(after)


def generalist_corpus(target, tokenizer, vocab: int, corpus_cfg, cache_dir) -> list[TeacherText]:
    """The generalist's corpus: `requests` Magpie requests each answered once and `texts` unconditional
    texts; half of each answered/continued greedily, half sampled (T = 1, top-p `top_p`)."""
    c = corpus_cfg
    keys = ("requests", "texts", "request_tokens", "opening_tokens", "max_new_tokens", "top_p", "teacher_k",
            "batch_size", "seed")  # fmt: skip
    store = PartStore(
        cache_dir, {"kind": "generalist", **target_settings(target, vocab), **{x: c[x] for x in keys}}
    )
    start_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    frames = {
        "chat": chat_frame(tokenizer) if int(c.requests) > 0 else ([], []),
        "text": ([start_id if isinstance(start_id, int) and start_id >= 0 else tokenizer.bos_token_id], None),
    }
    batch, totals = int(c.batch_size), {"chat": int(c.requests), "text": int(c.texts)}
    jobs = [(kind, first) for kind in ("chat", "text") for first in range(0, totals[kind], batch)]
    out: list[TeacherText] = []
    for kind, first in tqdm(jobs, desc="generalist corpus (batches)", disable=None):
        part = store.get(f"{kind}-{first:06d}")
        if part is None:
            indices = list(range(first, min(first + batch, totals[kind])))
            part = _generalist_part(
                target, vocab, eos_set(tokenizer.eos_token_id), c, kind, frames[kind], indices
            )
            store.put(f"{kind}-{first:06d}", part)
        out += part
    log.info("generalist corpus: %d texts, %d taught tokens (%s)", len(out),
             sum(int(t.taught.sum()) for t in out), store.folder)  # fmt: skip
    return out


def _generalist_part(target, vocab, eos, c, kind: str, frame, indices: list[int]) -> list[TeacherText]:
    """One batch: openings (a Magpie request after the user prefix, or a sampled opening after
    <|endoftext|>), then each continued greedily (even index) or by sampling (odd index)."""
    k, seed = int(c.teacher_k), int(c.seed)
    sampled = {"temperature": 1.0, "top_p": float(c.top_p)}
    gen = {"vocab": vocab, "eos": eos, "teacher_k": k, "keep_top": 1}

    def generators(offset: int) -> list[torch.Generator]:
        return [prompt_generator(seed, offset + i, target.device) for i in indices]

    before, after = frame
    opening_len = int(c.request_tokens) if kind == "chat" else int(c.opening_tokens)
    openings = generate_batch(target, [before] * len(indices), max_new_tokens=opening_len,
                              generators=generators(0), **gen, **sampled)  # fmt: skip
    if kind == "chat":  # the request, closed by the template (the target may have closed it itself)
        contexts = [before + [t for t in o.tokens if t not in eos] + after for o in openings]
        closings = [after[1:] if o.tokens and after and o.tokens[-1] == after[0] else after for o in openings]
    else:
        contexts = [before + o.tokens for o in openings]
        closings = [[] for _ in openings]
    part = []
    for greedy in (True, False):
        rows = [j for j, i in enumerate(indices) if (i % 2 == 0) == greedy]
        if not rows:
            continue
        rest = generate_batch(target, [contexts[j] for j in rows], max_new_tokens=int(c.max_new_tokens),
                              generators=[generators(10**7)[j] for j in rows], **gen,
                              **({} if greedy else sampled))  # fmt: skip
        category = f"{kind}/{'greedy' if greedy else 'sampled'}"
        for j, cont in zip(rows, rest, strict=True):
            pieces = [openings[j], closings[j], cont] if closings[j] else [openings[j], cont]
            part.append(TeacherText.build(before, pieces, category, k))
    return part


def continuation_corpus(
    target,
    prompts: list[list[int]],
    categories: list[str],
    vocab: int,
    eos: frozenset[int],
    *,
    max_new_tokens: int,
    teacher_k: int,
    batch_size: int,
    cache_dir,
    desc: str = "target continuations",
) -> list[TeacherText]:
    """Each prompt followed by the target's greedy continuation (taught), in batches of similar length."""
    settings = {"kind": "continuations", **target_settings(target, vocab), "eos": sorted(eos),
                "max_new_tokens": int(max_new_tokens), "teacher_k": int(teacher_k),
                "prompts": hashlib.sha1(json.dumps(prompts).encode()).hexdigest()[:20]}  # fmt: skip

    store = PartStore(cache_dir, settings) if cache_dir else None
    order = sorted(range(len(prompts)), key=lambda j: len(prompts[j]))
    out: list[TeacherText | None] = [None] * len(prompts)
    starts = range(0, len(order), batch_size)
    for first in tqdm(starts, desc=desc, disable=None if len(starts) > 1 else True):
        chunk = order[first : first + batch_size]
        part = store.get(f"{first:06d}") if store else None  # a build cut short resumes part by part
        if part is None:
            made = generate_batch(target, [prompts[j] for j in chunk], max_new_tokens=int(max_new_tokens),
                                  vocab=vocab, eos=eos, teacher_k=int(teacher_k))  # fmt: skip
            part = [
                TeacherText.build(prompts[j], [c], categories[j], int(teacher_k))
                for j, c in zip(chunk, made, strict=True)
            ]
            if store:
                store.put(f"{first:06d}", part)
        for j, text in zip(chunk, part, strict=True):
            out[j] = text
    return out


def scored_corpus(
    target,
    texts: list[list[int]],
    categories: list[str],
    vocab: int,
    *,
    teacher_k: int,
    batch_size: int,
    cache_dir,
) -> list[TeacherText]:
    """Human texts with the target's top-k next-token log-probabilities at every position after the first
    (`train.teacher=cached`): one teacher-forced target pass per text, cached per text (keyed by its ids), so
    that every later distillation run reads them, whatever mix of the dataset's rows it trains on."""
    settings = {"kind": "scored", **target_settings(target, vocab), "teacher_k": int(teacher_k)}
    store = PartStore(cache_dir, settings) if cache_dir else None
    keys = [hashlib.sha1(json.dumps(t).encode()).hexdigest()[:24] for t in texts]
    out: list[TeacherText | None] = [None] * len(texts)
    if store:
        for j, key in enumerate(keys):
            part = store.get(key)
            out[j] = part[0] if part else None
    missing = sorted((j for j, t in enumerate(out) if t is None), key=lambda j: len(texts[j]))
    starts = range(0, len(missing), batch_size)
    for first in tqdm(
        starts, desc="target top-k of the training texts", disable=None if len(starts) > 1 else True
    ):
        chunk = missing[first : first + batch_size]
        for j, rows in zip(
            chunk, score_batch(target, [texts[j] for j in chunk], vocab, int(teacher_k)), strict=True
        ):
            out[j] = TeacherText(texts[j], *rows, categories[j])
            if store:
                store.put(keys[j], [out[j]])
    if missing:
        log.info("scored %d of %d training texts (the rest were cached)", len(missing), len(texts))
    return [replace(t, category=c) for t, c in zip(out, categories, strict=True)]


def score_batch(target, rows: list[list[int]], vocab: int, k: int) -> list[tuple]:
    """(top_ids int32, top_logprobs float16, taught bool) per row: row j holds the target's distribution over
    token j given the tokens before it (the first token has none)."""
    from specfair.decoding.replay import right_padded  # replay's teacher-forced padding: no mask needed

    with torch.inference_mode():
        logits = target(input_ids=right_padded(rows).to(target.device)).logits
        logprobs = torch.log_softmax(logits[..., :vocab].float(), -1)
        top = logprobs.topk(k, dim=-1)
    result = []
    for i, r in enumerate(rows):
        n = len(r)
        top_ids = torch.zeros(n, k, dtype=torch.int32)
        top_lp = torch.zeros(n, k, dtype=torch.float16)
        top_ids[1:] = top.indices[i, : n - 1].to("cpu", torch.int32)
        top_lp[1:] = top.values[i, : n - 1].to("cpu", torch.float16)
        taught = torch.ones(n, dtype=torch.bool)
        taught[0] = False
        result.append((top_ids, top_lp, taught))
    return result
