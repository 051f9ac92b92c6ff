"""Where the loss is: divergences between the target's and the draft's next-token distributions, pure tensors.

Shapes: B texts, T positions, V vocabulary rows. Only the first `vocab` rows (the rows both models score) are
compared: padded vocabulary rows are never part of a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specfair.errors import SpecfairError

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")
OBJECTIVES = ("kd", "lm")


def divergence(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor,
    kind: str,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-position divergence between target p and draft q: logits [..., V] -> nats [...] (float32).

    fkl: KL(p||q) (mode covering); rkl: KL(q||p) (mode seeking); jsd: generalized Jensen-Shannon with
    m = beta p + (1 - beta) q, beta KL(p||m) + (1 - beta) KL(q||m); tvd: total variation 1/2 sum |p - q|,
    i.e. 1 - sum min(p, q), one minus the acceptance probability speculative decoding gets.
    Both distributions are softmax(logits / temperature).
    """
    log_p = F.log_softmax(target_logits.float() / temperature, -1)
    log_q = F.log_softmax(draft_logits.float() / temperature, -1)
    if kind == "fkl":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    if kind == "rkl":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if kind == "jsd":
        if not 0 < beta < 1:
            raise SpecfairError(f"train.beta={beta}: must be in (0, 1) for jsd")
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), 0)
        kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
        kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
        return beta * kl_pm + (1 - beta) * kl_qm
    if kind == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    raise SpecfairError(f"train.divergence={kind!r}: expected one of {', '.join(DIVERGENCES)}")


def stored_divergence(
    top_ids: torch.Tensor, top_logprobs: torch.Tensor, draft_logits: torch.Tensor
) -> torch.Tensor:
    """KL(p_k || q) per position from a stored top-k of the target: ids, log-probs [..., k]; logits [..., V].

    p_k is the target's distribution renormalized over its k most likely tokens (k = 32 holds ~0.9 of the
    mass on the embedded pair's generations); its gradient is forward KL's restricted to those tokens.
    """
    log_p = top_logprobs.float()
    log_p = log_p - torch.logsumexp(log_p, -1, keepdim=True)
    log_q = F.log_softmax(draft_logits.float(), -1).gather(-1, top_ids.long())
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def forward_kl(target_logits: torch.Tensor, draft_logits: torch.Tensor) -> torch.Tensor:
    """KL(p||q) per position, as `divergence(..., "fkl")`, in three passes over the vocabulary instead of ten:
    logsumexp(d) - sum p d - H(p), with p and H(p) taken without gradients (the teacher is a constant). What the
    feature head's training uses: its step is dominated by these vocabulary-wide element-wise passes on a CPU."""
    with torch.no_grad():
        log_p = F.log_softmax(target_logits.float(), -1)
        p = log_p.exp()
        entropy = -(p * log_p).sum(-1)
    d = draft_logits.float()
    return torch.logsumexp(d, -1) - (p * d).sum(-1) - entropy


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stop on a non-finite loss: the last checkpoint still holds the last good weights."""
    if not torch.isfinite(loss):
        raise SpecfairError(
            f"non-finite training loss ({float(loss.detach())}) at step {step}: "
            "stopped; the last checkpoint holds the last good weights (lower train.optimizer.lr?)"
        )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is set (same shape); 0 when nothing is (an empty batch is no NaN)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


def row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean [B] of `values` [B, T] where `mask` is set (0 for a row with nothing counted)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(1) / mask.sum(1).clamp_min(1)


def next_token_views(input_ids, attention_mask, target_logits, draft_logits, vocab: int):
    """Align predictions with what they predict: (labels [B, T-1], mask [B, T-1], p, q logits [B, T-1, vocab]).

    Logits at positions 0..T-2 predict tokens 1..T-1; a position counts only if both tokens are real (not
    padding), and only the `vocab` shared rows are kept.
    """
    mask = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return input_ids[:, 1:], mask, target_logits[:, :-1, :vocab], draft_logits[:, :-1, :vocab]


OUTSIDE = -1e4  # the logit of an id a pruned head never scores: exp() is exactly 0 in float32, no inf - inf


def kept_mask(kept_ids: list[int] | None, rows: int | None) -> torch.Tensor | None:
    """bool [rows]: the ids a `draft.vocab_size` head scores (None: every id)."""
    if kept_ids is None:
        return None
    kept = torch.zeros(rows, dtype=torch.bool)
    kept[torch.tensor(kept_ids, dtype=torch.long)] = True
    return kept


def outside_kept(logits: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """Logits [..., V] with every id outside `kept` (bool [>= V]) pushed to OUTSIDE: a softmax over them is the
    distribution renormalised over the kept ids, what a `draft.vocab_size` head proposes from."""
    return logits if kept is None else logits.masked_fill(~kept[: logits.shape[-1]], OUTSIDE)


@dataclass(frozen=True)
class DistillationLoss:
    """The training objective: kd_weight * divergence(target, draft) + (1 - kd_weight) * cross-entropy.

    A config object (built from `module.loss` in conf/train.yaml, its fields pointing at `train.*`) so that
    another objective is a `_target_` swap. objective "lm" is plain next-token cross-entropy on the text (the
    target's logits are ignored). Values are nats per counted position.
    """

    objective: str = "kd"  # kd | lm
    divergence: str = "fkl"  # fkl | rkl | jsd | tvd
    kd_weight: float = 1.0
    beta: float = 0.5  # jsd mixture weight
    temperature: float = 1.0  # of both distributions in the divergence (not of the cross-entropy)

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_logits: torch.Tensor,
        draft_logits: torch.Tensor,
        vocab: int,
        loss_mask: torch.Tensor | None = None,
        teacher: tuple[torch.Tensor, torch.Tensor] | None = None,
        ce_mask: torch.Tensor | None = None,
        reduction: str = "mean",
        kept: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """ids, masks [B, T]; logits [B, T, V >= vocab] -> (scalar loss, {"ce", "kd"} parts for logging).

        `loss_mask` [B, T] restricts the loss to positions predicting a token whose mask is set (on-policy
        samples; the target-written tokens of a stored corpus). `teacher` = the stored (top_ids,
        top_logprobs) [B, T, k] of each token (row j: the target's distribution over token j): distil toward
        it instead of `target_logits` (may then be None; fkl only). `ce_mask` [B, T] further restricts the
        cross-entropy (not on the draft's own samples: that would teach it what it already says).
        `reduction` "row" returns the loss of each row [B] (for group DRO) instead of the batch's mean.
        `kept` (bool [V]): a pruned-head draft (`draft.vocab_size`): both distributions renormalised over the
        kept ids; cross-entropy only where the next token is kept, distillation only where the teacher puts
        mass on a kept id.
        """
        reduce = masked_mean if reduction == "mean" else row_mean
        if target_logits is None:
            target_logits = draft_logits.detach()  # views only; never compared
        labels, mask, t, d = next_token_views(input_ids, attention_mask, target_logits, draft_logits, vocab)
        if loss_mask is not None:
            mask = mask & loss_mask[:, 1:].bool()
        ce_where = mask if ce_mask is None else mask & ce_mask[:, 1:].bool()
        if kept is not None:
            t, d, ce_where = outside_kept(t, kept), outside_kept(d, kept), ce_where & kept[labels]
            if teacher is not None:
                inside = kept[teacher[0].long()]
                teacher = (teacher[0], teacher[1].float().masked_fill(~inside, OUTSIDE))
                mask = mask & inside[:, 1:].any(-1)
        ce = reduce(F.cross_entropy(d.transpose(1, 2).float(), labels, reduction="none"), ce_where)
        if self.objective == "lm":
            return ce, {"ce": ce}
        if teacher is not None:
            if self.divergence != "fkl" or self.temperature != 1.0:
                raise SpecfairError(
                    f"train.divergence={self.divergence} (temperature {self.temperature}): a stored top-k "
                    "teacher supports fkl at temperature 1 only"
                )
            per_position = stored_divergence(teacher[0][:, 1:], teacher[1][:, 1:], d)
        else:
            per_position = divergence(t, d, self.divergence, self.beta, self.temperature)
        kd = reduce(per_position, mask)
        weight = float(self.kd_weight)
        if ce_mask is not None and not ce_where.any():
            return kd, {"ce": ce, "kd": kd}  # nothing for cross-entropy: all of the weight on the divergence
        return weight * kd + (1 - weight) * ce, {"ce": ce, "kd": kd}


class GroupDRO(torch.nn.Module):
    """Online group DRO (Sagawa et al. 2020) around a row-reducible loss: Σ_g q_g·L_g, L_g the mean loss of
    category g's rows in the batch (an absent category counts 0), then q_g ∝ q_g·exp(η·L_g). q is a buffer: it is
    in the checkpoint, so a resumed run continues with the same weights."""

    def __init__(self, loss, groups: int, step: float):
        super().__init__()
        self.loss, self.step = loss, float(step)
        self.register_buffer("weights", torch.full((groups,), 1.0 / max(1, groups)))

    def forward(
        self, categories: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows, parts = self.loss(*args, reduction="row", **kwargs)
        k = self.weights.shape[0]
        sums = torch.zeros(k, device=rows.device, dtype=rows.dtype).index_add(0, categories, rows)
        counts = torch.zeros(k, device=rows.device, dtype=rows.dtype).index_add(
            0, categories, torch.ones_like(rows)
        )
        group_loss = sums / counts.clamp_min(1)
        with torch.no_grad():
            q = self.weights * torch.exp(self.step * group_loss.detach() * (counts > 0))
            self.weights.copy_(q / q.sum())
        parts = {name: value.mean() for name, value in parts.items()}
        return (self.weights.to(rows.dtype) * group_loss).sum(), parts
