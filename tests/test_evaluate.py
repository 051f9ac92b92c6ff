"""evaluate.py end to end on the real embedded pair and bundled data (small sizes), as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from specfair import ROOT

# glossary fields that are pure counts or ratios of counts: identical however the prompts are sharded
COUNTS = [
    "prompts",
    "new_tokens",
    "proposed",
    "accepted",
    "blocks",
    "rejections",
    "target_calls",
    "acceptance_rate",
    "alpha",
    "block_efficiency",
    "position_acceptance",
]
SMALL = ["dataset.per_category=2", "spec.max_new_tokens=8", "seed=3"]


def run_evaluate(*overrides, multirun=False):
    cmd = [sys.executable, str(ROOT / "evaluate.py"), *(["-m"] if multirun else []), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/")


@pytest.mark.parametrize(
    "group, options",
    [
        ("dataset", sorted(p.stem for p in (ROOT / "conf/dataset").glob("[!_]*.yaml"))),
        ("pair", ["smollm2_135m", "smollm2_135m_360m", "pythia_70m_1.4b"]),
        ("trainer", ["default", "gpu", "ddp_cpu"]),
        ("logger", ["wandb", "none"]),
    ],
)
def test_every_config_option_composes(compose_cfg, group, options):
    for option in options:
        cfg = compose_cfg(f"{group}={option}")
        if group in ("dataset", "pair"):
            assert cfg[group].name == option  # the file's own name, so results are labelled by it
        else:
            assert cfg[group].keys()
        assert compose_cfg(f"{group}={option}", config="train")[group] == cfg[group]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    result = run_evaluate(*SMALL, "logger=wandb", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_run_writes_complete_per_category_results(single_run):
    out, result = single_run
    summary = json.loads((out / "summary.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").open()]
    categories = ["World", "Sports", "Business", "Sci/Tech"]
    assert summary["dataset"]["name"] == "agnews" and summary["dataset"]["source"] == "bundled"
    assert list(summary["categories"]) == categories
    assert summary["pair"]["name"] == "smollm2_135m" and summary["draft"]["name"] == "base"
    assert summary["spec"]["gamma"] == 4 and summary["lossless_mismatches"] == 0
    keys = {*COUNTS, "speedup", "tokens_per_s", "baseline_tokens_per_s"}
    for group in [summary["overall"], *summary["categories"].values()]:
        assert keys <= set(group)
        assert len(group["position_acceptance"]) == 4
    assert len(samples) == 8 and [s["category"] for s in samples] == [c for c in categories for _ in range(2)]
    for s in samples:
        assert s["output_ids"] == s["baseline_output_ids"] and s["new_tokens"] == 8
        assert s["target_calls"] == 1 + s["blocks"] and sum(s["accept_lengths"]) == s["accepted"]
    # the summary is the ratio of the per-prompt sums, per category
    sports = [s for s in samples if s["category"] == "Sports"]
    accepted = sum(s["accepted"] for s in sports)
    assert summary["categories"]["Sports"]["acceptance_rate"] == pytest.approx(
        accepted / sum(s["proposed"] for s in sports)
    )
    assert not list(out.glob("*.partial.jsonl"))
    assert "overall" in result.stdout and "Sci/Tech" in result.stdout  # the table
    assert list((out / "wandb").glob("offline-run-*")), "W&B offline run missing"


@pytest.mark.parametrize(
    "devices", [2, pytest.param(3, marks=pytest.mark.slow)]
)  # 3: uneven shards (3, 3, 2)
def test_several_processes_evaluate_every_prompt_once_and_agree(single_run, tmp_path, devices):
    out, _ = single_run
    result = run_evaluate(*SMALL, "logger=none", "trainer=ddp_cpu", f"trainer.devices={devices}",
                          f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((out / "summary.json").read_text())
    two = json.loads((tmp_path / "summary.json").read_text())
    assert two["world_size"] == devices
    for scope in ["overall", *one["categories"]]:
        a = one["overall"] if scope == "overall" else one["categories"][scope]
        b = two["overall"] if scope == "overall" else two["categories"][scope]
        assert {k: a[k] for k in COUNTS} == {k: b[k] for k in COUNTS}, scope
    ids_one = [json.loads(line)["id"] for line in (out / "samples.jsonl").open()]
    ids_two = [json.loads(line)["id"] for line in (tmp_path / "samples.jsonl").open()]
    assert ids_one == ids_two and len(set(ids_two)) == len(ids_two)


def test_replay_on_two_processes_equals_decoding_counter_for_counter(single_run, tmp_path):
    """mode=replay, sharded over 2 processes, against the decode run of the same prompts."""
    out, _ = single_run
    run = tmp_path / "replay"
    result = run_evaluate(*SMALL, "logger=none", "mode=replay", "trainer=ddp_cpu", f"compare_to={out}",
                          f"paths.cache_dir={tmp_path / 'cache'}", "spec.batch_size=3", f"hydra.run.dir={run}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    decoded = json.loads((out / "summary.json").read_text())
    replayed = json.loads((run / "summary.json").read_text())
    assert replayed["mode"] == "replay" and replayed["world_size"] == 2
    assert replayed["replay_mismatches"] == 0 and replayed["continuations_generated"] == 8
    for scope in ["overall", *decoded["categories"]]:
        a = decoded["overall"] if scope == "overall" else decoded["categories"][scope]
        b = replayed["overall"] if scope == "overall" else replayed["categories"][scope]
        assert {k: a[k] for k in COUNTS} == {k: b[k] for k in COUNTS}, scope
        assert b["speedup"] is None and b["tokens_per_s"] is None  # not timed, never 0
    samples = [json.loads(line) for line in (run / "samples.jsonl").open()]
    assert all(s["wall_s"] is None and s["baseline_wall_s"] is None for s in samples)
    # a second draft on the same prompts: no target generation at all
    again = run_evaluate(*SMALL, "logger=none", "mode=replay", "draft.num_layers=2",
                         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'again'}")  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert second["continuations_generated"] == 0 and second["draft_layers"] == 2


def test_compare_to_a_different_decode_run_is_refused(single_run, compose_cfg, tmp_path):
    from specfair.errors import SpecfairError
    from specfair.evaluation.run import evaluate

    out, _ = single_run
    cfg = compose_cfg(*SMALL, "spec.gamma=2", "mode=replay", f"compare_to={out}", "logger=none",
                      f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    with pytest.raises(SpecfairError, match=f"compare_to={out}: that run differs from this one in 'spec'"):
        evaluate(cfg)


@pytest.mark.slow  # the bundled datasets load in test_data; multiruns run in test_report
def test_every_bundled_dataset_runs_in_one_multirun(tmp_path):
    result = run_evaluate(
        "dataset=agnews,imdb,emotion,sst2,cnn_dm",
        "dataset.per_category=1",
        "spec.max_new_tokens=4",
        "logger=none",
        f"hydra.sweep.dir={tmp_path}",
        multirun=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(tmp_path.glob("*/summary.json"))
    names = {json.loads(p.read_text())["dataset"]["name"]: json.loads(p.read_text()) for p in summaries}
    assert set(names) == {"agnews", "imdb", "emotion", "sst2", "cnn_dm"}
    assert len(names["cnn_dm"]["categories"]) == 8 and names["cnn_dm"]["dataset"]["train_counts"]
    assert len(names["emotion"]["categories"]) == 6 and names["imdb"]["overall"]["prompts"] == 2


BAD_INPUT = [
    (["spec.gamma=0"], "spec.gamma=0: must be >= 1"),
    (["spec.max_new_tokens=0"], "spec.max_new_tokens=0: must be >= 1"),
    (["spec.temperature=-1"], "spec.temperature=-1"),
    (["spec.top_p=1.5"], "spec.top_p=1.5: must be in (0, 1]"),
    (
        ["dataset=local", "dataset.path=/nonexistent/rows.jsonl"],
        "dataset file /nonexistent/rows.jsonl not found",
    ),
    (["dataset.text_field=body"], "no field 'body'; rows have fields"),
    (["draft.num_layers=31"], "draft.num_layers=31 must be between 1"),
    (["mode=fast"], "mode=fast: expected one of decode, replay"),
    (["mode=replay", "spec.batch_size=0"], "spec.batch_size=0: must be >= 1"),
    (["compare_to=/tmp"], "compare_to=/tmp: only a greedy replay"),
    (["mode=replay", "paths.cache_dir=/proc/specfair"], "paths.cache_dir=/proc/specfair: cannot write"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUT)
def test_bad_input_is_refused_with_a_message_naming_the_option(compose_cfg, tmp_path, overrides, message):
    """In process (the CLI's one-line form is checked below): the error names the option and nothing is written."""
    from specfair.errors import SpecfairError
    from specfair.evaluation.run import evaluate

    cfg = compose_cfg(*overrides, "logger=none", f"paths.output_dir={tmp_path}")
    with pytest.raises(SpecfairError) as err:
        evaluate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "samples.jsonl").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["spec.gamma=0"], "spec.gamma=0: expected an integer >= 1"),  # the start-up schema, before any model
        (
            ["dataset.text_field=body"],
            "no field 'body'; rows have fields",
        ),  # the data layer, after the models
    ],
)
def test_bad_input_on_the_command_line_is_one_line_and_leaves_no_results(tmp_path, overrides, message):
    result = run_evaluate(*overrides, "logger=none", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "samples.jsonl").exists()
    assert message in (tmp_path / "error.txt").read_text()


def test_unknown_dataset_lists_the_options(tmp_path):
    result = run_evaluate("dataset=nope", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "agnews" in result.stderr and "nope" in result.stderr


def test_local_jsonl_dataset(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"body": f"The {w} market rose sharply today as traders", "kind": k}) + "\n"
            for w, k in [("stock", "a"), ("bond", "a"), ("gold", "b"), ("oil", "b")]
        )
    )
    out = tmp_path / "run"
    out.mkdir()
    (out / "error.txt").write_text("an earlier attempt's failure\n")  # a rerun that succeeds clears it
    result = run_evaluate(
        "dataset=local",
        f"dataset.path={rows}",
        "dataset.text_field=body",
        "dataset.category_field=kind",
        "spec.max_new_tokens=4",
        "logger=none",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(Path(out, "summary.json").read_text())
    assert summary["dataset"]["source"] == "local" and list(summary["categories"]) == ["a", "b"]
    assert summary["overall"]["prompts"] == 4
    assert not (out / "error.txt").exists()


def test_reduced_precision_decode_skips_the_lossless_check(tmp_path):
    """bfloat16 breaks greedy near-ties differently in a verify pass than in single steps: no lossless verdict."""
    result = run_evaluate("dataset.per_category=1", "spec.max_new_tokens=4", "pair.dtype=bfloat16", "logger=none",
                          f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dtype"] == "bfloat16" and summary["lossless_mismatches"] is None
    assert "the lossless check needs float32" in result.stdout + result.stderr


def test_auto_gamma_decodes_losslessly_and_records_its_costs(tmp_path):
    """spec.gamma=auto on the embedded pair: costs timed once, γ chosen per block up to gamma_max, the
    target's greedy output unchanged."""
    out = tmp_path / "run"
    result = run_evaluate(
        "spec.gamma=auto", "spec.gamma_max=3", "dataset.per_category=1", "spec.max_new_tokens=12",
        "logger=none", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(Path(out, "summary.json").read_text())
    assert summary["lossless_mismatches"] == 0 and summary["spec"]["gamma_auto"] is True
    auto = summary["gamma_auto"]
    assert auto["c"] > 0 and len(auto["verify"]) == 4 and 0 < auto["alpha_seen"] < 1
    records = [json.loads(line) for line in Path(out, "samples.jsonl").read_text().splitlines()]
    assert max(g for r in records for g in r["proposed_lengths"]) <= 3


def test_console_shows_each_log_line_once_and_no_adverts(single_run):
    _, result = single_run
    text = result.stdout + result.stderr
    assert text.count("GPU available: False") == 1  # Lightning's own console copy is gone, Hydra's remains
    assert "Tip:" not in text and "litlogger" not in text
