"""Per-category acceptance as a torchmetrics Metric: summed counters, ratios derived only in compute().

Every state is a sum over prompts (`dist_reduce_fx="sum"`), so the DDP reduction is exact and every glossary
metric is a ratio of sums. States are updated out of place: under `ddp_spawn` the module's CPU tensors are
shared between processes, and an in-place write by index races across ranks.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from specfair.decoding.adaptive import tau
from specfair.records import COUNTERS, ratio


def predicted_block_efficiency(alpha: float | None, gamma: int) -> float | None:
    """τ(α, γ), the expected tokens per target call; None where α is not measured."""
    return None if alpha is None else tau(alpha, gamma)


def predicted_speedup(
    alpha: float | None, gamma: int, c: float | None, verify_cost: float = 1.0
) -> float | None:
    """Leviathan et al. (2023, Thm 3.8): (1-α^(γ+1)) / ((1-α)(γc+1)), c = draft step / target step (seconds).

    `verify_cost` replaces the 1 with the measured cost of one (γ+1)-token verify pass in target steps (on a
    CPU it is well above 1)."""
    tau = predicted_block_efficiency(alpha, gamma)
    return tau / (gamma * c + verify_cost) if tau is not None and c is not None else None


def glossary(s: dict, hits: list[float], trials: list[float], gamma: int) -> dict:
    """The glossary's counters and ratios from summed counters `s`; None wherever a ratio is undefined."""
    counted = s["expected_positions"] == 0  # a sampled replay holds expectations, not block counters
    target_calls = s["prompts"] + s["blocks"]
    expected_alpha = ratio(s["expected_accept_sum"], s["expected_positions"])
    expected_tau = predicted_block_efficiency(expected_alpha, gamma)
    return {
        **{
            name: int(s[name])
            for name in ("prompts", "new_tokens", "proposed", "accepted", "blocks", "rejections")
        },
        "target_calls": int(target_calls) if counted else None,
        "acceptance_rate": ratio(s["accepted"], s["proposed"]) if counted else None,
        "alpha": ratio(s["accepted"], s["accepted"] + s["rejections"]) if counted else None,
        "block_efficiency": ratio(s["new_tokens"], target_calls) if counted else None,
        "position_acceptance": [ratio(h, t) for h, t in zip(hits, trials, strict=True)],
        # replay at temperature > 0: expectations along target samples, not sampled counters
        "expected_alpha": expected_alpha,
        "expected_block_efficiency": expected_tau,  # tau: 1 + expected accepted tokens per block
        "expected_accepted_per_block": expected_tau - 1 if expected_tau is not None else None,
    }


def timing(s: dict) -> dict:
    """Speed from summed seconds `s`: paired speedup, rates, and the draft's and a verify pass's cost in target
    decode steps; None where not timed (replay, no baseline)."""
    timed = s["timed_prompts"] > 0
    draft_step = ratio(
        s["draft_s"], s["draft_steps"]
    )  # decode steps only: the draft's prefill is in prefill_s
    if s["baseline_prefill_s"] > 0:  # a target decode step, without the prefill's first token
        decode_s = s["baseline_wall_s"] - s["baseline_prefill_s"]
        target_step = ratio(decode_s, s["baseline_new_tokens"] - s["timed_prompts"])
    else:  # records from before baseline_prefill_s was kept
        target_step = ratio(s["baseline_wall_s"], s["baseline_new_tokens"])
    verify_block = ratio(s["verify_s"], s["blocks"])
    baseline = s["baseline_new_tokens"] > 0
    rate, baseline_rate = (
        ratio(s["new_tokens"], s["wall_s"]),
        ratio(s["baseline_new_tokens"], s["baseline_wall_s"]),
    )
    return {
        # per-token rates: at temperature > 0 the two runs emit different token counts
        "speedup": ratio(rate, baseline_rate) if baseline else None,
        "tokens_per_s": rate,
        "baseline_tokens_per_s": baseline_rate,
        "wall_s": s["wall_s"] if timed else None,  # replay: not timed, never 0
        "baseline_wall_s": s["baseline_wall_s"] if timed and baseline else None,
        "draft_target_cost_ratio": ratio(draft_step, target_step)
        if draft_step is not None and target_step
        else None,
        # one (γ+1)-token verify pass in target decode steps
        "verify_cost_ratio": ratio(verify_block, target_step)
        if verify_block is not None and target_step
        else None,
    }


def predictions(alpha: float | None, gamma: int, times: dict) -> dict:
    """What Leviathan et al.'s formulas predict from the measured α and costs, to lay beside the measured speed."""
    c, v = times["draft_target_cost_ratio"], times["verify_cost_ratio"]
    return {
        "predicted_block_efficiency": predicted_block_efficiency(alpha, gamma),
        "predicted_speedup": predicted_speedup(alpha, gamma, c),
        "predicted_speedup_with_verify_cost": predicted_speedup(alpha, gamma, c, v) if v else None,
    }


class CategoryAcceptance(Metric):
    """Acceptance, block efficiency and speedup per category and overall, from per-prompt records."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, categories: list[str], gamma: int, **kwargs):
        super().__init__(**kwargs)
        self.categories = list(categories)
        self.gamma = int(gamma)
        size = len(self.categories)
        for name in COUNTERS:
            self.add_state(name, torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "position_hits", torch.zeros(size, self.gamma, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "position_trials", torch.zeros(size, self.gamma, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, record: dict) -> None:
        """One prompt's record (as written to samples.jsonl)."""
        index = self.categories.index(record["category"])
        values = {name: float(record.get(name) or 0.0) for name in COUNTERS}  # no baseline: 0 target tokens
        values["prompts"] = 1.0
        values["draft_steps"] = float(sum(record["proposed_lengths"]))
        values["timed_prompts"] = float(record.get("wall_s") is not None)
        for name, value in values.items():
            delta = torch.zeros_like(getattr(self, name))
            delta[index] = value
            setattr(self, name, getattr(self, name) + delta)
        hits = torch.zeros_like(self.position_hits)
        trials = torch.zeros_like(self.position_trials)
        for gamma_b, n_b in zip(record["proposed_lengths"], record["accept_lengths"], strict=True):
            trials[index, :gamma_b] += 1
            hits[index, :n_b] += 1
        self.position_hits = self.position_hits + hits
        self.position_trials = self.position_trials + trials

    def _group(self, mask: torch.Tensor) -> dict:
        """Glossary values of the categories in `mask`, then their timings and the Leviathan predictions."""
        s = {name: float(getattr(self, name)[mask].sum()) for name in COUNTERS}
        hits = self.position_hits[mask].sum(0).tolist()
        trials = self.position_trials[mask].sum(0).tolist()
        values = glossary(s, hits, trials, self.gamma)
        times = timing(s)
        return {**values, **times, **predictions(values["alpha"], self.gamma, times)}

    def compute(self) -> dict:
        everything = torch.ones(len(self.categories), dtype=torch.bool)
        result = {"overall": self._group(everything), "categories": {}}
        for i, name in enumerate(self.categories):
            result["categories"][name] = self._group(torch.arange(len(self.categories)) == i)
        return result
