"""benchmarks/bench_decoding.py: the Makefile's command line parses, and the summary and report of known runs
hold the numbers they are computed from (the timing itself is not tested)."""

import importlib
import re
import sys
from pathlib import Path

import pytest

from specfair import ROOT
from specfair.decoding.engine import DecodeStats


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # as `python benchmarks/bench_decoding.py` sees its siblings
    try:
        return importlib.import_module("bench_decoding")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_the_makefile_command_line_parses(bench):
    line = re.search(r"^BENCH_ARGS := (.*)$", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M)
    args = bench.parse_args([*line.group(1).split(), "--dataset", "imdb", "--json", "F"])
    assert args.matrix and args.auto_gamma and (args.gamma, args.confidence, args.prompts) == (3, 0.4, 4)
    assert (args.dataset, args.json, args.draft_vocab, args.device) == ("imdb", Path("F"), 8192, "cpu")


def known_runs(bench) -> dict:
    """Two prompts of 10 new tokens, two repeats; each engine prompt: blocks (γ_b, n_b) = (2, 2) and (2, 1)."""

    def stats():
        s = DecodeStats(new_tokens=10)
        s.add_block(2, 2, draft_s=0.01, verify_s=0.05)
        s.add_block(2, 1, draft_s=0.01, verify_s=0.05)
        return [s, s]

    def runs(*seconds, engine=False):
        return [bench.Run(t, [[1] * 10, [2] * 10], stats() if engine else []) for t in seconds]

    return {
        "target": runs(1.0, 2.0),
        "hf_assisted": runs(0.5, 1.0),
        "engine": runs(0.5, 0.5, engine=True),
        "engine(int8)": runs(0.25, 0.5, engine=True),
    }


def test_summary_of_known_runs(bench):
    summary = bench.summarize(known_runs(bench), gamma=2)
    assert list(summary) == ["tokens", "tokens_per_s", "ratios", "engine_compiled", "variants", "engine"]
    assert summary["tokens"] == 20 and summary["tokens_per_s"]["target"]["median"] == 15.0
    assert summary["ratios"] == {"engine/target": 3.0, "hf_assisted/target": 2.0, "engine/hf_assisted": 1.5}
    e = summary["engine"]
    assert (e["accepted"], e["rejections"], e["proposed"], e["blocks"]) == (6, 2, 8, 4)
    assert e["alpha"] == 0.75 and e["block_efficiency"] == pytest.approx(20 / 6)
    assert e["predicted_block_efficiency"] == pytest.approx(1 + 0.75 + 0.75**2)
    # c per repeat: (0.04 s / 8 draft steps) over the target's 1/20 and 2/20 s per token
    assert e["cost_ratio_c_repeats"] == pytest.approx([0.1, 0.05]) and e["cost_ratio_c"] == pytest.approx(
        0.075
    )
    assert e["verify_cost_ratio_v"] == pytest.approx(0.75)  # (0.2 s / 4 blocks) over the same, median
    assert summary["variants"]["engine(int8)"]["speedup_vs_target"] == pytest.approx(4.0)
    assert summary["engine_compiled"] == {}


def test_the_report_prints_every_table(bench):
    summary = bench.summarize(known_runs(bench), gamma=2)
    with bench.console.capture() as captured:
        bench.print_report(summary, repeats=2)
    text = captured.get()
    assert "Greedy decoding throughput" in text and "engine/hf_assisted" in text
    assert "engine(int8)" in text and "0.750  (6/8)" in text and "ms per token" not in text
