"""The training-time validation metric: teacher-forced expected acceptance per category.

`expected_alpha` (mean over positions of sum_v min(p_target, q_draft)) is the acceptance probability
speculative sampling would get at those positions, so training curves speak the evaluation's language
without decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from specfair import records


class ExpectedAlpha(Metric):
    """Per-category teacher-forced acceptance estimate and greedy agreement, as summed states.

    States (float64 [C], summed across processes): `alpha_sum` = sum over counted positions of
    sum_v min(p, q); `agree_sum` = number of counted positions where both argmaxes agree; `positions` =
    counted positions. `compute` divides sums (a ratio of sums, never a mean of per-text ratios) and gives
    NaN for a category with no positions.

    Example:
        >>> metric = ExpectedAlpha(["a", "b"])
        >>> p = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
        >>> q = torch.log(torch.tensor([[[0.2, 0.8], [0.6, 0.4]]]))
        >>> metric.update(p, q, torch.tensor([[1, 1]]), torch.tensor([1]))
        >>> round(metric.compute()["expected_alpha/b"], 3)
        0.7
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, categories: list[str], **kwargs):
        super().__init__(**kwargs)
        self.categories = list(categories)
        for name in ("alpha_sum", "agree_sum", "positions"):
            self.add_state(name, torch.zeros(len(categories), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, target_logits, draft_logits, mask, category) -> None:
        """Logits [B, T, V] already aligned to the same positions; mask [B, T]; category [B] indices.

        States are replaced, never written in place: in-place writes race under ddp_spawn.
        """
        p = F.softmax(target_logits.float(), -1)
        q = F.softmax(draft_logits.float(), -1)
        alpha = torch.minimum(p, q).sum(-1)
        agree = (target_logits.argmax(-1) == draft_logits.argmax(-1)).to(alpha.dtype)
        m = mask.to(alpha.dtype)
        onehot = F.one_hot(category, len(self.categories)).to(torch.float64)  # [B, C]
        self.alpha_sum = self.alpha_sum + onehot.T @ (alpha * m).sum(1).double()
        self.agree_sum = self.agree_sum + onehot.T @ (agree * m).sum(1).double()
        self.positions = self.positions + onehot.T @ m.sum(1).double()

    def compute(self) -> dict[str, float]:
        """{"expected_alpha", "greedy_agreement"} overall and as "<name>/<category>", each in [0, 1]."""

        def ratio(a, n):  # Lightning logs floats only: NaN where records.ratio is undefined (None)
            value = records.ratio(float(a), float(n))
            return float("nan") if value is None else value

        out = {
            "expected_alpha": ratio(self.alpha_sum.sum(), self.positions.sum()),
            "greedy_agreement": ratio(self.agree_sum.sum(), self.positions.sum()),
        }
        for i, c in enumerate(self.categories):
            out[f"expected_alpha/{c}"] = ratio(self.alpha_sum[i], self.positions[i])
            out[f"greedy_agreement/{c}"] = ratio(self.agree_sum[i], self.positions[i])
        return out
