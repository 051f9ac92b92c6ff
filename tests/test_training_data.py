"""Training data: sampling weights, the deterministic stream and where a resumed run restarts it, and the
DataModule built from the composed config on the bundled AG News sample."""

from types import SimpleNamespace

import pytest
from hydra.utils import instantiate

from specfair.errors import SpecfairError
from specfair.training.datamodule import DraftDataModule, TrainTexts, sampling_weights


class WordTokenizer:
    """A stand-in for the pair's tokenizer: one id per whitespace-separated word (stable across runs)."""

    pad_token_id = eos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + sum(map(ord, w)) % 997 for w in text.split()]}


@pytest.fixture
def word_tokenizer():
    return WordTokenizer()


def test_sampling_weights():
    cats = [0, 0, 0, 1]
    assert sampling_weights(cats, "natural") == [1, 1, 1, 1]
    balanced = sampling_weights(cats, "balanced")
    assert sum(balanced[:3]) == pytest.approx(balanced[3])
    temp = sampling_weights(cats, "temperature", 2.0)  # category mass ∝ n^(1/2): 3^0.5 vs 1
    assert sum(temp[:3]) / temp[3] == pytest.approx(3**0.5)
    with pytest.raises(SpecfairError, match="train.sampling"):
        sampling_weights(cats, "uniform")


def batches(data, global_step, max_steps=6, accumulate=2):
    """Attach a stand-in trainer at `global_step` and read the whole training loader."""
    data.trainer = SimpleNamespace(
        max_steps=max_steps, accumulate_grad_batches=accumulate, global_step=global_step
    )
    return [b["input_ids"].tolist() for b in data.train_dataloader()]


def test_stream_is_sized_by_the_trainer_and_restarts_where_the_step_left_it():
    ids = [list(range(1 + i, 30 + i)) for i in range(9)]
    cats = [i % 3 for i in range(9)]
    texts = TrainTexts(["a", "b", "c"], ids, cats, ids[:3], cats[:3])
    data = DraftDataModule(texts=texts, seed=3, batch_size=2, max_length=5, pad_id=0)
    full = batches(data, 0)
    assert len(full) == 6 * 2 and all(len(row) == 5 for b in full for row in b)
    assert batches(data, 4) == full[8:]  # 4 optimizer steps x 2 accumulated batches consumed
    again = DraftDataModule(texts=texts, seed=3, batch_size=2, max_length=5, pad_id=0)
    assert batches(again, 0) == full  # example i is a function of (seed, i) only
    other = DraftDataModule(texts=texts, seed=4, batch_size=2, max_length=5, pad_id=0)
    assert batches(other, 0) != full


def test_datamodule_from_the_composed_config(compose_cfg, word_tokenizer):
    cfg = compose_cfg(
        "dataset.per_category=2",
        "train.batch_size=3",
        "train.max_length=7",
        "train.sampling=balanced",
        "train.validate_on=text",
        config="train",
    )
    data = instantiate(cfg.datamodule, tokenizer=word_tokenizer)
    assert (data.batch_size, data.max_length, data.sampling, data.pad_id) == (3, 7, "balanced", 0)
    assert data.categories == ["World", "Sports", "Business", "Sci/Tech"]
    texts = data.texts
    assert len(texts.val_ids) == 8 and all(len(ids) <= 7 for ids in texts.val_ids)
    assert sorted(set(texts.val_categories)) == [0, 1, 2, 3] and set(texts.train_categories) == {0, 1, 2, 3}
    assert all(len(ids) >= 2 for ids in texts.train_ids) and texts.source
    assert set(texts.train_counts) == set(data.categories)
    batch = next(iter(data.val_dataloader()))
    assert batch["input_ids"].shape[0] == 3 and batch["attention_mask"].shape == batch["input_ids"].shape


def test_validation_on_the_targets_continuations_of_the_held_out_prompts(
    compose_cfg, word_tokenizer, tiny_llama
):
    """What evaluation measures: each held-out prompt (as evaluation cuts it) + the target's greedy continuation,
    counted on the continuation only; with train.data=target the training texts are made the same way."""
    cfg = compose_cfg("dataset.per_category=2", "dataset.prompt_tokens=6", "train.corpus.max_new_tokens=5",
                      "paths.cache_dir=null", "train.data=target", config="train")  # fmt: skip
    target = tiny_llama(0, vocab=1000)
    data = instantiate(cfg.datamodule, tokenizer=word_tokenizer, target=target, vocab=1000)
    data.setup("fit")
    texts = data.texts
    assert len(texts.val_ids) == 8 and all(len(ids) == 6 + 5 for ids in texts.val_ids)
    assert all(m.tolist() == [False] * 6 + [True] * 5 for m in texts.val_taught)
    assert texts.train_teacher is not None and len(texts.train_teacher) == len(texts.train_ids)
    assert all(t.taught.sum() == 5 for t in texts.train_teacher) and "continuations" in texts.source
    batch = next(iter(data.val_dataloader()))
    assert batch["taught"].shape == batch["input_ids"].shape
