"""What `bench_decoding.py` makes of its timed runs: the summary its JSON holds and the tables it prints.

Kept apart from the timing so that the numbers can be read (and recomputed from saved runs) without the models:
speeds, paired speed ratios, each engine variant's acceptance and cost ratios, and the Leviathan et al. (2023)
cost model's prediction beside the measured speedup.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from specfair.decoding.engine import DecodeStats
from specfair.evaluation.acceptance import predicted_block_efficiency, predicted_speedup
from specfair.records import ratio as ratio_of

console = Console(width=150)  # wide tables stay whole in logs and pipes

# (faster?, than): the paired ratios reported, then those of --compile
RATIOS = (("engine", "target"), ("hf_assisted", "target"), ("engine", "hf_assisted"))
COMPILED_RATIOS = (
    ("target_compiled", "target"),
    ("engine_compiled", "target_compiled"),
    ("engine_compiled", "target"),
    ("engine_compiled", "hf_assisted"),
)


@dataclass
class Run:
    """One method over all prompts once."""

    seconds: float
    outputs: list[list[int]]
    stats: list[DecodeStats] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(out) for out in self.outputs)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


# --- metrics -----------------------------------------------------------------------------------------


def paired(runs: dict[str, list[Run]], a: str, b: str) -> float:
    """a's speed over b's, paired per repeat (same conditions), then the median."""
    return statistics.median(x.tokens_per_s / y.tokens_per_s for x, y in zip(runs[a], runs[b], strict=True))


def counts(stats: list[DecodeStats]) -> tuple[int, int, int, int]:
    """Accepted, rejections, proposed and blocks over the prompts of one run."""
    return (
        sum(s.accepted for s in stats),
        sum(s.rejections for s in stats),
        sum(s.proposed for s in stats),
        sum(s.blocks for s in stats),
    )


def tokens_per_call(stats: list[DecodeStats]) -> float:
    """New tokens per target call (the prefill's and one per block): the measured block efficiency."""
    return sum(s.new_tokens for s in stats) / sum(1 + s.blocks for s in stats)


def summarize(runs: dict[str, list[Run]], gamma: int) -> dict:
    """Everything the report prints and the JSON holds (in that key order), from every method's runs."""
    engine = engine_model(runs, gamma)
    return {
        "tokens": runs["target"][0].tokens,
        "tokens_per_s": speeds(runs),
        "ratios": speed_ratios(runs),
        "engine_compiled": compiled_model(runs, engine["alpha"], gamma) if "engine_compiled" in runs else {},
        "variants": {name: variant_row(runs, name, gamma) for name in runs if name.startswith("engine")},
        "engine": engine,
    }


def speeds(runs: dict[str, list[Run]]) -> dict:
    return {
        name: {
            "median": statistics.median(run.tokens_per_s for run in rs),
            "repeats": [r.tokens_per_s for r in rs],
            "seconds": [r.seconds for r in rs],
        }
        for name, rs in runs.items()
    }


def speed_ratios(runs: dict[str, list[Run]]) -> dict[str, float]:
    pairs = RATIOS + (COMPILED_RATIOS if "engine_compiled" in runs else ())
    return {f"{a}/{b}": paired(runs, a, b) for a, b in pairs}


def engine_model(runs: dict[str, list[Run]], gamma: int) -> dict:
    """The engine's acceptance (greedy: the counters are the same every repeat) and the cost model's speedup
    beside the measured one."""
    stats = runs["engine"][0].stats
    accepted, rejections, proposed, blocks = counts(stats)
    alpha = ratio_of(accepted, accepted + rejections)
    c, v, costs = cost_ratios(runs["engine"], runs["target"])
    predicted, with_verify = predicted_speedup(alpha, gamma, c), predicted_speedup(alpha, gamma, c, v)
    measured = paired(runs, "engine", "target")
    return {
        "alpha": alpha,
        "acceptance_rate": accepted / proposed if proposed else math.nan,
        "block_efficiency": tokens_per_call(stats),
        "predicted_block_efficiency": predicted_block_efficiency(alpha, gamma),
        "accepted": accepted,
        "proposed": proposed,
        "rejections": rejections,
        "blocks": blocks,
        "cost_ratio_c": c,
        "cost_ratio_c_repeats": costs,
        "predicted_speedup": predicted,
        "measured_speedup": measured,
        "prediction_error_pct": 100 * (measured - predicted) / predicted,
        "verify_cost_ratio_v": v,
        "predicted_speedup_with_verify_cost": with_verify,
        "prediction_with_verify_cost_error_pct": 100 * (measured - with_verify) / with_verify,
    }


def compiled_model(runs: dict[str, list[Run]], alpha: float, gamma: int) -> dict:
    """--compile: the cost ratios of static caches and the speedup they predict at the engine's alpha."""
    c, v, _ = cost_ratios(runs["engine_compiled"], runs["target_compiled"])
    return {
        "cost_ratio_c": c,
        "verify_cost_ratio_v": v,
        "predicted_speedup": predicted_speedup(alpha, gamma, c),
        "predicted_speedup_with_verify_cost": predicted_speedup(alpha, gamma, c, v),
        "measured_speedup": paired(runs, "engine_compiled", "target_compiled"),
    }


def variant_row(runs: dict[str, list[Run]], name: str, gamma: int) -> dict:
    """One engine variant: its acceptance, realised block length, cost ratio and speed against both baselines."""
    stats = runs[name][0].stats
    accepted, rejections, proposed, blocks = counts(stats)
    base = "target_compiled" if name == "engine_compiled" else "target"
    c, v, _ = cost_ratios(runs[name], runs[base])
    alpha = ratio_of(accepted, accepted + rejections)
    return {
        "alpha": alpha,
        "mean_gamma_b": proposed / blocks if blocks else math.nan,
        "tokens_per_call": tokens_per_call(stats),
        "cost_ratio_c": c,
        "verify_cost_ratio_v": v,
        # at the realised mean block length: with a confidence stop it is well under the nominal gamma
        "predicted_speedup_with_verify_cost": predicted_speedup(
            alpha, proposed / blocks if blocks else gamma, c, v
        ),
        "tokens_per_s": statistics.median(r.tokens_per_s for r in runs[name]),
        "speedup_vs_target": paired(runs, name, base),
        "speedup_vs_hf_assisted": paired(runs, name, "hf_assisted"),
    }


def cost_ratios(engine_runs: list[Run], target_runs: list[Run]) -> tuple[float, float, list[float]]:
    """Medians over repeats of c (draft s per drafted token) and v (verify s per block), each over the target's
    s per token in the same repeat; and c per repeat."""
    costs, verify_costs = [], []
    for engine_run, target_run in zip(engine_runs, target_runs, strict=True):
        target_step_s = target_run.seconds / target_run.tokens
        steps = sum(sum(s.proposed_lengths) for s in engine_run.stats)
        costs.append(sum(s.draft_s for s in engine_run.stats) / max(steps, 1) / target_step_s)
        blocks = sum(s.blocks for s in engine_run.stats)
        verify_costs.append(sum(s.verify_s for s in engine_run.stats) / max(blocks, 1) / target_step_s)
    return statistics.median(costs), statistics.median(verify_costs), costs


# --- report ------------------------------------------------------------------------------------------


def print_report(summary: dict, repeats: int) -> None:
    console.print(speed_table(summary, repeats))
    console.print(ratio_table(summary["ratios"]))
    if len(summary["variants"]) > 1:
        console.print(variant_table(summary["variants"]))
    console.print(model_table(summary))


def speed_table(summary: dict, repeats: int) -> Table:
    speed = Table(
        title=f"Greedy decoding throughput ({summary['tokens']} new tokens per run, median of {repeats})"
    )
    speed.add_column("method")
    speed.add_column("tokens/s (median)", justify="right")
    speed.add_column("per repeat", justify="right")
    for name, tps in summary["tokens_per_s"].items():
        speed.add_row(name, f"{tps['median']:.1f}", "  ".join(f"{x:.1f}" for x in tps["repeats"]))
    return speed


def ratio_table(ratios: dict[str, float]) -> Table:
    table = Table(title="Speed ratios (median of per-repeat ratios; > 1: first is faster)")
    table.add_column("ratio")
    table.add_column("value", justify="right")
    for name, value in ratios.items():
        table.add_row(name, f"{value:.3f}")
    return table


def variant_table(variants: dict[str, dict]) -> Table:
    table = Table(title="Engine variants (median of paired repeats; speedup > 1: faster than the baseline)")
    for column in ("variant", "alpha", "mean γ_b", "tokens/call", "c", "v", "pred.", "tok/s", "vs target",
                   "vs assisted"):  # fmt: skip
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, r in variants.items():
        table.add_row(
            name, f"{r['alpha']:.3f}", f"{r['mean_gamma_b']:.2f}", f"{r['tokens_per_call']:.2f}",
            f"{r['cost_ratio_c']:.3f}", f"{r['verify_cost_ratio_v']:.2f}",
            f"{r['predicted_speedup_with_verify_cost']:.2f}", f"{r['tokens_per_s']:.1f}",
            f"{r['speedup_vs_target']:.3f}", f"{r['speedup_vs_hf_assisted']:.3f}",
        )  # fmt: skip
    return table


def model_table(summary: dict) -> Table:
    model = Table(title="Engine acceptance and the Leviathan et al. cost model")
    model.add_column("quantity")
    model.add_column("value", justify="right")
    rows = engine_rows(summary["engine"])
    rows += [(f"compiled: {k}", f"{value:.3f}") for k, value in summary.get("engine_compiled", {}).items()]
    rows += floor_rows(summary.get("bandwidth_floor"))
    for row in rows:
        model.add_row(*row)
    return model


def engine_rows(e: dict) -> list[tuple[str, str]]:
    return [
        (
            "alpha = accepted / (accepted + rejections)",
            f"{e['alpha']:.3f}  ({e['accepted']}/{e['accepted'] + e['rejections']})",
        ),
        (
            "acceptance rate = accepted / proposed",
            f"{e['acceptance_rate']:.3f}  ({e['accepted']}/{e['proposed']})",
        ),
        ("block efficiency = new tokens / target calls", f"{e['block_efficiency']:.3f}"),
        ("  predicted from alpha: (1-a^(g+1))/(1-a)", f"{e['predicted_block_efficiency']:.3f}"),
        ("cost ratio c = draft s/step / target s/token", f"{e['cost_ratio_c']:.3f}"),
        ("predicted speedup (1-a^(g+1))/((1-a)(gc+1))", f"{e['predicted_speedup']:.3f}"),
        ("measured speedup engine/target", f"{e['measured_speedup']:.3f}"),
        ("measured vs predicted", f"{e['prediction_error_pct']:+.1f} %"),
        ("verify cost v = verify s/block / target s/token", f"{e['verify_cost_ratio_v']:.3f}"),
        ("predicted with v: (1-a^(g+1))/((1-a)(gc+v))", f"{e['predicted_speedup_with_verify_cost']:.3f}"),
        ("measured vs predicted with v", f"{e['prediction_with_verify_cost_error_pct']:+.1f} %"),
    ]


def floor_rows(floor: dict | None) -> list[tuple[str, str]]:
    """--device cuda: the target's weight-read floor, and how far above it a decoded token is."""
    if not floor:
        return []
    rows = [("target weights / measured copy bandwidth", f"{floor['floor_ms']:.3f} ms "
             f"({floor['weight_bytes'] / 1e9:.2f} GB at {floor['bandwidth_GBps']:.0f} GB/s)")]  # fmt: skip
    for name in ("target", "target_compiled"):
        if f"{name}_ms_per_token" in floor:
            rows.append((f"{name} ms per token (x floor)",
                         f"{floor[f'{name}_ms_per_token']:.3f} ({floor[f'{name}_over_floor']:.1f}x)"))  # fmt: skip
    return rows
