"""The Q1/Q2 report from real run folders made here: a tiny fine-tuning run, then a base/fine-tuned sweep."""

import dataclasses
import json
import subprocess
import sys

import pytest

from specfair import ROOT
from specfair.report import build_report, compare, find_runs, load_run

COMMON = ["dataset.per_category=3", "seed=2", "logger=none"]
SMALL = [*COMMON, "spec.max_new_tokens=6"]


def run(script, *args):
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=900, cwd="/"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    ckpts = tmp / "ckpts"
    run(
        "train.py",
        f"paths.ckpt_dir={ckpts}",
        *COMMON,
        "train.max_steps=2",
        "train.batch_size=2",
        "train.max_length=16",
        "train.val_every=2",
        "dataset.train_per_category=20",
        "dataset.imbalance.ratio=4",
        f"hydra.run.dir={tmp / 'train'}",
    )
    sweep_dir = tmp / "sweep"
    result = run(
        "evaluate.py",
        "-m",
        "draft=base,finetuned",
        f"paths.ckpt_dir={ckpts}",
        *SMALL,
        f"hydra.sweep.dir={sweep_dir}",
    )
    return sweep_dir, result


def test_multirun_callback_writes_the_report(sweep):
    sweep_dir, result = sweep
    report = json.loads((sweep_dir / "report.json").read_text())
    assert len(report["comparisons"]) == 1 and not report["failed"]
    r = report["comparisons"][0]
    assert r["base"] == "base" and r["finetuned"] == "finetuned:agnews/kd/seed2"  # trained with seed=2
    assert list(r["categories"]) == ["World", "Sports", "Business", "Sci/Tech"]
    # the report's point values are the runs' own ratios of sums
    runs = {
        json.loads((d / "summary.json").read_text())["draft"]["name"]: json.loads(
            (d / "summary.json").read_text()
        )
        for d in sweep_dir.iterdir()
        if (d / "summary.json").is_file()
    }
    for side in ("base", "finetuned"):
        for metric in ("alpha", "acceptance_rate", "block_efficiency", "speedup"):
            assert r["overall"][side][metric]["value"] == pytest.approx(runs[side]["overall"][metric])
    gain = r["overall"]["gain"]["alpha"]
    assert gain["value"] == pytest.approx(
        runs["finetuned"]["overall"]["alpha"] - runs["base"]["overall"]["alpha"]
    )
    for e in r["categories"].values():
        assert e["base"]["alpha"]["n"] == 3 and "p_holm" in e["wilcoxon_alpha"]
    # Q2: the training shares come from train_summary.json (imbalance ratio 4, exponential over 4 categories)
    shares = r["q2"]["shares"]
    assert shares["World"]["texts"] == pytest.approx(20 / (20 + 13 + 8 + 5))
    assert "Q1" not in r["q1_sentence"] and r["q1_sentence"].startswith("agnews: alpha rose in")
    md = (sweep_dir / "report.md").read_text()
    assert r["q1_sentence"] in md and r["q2_sentence"] in md and "| Sci/Tech |" in md
    for png in r["plots"]:
        with open(png, "rb") as f:
            data = f.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert {p.split("/")[-1] for p in r["plots"]} == {
        "agnews_alpha_bars.png",
        "agnews_speedup_bars.png",
        "agnews_position_acceptance.png",
        "agnews_gain_vs_share.png",
    }


def test_runs_with_different_prompts_are_not_paired(sweep):
    sweep_dir, _ = sweep
    base, tuned = sorted((load_run(d) for d in find_runs([sweep_dir])[0]), key=lambda r: r.label != "base")

    def with_summary(**changes):
        return dataclasses.replace(tuned, summary=dataclasses.replace(tuned.summary, **changes))

    with pytest.raises(ValueError, match="differ in 'prompt_set'"):
        compare(base, with_summary(prompt_set="something-else"))
    with pytest.raises(ValueError, match="differ in 'spec'"):
        compare(base, with_summary(spec={**base.summary.spec, "gamma": 2}))


def test_failed_runs_are_listed_and_thin_categories_have_no_ci(sweep, tmp_path):
    sweep_dir, _ = sweep
    broken = tmp_path / "9_broken"
    (broken / ".hydra").mkdir(parents=True)
    (broken / "error.txt").write_text("spec.gamma=0: must be >= 1\n")
    report = build_report([sweep_dir, tmp_path], tmp_path / "out")
    assert report["failed"] == [{"run": str(broken), "why": "spec.gamma=0: must be >= 1"}]
    assert "spec.gamma=0" in (tmp_path / "out" / "report.md").read_text()

    base, tuned = sorted((load_run(d) for d in find_runs([sweep_dir])[0]), key=lambda r: r.label != "base")
    for r in (base, tuned):  # one prompt left in World
        world = [x for x in r.records if x.category == "World"]
        r.records = [x for x in r.records if x.category != "World"] + world[:1]
    result = compare(base, tuned)
    assert result["categories"]["World"]["base"]["alpha"]["low"] is None
    assert result["categories"]["Sports"]["base"]["alpha"]["low"] is not None


def test_cli(sweep, tmp_path):
    sweep_dir, _ = sweep
    out = subprocess.run(
        [sys.executable, "-m", "specfair.report", str(sweep_dir), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "agnews: alpha rose in" in out.stdout and (tmp_path / "report.md").is_file()


def test_callback_logs_the_report_to_wandb_in_the_sweeps_group(sweep, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    from specfair.report import ReportCallback

    sweep_dir, _ = sweep
    copy = tmp_path / "my-sweep"
    shutil.copytree(sweep_dir, copy)
    config = OmegaConf.create(
        {
            "hydra": {"sweep": {"dir": str(copy)}},
            "logger": {"enabled": True, "mode": "offline", "group": None},
        }
    )
    ReportCallback().on_multirun_end(config)
    runs = list((copy / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (copy / "report.md").is_file()
    # the offline run's protobuf log holds the group, the job type and the logged tables as plain strings
    data = b"".join(f.read_bytes() for f in runs[0].glob("*.wandb"))
    assert b"my-sweep" in data and b"report" in data and b"q1_q2" in data and b"agnews_alpha_bars" in data
