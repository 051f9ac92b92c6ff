"""Spec-Bench's leaderboard layout for specfair runs: one row per drafter, one column per task group.

Spec-Bench (Xia et al. 2024) reports per task group the speedup over vanilla decoding and the mean accepted tokens
per step (vanilla 1.00). Here each cell is the glossary's `speedup` (Σ baseline wall / Σ speculative wall, same
prompts, same run) and τ = `block_efficiency` (new tokens per target call, bonus token counted), each with a 95%
bootstrap interval over prompts, resampled within each group so that every group keeps its size. The fairness of a
drafter across the groups (worst group, gap, best/worst ratio) is resampled the same way. Hardware differs from
the leaderboard's GPUs, so the comparison is of orderings: the Spearman correlation of a drafter's τ by group
with the leaderboard's speedup by group for the method of its family, with an exact permutation p-value.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from specfair.analysis.comparisons import Run
from specfair.analysis.stats import _index_matrix, _parts, _percentile_interval, _ratios

GROUPS = ("multi-turn", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
# Spec-Bench Leaderboard.md, A100, Vicuna-7B-v1.3, greedy, FP16, batch 1: speedup per group, overall, mean
# accepted tokens per step
LEADERBOARD = {
    "EAGLE": {"speedup": (2.67, 1.99, 2.23, 2.12, 2.67, 2.04), "overall": 2.29, "tokens": 3.61},
    "Hydra": {"speedup": (2.45, 1.94, 1.79, 2.03, 2.49, 1.77), "overall": 2.09, "tokens": 3.24},
    "Medusa": {"speedup": (2.05, 1.73, 1.57, 1.75, 2.05, 1.51), "overall": 1.78, "tokens": 2.32},
    "PLD": {"speedup": (1.64, 1.04, 2.43, 1.14, 1.61, 1.71), "overall": 1.59, "tokens": 1.73},
    "SpS": {"speedup": (1.66, 1.13, 1.62, 1.49, 1.47, 1.55), "overall": 1.49, "tokens": 2.28},
}
FAMILY = {"lookup": "PLD", "eagle": "EAGLE", "base": "SpS", "generalist": "SpS", "finetuned": "SpS"}
RESAMPLES = 2000


def task_group(category: str) -> str:
    """Spec-Bench's task group of a category: MT-Bench's eight are its multi-turn conversation group."""
    return "multi-turn" if category in MT_BENCH else category


def _group_sums(records: Sequence[Mapping], metric: str, resamples: int, rng_seed: int):
    """Point sums and resampled sums ([B, ...]) of the metric's numerator and denominator over the records."""
    num, den = _parts(records, metric)
    index = _index_matrix(len(num), resamples, rng_seed)
    return num.sum(axis=0), den.sum(axis=0), num[index].sum(axis=1), den[index].sum(axis=1)


def _value(num, den) -> float | None:
    value = _ratios(np.asarray(num)[None], np.asarray(den)[None])[0]
    return float(value) if np.isfinite(value) else None


def drafter_row(run: Run, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Speedup and τ per task group and overall, with the fairness of the speedup across the groups."""
    by_group: dict[str, list] = {}
    for record in run.records:
        by_group.setdefault(task_group(record["category"]), []).append(record)
    groups = [g for g in GROUPS if g in by_group] + sorted(set(by_group) - set(GROUPS))
    timed = run.summary.get("mode", "decode") == "decode" and run.summary.get("baseline", True)
    row = {"label": run.label, "dir": run.dir, "mode": run.summary.get("mode", "decode"), "groups": {}}
    draws: dict[str, dict[str, np.ndarray]] = {}
    totals: dict[str, list] = {}
    for i, group in enumerate(groups):
        cells, draws[group] = {"prompts": len(by_group[group])}, {}
        for metric in ("block_efficiency", "speedup") if timed else ("block_efficiency",):
            num, den, num_b, den_b = _group_sums(by_group[group], metric, resamples, seed + i)
            draws[group][metric] = _ratios(num_b, den_b)
            value = _value(num, den)
            cells[metric] = _percentile_interval(value, draws[group][metric], 0.95, len(by_group[group]))
            parts = totals.setdefault(metric, [0, 0, 0, 0])
            totals[metric] = [p + q for p, q in zip(parts, (num, den, num_b, den_b), strict=True)]
        row["groups"][group] = cells
    row["overall"] = {
        metric: _percentile_interval(_value(num, den), _ratios(num_b, den_b), 0.95, len(run.records))
        for metric, (num, den, num_b, den_b) in totals.items()
    }
    row["overall"]["prompts"] = len(run.records)
    row["lossless_mismatches"] = run.summary.get("lossless_mismatches")
    metric = "speedup" if timed else "block_efficiency"
    row["fairness"] = {"metric": metric, **fairness_ci(row, draws, groups, metric)}
    row["ordering"] = ordering(run.summary.get("draft", {}).get("name"), row)
    return row


def fairness_ci(row: Mapping, draws: Mapping, groups: Sequence[str], metric: str) -> dict:
    """Worst group, gap (best − worst) and best/worst ratio of a metric, each with a stratified bootstrap CI."""
    values = {g: row["groups"][g][metric]["value"] for g in groups}
    if len(groups) < 2 or any(v is None for v in values.values()):
        return {"worst_group": None, "worst": None, "gap": None, "best_worst_ratio": None}
    matrix = np.stack([draws[g][metric] for g in groups], axis=1)  # [B, groups]
    worst_group = min(values, key=values.__getitem__)
    point = np.array([values[g] for g in groups])
    stats = {
        "worst": (point.min(), np.nanmin(matrix, axis=1)),
        "gap": (point.max() - point.min(), np.nanmax(matrix, axis=1) - np.nanmin(matrix, axis=1)),
        "best_worst_ratio": (
            point.max() / point.min(),
            np.nanmax(matrix, axis=1) / np.nanmin(matrix, axis=1),
        ),
    }
    out = {"worst_group": worst_group, "best_group": max(values, key=values.__getitem__)}
    for name, (value, samples) in stats.items():
        out[name] = _percentile_interval(float(value), samples, 0.95, len(groups))
    return out


def exact_spearman(x: Sequence[float], y: Sequence[float]) -> dict:
    """Spearman ρ with its exact two-sided permutation p-value (every ordering of y: 720 for 6 groups)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "p_value": None, "n": int(x.size)}
    rho = float(sps.spearmanr(x, y).statistic)
    ry = sps.rankdata(y)
    null = [sps.spearmanr(x, ry[list(p)]).statistic for p in itertools.permutations(range(y.size))]
    p_value = float(np.mean(np.abs(null) >= abs(rho) - 1e-12))
    return {"rho": rho, "p_value": p_value, "n": int(x.size)}


def ordering(draft_name: str | None, row: Mapping) -> dict | None:
    """The drafter's τ by group against the leaderboard's speedup by group for its family."""
    family = FAMILY.get(str(draft_name))
    groups = [g for g in GROUPS if g in row["groups"]]
    if family is None or len(groups) < 3:
        return None
    ours = [row["groups"][g]["block_efficiency"]["value"] for g in groups]
    theirs = [LEADERBOARD[family]["speedup"][GROUPS.index(g)] for g in groups]
    return {"family": family, "groups": groups, **exact_spearman(ours, theirs)}


def leaderboard(runs: Sequence[Run], resamples: int = RESAMPLES) -> dict:
    """The table's rows (fastest overall first), and the sentence naming the fairest drafter and the group
    that loses most."""
    rows = [drafter_row(run, resamples) for run in runs]
    rows.sort(key=lambda r: -(_overall(r) or 0))
    return {"rows": rows, "groups": _columns(rows), "sentence": sentence(rows)}


def _overall(row: Mapping) -> float | None:
    cell = row["overall"].get("speedup") or row["overall"].get("block_efficiency")
    return cell["value"] if cell else None


def _columns(rows: Sequence[Mapping]) -> list[str]:
    seen = {g for r in rows for g in r["groups"]}
    return [g for g in GROUPS if g in seen] + sorted(seen - set(GROUPS))


def sentence(rows: Sequence[Mapping]) -> str:
    rated = [r for r in rows if r["fairness"].get("best_worst_ratio")]
    if not rated:
        return "No drafter has a value in two or more groups: no fairness to compare."
    fairest = min(rated, key=lambda r: r["fairness"]["best_worst_ratio"]["value"])
    metric = "speedup" if rated[0]["fairness"]["metric"] == "speedup" else "τ"
    losers = {}
    for r in rated:
        losers.setdefault(r["fairness"]["worst_group"], []).append(r["label"])
    most = max(losers, key=lambda g: len(losers[g]))
    ratio = fairest["fairness"]["best_worst_ratio"]
    text = (
        f"Fairest across Spec-Bench's groups by {metric}: {fairest['label']} (best/worst group "
        f"{_interval(ratio, 2)}"
        + ("; slower than the target alone in every group" if _slowest(fairest) else "")
        + f"). The group that loses most: {most}, the worst group of {len(losers[most])} of {len(rated)} "
        f"drafters ({', '.join(losers[most])})."
    )
    return " ".join([text, *(_below_one(r) for r in rated if _below_one(r))])


def _slowest(row: Mapping) -> bool:
    best = max((c.get("speedup") or {}).get("value") or 0 for c in row["groups"].values())
    return row["fairness"]["metric"] == "speedup" and best < 1


def _below_one(row: Mapping) -> str:
    """The groups that run slower than the target alone while the drafter's overall speedup is above 1×."""
    overall = (row["overall"].get("speedup") or {}).get("value")
    if not overall or overall <= 1:
        return ""
    slow = [
        f"{g} {c['speedup']['value']:.2f}×" for g, c in row["groups"].items() if c["speedup"]["value"] < 1
    ]
    return f"{row['label']} is {overall:.2f}× overall but below 1× on {', '.join(slow)}." if slow else ""


def _interval(cell: Mapping | None, digits: int = 2, suffix: str = "") -> str:
    if not cell or cell.get("value") is None:
        return "n/a"
    value = f"{cell['value']:.{digits}f}{suffix}"
    if cell.get("low") is None:
        return value
    return f"{value} [{cell['low']:.{digits}f}, {cell['high']:.{digits}f}]"


def markdown(result: Mapping) -> str:
    """The leaderboard table (speedup, then τ, per cell), the fairness table and the ordering table."""
    groups = result["groups"]
    head = "| drafter | " + " | ".join(groups) + " | overall | lossless |"
    lines = [
        "Each cell: speedup [95% CI] · τ [95% CI] (new tokens per target call, bonus counted).",
        "",
        head,
        "|" + "---|" * (len(groups) + 3),
    ]
    for row in result["rows"]:
        cells = [_cell(row["groups"].get(g)) for g in groups]
        lossless = row["lossless_mismatches"]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {_cell(row['overall'])} | "
                     f"{'n/a' if lossless is None else lossless} |")  # fmt: skip
    lines += [
        "",
        "| drafter | fairness of | worst group | worst | gap | best/worst |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        f = row["fairness"]
        lines.append(
            f"| {row['label']} | {f['metric']} | {f.get('worst_group') or 'n/a'} | {_interval(f.get('worst'))} | "
            f"{_interval(f.get('gap'))} | {_interval(f.get('best_worst_ratio'))} |"
        )
    lines += ["", "| drafter | leaderboard family | Spearman ρ of τ by group vs its speedup by group | exact p |",
              "|---|---|---|---|"]  # fmt: skip
    for row in result["rows"]:
        o = row["ordering"]
        if o and o.get("rho") is not None:
            lines.append(f"| {row['label']} | {o['family']} | {o['rho']:+.2f} | {o['p_value']:.3f} |")
    return "\n".join([*lines, "", result["sentence"], ""])


def _cell(cell: Mapping | None) -> str:
    if not cell:
        return "n/a"
    speed = f"{_interval(cell.get('speedup'), 2, '×')} · " if cell.get("speedup") else ""
    return speed + _interval(cell.get("block_efficiency"), 2)
