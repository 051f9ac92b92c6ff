"""The Spec-Bench leaderboard: per-group ratios of sums, stratified intervals, fairness, the ordering test."""

import itertools
import re

import numpy as np
import pytest
from test_metrics import record

from specfair.analysis import leaderboard as lb
from specfair.analysis import plots
from specfair.analysis.comparisons import Run

SPEEDS = {"writing": 1.2, "coding": 1.4, "translation": 0.8, "summarization": 2.5, "qa": 1.0,
          "math_reasoning": 1.6, "rag": 1.9}  # fmt: skip


def synthetic_run(
    name: str, speeds=SPEEDS, per_category: int = 6, seed: int = 0, mode: str = "decode"
) -> Run:
    """Prompts whose wall times give each category the speedup in `speeds` (noise ±10%), and whose new tokens
    per target call rise with it."""
    rng = np.random.default_rng(seed)
    records = []
    for category, speed in speeds.items():
        for _ in range(per_category):
            accepted = int(round(speed * 2))
            r = record(category, [min(accepted, 4), 0], [4, 4], int(round(100 * speed)), wall=1.0,
                       base_wall=speed * (1 + 0.1 * rng.uniform(-1, 1)))  # fmt: skip
            if mode == "replay":
                r["wall_s"] = r["baseline_wall_s"] = None
            records.append(r)
    summary = {"mode": mode, "baseline": True, "draft": {"name": name}, "lossless_mismatches": 0}
    return Run(f"/runs/{name}", summary, records, name)


def test_categories_fold_into_spec_bench_task_groups():
    assert [lb.task_group(c) for c in ("writing", "humanities", "qa", "rag")] == [
        "multi-turn",
        "multi-turn",
        "qa",
        "rag",
    ]


def test_cells_are_ratios_of_sums_with_intervals_that_hold_them():
    row = lb.drafter_row(synthetic_run("lookup"), resamples=400)
    assert list(row["groups"]) == list(lb.GROUPS)
    multi = [r for r in synthetic_run("lookup").records if r["category"] in ("writing", "coding")]
    speedup = sum(r["baseline_wall_s"] for r in multi) / sum(r["wall_s"] for r in multi)
    cell = row["groups"]["multi-turn"]
    assert cell["prompts"] == 12 and cell["speedup"]["value"] == pytest.approx(speedup)
    tau = sum(r["new_tokens"] for r in multi) / sum(1 + r["blocks"] for r in multi)
    assert cell["block_efficiency"]["value"] == pytest.approx(tau)
    for group in row["groups"].values():
        for metric in ("speedup", "block_efficiency"):
            c = group[metric]
            assert (
                c["low"] <= c["high"] and c["n"] == group["prompts"]
            )  # a percentile CI need not hold the point
    assert row["overall"]["prompts"] == 42


def test_fairness_names_the_worst_group_and_the_ordering_matches_the_leaderboard():
    pld = dict(zip(lb.GROUPS, lb.LEADERBOARD["PLD"]["speedup"], strict=True))
    speeds = {"writing": pld["multi-turn"], **{g: v for g, v in pld.items() if g != "multi-turn"}}
    row = lb.drafter_row(synthetic_run("lookup", speeds), resamples=400)
    f = row["fairness"]
    assert f["worst_group"] == "translation" and f["best_group"] == "summarization"
    assert f["best_worst_ratio"]["value"] == pytest.approx(
        row["groups"]["summarization"]["speedup"]["value"] / row["groups"]["translation"]["speedup"]["value"]
    )
    o = row["ordering"]
    assert o["family"] == "PLD" and o["rho"] == pytest.approx(1.0)
    assert o["p_value"] == pytest.approx(2 / 720)  # exact: the identity and its mirror reach |ρ| = 1


def test_exact_spearman_p_counts_every_ordering():
    x = [1, 2, 3, 4, 5]
    y = [2, 1, 4, 3, 5]
    result = lb.exact_spearman(x, y)
    from scipy.stats import spearmanr

    null = [abs(spearmanr(x, p).statistic) for p in itertools.permutations(y)]
    assert result["p_value"] == pytest.approx(np.mean(np.array(null) >= abs(result["rho"]) - 1e-12))
    assert lb.exact_spearman([1, 1, 1], [1, 2, 3])["rho"] is None


def test_table_sentence_and_plot(tmp_path):
    flat = {c: 1.0 + 0.05 * i for i, c in enumerate(SPEEDS)}
    result = lb.leaderboard([synthetic_run("lookup"), synthetic_run("base", flat, seed=1)], resamples=300)
    assert [r["label"] for r in result["rows"]] == ["lookup", "base"]  # fastest overall first
    md = lb.markdown(result)
    assert md.count("| lookup |") == 3 and "| multi-turn | translation |" in md
    assert "Fairest across Spec-Bench's groups by speedup: base" in result["sentence"]
    assert re.search(r"lookup is 1\.\d\d× overall but below 1× on translation 0\.\d\d×\.", result["sentence"])
    png = plots.leaderboard_plot(result, tmp_path / "leaderboard.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_replayed_runs_give_tau_only():
    row = lb.drafter_row(synthetic_run("base", mode="replay"), resamples=200)
    assert "speedup" not in row["groups"]["qa"] and row["fairness"]["metric"] == "block_efficiency"
    assert row["ordering"]["family"] == "SpS"
