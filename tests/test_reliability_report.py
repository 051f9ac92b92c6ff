"""The report and the multirun's end (issue 30): a run folder given twice, cut or empty records, summaries of the
wrong shape, and a sweep whose jobs failed. Each bad input is one `error:` line naming the file, exit status 2."""

import json
import subprocess
import sys

import pytest
from conftest import run_in_process
from test_analysis_report import finetuned, write_run

from specfair import ROOT, app
from specfair.report import build_report, find_runs


@pytest.fixture
def pair_of_runs(tmp_path):
    """A base run and a fine-tuned run of the same prompts, in one sweep-like folder."""
    sweep = tmp_path / "sweep"
    write_run(sweep / "0_base")
    write_run(sweep / "1_tuned", draft=finetuned(), p_accept=0.6)
    return sweep


def report_cli(*args, tmp_path):
    status, stderr = run_in_process("report", [*map(str, args), "--out", str(tmp_path / "out")], tmp_path)
    return status, stderr


def one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


def test_a_run_folder_given_twice_or_through_a_symlink_counts_once(pair_of_runs, tmp_path, caplog):
    base, tuned = pair_of_runs / "0_base", pair_of_runs / "1_tuned"
    link = tmp_path / "link"
    link.symlink_to(tuned, target_is_directory=True)
    done, failed = find_runs([base, tuned, tuned, link, pair_of_runs])
    assert done == [base, tuned] and failed == []
    assert "report: " in caplog.text and f"{tuned} given twice; counted once" in caplog.text
    assert f"{link} is {tuned} again" in caplog.text
    report = build_report([base, tuned, link], tmp_path / "out")
    assert len(report["comparisons"]) == 1 and report["unpaired"] == []

    cmd = [
        sys.executable,
        "-m",
        "specfair.report",
        str(base),
        str(tuned),
        str(link),
        "--out",
        str(tmp_path / "o"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in result.stderr.splitlines() if "counted once" in line]
    assert len(notes) == 1 and "error:" not in result.stderr, result.stderr
    assert len(json.loads((tmp_path / "o" / "report.json").read_text())["comparisons"]) == 1


def test_an_empty_or_cut_samples_file_is_named(pair_of_runs, tmp_path):
    samples = pair_of_runs / "1_tuned" / "samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("")
    status, stderr = report_cli(pair_of_runs, tmp_path=tmp_path)
    assert status == 2 and f"{samples}: empty" in one_error(stderr)

    # cut at a line boundary: only the prompt count in summary.json tells
    summary_file = pair_of_runs / "1_tuned" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["dataset"]["prompts"] = len(lines)
    summary_file.write_text(json.dumps(summary))
    samples.write_text("".join(lines[: len(lines) // 2]))
    status, stderr = report_cli(pair_of_runs, tmp_path=tmp_path)
    line = one_error(stderr)
    assert (
        status == 2 and f"{samples}: {len(lines) // 2} records, but summary.json counts {len(lines)}" in line
    )
    assert "not the same prompts" not in line

    samples.write_text("".join(lines)[:-40])  # cut inside the last line
    status, stderr = report_cli(pair_of_runs, tmp_path=tmp_path)
    assert status == 2 and f"{samples}:{len(lines)}: not a JSON line" in one_error(stderr)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("version", "1", "summary.json version must be an integer >= 0, got '1'"),
        ("version", 1.5, "version must be an integer >= 0, got 1.5"),
        ("version", 99, "version 99 is newer than this specfair reads"),
        ("draft", "base", "summary.json field 'draft' must be a JSON object, got str 'base'"),
        ("categories", [1, 2], "field 'categories' must be a JSON object, got list"),
        ("spec", None, "field 'spec' must be a JSON object, got NoneType"),
        ("dataset", {"prompts": 3}, "summary.json: dataset.name: expected a string, got None"),
    ],
)
def test_a_summary_of_the_wrong_shape_is_one_line(pair_of_runs, tmp_path, field, value, message):
    summary_file = pair_of_runs / "1_tuned" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary[field] = value
    summary_file.write_text(json.dumps(summary))
    status, stderr = report_cli(pair_of_runs, tmp_path=tmp_path)
    line = one_error(stderr)
    assert status == 2 and message in line and str(summary_file) in line, line


def test_a_sweep_with_failed_jobs_says_so_after_the_report():
    sweep = app._Sweep(jobs=3, failed=[("runs/1", 2, "spec.gamma=0: expected an integer >= 1")])
    assert app._Sweep(jobs=3).outcome() is None
    sweep.report = "runs/report.md"
    status, line = sweep.outcome()
    assert status == 2 and line.startswith("1 of 3 multirun job(s) failed (first: runs/1: spec.gamma=0")
    assert line.endswith("the report in runs/report.md covers the rest")
    # another launcher's jobs (not in this process): only the report knows, and the status is 1
    other = app._Sweep(report_failed=[{"run": "runs/0", "why": "exit status 1"}], report="r.md")
    assert other.outcome() == (1, "1 multirun job(s) failed (first: runs/0: exit status 1); the report in r.md "
                                  "covers the rest")  # fmt: skip
    assert app._Sweep(jobs=2, report_error="disk full").outcome()[0] == 1


def test_a_multirun_in_which_every_job_fails_exits_2_after_writing_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "-m", "spec.gamma=0,abc", "logger=none",
           f"hydra.sweep.dir={sweep}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 2 multirun job(s) failed (first: ") and "spec.gamma=0" in last
    assert f"the report in {sweep / 'report.md'}" in last
    report = json.loads((sweep / "report.json").read_text())
    assert len(report["failed"]) == 2 and report["comparisons"] == []
    assert not list(sweep.rglob("summary.json"))
