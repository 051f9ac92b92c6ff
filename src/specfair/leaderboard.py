"""`python -m specfair.leaderboard RUN_OR_SWEEP ... [--out DIR]`: Spec-Bench's per-task-group table for finished
evaluation runs on `dataset=spec_bench` (one row per drafter), with fairness across the groups, the ordering
compared with the published leaderboard, and a grouped-bar plot. Writes leaderboard.md, leaderboard.json and
leaderboard.png (analysis in `specfair.analysis.leaderboard`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specfair.analysis import leaderboard as lb
from specfair.analysis import plots
from specfair.analysis.comparisons import load_run
from specfair.errors import SpecfairError
from specfair.records import write_atomic
from specfair.report import find_runs


def build(paths: list[str], out: Path, resamples: int = lb.RESAMPLES) -> dict:
    try:
        folders, failed = find_runs(paths)
    except ValueError as err:
        raise SpecfairError(str(err)) from None
    runs = [load_run(f) for f in folders]
    if not runs:
        raise SpecfairError(f"no finished evaluation run under {', '.join(paths)}")
    others = sorted({r.dataset for r in runs} - {"spec_bench"})
    if others:
        raise SpecfairError(
            f"the leaderboard is for dataset=spec_bench runs; got runs of {', '.join(others)}"
        )
    result = lb.leaderboard(runs, resamples)
    result["failed"] = failed
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "leaderboard.json", json.dumps(result, indent=2) + "\n")
    write_atomic(out / "leaderboard.md", "# Spec-Bench leaderboard (specfair)\n\n" + lb.markdown(result))
    plots.leaderboard_plot(result, out / "leaderboard.png")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m specfair.leaderboard", description=__doc__.split("\n")[0]
    )
    parser.add_argument("paths", nargs="+", help="run folders, or sweep folders holding them")
    parser.add_argument("--out", default=None, help="output folder (default: the first path)")
    parser.add_argument("--resamples", type=int, default=lb.RESAMPLES)
    args = parser.parse_args(argv)
    try:
        result = build(args.paths, Path(args.out or args.paths[0]), args.resamples)
    except SpecfairError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(lb.markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
