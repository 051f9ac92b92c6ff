"""Arms and seeds (`analysis/arms.py`) on synthetic run folders: the pooled estimate is the mean over seeds,
the interval widens with seed-to-seed spread, fine-tuned runs pair with the draft they started from, and the
own-draft-highest test says "holds" only when every difference is above zero."""

import numpy as np
import pytest
from test_analysis_report import write_run

from specfair.analysis import arms
from specfair.analysis.comparisons import pair_runs
from specfair.report import build_report, find_runs, load_run


def tuned(trained_on, arm="kd_short", seed=0):
    return {"name": "finetuned", "trained_on": trained_on, "train_name": arm, "start": "generalist", "seed": seed,
            "path": None}  # fmt: skip


GENERALIST = {"name": "generalist", "recipe": "generalist", "seed": 0, "path": None}


def control(seed):
    return {"name": "generalist", "recipe": "control", "seed": seed, "path": None}


@pytest.fixture
def experiment(tmp_path):
    """Two datasets; on each the generalist, 3 seeds of each dataset's kd draft, and 3 control seeds."""
    root = tmp_path / "runs"
    for dataset, own in (("toy", 0.6), ("other", 0.5)):
        write_run(root / f"{dataset}_generalist", dataset=dataset, draft=GENERALIST, p_accept=0.4)
        for s in range(3):
            write_run(
                root / f"{dataset}_control{s}", dataset=dataset, draft=control(s), p_accept=0.41, seed=s
            )
            for trained_on in ("toy", "other"):
                p = own if trained_on == dataset else 0.3
                write_run(root / f"{dataset}_{trained_on}{s}", dataset=dataset, draft=tuned(trained_on, seed=s),
                          p_accept=p + 0.02 * s, seed=s)  # fmt: skip
    return root


def test_fine_tuned_runs_pair_with_the_draft_they_started_from(experiment):
    runs = [load_run(d) for d in find_runs([experiment])[0]]
    pairs, unpaired = pair_runs(runs)
    assert len(pairs) == 2 * (3 + 6)
    assert len(unpaired) == 2 and all(
        "(generalist): no base run" in u for u in unpaired
    )  # base not evaluated
    assert {b.label for b, _ in pairs} == {"generalist"}
    labels = {t.label for _, t in pairs}
    assert "finetuned:toy/kd_short@generalist/seed2" in labels and "control/seed1" in labels


def test_pooled_gain_is_the_mean_over_seeds_with_an_interval_over_seeds_and_prompts(experiment):
    runs = [load_run(d) for d in find_runs([experiment])[0]]
    result = arms.analyze(runs)
    toy = result["datasets"]["toy"]
    seeds = [
        r for r in runs if r.dataset == "toy" and arms.group_of(r.summary)[0] == "toy/kd_short@generalist"
    ]
    general = next(r for r in runs if r.dataset == "toy" and r.label == "generalist")

    def alpha(run):
        return sum(r["accepted"] for r in run.records) / sum(
            r["accepted"] + r["rejections"] for r in run.records
        )

    gain = toy["vs_generalist"]["toy/kd_short@generalist"]
    assert gain["value"] == pytest.approx(np.mean([alpha(r) for r in seeds]) - alpha(general))
    assert gain["low"] < gain["value"] < gain["high"] and gain["seeds"] == [3, 1]
    assert toy["alpha"]["toy/kd_short@generalist"]["value"] == pytest.approx(
        np.mean([alpha(r) for r in seeds])
    )
    assert gain["low"] > 0 and gain["p_value"] < 0.05  # own data, p 0.6 vs 0.4: clearly up
    assert (
        toy["vs_generalist"]["other/kd_short@generalist"]["value"] < 0
    )  # p 0.3: down (the CI may reach 0 with seed spread)
    assert "control" in toy["vs_generalist"] and "toy/kd_short@generalist" in toy["vs_control"]
    assert set(toy["categories"]) == {"a", "b", "c"}


def test_seed_spread_widens_the_interval(experiment):
    runs = [load_run(d) for d in find_runs([experiment])[0]]
    toy = [r for r in runs if r.dataset == "toy"]
    group = [r for r in toy if arms.group_of(r.summary)[0] == "toy/kd_short@generalist"]
    ids = [r["id"] for r in group[0].records]
    pooled = arms.difference(group, [], ids)
    one_seed = arms.difference(group[:1], [], ids)
    assert pooled["high"] - pooled["low"] > 0 and one_seed["seeds"] == [1]
    same = arms.difference([group[0]] * 3, [], ids)  # three identical seeds: no seed spread to add
    assert same["high"] - same["low"] == pytest.approx(one_seed["high"] - one_seed["low"], rel=0.35)


def test_own_draft_highest_is_a_paired_test(experiment, tmp_path):
    runs = [load_run(d) for d in find_runs([experiment])[0]]
    own = arms.analyze(runs)["own_highest"]["kd_short@generalist"]
    assert own["toy"]["holds"] and own["other"]["holds"]
    diff = own["toy"]["differences"]["other/kd_short@generalist"]
    assert diff["low"] > 0 and diff["seeds"] == [3, 3]
    build_report([experiment], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.index("## Arms and seeds") < md.index("## toy:")
    assert "| toy/kd_short@generalist (3) |" in md and "**holds**" in md


def test_drafts_from_other_starts_are_other_groups(experiment):
    from_base = {**tuned("toy"), "start": "base"}
    write_run(experiment / "toy_from_base", dataset="toy", draft=from_base, p_accept=0.2)
    runs = [load_run(d) for d in find_runs([experiment])[0]]
    alpha = arms.analyze(runs)["datasets"]["toy"]["alpha"]
    assert alpha["toy/kd_short"]["seeds"] == [1] and alpha["toy/kd_short@generalist"]["seeds"] == [3]
    assert alpha["toy/kd_short"]["value"] < alpha["toy/kd_short@generalist"]["value"]
