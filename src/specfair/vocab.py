"""A draft that scores only the N most frequent tokens (`draft.vocab_size`, FR-Spec / EAGLE-3 style), and an int8
draft (`draft.quantize=int8`): the two cheap ways to make the draft's step cost c small on a CPU.

SmolLM2's output head is 49,152 × 576: 28 M of a 4-layer draft's 42 M parameters, so the head is most of a draft
step. `PrunedHead` keeps the rows of the N ids that the draft's data uses most and writes -inf for every other id,
so the draft's q is exactly 0 there: those ids are never proposed, a target token among them is simply a
rejection, and the engine, replay and the sampling correction stay exact (the target is untouched). The id map
is saved beside a draft as `vocab_map.json` (most frequent first), so a size can be cut from it later.
Dynamic int8 quantisation changes only the draft's numbers, never the target's, so it is lossless too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from specfair.decoding.sampling import eos_set
from specfair.errors import SpecfairError

VOCAB_MAP = "vocab_map.json"


def frequent_ids(token_lists: Iterable[list[int]], size: int, always: Iterable[int] = ()) -> list[int]:
    """The `size` most frequent ids (ties: the smaller id), most frequent first; `always` (EOS) included."""
    counts = Counter(t for tokens in token_lists for t in tokens)
    forced = [int(t) for t in dict.fromkeys(always)]
    ranked = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if t not in forced]
    return (forced + ranked)[:size]


def pad_ids(ids: list[int], size: int, vocab: int) -> list[int]:
    """Fill a short frequency list (small data) up to `size` with the lowest unused ids."""
    seen = set(ids)
    filler = (i for i in range(vocab) if i not in seen)
    return ids + [next(filler) for _ in range(max(0, size - len(ids)))]


class PrunedHead(nn.Module):
    """Logits over the full vocabulary from a [N, H] head: the kept ids' scores, -inf elsewhere."""

    def __init__(self, head: nn.Module, ids: list[int], vocab: int):
        super().__init__()
        weight = head.weight.detach()
        self.proj = nn.Linear(weight.shape[1], len(ids), bias=False, device=weight.device, dtype=weight.dtype)
        self.proj.weight.data.copy_(weight[torch.tensor(ids, device=weight.device)])
        self.register_buffer(
            "ids", torch.tensor(ids, dtype=torch.long, device=weight.device), persistent=False
        )
        self.out_features = vocab  # the ids it scores (as nn.Linear says): shared_vocab_size reads this

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        kept = self.proj(hidden)
        full = kept.new_full((*kept.shape[:-1], self.out_features), float("-inf"))
        return full.index_copy_(-1, self.ids, kept)


def head_rows(model: PreTrainedModel) -> int:
    head = model.get_output_embeddings()
    return int(getattr(head, "out_features", None) or head.weight.shape[0])


def prune_head(draft: PreTrainedModel, ids: list[int], option: str = "draft.vocab_size") -> PreTrainedModel:
    """The draft with its output head cut to `ids` (untied from the input embeddings, which stay whole)."""
    vocab = head_rows(draft)
    if not ids or len(set(ids)) != len(ids):
        raise SpecfairError(
            f"{option}: the id map must hold distinct ids, got {len(ids)} ({len(set(ids))} distinct)"
        )
    if max(ids) >= vocab or min(ids) < 0:
        raise SpecfairError(
            f"{option}: the id map holds id {max(ids)}, but the draft scores only {vocab} ids"
        )
    draft.set_output_embeddings(PrunedHead(draft.get_output_embeddings(), ids, vocab))
    draft.config.tie_word_embeddings = False
    return draft


def check_size(size: int, vocab: int, option: str = "draft.vocab_size") -> None:
    if size < 1 or size > vocab:
        raise SpecfairError(f"{option}={size}: must be between 1 and the vocabulary size {vocab}")


def save_id_map(folder: str | Path, ids: list[int], source: str) -> Path:
    path = Path(folder) / VOCAB_MAP
    path.write_text(json.dumps({"source": source, "ids": ids}), encoding="utf-8")
    return path


def load_id_map(folder: str | Path, size: int, tokens: int) -> tuple[list[int], str] | None:
    """The first `size` ids of the map beside a draft (None if it has none); refused when it does not fit the
    tokenizer (`tokens` ids) or is shorter than asked."""
    path = Path(folder) / VOCAB_MAP
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpecfairError(f"{path}: not an id map ({type(err).__name__}: {err})") from None
    ids = saved.get("ids") if isinstance(saved, dict) else None
    if not isinstance(ids, list):
        raise SpecfairError(f'{path}: not an id map (expected {{"ids": [token ids, most frequent first]}})')
    source = str(saved.get("source", path))
    seen: set[int] = set()
    for position, i in enumerate(ids):
        if isinstance(i, bool) or not isinstance(i, int):
            raise SpecfairError(
                f"{path}: ids[{position}] is {i!r} ({type(i).__name__}); expected integer token ids"
            )
        if not 0 <= i < tokens:
            raise SpecfairError(
                f"{path}: ids[{position}]: id {i} is outside the tokenizer's {tokens} ids (another tokenizer?)"
            )
        if i in seen:
            raise SpecfairError(
                f"{path}: ids[{position}] is {i}, which the map already holds; expected distinct ids"
            )
        seen.add(i)
    if len(ids) < size:
        raise SpecfairError(
            f"draft.vocab_size={size}: {path} holds only {len(ids)} ids (those its training data used); "
            "ask for fewer"
        )
    return ids[:size], source


def pruned_head_ids(
    size: int,
    tokens: int,
    folder: str | Path | None,
    tokenizer: PreTrainedTokenizerBase,
    train_texts: Callable[[], list[str]],
    source: str,
) -> tuple[list[int], str]:
    """The `size` ids a `draft.vocab_size` head keeps, and where they came from: the id map beside the draft
    (the ids it was trained on), else the ids most frequent in `train_texts` (training texts, never the prompts),
    EOS among them. The texts are read and tokenized only when there is no map."""
    found = load_id_map(folder, size, tokens) if folder and Path(folder).is_dir() else None
    if found is not None:
        return found
    texts = train_texts()
    lists = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    ids = frequent_ids(lists, size, always=sorted(eos_set(tokenizer.eos_token_id)))
    return pad_ids(ids, size, tokens), source


def quantize_int8(draft: PreTrainedModel, device: str | torch.device = "cpu") -> PreTrainedModel:
    """Dynamic int8 quantisation of every Linear (weights int8, activations quantised per call): CPU only.
    The kernels take float32 activations, so a bfloat16 draft is made float32 first (its logits come out
    float32; the engine reads draft and target distributions separately, so the dtypes may differ)."""
    if torch.device(device).type != "cpu":
        raise SpecfairError(f"draft.quantize=int8 runs on CPU only (dynamic quantisation), not on {device}")
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(draft.float(), {nn.Linear}, dtype=torch.qint8)
