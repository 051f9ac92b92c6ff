"""A killed evaluation continues from its partial records and ends with an uninterrupted run's counters."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specfair import ROOT
from specfair.errors import SpecfairError
from specfair.evaluation import resume
from specfair.records import load_samples, load_summary

TIMINGS = {"wall_s", "baseline_wall_s", "draft_s", "verify_s", "prefill_s", "baseline_prefill_s"}
SUMMARY_TIMINGS = {"tokens_per_s", "baseline_tokens_per_s", "speedup", "draft_cost", "predicted_speedup",
                   "wall_s", "baseline_wall_s", "draft_s", "timed_prompts", "draft_steps", "draft_target_cost_ratio",
                   "verify_cost_ratio", "predicted_speedup_with_verify_cost"}  # fmt: skip


def command(out: Path, *overrides) -> list[str]:
    return [sys.executable, str(ROOT / "evaluate.py"), *overrides, "logger=none", f"hydra.run.dir={out}"]


def kill_when_partial(cmd: list[str], out: Path, lines: int = 2, timeout: float = 400) -> None:
    """Start an evaluation and SIGKILL it once `lines` prompts are recorded (and before its summary)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    partial, deadline = out / "samples.rank0.partial.jsonl", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.is_file() and partial.read_text().count("\n") >= lines:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    assert partial.read_text().count("\n") >= lines


def without(mapping: dict, keys: set) -> dict:
    return {k: v for k, v in mapping.items() if k not in keys}


def assert_same_counters(resumed: Path, reference: Path) -> None:
    a, b = load_samples(resumed), load_samples(reference)
    assert [r.index for r in a] == list(range(len(b)))
    for x, y in zip(a, b, strict=True):
        assert without(x.to_dict(), TIMINGS) == without(y.to_dict(), TIMINGS)
    sa, sb = load_summary(resumed), load_summary(reference)
    for group in ("overall", *sb.categories):
        ga = sa.overall if group == "overall" else sa.categories[group]
        gb = sb.overall if group == "overall" else sb.categories[group]
        assert without(ga, SUMMARY_TIMINGS) == without(gb, SUMMARY_TIMINGS), group
    assert sa.lossless_mismatches == sb.lossless_mismatches
    assert not list(resumed.glob("*.partial.jsonl")) and not (resumed / resume.STATE).exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["dataset.per_category=2", "spec.max_new_tokens=8", "seed=3"],
        pytest.param(
            ["mode=replay", "spec.batch_size=2", "dataset.per_category=3", "spec.max_new_tokens=8", "seed=3"],
            marks=pytest.mark.slow,  # the same resume path as decode; make test-all
        ),
    ],
    ids=["decode", "replay"],
)
def test_sigkilled_evaluation_resumes_to_the_uninterrupted_counters(tmp_path, overrides):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # separate continuation caches: the killed replay generates as the reference did
    out = subprocess.run(command(ref, *overrides, f"paths.cache_dir={tmp_path}/c1"), capture_output=True,
                         text=True, timeout=600, cwd="/")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    cmd = command(killed, *overrides, f"paths.cache_dir={tmp_path}/c2")
    kill_when_partial(cmd, killed)
    done_before = killed.joinpath("samples.rank0.partial.jsonl").read_text().count("\n")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming: {done_before} of" in again.stdout + again.stderr
    assert_same_counters(killed, ref)


def meta(**spec) -> dict:
    return {"mode": "decode", "spec": {"gamma": 4, **spec}, "seed": 0, "world_size": 1, "prompt_set": "abc"}


def test_a_killed_run_of_other_settings_is_refused_in_one_line(tmp_path):
    resume.prepare(tmp_path, meta(), "auto")
    (tmp_path / "samples.rank0.partial.jsonl").write_text("{}\n")
    resume.prepare(tmp_path, {**meta(), "world_size": 3}, "auto")  # more processes: still the same run
    with pytest.raises(SpecfairError, match=r"spec\.gamma=4, this run has 5") as err:
        resume.prepare(tmp_path, meta(gamma=5), "auto")
    assert "\n" not in str(err.value) and "resume=false" in str(err.value)
    resume.prepare(tmp_path, meta(gamma=5), False)  # start over
    assert not resume.partial_files(tmp_path)


def test_resume_true_takes_over_the_latest_unfinished_run_beside_it(tmp_path):
    old, other, new = tmp_path / "old", tmp_path / "other", tmp_path / "new"
    resume.prepare(old, meta(), "auto")
    (old / "samples.rank1.partial.jsonl").write_text('{"index": 0}\n')
    resume.prepare(other, meta(gamma=2), "auto")
    (other / "samples.rank0.partial.jsonl").write_text('{"index": 1}\n')
    resume.prepare(new, meta(), True)
    assert (new / "samples.rank1.partial.jsonl").read_text() == '{"index": 0}\n'
    assert (old / resume.MOVED).read_text().strip() == str(new)
    with pytest.raises(SpecfairError, match="no unfinished run"):
        resume.prepare(tmp_path / "newer", meta(gamma=7), True)


def test_the_report_skips_a_run_taken_over_and_counts_a_killed_one_as_failed(tmp_path):
    from specfair.report import find_runs

    for name in ("moved", "killed"):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / "samples.rank0.partial.jsonl").write_text("{}\n")
    (tmp_path / "moved" / resume.MOVED).write_text("elsewhere\n")
    done, failed = find_runs([tmp_path])
    assert done == [] and [f["run"] for f in failed] == [str(tmp_path / "killed")]


def test_partial_records_are_read_once_and_a_torn_line_is_dropped(tmp_path):
    from specfair.data.rows import Prompt

    prompts = [Prompt(id=f"p{i}", category="a", input_ids=[1, 2], text="t") for i in range(3)]
    record = {"index": 1, "id": "p1", "category": "a", "prompt_ids": [1, 2], "output_ids": [3], "new_tokens": 1,
              "proposed": 1, "accepted": 0, "blocks": 1, "rejections": 1, "accept_lengths": [0],
              "proposed_lengths": [1]}  # fmt: skip
    (tmp_path / "samples.rank0.partial.jsonl").write_text(json.dumps(record) + "\n" + '{"index": 2, "id"')
    (tmp_path / "samples.rank1.partial.jsonl").write_text(json.dumps(record) + "\n")
    assert [r.index for r in resume.read_partials(tmp_path, prompts)] == [1]
    (tmp_path / "samples.rank1.partial.jsonl").write_text(json.dumps({**record, "id": "other"}) + "\n")
    with pytest.raises(SpecfairError, match="not this run's prompt"):
        resume.read_partials(tmp_path, prompts)


# --- issue 30: a failed start holds nothing to resume; the prompts' tokens are a resume and pairing key -------


@pytest.mark.parametrize("partial", ["", '{"index": 0, "id": "p0", "categ'], ids=["empty", "torn"])
def test_a_failed_start_is_reused_by_the_corrected_command(tmp_path, partial):
    """A start that finished no prompt (error.txt, .hydra, an empty or torn partial file) is no killed run."""
    resume.prepare(tmp_path, meta(max_new_tokens=100_000), "auto")
    (tmp_path / "samples.rank0.partial.jsonl").write_text(partial)
    (tmp_path / "error.txt").write_text("unexpected RuntimeError: ...\n")
    (tmp_path / ".hydra").mkdir()
    assert not resume.unfinished(tmp_path)
    resume.prepare(tmp_path, meta(max_new_tokens=32), "auto")  # the fixed command, same folder
    assert not resume.partial_files(tmp_path)
    assert json.loads((tmp_path / resume.STATE).read_text())["spec"]["max_new_tokens"] == 32


@pytest.fixture(scope="module")
def prompt_sets(compose_cfg):
    """{name: prompt-set fingerprint} of the default evaluation's prompts under other prompt settings
    (the tokenizer only: no model loads)."""
    from specfair.evaluation.run import check_before_loading, prompt_set_hash

    variants = {
        "default": [],
        "again": [],
        "template": ["dataset.prompt_template='Text: {text}'"],
        "chat": ["dataset.chat=true"],
        "prompt_tokens": ["dataset.prompt_tokens=16"],
    }
    return {
        name: prompt_set_hash(check_before_loading(compose_cfg(*o, "dataset.per_category=2")).prompts)
        for name, o in variants.items()
    }


def test_the_prompt_set_is_the_prompts_token_ids(prompt_sets):
    assert prompt_sets["default"] == prompt_sets["again"] and prompt_sets["default"].startswith("t:")
    assert len(set(prompt_sets.values())) == 4  # template, chat and prompt_tokens each another prompt set


def test_a_killed_run_of_another_template_is_refused_and_does_not_pair(tmp_path, prompt_sets):
    from specfair.analysis.comparisons import pairing_mismatch

    old, new = (
        {**meta(), "prompt_set": prompt_sets["default"]},
        {**meta(), "prompt_set": prompt_sets["template"]},
    )
    resume.prepare(tmp_path, old, "auto")
    (tmp_path / "samples.rank0.partial.jsonl").write_text('{"index": 0}\n')
    with pytest.raises(SpecfairError, match=r"prompt_set=.*another dataset.prompt_template, dataset.chat"):
        resume.prepare(tmp_path, new, "auto")
    assert pairing_mismatch(old, new) == "prompt_set" and pairing_mismatch(old, dict(old)) is None


def test_a_summary_with_the_old_fingerprint_loads_but_pairs_with_no_new_run(tmp_path, prompt_sets):
    """Fingerprints before token ids (16 hex digits of ids, categories and lengths): still read; they
    pair with nothing new, and resuming one says why."""
    from specfair.analysis.comparisons import pairing_mismatch
    from specfair.records import RunSummary

    legacy = {**meta(), "prompt_set": "0123456789abcdef"}
    summary = RunSummary.from_dict({**legacy, "dataset": {"name": "agnews"}, "pair": {"name": "p"},
                                    "draft": {"name": "base"}, "overall": {}, "categories": {}})  # fmt: skip
    assert summary.prompt_set == "0123456789abcdef"
    assert pairing_mismatch(summary, {**legacy, "prompt_set": prompt_sets["default"]}) == "prompt_set"
    resume.prepare(tmp_path, legacy, "auto")
    (tmp_path / "samples.rank0.partial.jsonl").write_text('{"index": 0}\n')
    with pytest.raises(SpecfairError, match="a fingerprint from before prompt sets covered token ids"):
        resume.prepare(tmp_path, {**legacy, "prompt_set": prompt_sets["default"]}, "auto")
