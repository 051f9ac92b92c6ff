"""Experiments: the planned steps of the shipped configs, and a tiny transfer experiment run end to end."""

import json
import subprocess
import sys

import pytest

from specfair import ROOT
from specfair.errors import SpecfairError
from specfair.experiment import Step, plan, trained_already, variant_name


@pytest.fixture
def planned(compose_cfg):
    """A factory: the steps an experiment config plans (nothing runs)."""

    def make(name, *overrides, tmp="/tmp/specfair-plan"):
        cfg = compose_cfg(
            f"experiment={name}", f"paths.ckpt_dir={tmp}/ckpts", *overrides, config="experiments"
        )
        return plan(cfg, ROOT / "logs" / "experiment" / name)

    return make


def test_q1_starts_from_the_generalist_with_two_arms_three_seeds_and_a_control(planned):
    steps = planned("q1")
    trainings = [s for s in steps if s.kind == "train"]
    labels = [s.label for s in trainings]
    assert labels[0] == "generalist"  # every other draft starts from it, so it is made first
    assert len(trainings) == 1 + 3 * 2 * 3 + 3
    assert {"agnews/lm_short@generalist", "imdb/kd_short@generalist/seed2", "control/seed1"} <= set(labels)
    assert [s.info["seed"] for s in trainings[1:]] == sorted(
        s.info["seed"] for s in trainings[1:]
    )  # seed-major
    exports = [s.info["export_dir"].as_posix() for s in trainings]
    assert len(set(exports)) == len(exports)  # no two seeds, arms or starts share an export
    assert "/tmp/specfair-plan/ckpts/smollm2_135m/imdb/kd_short/from-generalist/seed2" in exports
    assert "/tmp/specfair-plan/ckpts/smollm2_135m/generalist/control/seed1" in exports
    # each training is followed by its evaluations: an experiment stopped part-way has whole sets
    first = steps.index(trainings[1])
    assert steps[first + 1].kind == "evaluate" and steps[first + 1].needs == trainings[1].label
    evaluations = [s for s in steps if s.kind == "evaluate"]
    imdb = sorted(s.label for s in evaluations if s.info.get("dataset", s.label.split(":")[0]) == "imdb")
    assert "imdb: base" in imdb and "imdb: generalist" in imdb and "imdb: control/seed2" in imdb
    assert not any(s.label.startswith("imdb: agnews/") for s in evaluations)  # q1: own dataset only
    tuned = next(s for s in evaluations if s.label == "imdb: imdb/kd_short@generalist/seed2")
    assert (
        "draft.path=/tmp/specfair-plan/ckpts/smollm2_135m/imdb/kd_short/from-generalist/seed2/draft"
        in tuned.overrides
    )
    assert {"draft.start=generalist", "draft.seed=2", "mode=replay", "dataset.per_category=64"} <= set(
        tuned.overrides
    )
    control = next(s for s in evaluations if s.label == "imdb: control/seed1")
    assert {"draft=generalist", "draft.recipe=control", "draft.seed=1"} <= set(control.overrides)
    assert all("logger.group=q1" in e.overrides for e in evaluations)


def test_transfer_evaluates_every_draft_on_every_dataset(planned):
    steps = planned("transfer")
    evaluations = [s for s in steps if s.kind == "evaluate"]
    assert len(evaluations) == 6 * (1 + 1 + 18 + 3)  # base, generalist, 18 fine-tuned, 3 controls
    cells = {(s.needs, s.info["dataset"]) for s in evaluations if s.needs}
    assert ("agnews/kd_short@generalist", "emotion") in cells and (
        "cnn_dm/lm_short@generalist/seed1",
        "debian",
    ) in cells
    assert all("mode=replay" in s.overrides for s in evaluations)


def test_q2_gives_each_mix_its_own_checkpoint_and_keeps_evaluation_balanced(planned):
    steps = planned("q2_imbalance")
    trainings = [s for s in steps if s.kind == "train"]
    assert len(trainings) == 3 * (
        2 * (2 * 4 + 1) + 3 * 4
    )  # seeds x (arms x (rho 100, 10 x heads + rho 1) + samplers)
    exports = {s.info["export_dir"] for s in trainings}
    assert len(exports) == len(trainings)  # no two mixes or arms share a folder
    assert {s.info["imbalance"]["ratio"] for s in trainings} == {1, 10, 100}
    fair = [s for s in trainings if s.info["train"]["sampling"] != "natural"]
    assert {s.info["train"]["sampling"] for s in fair} == {"group_dro", "balanced", "temperature"}
    assert {(s.info["imbalance"]["ratio"], s.info["train_name"]) for s in fair} == {(100, "kd_short")}
    assert {s.info["train"]["teacher"] for s in trainings} == {"cached"}
    assert {s.info["start"] for s in trainings} == {"generalist"}
    baselines = [s.label for s in steps if s.kind == "evaluate" and s.needs is None]
    assert baselines == ["agnews_full: generalist", "agnews_full: base"]  # the runs' start, then the base
    for s in steps:
        if s.kind == "evaluate":
            assert not any(o.startswith("dataset.imbalance") for o in s.overrides)
    narrow = planned(
        "q2_imbalance", "experiment.seeds=[1]", "experiment.arms=[kd_short]", "experiment.samplers=[]"
    )
    assert len([s for s in narrow if s.kind == "train"]) == 2 * 4 + 1
    assert variant_name({"dataset.imbalance.ratio": 10, "dataset.imbalance.head": "Sci/Tech", "seed": 1}) == (
        "rho10_headSci-Tech_seed1"
    )


def test_a_checkpoint_trained_with_other_settings_is_refused(planned, tmp_path):
    step = next(s for s in planned("q1", tmp=str(tmp_path)) if s.label == "agnews/kd_short@generalist")
    export = step.info["export_dir"]
    assert not trained_already(step)
    (export / "draft").mkdir(parents=True)
    (export / "draft" / "config.json").write_text("{}")
    summary = {
        "pair": "smollm2_135m",
        "dataset": "agnews",
        "seed": 0,
        "steps": 250,
        "train": {**step.info["train"], "max_steps": 250},
        "data": {"imbalance": step.info["imbalance"]},
    }
    (export / "train_summary.json").write_text(json.dumps(summary))
    with pytest.raises(SpecfairError, match="train.max_steps=250, asked for 120"):
        trained_already(step)
    summary["train"]["max_steps"] = 120
    (export / "train_summary.json").write_text(json.dumps(summary))
    assert trained_already(step)


def test_an_evaluation_killed_mid_way_is_not_done_and_keeps_its_records_for_resuming(tmp_path):
    """Partial records of the same overrides stay (evaluate.py resumes them); of other overrides they go."""
    import yaml

    from specfair.experiment import evaluated_already

    step = Step("evaluate", "agnews: base", ["dataset=agnews", "draft=base"], tmp_path / "run")
    (step.out_dir / ".hydra").mkdir(parents=True)
    (step.out_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(step.overrides))
    partial = step.out_dir / "samples.rank0.partial.jsonl"
    partial.write_text("{}\n")
    assert not evaluated_already(step) and partial.is_file()
    (step.out_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["dataset=imdb", "draft=base"]))
    assert not evaluated_already(step) and not partial.exists()
    (step.out_dir / "summary.json").write_text("{}")
    assert not evaluated_already(step)  # a summary of other overrides is not this step's
    (step.out_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(step.overrides))
    assert evaluated_already(step)


TINY = """# @package _global_
experiment:
  name: tiny
  train:
    overrides: {train.max_steps: 3, train.batch_size: 2, train.max_length: 16, train.val_every: 3,
                train.warmup_steps: 0, train.optimizer.lr: 0.003, dataset.train_per_category: 20,
                dataset.per_category: 2}
    grid: {dataset: [agnews]}
    runs:
      - {dataset: sst2, train.max_steps: 0}   # fails: its cells must show as missing
  evaluate:
    datasets: [agnews, imdb]
    base: true
    overrides: {dataset.per_category: 3, spec.max_new_tokens: 6, mode: replay}
"""


def run_tiny(tmp):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiment.py"),
            "experiment=tiny",
            f"hydra.searchpath=[file://{tmp / 'conf'}]",
            f"hydra.run.dir={tmp / 'exp'}",
            f"paths.ckpt_dir={tmp / 'ckpts'}",
            "logger=none",
            f'overrides=["logger=none","seed=2","paths.cache_dir={tmp / "cache"}"]',
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd="/",
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiment")
    (tmp / "conf" / "experiment").mkdir(parents=True)
    (tmp / "conf" / "experiment" / "tiny.yaml").write_text(TINY)
    return tmp, run_tiny(tmp)


def test_tiny_transfer_experiment_reports_the_runs_numbers_and_missing_cells(tiny):
    tmp, result = tiny
    # the sst2 training fails: the experiment goes on, reports, then says so in one line
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]  # the failed step printed its own error line before
    assert last.startswith("error: 3 of 8 steps failed") and "train.max_steps=0" in last
    steps = json.loads((tmp / "exp" / "steps.json").read_text())
    assert [s["status"] for s in steps].count("done") == 1 + 4
    trained = tmp / "exp" / "train" / "agnews__kd__seed2"  # its Lightning resume state is dropped once done
    assert (trained / "train_summary.json").is_file() and not list(trained.rglob("*.ckpt"))

    report = json.loads((tmp / "exp" / "report.json").read_text())
    m = report["transfer"]
    assert m["rows"] == ["base", "agnews/kd/seed2", "sst2/kd/seed2"]  # seed=2: named in every label
    assert m["columns"] == ["agnews", "imdb"]
    summaries = {
        d.name: json.loads((d / "summary.json").read_text()) for d in (tmp / "exp" / "evaluate").iterdir()
    }
    for row, key in (("base", "base"), ("agnews/kd/seed2", "agnews__kd__seed2")):
        for dataset in ("agnews", "imdb"):
            run = f"{dataset}__base" if row == "base" else f"{dataset}__{key}"
            alpha = summaries[run]["overall"]["alpha"]
            assert m["alpha"][row][dataset]["value"] == pytest.approx(alpha)
            if row != "base":
                base = summaries[f"{dataset}__base"]["overall"]["alpha"]
                assert m["delta"][row][dataset]["value"] == pytest.approx(alpha - base)
                assert m["delta"][row][dataset]["low"] <= m["delta"][row][dataset]["high"]
    # the drafts differ, so the checks above mean something
    assert m["alpha"]["agnews/kd/seed2"] != m["alpha"]["base"]
    # mode=replay: exact counters, no timing, so no speedup and no lossless check rather than made-up ones
    assert summaries["imdb__base"]["mode"] == "replay"
    assert summaries["imdb__base"]["overall"]["speedup"] is None
    assert summaries["imdb__base"]["lossless_mismatches"] is None
    assert report["comparisons"][0]["overall"]["gain"]["speedup"]["value"] is None
    assert "speedup not timed" in report["comparisons"][0]["q1_sentence"]
    trained = summaries["imdb__agnews__kd__seed2"]["draft_training"]
    assert trained["dataset"] == "agnews" and trained["objective"] == "kd" and trained["steps"] == 3
    # the failed draft's cells are missing, never zero
    assert m["alpha"]["sst2/kd/seed2"] == {"agnews": None, "imdb": None}
    assert m["missing"] == [["sst2/kd/seed2", "agnews"], ["sst2/kd/seed2", "imdb"]]
    assert set(m["categories"]["imdb"]) == {"neg", "pos"}
    md = (tmp / "exp" / "report.md").read_text()
    assert "## Transfer matrix" in md and "| sst2/kd/seed2 | missing | missing |" in md
    assert any(s.startswith("In domain, alpha changed by") for s in m["sentences"])
    with open(m["plot"], "rb") as f:
        png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000


def test_a_second_run_resumes_instead_of_repeating(tiny):
    tmp, _ = tiny
    again = run_tiny(tmp)
    assert again.returncode == 2
    steps = json.loads((tmp / "exp" / "steps.json").read_text())
    assert [s["status"] for s in steps].count("skipped") == 1 + 4
    assert [s["status"] for s in steps].count("failed") == 3


def test_step_commands_are_the_user_commands(tmp_path):
    from specfair.experiment import command

    step = Step("evaluate", "x", ["dataset=imdb", "draft=base"], tmp_path / "run")
    assert command(step)[1:] == [
        str(ROOT / "evaluate.py"),
        "dataset=imdb",
        "draft=base",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
