"""`train.teacher=cached` (issue 13, item 4): the target's top-k of every training text, computed once by a
teacher-forced pass and cached, stands in for a live target pass per batch."""

import dataclasses
import functools

import pytest
import torch
from conftest import feeds
from test_training_module import SETTINGS, tiny_run, trainer  # noqa: F401 (fixture)

from specfair.errors import SpecfairError
from specfair.training import corpus
from specfair.training.corpus import score_batch, scored_corpus
from specfair.training.datamodule import DraftDataModule, TrainTexts
from specfair.training.losses import DistillationLoss
from specfair.training.module import DraftModule, warmup_cosine

VOCAB = 32


def test_rows_are_the_targets_next_token_top_k_and_padding_changes_nothing(tiny_llama):
    target = tiny_llama(0, vocab=VOCAB, layers=2)
    rows = [[3, 9, 4, 1, 7, 7, 2], [5, 6], [8, 1, 3, 30]]
    batched = score_batch(target, rows, VOCAB, k=5)
    for row, (top_ids, top_lp, taught) in zip(rows, batched, strict=True):
        with torch.no_grad():
            logprobs = torch.log_softmax(target(torch.tensor([row])).logits[0], -1)
        want = logprobs[:-1].topk(5, dim=-1)  # position j-1 predicts token j
        assert taught.tolist() == [False] + [True] * (len(row) - 1)
        assert torch.equal(top_ids[1:].long(), want.indices)
        torch.testing.assert_close(top_lp[1:].float(), want.values, atol=2e-3, rtol=2e-3)  # float16 storage
        alone = score_batch(target, [row], VOCAB, k=5)[0]
        assert torch.equal(alone[0], top_ids)


def test_scored_corpus_is_cached(tiny_llama, tmp_path, monkeypatch):
    target = tiny_llama(0, vocab=VOCAB, layers=2)
    texts, cats = [[1, 2, 3], [4, 5, 6, 7], [8, 9]], ["a", "b", "a"]
    first = scored_corpus(target, texts, cats, VOCAB, teacher_k=4, batch_size=2, cache_dir=tmp_path)
    real = corpus.score_batch
    monkeypatch.setattr(corpus, "score_batch", lambda *a, **k: pytest.fail("recomputed a cached part"))
    again = scored_corpus(target, texts, cats, VOCAB, teacher_k=4, batch_size=2, cache_dir=tmp_path)
    assert [t.ids for t in again] == texts and [t.category for t in again] == cats
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.top_logprobs, b.top_logprobs)
    # another mix of the same rows (an imbalance run) reads them per text: only the new text is scored
    scored = []
    monkeypatch.setattr(corpus, "score_batch", lambda t, rows, *a: scored.extend(rows) or real(t, rows, *a))
    mix = scored_corpus(target, [texts[2], [5, 5, 5], texts[0]], ["c", "c", "a"], VOCAB, teacher_k=4,
                        batch_size=2, cache_dir=tmp_path)  # fmt: skip
    assert scored == [[5, 5, 5]] and [t.category for t in mix] == ["c", "c", "a"]
    assert torch.equal(mix[2].top_ids, first[0].top_ids)


def test_cached_teacher_trains_without_a_target_pass(tmp_path, tiny_llama):
    """A fit with train.teacher=cached never runs the target in a training step, and its loss falls."""
    target, draft = tiny_llama(0, vocab=VOCAB, layers=3), tiny_llama(1, vocab=VOCAB, layers=1)
    g = torch.Generator().manual_seed(5)
    ids = [torch.randint(1, VOCAB, (20,), generator=g).tolist() for _ in range(12)]
    cats = [i % 3 for i in range(12)]
    texts = TrainTexts(["x", "y", "z"], ids, cats, ids[:6], cats[:6])
    scored = scored_corpus(target, ids, [texts.categories[c] for c in cats], VOCAB, teacher_k=8, batch_size=4,
                           cache_dir=tmp_path / "cache")  # fmt: skip
    data = DraftDataModule(texts=dataclasses.replace(texts, train_teacher=scored), seed=0, batch_size=2,
                           max_length=12, pad_id=0)  # fmt: skip
    s = SETTINGS
    module = DraftModule(
        draft, target, texts.categories, VOCAB, teacher="cached",
        loss=DistillationLoss(s["objective"], s["divergence"], s["kd_weight"], s["beta"], s["temperature"]),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
        scheduler=functools.partial(warmup_cosine, warmup_steps=2, total_steps=6, min_lr_ratio=0.1),
    )  # fmt: skip
    losses = []
    module.training_step = record_losses(module.training_step, losses)
    with feeds(target=target) as fed:
        trainer(tmp_path, 6, limit_val_batches=0).fit(module, datamodule=data)
    assert fed["target"] == [] and len(losses) == 6
    assert losses[-1] < losses[0]


def record_losses(step, losses):
    def wrapped(batch, batch_idx):
        loss = step(batch, batch_idx)
        losses.append(float(loss.detach()))
        return loss

    return wrapped


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.teacher=cached", "train.data=target"], "train.teacher=cached scores human text"),
        (
            ["train.teacher=cached", "train.on_policy_fraction=0.5"],
            "the draft's own samples need the live target",
        ),
        (["train.teacher=cached", "train.divergence=rkl"], "supports fkl at temperature 1"),
    ],
)
def test_cached_teacher_conflicts_are_one_line(compose_cfg, overrides, message):
    from specfair.training.run import check_data_cfg

    cfg = compose_cfg(*overrides, config="train")
    with pytest.raises(SpecfairError, match=message):
        check_data_cfg(cfg.train)


def test_plain_lm_training_steps_never_run_the_target(tmp_path, tiny_run):  # noqa: F811 (the fixture)
    module, data = tiny_run(objective="lm")
    with feeds(target=module.target) as fed:
        trainer(tmp_path, 4, limit_val_batches=0).fit(module, datamodule=data)
    assert fed["target"] == []
    kd, kd_data = tiny_run(objective="kd")
    with feeds(target=kd.target) as fed:
        trainer(tmp_path / "kd", 4, limit_val_batches=0).fit(kd, datamodule=kd_data)
    assert len(fed["target"]) == 4  # the live teacher: one target pass per step
