"""The training data: a dataset's texts tokenized, a resumable weighted stream of windows, fixed validation.

`DraftDataModule` is built from `datamodule` in conf/train.yaml; the tokenizer comes from the loaded pair.
Resuming is exact: example i of a run is a pure function of (seed, i), and the stream restarts at the
example the restored global step had reached.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import random
from dataclasses import dataclass, field

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from specfair.errors import SpecfairError

log = logging.getLogger(__name__)

SAMPLINGS = ("natural", "balanced", "temperature")


def sampling_weights(categories: list[int], mode: str, temperature: float = 2.0) -> list[float]:
    """One weight per row (unnormalized): natural (as the data comes), balanced (each category the same
    total mass), or temperature (category mass p_c ∝ n_c^(1/temperature), n_c = the category's rows)."""
    counts = {c: categories.count(c) for c in set(categories)}
    if mode == "natural":
        return [1.0] * len(categories)
    if mode == "balanced":
        return [1.0 / counts[c] for c in categories]
    if mode == "temperature":
        return [counts[c] ** (1.0 / temperature) / counts[c] for c in categories]
    raise SpecfairError(f"train.sampling={mode!r}: expected {', '.join(SAMPLINGS[:-1])} or {SAMPLINGS[-1]}")


class TrainStream(Dataset):
    """Example i of the run is a deterministic function of (seed, i): a weighted row and a random window.

    That makes a resumed run see exactly the batches the uninterrupted run would have seen. Items are
    (token ids, at most max_length of them; category index).
    """

    def __init__(
        self,
        token_ids: list[list[int]],
        categories: list[int],
        weights: list[float],
        length: int,
        max_length: int,
        seed: int,
    ):
        self.token_ids, self.categories = token_ids, categories
        self.length, self.max_length, self.seed = length, max_length, seed
        total = sum(weights)
        self.cumulative = list(itertools.accumulate(w / total for w in weights))

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        rng = random.Random(self.seed * 1_000_003 + i)
        row = min(bisect.bisect_right(self.cumulative, rng.random()), len(self.token_ids) - 1)
        ids = self.token_ids[row]
        start = rng.randrange(0, max(1, len(ids) - self.max_length + 1))
        return ids[start : start + self.max_length], self.categories[row]


class ResumableSampler(Sampler):
    """Sequential indices start..length-1.

    `len` stays the full stream: Lightning counts the restored batches as already seen.
    """

    def __init__(self, length: int, start: int = 0):
        self.length, self.start = length, start

    def __iter__(self):
        return iter(range(self.start, self.length))

    def __len__(self):
        return self.length


class FixedTexts(Dataset):
    """Validation texts as they are: items (token ids, category index)."""

    def __init__(self, token_ids: list[list[int]], categories: list[int]):
        self.token_ids, self.categories = token_ids, categories

    def __len__(self):
        return len(self.token_ids)

    def __getitem__(self, i):
        return self.token_ids[i], self.categories[i]


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest: input_ids, attention_mask [B, T] (long), category [B] (index)."""
    longest = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), longest), dtype=torch.long)
    for i, (ids, _) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "category": torch.tensor([c for _, c in batch]),
    }


@dataclass
class TrainTexts:
    """Tokenized training and validation texts; category values index `categories`.

    `source` and `train_counts` (rows and tokens per category) describe where they came from, for
    train_summary.json.
    """

    categories: list[str]
    train_ids: list[list[int]]
    train_categories: list[int]
    val_ids: list[list[int]]
    val_categories: list[int]
    source: str = "given"
    train_counts: dict = field(default_factory=dict)


def load_texts(dataset_cfg, tokenizer, seed: int, max_length: int) -> TrainTexts:
    """The dataset's training texts (disjoint from its evaluation prompts) and held-out validation texts.

    Validation uses the evaluation rows cut to `max_length` tokens; training texts under 2 tokens (nothing
    to predict) are dropped. Token counts per category (for imbalance budgets) use the same tokenizer.
    """
    from specfair.data.prompts import train_text
    from specfair.data.splits import build_splits

    @functools.cache
    def encode(row):
        return tokenizer(train_text(row, dataset_cfg), add_special_tokens=False)["input_ids"]

    splits = build_splits(dataset_cfg, seed, lambda r: len(encode(r)))
    if not splits.train:
        raise SpecfairError(
            f"dataset {dataset_cfg.name}: no training texts left after holding out the prompts"
        )
    index = {c: i for i, c in enumerate(splits.categories)}
    train_ids = [encode(r) for r in splits.train]
    keep = [i for i, ids in enumerate(train_ids) if len(ids) >= 2]
    texts = TrainTexts(
        categories=splits.categories,
        train_ids=[train_ids[i] for i in keep],
        train_categories=[index[splits.train[i].category] for i in keep],
        val_ids=[encode(r)[:max_length] for r in splits.eval],
        val_categories=[index[r.category] for r in splits.eval],
        source=splits.source,
        train_counts=splits.train_counts,
    )
    log.info(
        "training on %d texts (%s); validating on %d held-out texts",
        len(keep),
        ", ".join(f"{c} {v['rows']}" for c, v in splits.train_counts.items()),
        len(texts.val_ids),
    )
    return texts


class DraftDataModule(pl.LightningDataModule):
    """Training stream and validation texts for the draft, from a dataset config and a tokenizer (or from
    `texts` already tokenized).

    The stream holds exactly trainer.max_steps * accumulate_grad_batches * batch_size examples, read from
    the trainer it is attached to. On resume, `train_dataloader` runs after Lightning restored the global
    step, so the sampler starts at the first example the interrupted run had not consumed: no extra state
    in the checkpoint, and checkpoints from before this class resume the same way.
    """

    def __init__(
        self,
        dataset=None,
        tokenizer=None,
        texts: TrainTexts | None = None,
        seed: int = 0,
        batch_size: int = 8,
        max_length: int = 64,
        sampling: str = "natural",
        sampling_temperature: float = 2.0,
        pad_id: int | None = None,
    ):
        super().__init__()
        if texts is None and (dataset is None or tokenizer is None):
            raise ValueError("DraftDataModule needs texts, or a dataset config and a tokenizer")
        self.dataset_cfg, self.tokenizer, self.texts = dataset, tokenizer, texts
        self.seed, self.batch_size, self.max_length = int(seed), int(batch_size), int(max_length)
        self.sampling, self.sampling_temperature = sampling, float(sampling_temperature)
        if pad_id is None:
            pad_id = (tokenizer.pad_token_id if tokenizer is not None else None) or 0
        self.pad_id = int(pad_id)
        self.sampler: ResumableSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        """Tokenize once (validate, then fit, reuse it); the caller may run it early to read `categories`."""
        if self.texts is None:
            self.texts = load_texts(self.dataset_cfg, self.tokenizer, self.seed, self.max_length)

    @property
    def categories(self) -> list[str]:
        self.setup()
        return self.texts.categories

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None or trainer.max_steps < 1:
            raise SpecfairError(
                "the training stream needs a Trainer with max_steps >= 1 (it sizes the stream)"
            )
        per_step = int(trainer.accumulate_grad_batches) * self.batch_size
        length = int(trainer.max_steps) * per_step
        weights = sampling_weights(self.texts.train_categories, self.sampling, self.sampling_temperature)
        stream = TrainStream(
            self.texts.train_ids, self.texts.train_categories, weights, length, self.max_length, self.seed
        )
        self.sampler = ResumableSampler(length, start=trainer.global_step * per_step)
        return DataLoader(stream, batch_size=self.batch_size, sampler=self.sampler, collate_fn=self._collate)

    def val_dataloader(self) -> DataLoader:
        texts = FixedTexts(self.texts.val_ids, self.texts.val_categories)
        return DataLoader(texts, batch_size=self.batch_size, collate_fn=self._collate)

    @property
    def _collate(self):
        return functools.partial(collate, pad_id=self.pad_id)
