"""`spec.gamma=auto`: the block length chosen before every block from the acceptance seen so far and costs
measured on this machine.

Leviathan et al.'s expected tokens per unit of target time for block length γ is τ(α, γ) / (γc + v(γ+1)), with
τ = (1 - α^(γ+1)) / (1 - α), c the draft step and v(k) a k-token target pass, both in 1-token target steps. On a
GPU v(k) ≈ 1 for small k; on a CPU it grows with k (a 4-token pass costs ~1.5), which is why the best γ is
smaller there. c and v are timed once per run (`measure_costs`); α is the acceptance seen so far over every
prompt of the run, started from a weak prior, so the first blocks of the first prompt use γ for α = 1/2.
The choice never affects which tokens come out (the engine is lossless at every γ), only how fast.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from specfair.decoding.calls import forward, forward_hidden, new_caches, now, rollback
from specfair.decoding.drafters import as_drafter
from specfair.decoding.sampling import GREEDY


def tau(alpha: float, gamma: int) -> float:
    """Leviathan et al.: E[tokens per target call] = (1 - α^(γ+1)) / (1 - α) under i.i.d. acceptance (γ + 1 at
    α = 1, where the formula is 0/0)."""
    return gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def best_gamma(alpha: float, c: float, verify: list[float]) -> int:
    """The γ in 1..len(verify)-1 with the most expected tokens per unit time; verify[k-1] is v(k)."""

    def rate(gamma: int) -> float:
        return tau(alpha, gamma) / (gamma * c + verify[gamma])

    return max(range(1, len(verify)), key=rate)


@dataclass
class GammaPolicy:
    """Called with a generation's running `DecodeStats` before each block; `update` after each generation."""

    c: float
    verify: list[float]  # v(k) for k = 1 .. gamma_max + 1 tokens fed
    prior_alpha: float = 0.5
    prior_weight: float = 4.0
    accepted: int = 0  # over the finished generations of this run
    rejections: int = 0

    def alpha(self, stats=None) -> float:
        a = self.accepted + (stats.accepted if stats else 0)
        r = self.rejections + (stats.rejections if stats else 0)
        return (a + self.prior_alpha * self.prior_weight) / (a + r + self.prior_weight)

    def __call__(self, stats) -> int:
        return best_gamma(self.alpha(stats), self.c, self.verify)

    def update(self, stats) -> None:
        self.accepted += stats.accepted
        self.rejections += stats.rejections

    def as_dict(self) -> dict:
        return {"c": self.c, "verify": self.verify, "alpha_seen": self.alpha()}


def measure_costs(target, draft, context: list[int], gamma_max: int, repeats: int = 5) -> GammaPolicy:
    """Time a k-token target pass (k = 1 .. gamma_max + 1) and a 1-token proposal of the drafter (a model or
    any `Drafter`) after `context`; medians of `repeats`, in 1-token target steps."""
    device = target.device
    drafter = as_drafter(draft)
    (cache,) = new_caches((target,), len(context) + gamma_max + 2, False)

    def median_s(call) -> float:
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            start = now(device)
            call()
            times.append(now(device) - start)
        return statistics.median(times[1:])

    def target_pass(k: int) -> None:  # k tokens fed, k logits kept: a verify pass of γ = k - 1
        forward(target, cache, context + context[-1:] * k, keep=k)
        rollback(cache, len(context))

    layers = tuple(drafter.hidden_layers)
    hidden = None  # the target's states of the context, for a drafter that reads them

    def draft_step() -> None:
        drafter.propose(context, 1, 1 << 30, GREEDY, frozenset(), None)
        drafter.kept(context, None if hidden is None else hidden[:0])

    with torch.inference_mode():
        if layers:
            _, hidden = forward_hidden(target, cache, context, 1, layers)
        else:
            forward(target, cache, context)
        target_s = [median_s(lambda k=k: target_pass(k)) for k in range(1, gamma_max + 2)]
        drafter.reset(len(context) + 2, False)
        drafter.prefill(context, None if hidden is None else hidden[: len(context) - 1])
        draft_s = median_s(draft_step)
    one = max(target_s[0], 1e-9)
    return GammaPolicy(c=draft_s / one, verify=[t / one for t in target_s])
