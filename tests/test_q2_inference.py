"""Q2 inference (`analysis/exposure.py` through `imbalance.analyze`) on synthetic runs with a known δ.

Each simulated run follows the model the report fits: per category, every prompt's alpha gain is
ease_c + run shift + δ·log(share) + the run's training noise for that category + prompt noise, over one shared
base run. No model, no files: comparisons and per-prompt records are built here.
"""

import json

import numpy as np
import pytest

from specfair.analysis import exposure, imbalance, sentences, tables
from specfair.analysis.format import num
from specfair.data.splits import imbalance_counts

CATEGORIES = ["a", "b", "c", "d"]
EASE = {"a": 0.05, "b": 0.10, "c": 0.15, "d": 0.20}
RESAMPLES = 400


def simulate(
    delta=0.03, ratios=(10, 100), heads=range(4), seeds=3, prompts=40, run_sd=0.01, prompt_sd=0.05, seed=0
):
    """(comparisons, records) for `imbalance.analyze`: every (ratio, head, seed) run against one base run."""
    rng = np.random.default_rng(seed)
    base_alpha = {c: rng.uniform(0.2, 0.5, prompts) for c in CATEGORIES}
    base = [
        {"id": f"{c}{i}", "category": c, "accepted": 100 * a, "rejections": 100 * (1 - a)}
        for c in CATEGORIES
        for i, a in enumerate(base_alpha[c])
    ]
    comparisons, records = [], {}
    for ratio in ratios:
        for head in heads:
            for s in range(seeds):
                planned = imbalance_counts(CATEGORIES, 1000, {"ratio": ratio, "head": head})
                share = {c: planned[c] / sum(planned.values()) for c in CATEGORIES}
                shift = rng.normal(0, 0.02)  # moves every category of this run alike
                tuned, gains = [], {}
                for c in CATEGORIES:
                    mean = EASE[c] + shift + delta * np.log(share[c]) + rng.normal(0, run_sd)
                    alpha = base_alpha[c] + mean + rng.normal(0, prompt_sd, prompts)
                    tuned += [
                        {"id": f"{c}{i}", "category": c, "accepted": 100 * a, "rejections": 100 * (1 - a)}
                        for i, a in enumerate(alpha)
                    ]
                    gains[c] = float(alpha.mean() - base_alpha[c].mean())
                run_dir = f"runs/rho{ratio}_head{head}_seed{s}"
                records[run_dir] = (base, tuned)
                comparisons.append(
                    {
                        "dataset": "toy",
                        "base": "generalist",
                        "finetuned": f"finetuned:toy/kd_short/rho{ratio}_head{head}@generalist/seed{s}",
                        "runs": ["runs/base", run_dir],
                        "categories": {c: {"gain": {"alpha": {"value": g}}} for c, g in gains.items()},
                        "q2": {
                            "imbalance": {"ratio": ratio, "head": head, "profile": "exponential"},
                            "sampling": "natural",
                            "seed": s,
                            "shares": {c: {"tokens": share[c], "texts": share[c]} for c in CATEGORIES},
                            "validation_gain": {},
                        },
                    }
                )
    return comparisons, records


def analyze(comparisons, records):
    return imbalance.analyze(comparisons, records, resamples=RESAMPLES)["toy"]


def runs_panel(comparisons, records, ratio=10):
    """The exposure.Panel of the natural runs at one ratio, with their per-prompt records."""
    group = [e for c in comparisons if (e := imbalance.run_entry(c))["ratio"] == ratio]
    return imbalance.panel(group, records)[0]


def width(d):
    return d["high"] - d["low"]


def test_delta_and_head_minus_rest_recovered_with_intervals_and_detectable_effects():
    result = analyze(*simulate(delta=0.03))
    pooled = result["pooled"][0]
    d = pooled["delta"]
    assert pooled["arm"] == "kd_short@generalist" and pooled["runs"] == 24
    assert d["low"] < 0.03 < d["high"] and d["low"] > 0 and d["over"] == "runs and prompts"
    assert d["mde"] == pytest.approx(exposure.Z_MDE * d["se"]) and 0 < d["mde"] < 0.03
    rho100 = next(c for c in result["conditions"] if c["ratio"] == 100)
    assert rho100["delta"]["low"] < 0.03 < rho100["delta"]["high"]
    # head − rest at rho = 100 (exponential, 4 categories): δ·(0 − mean(log share of the others)) = δ·ln(100)·2/3
    hmr = rho100["head_minus_rest"]
    assert hmr["low"] < 0.03 * np.log(100) * 2 / 3 < hmr["high"] and hmr["mde"] > 0
    assert result["notes"] == []  # 4 rotations × 3 seeds, every category trained: nothing to qualify
    text = " ".join(result["sentences"])
    assert f"δ = {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], detectable ≥ {d['mde']:.3f}" in text
    assert "the gain rises with the category's share of the data" in text
    md = "\n".join(tables.imbalance_section(result))
    assert "| kd_short@generalist | natural | all | 24 | " in md and "runs and prompts" in md
    # no rank correlation pooled over runs × categories: only the rank test that reassigns the runs' mixes
    assert (
        "rank test p: δ (rank ρ) |" in md and "head − rest detectable ≥ |" in md and "δ detectable ≥ |" in md
    )
    for c in result["conditions"]:
        t = c["rank_test"]
        assert f"| {num(t['delta']['p_value'])} ({num(t['p_value'])})" in md
    assert "Rank test (δ as the statistic" in md  # the sentence quotes δ's test, Spearman beside it


def test_interval_covers_the_true_delta_in_most_simulations():
    hits = []
    for seed in range(20):
        panel = runs_panel(*simulate(delta=0.03, ratios=(10,), seeds=2, prompts=20, seed=seed))
        d = exposure.delta(panel, resamples=300, seed=seed)
        hits.append(d["low"] <= 0.03 <= d["high"])
    assert sum(hits) >= 16, hits


def test_no_dependence_on_share_gives_delta_near_zero_and_says_cannot_tell():
    result = analyze(*simulate(delta=0.0, seed=1))
    d = result["pooled"][0]["delta"]
    assert d["low"] < 0 < d["high"] and abs(d["value"]) < d["mde"]
    assert sentences.verdict(d).startswith(("cannot tell", "inconclusive, cannot tell"))
    assert "cannot tell" in " ".join(result["sentences"])


def test_verdict_separates_no_large_effect_from_inconclusive():
    assert sentences.verdict({"value": 0.001, "low": -0.01, "high": 0.012, "mde": 0.02}).startswith(
        "cannot tell: no effect larger than ±0.020"
    )
    assert sentences.verdict({"value": 0.02, "low": -0.005, "high": 0.045, "mde": 0.03}).startswith(
        "inconclusive, cannot tell: the CI still allows δ up to +0.045"
    )
    assert sentences.verdict({"value": -0.03, "low": -0.05, "high": -0.01, "mde": 0.02}).startswith(
        "the gain falls"
    )


def test_cluster_interval_is_wider_than_prompts_only_when_runs_vary():
    # large per-category training noise between runs, little prompt noise: only several runs reveal it
    panel = runs_panel(*simulate(delta=0.03, ratios=(10,), run_sd=0.05, prompt_sd=0.01, seed=2))
    cluster = exposure.delta(panel, resamples=RESAMPLES)
    prompts_only = exposure.delta(panel, resamples=RESAMPLES, runs=False)
    assert prompts_only["over"] == "prompts" and cluster["over"] == "runs and prompts"
    assert width(cluster) > 3 * width(prompts_only)
    assert cluster["value"] == prompts_only["value"]


def test_detectable_effect_shrinks_with_more_runs():
    few = exposure.delta(runs_panel(*simulate(ratios=(10,), seeds=1, seed=3)), resamples=RESAMPLES)
    many = exposure.delta(runs_panel(*simulate(ratios=(10,), seeds=6, seed=3)), resamples=RESAMPLES)
    assert many["mde"] < 0.6 * few["mde"]


def test_least_squares_matches_a_dummy_design_with_a_missing_cell():
    rng = np.random.default_rng(4)
    gains, x = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    x[2, 1] = np.nan  # a category without training data in one run
    rows, cols = np.nonzero(np.isfinite(x))
    design = np.column_stack([x[rows, cols], np.eye(6)[rows], np.eye(4)[cols][:, 1:]])
    expected = np.linalg.lstsq(design, gains[rows, cols], rcond=None)[0][0]
    assert float(exposure.fit_delta(gains, x)) == pytest.approx(expected)


# --- bad input: each gives its line, and no interval where there is none to give ---------------------------


def test_category_with_no_training_data_is_left_out_of_delta_with_a_line():
    comparisons, records = simulate(seed=5)
    q = comparisons[0]["q2"]
    q["shares"]["d"] = {"tokens": 0.0, "texts": 0.0}
    result = analyze(comparisons, records)
    line = next(n for n in result["notes"] if "log undefined" in n)
    assert "d in " + comparisons[0]["finetuned"] in line and "left out of δ" in line
    assert all(c["delta"]["low"] is not None for c in result["conditions"])
    assert line in "\n".join(tables.imbalance_section(result))


def test_missing_rotation_is_named_and_head_minus_rest_is_marked():
    comparisons, records = simulate(heads=[0, 1, 2], seed=6)
    result = analyze(comparisons, records)
    c = next(c for c in result["conditions"] if c["ratio"] == 10)
    assert c["missing_heads"] == ["d"] and c["heads"] == ["a", "b", "c"]
    line = next(n for n in result["notes"] if "rho=10" in n and "no run with head d" in n)
    assert "mean over the 3 rotation(s) present" in line
    assert line in "\n".join(tables.imbalance_section(result))


def test_one_seed_per_rotation_gives_no_head_minus_rest_interval():
    result = analyze(*simulate(seeds=1, seed=7))
    c = next(c for c in result["conditions"] if c["ratio"] == 10)
    hmr = c["head_minus_rest"]
    assert hmr["low"] is None and hmr["mde"] is None and hmr["why"] == "one seed per rotation"
    assert hmr["prompts_only"]["low"] is not None  # for reference only, named as such
    line = next(n for n in result["notes"] if "rho=10" in n and "one seed per rotation" in n)
    assert "no interval for head − rest (over prompts alone: [" in line
    md = "\n".join(tables.imbalance_section(result))
    assert f"{hmr['value']:+.3f} (no interval: one seed per rotation) | — | — |" in md
    assert "no interval: one seed per rotation" in " ".join(result["sentences"])


def test_one_run_gives_a_line_and_no_interval():
    comparisons, records = simulate(seeds=1, seed=8)
    comparisons = [c for c in comparisons if c["q2"]["imbalance"]["ratio"] == 10 or "head0" in c["finetuned"]]
    result = analyze(comparisons, records)
    alone = next(c for c in result["conditions"] if c["ratio"] == 100)
    assert alone["runs"] == 1 and alone["delta"]["value"] is None and alone["delta"]["low"] is None
    assert alone["head_minus_rest"]["low"] is None
    assert any("rho=100: one run: no interval" in n for n in result["notes"])
    assert "| kd_short@generalist | natural | 100 | 1 | n/a (one run) | — | — |" in "\n".join(
        tables.imbalance_section(result)
    )


def test_runs_on_different_prompts_fall_back_to_an_interval_over_runs():
    comparisons, records = simulate(ratios=(10, 100), seeds=2, seed=9)
    base, tuned = records[comparisons[0]["runs"][1]]
    records[comparisons[0]["runs"][1]] = (base[1:], tuned[1:])
    result = analyze(comparisons, records)
    assert result["pooled"][0]["delta"]["over"] == "runs"
    assert any("not evaluated on the same a prompts" in n for n in result["notes"])


def test_rank_correlation_over_four_categories_is_marked_and_equal_shares_get_none():
    assert exposure.smallest_p(4) == pytest.approx(2 / 24) and exposure.smallest_p(5) < 0.05
    fairness = {"worst_category": "a", "worst": 0.1, "best": 0.3, "gap": 0.2}
    result = {"dataset": "toy", "fairness": {"base": fairness, "finetuned": fairness, "gain": fairness}}
    shares = {c: {"tokens": s, "texts": s} for c, s in zip(CATEGORIES, (0.4, 0.3, 0.2, 0.1), strict=True)}
    q = {
        "shares": shares,
        "spearman_tokens_vs_gain": {"rho": 0.8, "p_value": 0.33},
        "imbalance": {"ratio": 10},
    }
    assert "with 4 categories no p falls below 0.083: it cannot reject at 5%" in sentences.q2_sentence(
        result | {"q2": q}
    )
    q["imbalance"] = {"ratio": 1, "budget": 12000}
    text = sentences.q2_sentence(result | {"q2": q})
    assert "equal by design" in text and "Spearman" not in text


# --- end to end: run folders → build_report → report.md / report.json --------------------------------------


def write_run(folder, alpha: dict, draft: dict, seed: int):
    """A replay run folder: 60 prompts per category (over 50: a fast Wilcoxon) at the given mean alpha."""
    from specfair import records as rec
    from specfair.analysis import stats

    rng = np.random.default_rng(seed)
    samples = []
    for c in CATEGORIES:
        for i in range(60):
            accepted = int(rng.binomial(40, np.clip(alpha[c] + rng.normal(0, 0.05), 0, 1)))
            samples.append(
                rec.SampleRecord(
                    index=len(samples), id=f"{c}{i}", category=c, prompt_ids=[1], output_ids=[1],
                    new_tokens=accepted + 10, proposed=50, accepted=accepted, blocks=10,
                    rejections=40 - accepted, accept_lengths=[], proposed_lengths=[],
                )
            )  # fmt: skip
    group = lambda s: {m: stats.metric_value(s, m) for m in rec.METRICS} | {"position_acceptance": []}  # noqa: E731
    summary = rec.RunSummary(
        dataset={"name": "toy"},
        pair={"name": "tiny"},
        draft=draft,
        spec={"gamma": 4, "max_new_tokens": 32, "temperature": 0.0},
        seed=0,
        overall=group(samples),
        categories={c: group([s for s in samples if s.category == c]) for c in CATEGORIES},
        mode="replay",
        baseline=False,
        prompt_set="p",
    )
    rec.save_run(folder, samples, summary)


def test_report_resamples_the_runs_prompts(tmp_path, monkeypatch):
    from specfair import records as rec
    from specfair.analysis import plots
    from specfair.report import build_report

    monkeypatch.setattr(plots, "comparison_plots", lambda *args: [])  # per-pair PNGs: not what this tests

    write_run(tmp_path / "runs" / "base", {c: 0.3 for c in CATEGORIES}, {"name": "base"}, seed=0)
    for n, (ratio, head) in enumerate([(10, 0), (10, 1), (10, 2), (100, 0)]):
        planned = imbalance_counts(CATEGORIES, 100, {"ratio": ratio, "head": head})
        export = tmp_path / "ckpt" / f"rho{ratio}_head{head}"
        (export / "draft").mkdir(parents=True)
        rec.save_json(
            rec.TrainSummary(
                pair="tiny", dataset="toy", train={"name": "kd", "sampling": "natural"}, seed=0, steps=1,
                data={"train_counts": {c: {"rows": k, "tokens": 10 * k} for c, k in planned.items()},
                      "imbalance": {"ratio": ratio, "head": head}},
            ),
            export / "train_summary.json",
        )  # fmt: skip
        share = {c: k / sum(planned.values()) for c, k in planned.items()}
        alpha = {c: 0.4 + 0.05 * np.log(share[c]) for c in CATEGORIES}
        draft = {"name": "finetuned", "trained_on": "toy", "train_name": "kd", "variant": export.name,
                 "path": str(export / "draft")}  # fmt: skip
        write_run(tmp_path / "runs" / f"tuned{n}", alpha, draft, seed=n + 1)
    report = build_report([tmp_path / "runs"], tmp_path / "out")
    result = report["imbalance"]["toy"]
    rho10 = next(c for c in result["conditions"] if c["ratio"] == 10)
    assert rho10["delta"]["over"] == "runs and prompts" and rho10["delta"]["low"] is not None
    assert rho10["missing_heads"] == ["d"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "δ = " in md and "detectable ≥" in md and "no run with head d" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text())["imbalance"]["toy"]["pooled"]


def test_rotation_rank_test_rejects_with_six_categories_and_not_without_an_effect():
    """Reassigning which run got which mix: exact over 6! assignments, so 6 rotations can reach p = 1/720."""
    rng = np.random.default_rng(1)
    shares = np.array([0.39, 0.25, 0.16, 0.10, 0.06, 0.04])
    x = np.log(np.array([np.roll(shares, h) for h in range(6)]))
    ease = rng.normal(0, 0.02, 6)
    follows = exposure.rotation_test(
        exposure.Panel(ease + 0.02 * x + rng.normal(0, 0.01, (6, 6)), x, np.arange(6))
    )
    assert follows["exact"] and follows["smallest_p"] == pytest.approx(1 / 720)
    assert follows["delta"]["value"] > 0.01 and follows["delta"]["p_value"] < 0.01
    assert follows["rho"] > 0.5 and follows["p_value"] < 0.01  # the Spearman variant
    flat = exposure.rotation_test(exposure.Panel(ease + rng.normal(0, 0.01, (6, 6)), x, np.arange(6)))
    assert flat["p_value"] > 0.05 and flat["delta"]["p_value"] > 0.05
    same_mix = exposure.Panel(rng.normal(size=(3, 6)), np.log(np.full((3, 6), 1 / 6)), np.zeros(3, int))
    assert exposure.rotation_test(same_mix)["p_value"] is None


def rotation_panel(rng, delta=0.0, seeds=3, k=4, ratio=100):
    """seeds × k rotations of an exponential mix over k categories: ease, a seed effect, a run effect,
    training noise per category, and δ·log share."""
    shares = np.array([ratio ** (-i / (k - 1)) for i in range(k)])
    x = np.log(np.array([np.roll(shares / shares.sum(), h) for _ in range(seeds) for h in range(k)]))
    runs = seeds * k
    seed_effect = np.repeat(rng.normal(0, 0.02, seeds), k)[:, None]
    gains = rng.normal(0, 0.03, k) + seed_effect + rng.normal(0, 0.01, (runs, 1)) + delta * x
    gains = gains + rng.normal(0, 0.01, (runs, k))
    return exposure.Panel(gains, x, np.tile(np.arange(k), seeds)), np.repeat(np.arange(seeds), k)


def test_delta_permuted_within_seeds_has_nominal_size_where_spearman_is_conservative():
    """Under no effect (3 seeds × 4 rotations, 4 categories), δ's p is near uniform; Spearman's is not."""
    rng = np.random.default_rng(29)
    p = {"delta": [], "spearman": []}
    for _ in range(150):
        panel, seeds = rotation_panel(rng)
        test = exposure.rotation_test(panel, permutations=300, seeds=seeds)
        assert test["within"] == "seeds" and not test["exact"]
        p["delta"].append(test["delta"]["p_value"])
        p["spearman"].append(test["p_value"])
    delta, spearman = np.array(p["delta"]), np.array(p["spearman"])
    assert 0.45 < delta.mean() < 0.55 and 0.02 <= (delta <= 0.05).mean() <= 0.09
    assert spearman.mean() > delta.mean() + 0.03  # conservative: its null p runs high


def test_within_seed_reassignments_keep_every_seeds_mixes():
    panel, seeds = rotation_panel(np.random.default_rng(4), delta=0.01, seeds=2, k=3)
    test = exposure.rotation_test(panel, seeds=seeds)
    assert test["exact"] and test["smallest_p"] == pytest.approx(1 / 36)  # 3! within each of 2 seeds
    assert exposure.rotation_test(panel)["smallest_p"] == pytest.approx(1 / 90)  # 6! / (2! 2! 2!) over all
    orders, exact = exposure._reassignments(exposure._blocks(6, seeds), 6, 10_000, 0)
    assert exact and len(orders) == 36 and all(set(o[:3]) == {0, 1, 2} for o in orders)
    one_each = exposure.rotation_test(panel, seeds=range(6))
    assert one_each["p_value"] is None and "within seeds" in one_each["why"]


def test_report_gives_the_rank_test_per_ratio_and_none_at_equal_shares():
    result = analyze(*simulate(delta=0.03, ratios=(1, 100), seeds=2))
    by_ratio = {c["ratio"]: c for c in result["conditions"]}
    assert by_ratio[1]["rank_test"] is None
    test = by_ratio[100]["rank_test"]
    assert test["delta"]["value"] > 0 and test["delta"]["p_value"] < 0.05
    assert test["rho"] > 0 and test["p_value"] < 0.05 and test["runs"] == 8
    assert test["exact"]  # within each seed's 4 runs: 4!^2 reassignments, enumerated
    sentence = f"δ {test['delta']['value']:+.3f} at rho=100, p = {test['delta']['p_value']:.3g} (Spearman "
    assert sentence + f"{test['rho']:+.2f}, p = {test['p_value']:.3g}; 8 runs" in " ".join(
        result["sentences"]
    )
