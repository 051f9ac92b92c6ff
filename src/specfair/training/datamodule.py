"""The training data: a dataset's texts tokenized, a resumable weighted stream of windows, fixed validation.

`DraftDataModule` is built from `datamodule` in conf/train.yaml; the tokenizer comes from the loaded pair.
Resuming is exact: example i of a run is a pure function of (seed, i), and the stream restarts at the
example the restored global step had reached.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import logging
import random
from dataclasses import dataclass, field

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from specfair.errors import SpecfairError
from specfair.training.corpus import TeacherText, continuation_corpus, generalist_corpus, scored_corpus

log = logging.getLogger(__name__)

SAMPLINGS = ("natural", "balanced", "temperature", "group_dro")  # group_dro: natural data, reweighted loss


def sampling_weights(categories: list[int], mode: str, temperature: float = 2.0) -> list[float]:
    """One weight per row (unnormalized): natural (as the data comes), balanced (each category the same
    total mass), or temperature (category mass p_c ∝ n_c^(1/temperature), n_c = the category's rows)."""
    counts = {c: categories.count(c) for c in set(categories)}
    if mode in ("natural", "group_dro"):  # group DRO reweights the loss (DraftModule), not the data
        return [1.0] * len(categories)
    if mode == "balanced":
        return [1.0 / counts[c] for c in categories]
    if mode == "temperature":
        return [counts[c] ** (1.0 / temperature) / counts[c] for c in categories]
    raise SpecfairError(f"train.sampling={mode!r}: expected {', '.join(SAMPLINGS[:-1])} or {SAMPLINGS[-1]}")


class TrainStream(Dataset):
    """Example i of the run is a deterministic function of (seed, i): a weighted row and a random window.

    That makes a resumed run see exactly the batches the uninterrupted run would have seen. Items are
    {"ids": at most max_length token ids, "category": index}, plus the window's stored teacher rows
    (`top_ids`, `top_logprobs`, `taught`) when the texts carry them (corpus.TeacherText), and the target's
    cached hidden states of the window (`features`) for a feature head.
    """

    def __init__(
        self,
        token_ids: list[list[int]],
        categories: list[int],
        weights: list[float],
        length: int,
        max_length: int,
        seed: int,
        teacher: list | None = None,
        features: list | None = None,
    ):
        self.token_ids, self.categories, self.teacher, self.features = (
            token_ids,
            categories,
            teacher,
            features,
        )
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
        window = slice(start, start + self.max_length)
        item = {"ids": ids[window], "category": self.categories[row]}
        if self.teacher is not None:
            t = self.teacher[row]
            item.update(
                top_ids=t.top_ids[window], top_logprobs=t.top_logprobs[window], taught=t.taught[window]
            )
        if self.features is not None:
            item["features"] = self.features[row][window]
        return item


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
    """Validation texts as they are: items {"ids", "category"}, plus "taught" (bool [len]) where only some
    tokens count (the target's continuation after a prompt)."""

    def __init__(self, token_ids: list[list[int]], categories: list[int], taught: list | None = None,
                 features: list | None = None):  # fmt: skip
        self.token_ids, self.categories, self.taught, self.features = token_ids, categories, taught, features

    def __len__(self):
        return len(self.token_ids)

    def __getitem__(self, i):
        item = {"ids": self.token_ids[i], "category": self.categories[i]}
        if self.taught is not None:
            item["taught"] = self.taught[i]
        if self.features is not None:
            item["features"] = self.features[i]
        return item


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest: input_ids, attention_mask [B, T] (long), category [B] (index); and the
    stored teacher rows top_ids, top_logprobs [B, T, k], taught [B, T] (bool) and a feature head's target
    states features [B, T, n, H] when items have them."""
    longest = max(len(item["ids"]) for item in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), longest), dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention}
    keys = [k for k in ("top_ids", "top_logprobs", "taught", "features") if k in batch[0]]
    for key in keys:
        first = batch[0][key]
        out[key] = torch.zeros((len(batch), longest, *first.shape[1:]), dtype=first.dtype)
    for i, item in enumerate(batch):
        n = len(item["ids"])
        input_ids[i, :n] = torch.tensor(item["ids"])
        attention[i, :n] = 1
        for key in keys:
            out[key][i, :n] = item[key]
    out["category"] = torch.tensor([item["category"] for item in batch])
    return out


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
    train_teacher: list | None = None  # corpus.TeacherText per training text: distil toward stored top-k
    val_taught: list | None = None  # bool [len] per validation text: the positions validation counts
    train_features: list | None = None  # a feature head's cached target states [len, n, H] per text
    val_features: list | None = None


def load_texts(
    dataset_cfg, tokenizer, seed: int, max_length: int, continue_with=None, data: str = "text"
) -> TrainTexts:
    """The dataset's training texts (disjoint from its evaluation prompts) and held-out validation texts.

    Validation uses the evaluation rows cut to `max_length` tokens, or, given `continue_with` (rows ->
    corpus.TeacherText: the evaluation prompt and the target's greedy continuation), what evaluation
    measures: the target's continuations of the evaluation prompts, counted on the continuation only. With
    data="target" the training texts are the target's continuations of the training rows' prompts too (with
    their stored top-k). Training texts under 2 tokens (nothing to predict) are dropped. Token counts per
    category (for imbalance budgets) use the same tokenizer.
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
    teacher = continue_with(splits.train) if data == "target" else None
    train_ids = [t.ids for t in teacher] if teacher else [encode(r) for r in splits.train]
    keep = [i for i, ids in enumerate(train_ids) if len(ids) >= 2]
    val = continue_with(splits.eval) if continue_with else None
    texts = TrainTexts(
        categories=splits.categories,
        train_ids=[train_ids[i] for i in keep],
        train_categories=[index[splits.train[i].category] for i in keep],
        val_ids=[t.ids for t in val] if val else [encode(r)[:max_length] for r in splits.eval],
        val_categories=[index[r.category] for r in splits.eval],
        source=splits.source + (" (the target's continuations)" if teacher else ""),
        train_counts=splits.train_counts,
        train_teacher=[teacher[i] for i in keep] if teacher else None,
        val_taught=[t.taught for t in val] if val else None,
    )
    log.info(
        "training on %d texts (%s); validating on %d held-out texts",
        len(keep),
        ", ".join(f"{c} {v['rows']}" for c, v in splits.train_counts.items()),
        len(texts.val_ids),
    )
    return texts


def corpus_texts(corpus: list[TeacherText], val_count: int, seed: int) -> TrainTexts:
    """A target-written corpus as training texts, `val_count` of them (a seeded draw) held out."""
    categories = sorted({t.category for t in corpus})
    index = {c: i for i, c in enumerate(categories)}
    held = set(random.Random(seed).sample(range(len(corpus)), min(val_count, len(corpus) // 2)))
    train = [t for i, t in enumerate(corpus) if i not in held]
    val = [t for i, t in enumerate(corpus) if i in held]
    counts = {c: {"rows": sum(t.category == c for t in train)} for c in categories}
    return TrainTexts(
        categories=categories,
        train_ids=[t.ids for t in train],
        train_categories=[index[t.category] for t in train],
        val_ids=[t.ids for t in val],
        val_categories=[index[t.category] for t in val],
        source="the target's own generations (no dataset text)",
        train_counts=counts,
        train_teacher=train,
        val_taught=[t.taught for t in val],
    )


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
        data: str = "text",
        validate_on: str = "text",
        corpus=None,
        cache_dir: str | None = None,
        target=None,
        vocab: int | None = None,
        teacher: str = "stored",
        objective: str = "kd",  # lm: no teacher, so teacher=cached scores nothing
        feature_layers: tuple[int, ...] | None = None,  # a feature head: the target states to cache per text
    ):
        super().__init__()
        if texts is None and (dataset is None or tokenizer is None):
            raise ValueError("DraftDataModule needs texts, or a dataset config and a tokenizer")
        if texts is None and (data != "text" or validate_on == "target") and target is None:
            raise ValueError(f"DraftDataModule(data={data!r}, validate_on={validate_on!r}) needs the target")
        self.dataset_cfg, self.tokenizer, self.texts = dataset, tokenizer, texts
        self.data, self.validate_on, self.corpus_cfg, self.cache_dir = data, validate_on, corpus, cache_dir
        self.target, self.vocab, self.teacher, self.objective = target, vocab, teacher, objective
        self.feature_layers = tuple(feature_layers) if feature_layers else None
        self.seed, self.batch_size, self.max_length = int(seed), int(batch_size), int(max_length)
        self.sampling, self.sampling_temperature = sampling, float(sampling_temperature)
        if pad_id is None:
            pad_id = (tokenizer.pad_token_id if tokenizer is not None else None) or 0
        self.pad_id = int(pad_id)
        self.sampler: ResumableSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        """Tokenize once (validate, then fit, reuse it); the caller may run it early to read `categories`."""
        if self.texts is not None:
            return
        if self.data == "generalist":
            corpus = generalist_corpus(
                self.target, self.tokenizer, self.vocab, self.corpus_cfg, self.cache_dir
            )
            self.texts = corpus_texts(corpus, int(self.corpus_cfg.val_texts), int(self.corpus_cfg.seed))
            if self.feature_layers:  # one target pass over the corpus, cached beside it; live on dataset text
                from specfair.training.eagle import corpus_features

                t, size = self.texts, int(self.corpus_cfg.batch_size)
                self.texts = dataclasses.replace(
                    t,
                    train_features=corpus_features(
                        self.target, t.train_ids, self.feature_layers, self.cache_dir, size
                    ),
                    val_features=corpus_features(
                        self.target, t.val_ids, self.feature_layers, self.cache_dir, size
                    ),
                )
            return
        continue_with = self._continuations if self.validate_on == "target" or self.data == "target" else None
        self.texts = load_texts(
            self.dataset_cfg, self.tokenizer, self.seed, self.max_length, continue_with, self.data
        )
        if self.data == "text" and self.teacher == "cached" and self.objective == "kd":
            # the target's top-k of every text, read per step
            t = self.texts
            scored = scored_corpus(
                self.target, t.train_ids, [t.categories[c] for c in t.train_categories], self.vocab,
                teacher_k=int(self.corpus_cfg.teacher_k), batch_size=int(self.corpus_cfg.batch_size),
                cache_dir=self.cache_dir,
            )  # fmt: skip
            self.texts = dataclasses.replace(t, train_teacher=scored)

    def _continuations(self, rows) -> list:
        """Rows as evaluation prompts (dataset.prompt_tokens, templates) + the target's greedy continuation."""
        from specfair.data.prompts import tokenize_prompts
        from specfair.decoding.engine import eos_set

        c = self.corpus_cfg
        limit = int(self.target.config.max_position_embeddings) - int(c.max_new_tokens)
        prompts = tokenize_prompts(rows, self.tokenizer, self.dataset_cfg, limit)
        return continuation_corpus(
            self.target,
            [p.input_ids for p in prompts],
            [p.category for p in prompts],
            self.vocab,
            eos_set(self.tokenizer.eos_token_id),
            max_new_tokens=int(c.max_new_tokens),
            teacher_k=int(c.teacher_k),
            batch_size=int(c.batch_size),
            cache_dir=self.cache_dir,
        )

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
            self.texts.train_ids,
            self.texts.train_categories,
            weights,
            length,
            self.max_length,
            self.seed,
            self.texts.train_teacher,
            self.texts.train_features,
        )
        self.sampler = ResumableSampler(length, start=trainer.global_step * per_step)
        return DataLoader(stream, batch_size=self.batch_size, sampler=self.sampler, collate_fn=self._collate)

    def val_dataloader(self) -> DataLoader:
        t = self.texts
        texts = FixedTexts(t.val_ids, t.val_categories, t.val_taught, t.val_features)
        return DataLoader(texts, batch_size=self.batch_size, collate_fn=self._collate)

    @property
    def _collate(self):
        return functools.partial(collate, pad_id=self.pad_id)
