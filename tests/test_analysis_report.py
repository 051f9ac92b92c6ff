"""The report on synthetic run folders written with `records.save_run`: pairing a replay run (acceptance only,
no wall times) with a decode run, Q2 shares from a train_summary.json, the transfer matrix, the CLI and W&B.

Fast (no model): the counters are drawn at random but consistent with the glossary, so every number the report
prints can be recomputed here from the records.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from specfair import records as rec
from specfair.analysis import stats
from specfair.report import build_report, find_runs, load_run

GAMMA = 4
CATEGORIES = ["a", "b", "c"]
PROMPTS = 6  # per category


def sample(index: int, category: str, p_accept: float, rng, timed: bool) -> rec.SampleRecord:
    """One prompt: blocks of GAMMA proposals, each accepting a geometric-like prefix with probability p_accept."""
    accept = []
    for _ in range(int(rng.integers(3, 7))):
        n = 0
        while n < GAMMA and rng.random() < p_accept:
            n += 1
        accept.append(n)
    new_tokens = 1 + sum(n + 1 for n in accept)
    wall = float(rng.uniform(0.5, 1.0))
    return rec.SampleRecord(
        index=index,
        id=f"p{index}",
        category=category,
        prompt_ids=[1, 2, 3],
        output_ids=list(range(new_tokens)),
        new_tokens=new_tokens,
        proposed=GAMMA * len(accept),
        accepted=sum(accept),
        blocks=len(accept),
        rejections=sum(n < GAMMA for n in accept),
        accept_lengths=accept,
        proposed_lengths=[GAMMA] * len(accept),
        baseline_new_tokens=new_tokens if timed else 0,
        wall_s=wall if timed else None,
        baseline_wall_s=wall * 1.5 if timed else None,
    )


def group_summary(samples: list[rec.SampleRecord]) -> dict:
    """What the metric reports for a group: the glossary ratios and cumulative acceptance by position."""
    out = {m: stats.metric_value(samples, m) for m in rec.METRICS}
    lengths = [n for s in samples for n in s.accept_lengths]
    out["position_acceptance"] = [sum(n >= i + 1 for n in lengths) / len(lengths) for i in range(GAMMA)]
    return out


def write_run(
    folder,
    *,
    dataset="toy",
    draft=None,
    p_accept=0.5,
    mode="decode",
    seed=0,
    prompt_set="prompts-1",
    spec=None,
):
    """A complete run folder; replay runs (mode=replay) carry no wall times."""
    rng = np.random.default_rng(seed + int(100 * p_accept))
    timed = mode == "decode"
    samples = [
        sample(i * len(CATEGORIES) + j, c, p_accept + 0.05 * j, rng, timed)
        for i in range(PROMPTS)
        for j, c in enumerate(CATEGORIES)
    ]
    summary = rec.RunSummary(
        dataset={"name": dataset},
        pair={"name": "tiny"},
        draft=draft or {"name": "base", "path": None},
        spec=spec or {"gamma": GAMMA, "max_new_tokens": 32, "temperature": 0.0},
        seed=0,
        overall=group_summary(samples),
        categories={c: group_summary([s for s in samples if s.category == c]) for c in CATEGORIES},
        mode=mode,
        baseline=timed,
        prompt_set=prompt_set,
    )
    rec.save_run(folder, samples, summary)
    return folder


def finetuned(trained_on="toy", path=None) -> dict:
    return {"name": "finetuned", "trained_on": trained_on, "train_name": "kd", "path": path}


@pytest.fixture
def trained_draft(tmp_path):
    """A fine-tuned draft folder with train_summary.json beside it: category a had most of the data."""
    export = tmp_path / "ckpt" / "toy" / "kd"
    counts = {
        "a": {"rows": 60, "tokens": 6000},
        "b": {"rows": 30, "tokens": 3000},
        "c": {"rows": 10, "tokens": 1000},
    }
    train = rec.TrainSummary(
        pair="tiny",
        dataset="toy",
        train={"name": "kd", "sampling": "natural"},
        seed=0,
        steps=10,
        data={"train_counts": counts, "imbalance": {"ratio": 6}},
        val_before={"per_category": {c: {"expected_alpha": 0.1} for c in CATEGORIES}},
        val_after={"per_category": {c: {"expected_alpha": 0.2} for c in CATEGORIES}},
    )
    rec.save_json(train, export / "train_summary.json")
    (export / "draft").mkdir()
    return str(export / "draft")


@pytest.fixture
def decode_vs_replay(tmp_path, trained_draft):
    """A timed decode run of the base draft and a replay run of the fine-tuned draft on the same prompts."""
    runs = tmp_path / "runs"
    write_run(runs / "0_base", p_accept=0.4)
    # replay batches prompts: its batch size changes the speed, not one counter, so it does not block pairing
    spec = {"gamma": GAMMA, "max_new_tokens": 32, "temperature": 0.0, "batch_size": 8}
    write_run(runs / "1_tuned", draft=finetuned(path=trained_draft), p_accept=0.7, mode="replay", spec=spec)
    return runs


def test_replay_run_pairs_with_decode_run_on_acceptance_only(decode_vs_replay, tmp_path):
    report = build_report([decode_vs_replay], tmp_path / "out")
    assert not report["unpaired"] and len(report["comparisons"]) == 1
    r = report["comparisons"][0]
    base, tuned = (load_run(decode_vs_replay / name) for name in ("0_base", "1_tuned"))
    assert tuned.summary.mode == "replay" and tuned.records[0].wall_s is None
    for metric in ("alpha", "acceptance_rate", "block_efficiency"):
        gain = r["overall"]["gain"][metric]
        expected = stats.metric_value(tuned.records, metric) - stats.metric_value(base.records, metric)
        assert gain["value"] == pytest.approx(expected) and gain["low"] <= gain["value"] <= gain["high"]
    # speedup only where both runs are timed: the replay side is None, never 0, and so is the gain
    assert r["overall"]["base"]["speedup"]["value"] == pytest.approx(1.5)
    assert r["overall"]["finetuned"]["speedup"] == {
        "value": None,
        "low": None,
        "high": None,
        "n": len(tuned.records),
    }
    assert r["overall"]["gain"]["speedup"]["value"] is None and r["overall"]["gain"]["speedup"]["low"] is None
    assert r["q1_sentence"].endswith("speedup 1.50× → not timed.")
    assert "| overall |" in (tmp_path / "out" / "report.md").read_text()
    names = {p.split("/")[-1] for p in r["plots"]}
    assert names == {"toy_alpha_bars.png", "toy_position_acceptance.png", "toy_gain_vs_share.png"}
    # Q2 shares come from the train_summary.json beside the replayed draft
    assert r["q2"]["shares"]["a"]["texts"] == pytest.approx(0.6)
    assert r["q2"]["validation_gain"] == pytest.approx(dict.fromkeys(CATEGORIES, 0.1))
    assert json.loads((tmp_path / "out" / "report.json").read_text())["comparisons"][0]["q2"]["seed"] == 0


def test_two_replay_runs_pair_and_say_not_timed(tmp_path):
    write_run(tmp_path / "0_base", mode="replay", p_accept=0.4)
    write_run(tmp_path / "1_tuned", draft=finetuned(), mode="replay", p_accept=0.6)
    r = build_report([tmp_path], tmp_path / "out")["comparisons"][0]
    assert r["overall"]["gain"]["alpha"]["value"] > 0 and r["q2"] is None  # no train_summary.json: no shares
    assert r["q1_sentence"].endswith("speedup not timed.")
    assert not any("speedup" in p for p in r["plots"])


def test_replay_of_other_prompts_is_not_paired(tmp_path):
    write_run(tmp_path / "0_base", p_accept=0.4)
    write_run(tmp_path / "1_tuned", draft=finetuned(), mode="replay", prompt_set="prompts-2")
    report = build_report([tmp_path], tmp_path / "out")
    assert report["comparisons"] == []
    assert any("differs in 'prompt_set'" in u for u in report["unpaired"])
    assert any("no fine-tuned partner" in u for u in report["unpaired"])


def test_sampled_replay_runs_are_listed_not_paired(tmp_path):
    """At temperature > 0 a replay holds expected_alpha only: comparing its (absent) counters would be nonsense."""
    sampled = {"gamma": GAMMA, "max_new_tokens": 32, "temperature": 1.0}
    write_run(tmp_path / "0_base", mode="replay", spec=sampled)
    write_run(tmp_path / "1_tuned", draft=finetuned(), mode="replay", p_accept=0.6, spec=sampled)
    report = build_report([tmp_path], tmp_path / "out")
    assert report["comparisons"] == []
    assert sum("expected_alpha only" in u for u in report["unpaired"]) == 2


def test_speedup_of_untimed_prompts_is_undefined_not_zero():
    rng = np.random.default_rng(0)
    untimed = [sample(i, "a", 0.5, rng, timed=False) for i in range(4)]
    timed = [sample(i, "a", 0.5, rng, timed=True) for i in range(4)]
    assert stats.metric_value(untimed, "speedup") is None
    assert stats.bootstrap_ci(untimed, "speedup")["low"] is None
    assert stats.metric_value(timed, "speedup") == pytest.approx(1.5)
    assert np.isnan(stats.per_prompt(untimed, "speedup")).all()


def test_transfer_matrix_from_synthetic_runs(tmp_path):
    write_run(tmp_path / "0_toy_base", p_accept=0.4)
    write_run(tmp_path / "1_toy_tuned", draft=finetuned(), p_accept=0.7)
    write_run(tmp_path / "2_other_base", dataset="other", p_accept=0.5)
    write_run(tmp_path / "3_other_tuned", dataset="other", draft=finetuned(), p_accept=0.3)
    write_run(tmp_path / "4_lone_base", dataset="lone", p_accept=0.5)
    out = tmp_path / "out"
    report = build_report([tmp_path], out, expected=[("finetuned:other/kd", "toy")])
    m = report["transfer"]
    assert m["rows"] == ["base", "toy/kd", "other/kd"] and m["columns"] == ["toy", "other", "lone"]
    assert m["alpha"]["base"]["lone"]["value"] == pytest.approx(
        stats.metric_value(load_run(tmp_path / "4_lone_base").records, "alpha")
    )
    assert m["delta"]["toy/kd"]["toy"]["value"] > 0 > m["delta"]["toy/kd"]["other"]["value"]
    assert ["other/kd", "toy"] in m["missing"]
    assert m["sentences"][0].startswith("In domain, alpha changed by +")
    md = (out / "report.md").read_text()
    assert "## Transfer matrix" in md and "| other/kd | missing | missing | missing |" in md
    assert (out / "transfer_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_find_runs_skips_training_runs_and_lists_failed_ones(tmp_path):
    write_run(tmp_path / "0_base")
    (tmp_path / "1_train" / ".hydra").mkdir(parents=True)
    (tmp_path / "1_train" / "train_summary.json").write_text("{}")
    (tmp_path / "2_failed" / ".hydra").mkdir(parents=True)
    done, failed = find_runs([tmp_path])
    assert done == [tmp_path / "0_base"] and failed == [
        {"run": str(tmp_path / "2_failed"), "why": "no summary.json"}
    ]


def test_cli_on_synthetic_runs_and_a_cut_short_file(decode_vs_replay, tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "specfair.report", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    out = cli(decode_vs_replay, "--out", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    assert "toy: alpha rose in" in out.stdout and (tmp_path / "out" / "report.md").is_file()
    samples = decode_vs_replay / "1_tuned" / "samples.jsonl"
    samples.write_text(samples.read_text()[:-20])
    out = cli(decode_vs_replay, "--out", tmp_path / "out")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "samples.jsonl:18" in out.stderr


def test_report_logs_to_wandb_offline(decode_vs_replay, tmp_path):
    out = tmp_path / "out"
    build_report([decode_vs_replay], out, {"enabled": True, "mode": "offline", "group": "my-group"})
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(f.read_bytes() for f in runs[0].glob("*.wandb"))
    assert b"my-group" in data and b"q1_q2" in data and b"answers" in data and b"toy_alpha_bars" in data
