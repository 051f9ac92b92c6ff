"""Answer Q1 and Q2 from finished evaluation runs: paired before/after statistics, fairness, plots.

`python -m specfair.report DIR [DIR ...]` (or the Hydra callback at the end of a multirun) reads run folders
(`summary.json` + `samples.jsonl`), pairs each fine-tuned draft with the base draft evaluated on the same
prompts, pair and decoding settings, and writes `report.md`, `report.json` and PNG plots.

This module only orchestrates; the work lives in `specfair.analysis`:
comparisons (pairing, Q1 statistics, Q2 training shares), imbalance (Q2 across imbalance ratios), transfer
(the draft × dataset matrix), stats (bootstrap CIs and tests), sentences, tables, plots and format. W&B
logging is `specfair.tracking.log_report`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from hydra.experimental.callback import Callback

from specfair import tracking
from specfair.analysis import arms, imbalance, plots, tables, transfer
from specfair.analysis import comparisons as cmp
from specfair.analysis.comparisons import Run, compare, draft_label, load_run
from specfair.errors import SpecfairError
from specfair.records import write_atomic

__all__ = ["ReportCallback", "build_report", "compare", "find_runs", "load_run", "markdown", "main"]

log = logging.getLogger(__name__)


# --- reading runs ------------------------------------------------------------------------------------


def _candidates(root: Path) -> list[Path]:
    """The root itself when it is a run folder, else its sub-folders that are (a sweep or experiment folder)."""

    def is_run(p: Path) -> bool:
        return (p / ".hydra").is_dir() or (p / "summary.json").is_file()

    return [root] if is_run(root) else sorted(p for p in root.iterdir() if p.is_dir() and is_run(p))


def find_runs(paths: Iterable[str | Path]) -> tuple[list[Path], list[dict]]:
    """Completed run folders (with summary.json) under the given paths, and the failed ones with why.

    A training run (train_summary.json, no summary.json) is neither. A run folder reached twice (given twice,
    inside a sweep given too, or through a symlink) counts once, said in one log line. Raises ValueError for a
    missing path.
    """
    done, failed = [], []
    seen: dict[Path, Path] = {}  # real path -> the spelling first met
    for root in map(Path, paths):
        if not root.exists():
            raise ValueError(f"{root} does not exist")
        for run in _candidates(root):
            real = run.resolve()
            if real in seen:
                again = (
                    "given twice" if seen[real] == run else f"is {seen[real]} again (a symlink or a sweep)"
                )
                log.warning("report: %s %s; counted once", run, again)
                continue
            seen[real] = run
            if (run / "resumed_in.txt").is_file() and not (run / "summary.json").is_file():
                continue  # a killed run that a later run took over (evaluate.py resume=true)
            if (run / "summary.json").is_file():
                done.append(run)
            elif not (run / "train_summary.json").is_file():
                error = run / "error.txt"
                why = error.read_text().strip() if error.is_file() else "no summary.json"
                failed.append({"run": str(run), "why": why})
    return done, failed


def intended_cell(run: Path) -> tuple[str, str] | None:
    """(draft label, dataset) of a failed run, from the config Hydra saved before it failed."""
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        draft = {k: cfg.draft.get(k) for k in ("name", "trained_on", "train_name", "variant")}
        return draft_label({"draft": draft}), str(cfg.dataset.name)
    except Exception:  # no saved config, or one that does not resolve alone: nothing to place
        return None


def slug(text: str) -> str:
    """A file-name-safe form of a draft label (for plot prefixes)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


# --- building the report -----------------------------------------------------------------------------------


def _comparisons(pairs: list[tuple[Run, Run]], out_dir: Path) -> list[dict]:
    """Compare every pair and draw its plots; a dataset with several fine-tuned drafts prefixes by label."""
    datasets = [base.dataset for base, _ in pairs]
    results = []
    for base, tuned in pairs:
        result = compare(base, tuned)
        dataset = result["dataset"]
        prefix = dataset if datasets.count(dataset) == 1 else f"{dataset}__{slug(tuned.label)}"
        result["plots"] = [str(p) for p in plots.comparison_plots(result, out_dir, prefix)]
        results.append(result)
    return results


def _transfer(results, runs, failed, expected, out_dir: Path) -> dict | None:
    """The transfer matrix with its heatmap, when some draft was (meant to be) evaluated off its own dataset."""
    intended = filter(None, (intended_cell(Path(f["run"])) for f in failed))
    cells = transfer.planned_cells(expected, intended)
    if not transfer.applies(results, cells):
        return None
    matrix = transfer.build(results, transfer.unpaired_base_alpha(runs, results), cells)
    matrix["plot"] = str(plots.transfer_heatmap(matrix, out_dir))
    return matrix


def build_report(
    paths: Iterable[str | Path],
    out_dir: Path,
    wandb_cfg: dict | None = None,
    expected: Iterable[tuple[str, str]] = (),
) -> dict:
    """The report over run folders, written to `out_dir` (report.json, report.md, PNGs) and returned.

    paths: run, sweep or experiment folders. wandb_cfg: the `logger` config (logged when enabled and there is
    at least one comparison). expected: (draft label, dataset) cells of a planned transfer matrix; those with
    no completed run are shown as missing (an experiment knows them even where a run never started).
    Returns {comparisons, unpaired, failed, imbalance[, transfer]}, the content of report.json.
    """
    paths = list(paths)
    run_dirs, failed = find_runs(paths)
    if not run_dirs and not failed:
        raise SpecfairError(
            f"{', '.join(map(str, paths))}: no runs found (expected run folders with summary.json, or a sweep "
            "or experiment folder holding them)"
        )
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs, unpaired = cmp.pair_runs(runs)
    results = _comparisons(pairs, out_dir)
    report = {"comparisons": results, "unpaired": unpaired, "failed": failed}
    # the imbalance intervals resample prompts: each fine-tuned run's records beside its base's
    report["imbalance"] = imbalance.analyze(results, {t.dir: (b.records, t.records) for b, t in pairs})
    for result in report["imbalance"].values():
        result["plot"] = str(plots.imbalance_plot(result, out_dir))
    matrix = _transfer(results, runs, failed, list(expected), out_dir)
    if matrix is not None:
        report["transfer"] = matrix
    if arms.applies(runs):
        report["arms"] = arms.analyze(runs)
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out_dir / "report.md", markdown(report) + "\n")
    if results:
        tracking.log_report(report, out_dir, wandb_cfg)
    return report


def markdown(report: dict) -> str:
    """report.md: per comparison its Q1/Q2 section, then imbalance, transfer, unpaired and failed runs."""
    lines = ["# specfair report", ""]
    if report.get("arms"):  # the pooled summary first: the per-run sections below can be many
        lines += tables.arms_section(report["arms"])
    for r in report["comparisons"]:
        lines += tables.comparison_section(r)
    for result in (report.get("imbalance") or {}).values():
        lines += tables.imbalance_section(result)
    if report.get("transfer"):
        lines += tables.transfer_section(report["transfer"])
    if report["unpaired"]:
        lines += ["## Runs without a partner", ""] + [f"- {u}" for u in report["unpaired"]] + [""]
    if report["failed"]:
        lines += ["## Failed runs", ""] + [f"- {f['run']}: {f['why']}" for f in report["failed"]] + [""]
    return "\n".join(lines)


# --- entry points --------------------------------------------------------------------------------------------


class ReportCallback(Callback):
    """Hydra callback: write the report into the sweep folder when a multirun ends."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_multirun_end(self, config, **kwargs) -> None:
        if not self.enabled:
            return
        from omegaconf import OmegaConf

        sweep = Path(config.hydra.sweep.dir)
        logger = OmegaConf.to_container(config.logger, resolve=True) if config.get("logger") else {}
        logger["group"] = logger.get("group") or sweep.name  # the sweep's evaluation runs use the same group
        from specfair import app

        try:
            report = build_report([sweep], sweep, logger)
        except Exception as err:  # a report failure must not hide the runs that completed
            line = app.describe(err)[1] if not isinstance(err, ValueError) else app.one_line(err)
            log.error("report for %s failed: %s", sweep, line)
            app.SWEEP.report_error = line  # the multirun then exits non-zero (specfair.app.cli)
            return
        app.SWEEP.report = sweep / "report.md"
        app.SWEEP.report_failed = list(report["failed"])
        log.info(
            "report: %s (%d comparisons, %d failed runs)",
            sweep / "report.md",
            len(report["comparisons"]),
            len(report["failed"]),
        )


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="run folders or sweep folders")
    parser.add_argument("--out", default=None, help="report folder (default: the first DIR)")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"], default="disabled")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    out = Path(args.out or args.dirs[0])
    wandb_cfg = {"enabled": args.wandb != "disabled", "mode": args.wandb}
    try:
        report = build_report(args.dirs, out, wandb_cfg)
    except Exception as err:  # a missing folder, a run file cut short, an empty folder: one line
        from specfair.app import describe, one_line

        if args.debug:
            raise
        status, line = (2, one_line(err)) if isinstance(err, ValueError) else describe(err)
        print(f"error: {line}", file=sys.stderr)
        sys.exit(status)
    for r in report["comparisons"]:
        print(r["q1_sentence"])
        print(r["q2_sentence"])
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
