"""Q2 across imbalance ratios on hand-built comparisons whose answers are known by construction."""

import pytest

from specfair.analysis import imbalance, plots, tables
from specfair.data.splits import imbalance_counts

CATEGORIES = ["a", "b", "c", "d"]
EASE = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}  # what each category gains anyway


def comparison(ratio, head, bonus, sampling="natural", arm="kd", seed=0, shift=0.0, flat=None):
    """A fine-tuned run whose head category gains `bonus` on top of its own ease (and `shift` everywhere);
    with `flat`, every category gains that much instead."""
    planned = imbalance_counts(CATEGORIES, 1000, {"ratio": ratio, "head": head})
    total = sum(planned.values())
    head_name = CATEGORIES[head]
    return {
        "dataset": "toy",
        "finetuned": f"finetuned:toy/{arm}/rho{ratio}_head{head}_{sampling}_seed{seed}",
        "categories": {
            c: {
                "gain": {
                    "alpha": {
                        "value": shift
                        + (flat if flat is not None else EASE[c] + (bonus if c == head_name else 0.0))
                    }
                }
            }
            for c in CATEGORIES
        },
        "q2": {
            "imbalance": {"ratio": ratio, "head": head, "profile": "exponential"},
            "sampling": sampling,
            "seed": seed,
            "shares": {c: {"tokens": planned[c] / total, "texts": planned[c] / total} for c in CATEGORIES},
            "validation_gain": {c: EASE[c] + (bonus / 2 if c == head_name else 0.0) for c in CATEGORIES},
        },
    }


@pytest.fixture
def result():
    runs = [comparison(1, 0, 0.0)]
    runs += [comparison(10, h, 0.1) for h in range(4)]
    runs += [comparison(10, 0, 0.0, sampling="balanced")]
    return imbalance.analyze(runs)["toy"]


def test_rotation_separates_data_from_category_ease(result):
    natural = {c["ratio"]: c for c in result["conditions"] if c["sampling"] == "natural"}
    # averaged over the four heads, the head's edge is exactly the bonus, whatever each category's ease
    assert natural[10]["head_minus_rest"]["value"] == pytest.approx(0.1)
    assert natural[10]["head_minus_rest_validation"] == pytest.approx(0.05)  # the training run's own check
    assert natural[10]["runs"] == 4 and natural[10]["heads"] == CATEGORIES
    # one head only: its low ease shows (0.1 - mean(0.2, 0.3, 0.4))
    assert natural[1]["head_minus_rest"]["value"] == pytest.approx(-0.2)
    ranks = natural[10]["gain_by_rank"]
    assert ranks[0]["mean"] == pytest.approx(0.35) and ranks[-1]["mean"] == pytest.approx(0.25)
    assert ranks[0]["n"] == 4
    balanced = next(c for c in result["conditions"] if c["sampling"] == "balanced")
    assert balanced["head_minus_rest"]["value"] == pytest.approx(-0.2)
    # shares equal by design at rho = 1: no slope on them; one seed per rotation: no head − rest interval
    assert natural[1]["delta"]["value"] is None
    assert natural[1]["delta"]["why"] == "shares equal by design (rho = 1)"
    assert natural[10]["head_minus_rest"]["low"] is None and natural[10]["delta"]["over"] == "runs"
    assert balanced["missing_heads"] == ["b", "c", "d"]


def test_sentences_table_and_plot(result, tmp_path):
    text = " ".join(result["sentences"])
    assert (
        "+0.100 at rho=10" in text and "With balanced sampling at rho=10, head minus rest was -0.200" in text
    )
    md = "\n".join(tables.imbalance_section(result))
    assert "| kd | natural | 10 | 4 | +0.350 |" in md  # gains are changes: signed, like head − rest
    assert "| kd | natural | 1 | 1 | n/a (shares equal by design (rho = 1)) | — | — |" in md
    assert "- kd, balanced sampling, rho=10: no run with head b, c, d;" in md
    rank_sentence = next(line for line in md.splitlines() if "Rank test (δ as the statistic" in line)
    assert md.count("Spearman") == rank_sentence.count("Spearman")  # the rotation test only
    png = plots.imbalance_plot(result, tmp_path)
    data = png.read_bytes()
    assert png.name == "toy_gain_vs_ratio.png" and data[:4] == b"\x89PNG" and len(data) > 10000


def test_one_ratio_is_not_an_imbalance_experiment():
    assert imbalance.analyze([comparison(10, h, 0.1) for h in range(4)]) == {}


def test_arms_are_separate_conditions_and_plot_panels(tmp_path):
    runs = [
        comparison(r, h, 0.1, arm=arm)
        for arm in ("kd_short", "lm_short")
        for r in (10, 100)
        for h in range(4)
    ]
    result = imbalance.analyze(runs)["toy"]
    assert [(c["arm"], c["ratio"]) for c in result["conditions"]] == [
        ("kd_short", 10), ("kd_short", 100), ("lm_short", 10), ("lm_short", 100)
    ]  # fmt: skip
    assert [(p["arm"], p["runs"]) for p in result["pooled"]] == [("kd_short", 8), ("lm_short", 8)]
    assert sum("natural sampling, 8 runs" in s for s in result["sentences"]) == 2
    assert plots.imbalance_plot(result, tmp_path).read_bytes()[:4] == b"\x89PNG"


def test_a_fair_sampler_is_judged_on_worst_and_mean_gain_against_natural():
    """Natural: the head gains 0.1 more; group DRO: every category gains 0.32; seed 1 adds 0.02 everywhere."""
    runs = [comparison(1, 0, 0.0)]
    for seed, shift in ((0, 0.0), (1, 0.02)):
        runs += [comparison(10, h, 0.1, seed=seed, shift=shift) for h in range(4)]
        runs += [comparison(10, h, 0.0, "group_dro", seed=seed, shift=shift, flat=0.32) for h in range(4)]
    result = imbalance.analyze(runs)["toy"]
    natural, dro = (next(c for c in result["conditions"] if c["sampling"] == s and c["ratio"] == 10)
                    for s in ("natural", "group_dro"))  # fmt: skip
    # worst per run: 0.2 with head a (its own bonus lifts it), else 0.1; then + 0.01, the mean seed shift
    assert natural["fairness"]["worst"]["value"] == pytest.approx((0.2 + 3 * 0.1) / 4 + 0.01)
    assert natural["fairness"]["mean"]["value"] == pytest.approx(0.25 + 0.1 / 4 + 0.01)
    assert natural["fairness"]["gap"]["value"] == pytest.approx((0.2 + 0.3 + 0.3 + 0.4) / 4)
    assert dro["fairness"]["gap"]["value"] == pytest.approx(0.0)
    vs = dro["against_natural"]
    assert vs["worst_change"]["value"] == pytest.approx(0.33 - 0.135)
    assert vs["worst_minus_reference_mean"]["value"] == pytest.approx(0.33 - 0.285)
    assert vs["relative_mean_change"]["value"] == pytest.approx(0.33 / 0.285 - 1)
    for d in vs.values():
        assert d["low"] < d["value"] < d["high"] and d["over"] == "runs"  # 2 seeds per rotation: an interval
    assert vs["worst_minus_reference_mean"]["low"] > 0
    sentence = next(s for s in result["sentences"] if s.startswith("group_dro against natural"))
    assert sentence.endswith(": met.") and "(bar ≥ −10%)" in sentence
    section = "\n".join(tables.imbalance_section(result))
    assert "| kd | group_dro | 10 | 8 | +0.330 [" in section
    # one seed per rotation: fairness without an interval, and no verdict pretending otherwise
    one_seed = imbalance.analyze([r for r in runs if r["q2"]["seed"] == 0])["toy"]
    lone = next(c for c in one_seed["conditions"] if c["sampling"] == "group_dro")
    assert lone["fairness"]["worst"]["low"] is None
    assert lone["against_natural"]["worst_change"]["why"] == "one seed per rotation"
    assert next(s for s in one_seed["sentences"] if s.startswith("group_dro against")).endswith(
        "cannot tell (no interval: one seed per rotation)."
    )
