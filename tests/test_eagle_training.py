"""Training the feature head (`draft=eagle`, training/eagle.py): the target's features cached once and read back,
the cached and the live feature paths giving the same losses, unrolled steps weighted as configured, a head
that learns the target (validation alpha up) through the same Lightning module, and one-line refusals."""

import lightning.pytorch as pl
import pytest
import torch
from test_eagle import one_thread  # noqa: F401  (autouse: tiny models, one intra-op thread)

from specfair.decoding.eagle import EagleConfig, EagleHead, target_states
from specfair.errors import SpecfairError
from specfair.training.corpus import continuation_corpus
from specfair.training.datamodule import DraftDataModule, collate, corpus_texts
from specfair.training.eagle import EagleModule, EagleTraining, corpus_features, stored_layers
from specfair.training.losses import DistillationLoss

VOCAB = 32


@pytest.fixture(scope="module")
def target(tiny_llama):
    return tiny_llama(5, vocab=VOCAB, layers=2).eval()


def corpus(target, n=24):
    prompts = [[1 + i % 7, 2 + i % 5, i % 3] for i in range(n)]
    made = continuation_corpus(target, prompts, ["x" if i % 3 else "y" for i in range(n)], VOCAB, frozenset(),
                               max_new_tokens=20, teacher_k=4, batch_size=8, cache_dir=None)  # fmt: skip
    return corpus_texts(made, val_count=6, seed=0)


def feature_batch(target, layers, cache, n=4) -> dict:
    """A collated batch of the first n corpus texts with their cached target features."""
    texts = corpus(target)
    features = corpus_features(target, texts.train_ids[:n], layers, cache)
    items = [
        {"ids": ids, "category": 0, "features": f}
        for ids, f in zip(texts.train_ids[:n], features, strict=True)
    ]
    return collate(items, 0)


def module(target, fusion="top", seed=0, **eagle):
    torch.manual_seed(seed)
    head = EagleHead(target, EagleConfig(fusion=fusion))
    settings = {"autocast": None, **eagle}
    return EagleModule(head, target, ["x", "y"], VOCAB, eagle=settings, loss=DistillationLoss(),
                       optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))  # fmt: skip


def test_features_are_the_targets_states_cached_once(target, tmp_path):
    texts = corpus(target)
    layers = (1, 2)
    first = corpus_features(target, texts.train_ids, layers, tmp_path, batch_size=5)
    live = target_states(target, texts.train_ids[:3], layers)
    for cached, state in zip(first, live, strict=False):
        assert cached.dtype == torch.float16 and cached.shape == state.shape
        assert torch.allclose(cached.float(), state, rtol=1e-3, atol=1e-3)  # float16 on disk
    parts = sorted(tmp_path.rglob("part-*.pt"))
    assert parts
    stamp = [p.stat().st_mtime_ns for p in parts]
    again = corpus_features(target, texts.train_ids, layers, tmp_path)
    assert [p.stat().st_mtime_ns for p in parts] == stamp  # read, not recomputed
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    corpus_features(target, texts.train_ids, (2,), tmp_path)  # other layers: another key
    assert len(sorted(tmp_path.rglob("part-*.pt"))) == 2 * len(parts)


@pytest.mark.parametrize("fusion", ["top", "low_mid_top"])
def test_cached_and_live_features_give_the_same_losses(target, tmp_path, fusion):
    m = module(target, fusion, unroll=3)
    cached = feature_batch(target, m.layers, tmp_path)
    live = {k: v for k, v in cached.items() if k != "features"}
    a, _ = m.step_losses(cached)
    b, _ = m.step_losses(live)
    assert len(a) == 3
    for (la, pa), (lb, pb) in zip(a, b, strict=True):
        assert torch.allclose(la, lb, atol=2e-3)
        assert pa["feature"] > 0 and torch.allclose(pa["feature"], pb["feature"], atol=2e-3)
    assert a[0][0] != a[2][0]  # later steps run on predicted features: other losses


def test_stored_layers_hold_the_inputs_and_the_final_state(target):
    assert stored_layers(EagleHead(target, EagleConfig(fusion="top")), 2) == (2,)
    assert stored_layers(EagleHead(target, EagleConfig(fusion="low_mid_top")), 2) == (1, 2)


def test_a_head_learns_the_target_through_the_lightning_module(target, tmp_path):
    texts = corpus(target, n=40)
    m = module(target, unroll=2)
    dm = DraftDataModule(
        texts=texts, batch_size=8, max_length=24, feature_layers=m.layers, cache_dir=tmp_path
    )
    dm.texts.train_features = corpus_features(target, texts.train_ids, m.layers, tmp_path)
    dm.texts.val_features = corpus_features(target, texts.val_ids, m.layers, tmp_path)
    trainer = pl.Trainer(max_steps=60, max_epochs=1, val_check_interval=60, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.validate(m, datamodule=dm, verbose=False)
    trainer.fit(m, datamodule=dm)
    before, after = m.history[0]["expected_alpha"], m.history[-1]["expected_alpha"]
    assert after > before + 0.1, (before, after)
    assert not any(p.requires_grad for p in target.parameters())


def test_bad_settings_are_refused_in_one_line(target):
    with pytest.raises(SpecfairError, match=r"train.eagle.unroll=0: expected an integer >= 1"):
        EagleTraining(unroll=0)
    with pytest.raises(SpecfairError, match="group_dro"):
        EagleModule(EagleHead(target), target, ["x"], VOCAB, sampling="group_dro")
    with pytest.raises(SpecfairError, match="on_policy_fraction"):
        EagleModule(EagleHead(target), target, ["x"], VOCAB, on_policy_fraction=0.5)


def test_the_three_pass_forward_kl_is_the_divergence_and_its_gradient():
    from specfair.training.losses import divergence, forward_kl

    torch.manual_seed(1)
    t, d = torch.randn(3, 5, 40) * 3, (torch.randn(3, 5, 40) * 2).requires_grad_(True)
    fast = forward_kl(t, d)
    slow = divergence(t, d, "fkl")
    assert torch.allclose(fast, slow, atol=1e-5)
    (g_fast,) = torch.autograd.grad(fast.sum(), d)
    (g_slow,) = torch.autograd.grad(slow.sum(), d)
    assert torch.allclose(g_fast, g_slow, atol=1e-6)


def test_the_fast_path_and_distillation_loss_agree_on_a_step(target, tmp_path):
    m = module(target, unroll=2)
    batch = feature_batch(target, m.layers, tmp_path)
    assert m.fast_kl
    fast, _ = m.step_losses(batch)
    m.fast_kl = False
    slow, _ = m.step_losses(batch)
    for (a, _), (b, _) in zip(fast, slow, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a, b)


def test_a_reduced_draft_vocabulary_trains_on_the_kept_rows_and_validates_as_the_pruned_drafter(
    target, tmp_path
):
    """draft.vocab_size=N for a head: the step scores N rows only (both distributions renormalised over them, as
    DistillationLoss does with `kept`); validation's q is 0 outside them, as the pruned drafter's."""
    from specfair.training.losses import DistillationLoss as Loss

    kept = list(range(0, VOCAB, 2)) + [1, 3]
    torch.manual_seed(0)
    m = EagleModule(EagleHead(target), target, ["x", "y"], VOCAB, eagle={"autocast": None, "unroll": 1},
                    loss=Loss(), kept_ids=kept)  # fmt: skip
    batch = feature_batch(target, m.layers, tmp_path)
    ((_, parts),) = m.step_losses(batch)[0]
    loss = parts["kd"]
    # the same loss from full-vocabulary logits through DistillationLoss's renormalisation over `kept`
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    mask[kept] = True
    with torch.no_grad():
        final = batch["features"].float()[:, :, -1]
        t = target.lm_head(final)
        _, logits = m.head(batch["features"].float()[:, :-1], batch["input_ids"][:, 1:])
    view = torch.cat([logits[:, :1] * 0, logits], dim=1)
    positions = torch.arange(batch["input_ids"].shape[1])
    expected, _ = Loss()(batch["input_ids"], batch["attention_mask"], t, view, VOCAB,
                         loss_mask=batch["attention_mask"].bool() & (positions >= 2), kept=mask)  # fmt: skip
    assert torch.allclose(loss, expected, atol=1e-5), (loss, expected)
    m.val_metric.reset()
    m.validation_step(batch, 0)
    assert 0 < m.val_metric.compute()["expected_alpha"] < 1
