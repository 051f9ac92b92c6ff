"""Training losses and the validation metric against their definitions, computed by hand."""

import pytest
import torch

from specfair.errors import SpecfairError
from specfair.training.losses import DistillationLoss, divergence, masked_mean
from specfair.training.validation import ExpectedAlpha


def reference(p_logits, q_logits, kind, beta=0.5, temperature=1.0):
    """Straight from the definitions, in float64, one position at a time."""
    out = []
    for pl_, ql_ in zip(
        p_logits.double().reshape(-1, p_logits.shape[-1]),
        q_logits.double().reshape(-1, q_logits.shape[-1]),
        strict=True,
    ):
        p = torch.softmax(pl_ / temperature, -1)
        q = torch.softmax(ql_ / temperature, -1)
        if kind == "fkl":
            out.append(sum(p[v] * torch.log(p[v] / q[v]) for v in range(len(p))))
        elif kind == "rkl":
            out.append(sum(q[v] * torch.log(q[v] / p[v]) for v in range(len(p))))
        elif kind == "jsd":
            m = beta * p + (1 - beta) * q
            out.append(beta * sum(p * torch.log(p / m)) + (1 - beta) * sum(q * torch.log(q / m)))
        else:
            out.append(0.5 * sum(abs(p[v] - q[v]) for v in range(len(p))))
    return torch.stack(out).reshape(p_logits.shape[:-1])


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd", "tvd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_divergences_match_their_formulas(kind, temperature):
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(2, 3, 11, generator=g) * 3, torch.randn(2, 3, 11, generator=g) * 3
    got = divergence(p, q, kind, beta=0.3, temperature=temperature)
    assert torch.allclose(got.double(), reference(p, q, kind, beta=0.3, temperature=temperature), atol=1e-5)
    assert torch.all(divergence(p, p, kind, beta=0.3).abs() < 1e-5)


def test_unknown_divergence_and_bad_jsd_beta_are_one_line_errors():
    p = torch.zeros(1, 2, 3)
    with pytest.raises(SpecfairError, match="train.divergence='kl'"):
        divergence(p, p, "kl")
    with pytest.raises(SpecfairError, match="train.beta=1"):
        divergence(p, p, "jsd", beta=1)


def test_loss_masks_padding_and_ignores_padded_vocabulary_rows():
    g = torch.Generator().manual_seed(1)
    vocab = 10
    ids = torch.randint(0, vocab, (2, 6), generator=g)
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    t, d = torch.randn(2, 6, vocab + 6, generator=g), torch.randn(2, 6, vocab + 6, generator=g)
    kd = DistillationLoss(objective="kd", divergence="fkl", kd_weight=1.0)
    loss, _ = kd(ids, attention, t, d, vocab)
    # by hand: positions (row, i) predicting i+1 with both tokens real: row 0 -> 5 positions, row 1 -> 2
    per_position = reference(t[:, :-1, :vocab], d[:, :-1, :vocab], "fkl")
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float64)
    assert loss.item() == pytest.approx(float((per_position * mask).sum() / mask.sum()), rel=1e-5)
    # garbage in the padding positions or padded vocabulary rows changes nothing
    t2, d2 = t.clone(), d.clone()
    t2[1, 3:] = 1e4
    d2[..., vocab:] = 50.0
    assert kd(ids, attention, t2, d2, vocab)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    mixed, parts = DistillationLoss(kd_weight=0.25)(ids, attention, t, d, vocab)
    assert mixed.item() == pytest.approx(0.25 * parts["kd"].item() + 0.75 * parts["ce"].item(), rel=1e-6)


def test_lm_objective_is_masked_cross_entropy_and_loss_mask_restricts_it():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 7, (1, 5), generator=g)
    attention = torch.ones(1, 5, dtype=torch.long)
    t, d = torch.randn(1, 5, 7, generator=g), torch.randn(1, 5, 7, generator=g)
    ce = -torch.log_softmax(d[0, :-1].double(), -1)[torch.arange(4), ids[0, 1:]]
    loss, parts = DistillationLoss(objective="lm")(ids, attention, t, d, 7)
    assert set(parts) == {"ce"} and loss.item() == pytest.approx(float(ce.mean()), rel=1e-5)
    loss_mask = torch.tensor([[0, 0, 1, 1, 0]])  # only positions 1 and 2 predict a masked-in token
    loss, _ = DistillationLoss(objective="lm")(ids, attention, t, d, 7, loss_mask)
    assert loss.item() == pytest.approx(float(ce[1:3].mean()), rel=1e-5)
    assert masked_mean(torch.ones(3), torch.zeros(3)).item() == 0.0  # nothing counted: 0, not NaN


def test_expected_alpha_metric_by_hand():
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    q = torch.log(torch.tensor([[[0.2, 0.8], [0.6, 0.4]]]))
    metric = ExpectedAlpha(["a", "b"])
    metric.update(p, q, torch.tensor([[1, 1]]), torch.tensor([1]))
    out = metric.compute()
    assert out["expected_alpha/b"] == pytest.approx((0.7 + 0.7) / 2)
    assert out["greedy_agreement/b"] == pytest.approx(0.5)  # argmax differs at position 0 (tie broken to 0)
    assert out["expected_alpha"] == pytest.approx(0.7)
    assert out["expected_alpha/a"] != out["expected_alpha/a"]  # no positions: NaN, not 0


def test_kept_ids_renormalise_both_distributions_and_drop_unkept_targets():
    """draft.vocab_size training: the loss is the one over the kept ids only, p and q renormalised there."""
    g = torch.Generator().manual_seed(3)
    v, kept_ids = 12, [0, 2, 3, 7, 9]
    kept = torch.zeros(v, dtype=torch.bool)
    kept[kept_ids] = True
    ids = torch.tensor([[1, 2, 7, 4, 9, 3]])
    attention = torch.ones_like(ids)
    t, d = torch.randn(1, 6, v, generator=g), torch.randn(1, 6, v, generator=g, requires_grad=True)
    loss, parts = DistillationLoss(kd_weight=0.5)(ids, attention, t, d, v, kept=kept)
    sub = torch.tensor(kept_ids)
    want_kd = reference(t[:, :-1, sub], d[:, :-1, sub].detach(), "fkl").mean()
    labels = ids[0, 1:]
    inside = kept[labels]  # 2, 7, 9, 3 are kept; 4 is not: no cross-entropy on it
    log_q = torch.log_softmax(d[0, :-1, sub].double(), -1)
    position = {int(i): j for j, i in enumerate(kept_ids)}
    want_ce = -torch.stack([log_q[k, position[int(x)]] for k, x in enumerate(labels) if inside[k]]).mean()
    torch.testing.assert_close(parts["kd"].double(), want_kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["ce"].double(), want_ce, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert torch.isfinite(d.grad).all() and d.grad[..., ~kept].abs().max() < 1e-12  # unkept ids get no push
    # a stored top-k teacher: its unkept entries dropped and the rest renormalised; no kept entry: not counted
    top_ids = torch.tensor([[[0, 1]] * 3 + [[4, 5]] + [[2, 9]] * 2])  # row 3: nothing kept
    top_lp = torch.log_softmax(torch.randn(1, 6, 2, generator=g), -1)
    _, parts = DistillationLoss()(ids, attention, None, d, v, teacher=(top_ids, top_lp), kept=kept)
    log_q_kept = torch.log_softmax(d[0].detach().double()[:, sub], -1)
    rows = []
    for j in range(1, 6):
        if j == 3:
            continue  # the teacher holds no kept id at position 3
        ks = [k for k in range(2) if kept[top_ids[0, j, k]]]
        lp = top_lp[0, j, ks].double()
        p = torch.softmax(lp, -1)
        q = torch.stack([log_q_kept[j - 1, position[int(top_ids[0, j, k])]] for k in ks])
        rows.append((p * (torch.log(p) - q)).sum())
    torch.testing.assert_close(parts["kd"].double(), torch.stack(rows).mean(), rtol=1e-5, atol=1e-6)
