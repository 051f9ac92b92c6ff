"""Answer Q1 and Q2 from finished evaluation runs: paired before/after statistics, fairness, plots.

`python -m specfair.report DIR [DIR ...]` (or the Hydra callback at the end of a multirun) reads run folders
(`summary.json` + `samples.jsonl`), pairs each fine-tuned draft with the base draft evaluated on the same
prompts, pair and decoding settings, and writes `report.md`, `report.json` and PNG plots.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from specfair.analysis import imbalance, stats, transfer

log = logging.getLogger(__name__)

METRICS = ("alpha", "acceptance_rate", "block_efficiency", "speedup")
PAIRING_FIELDS = ("prompt_set", "pair", "spec", "seed")
RESAMPLES = 2000


# --- reading runs ------------------------------------------------------------------------------------


def find_runs(paths) -> tuple[list[Path], list[dict]]:
    """Completed run folders (with summary.json) under the given paths, and the failed ones with why."""
    done, failed = [], []
    for root in map(Path, paths):
        if not root.exists():
            raise ValueError(f"{root} does not exist")
        candidates = (
            [root]
            if (root / ".hydra").is_dir() or (root / "summary.json").is_file()
            else sorted(
                p
                for p in root.iterdir()
                if p.is_dir() and ((p / ".hydra").is_dir() or (p / "summary.json").is_file())
            )
        )
        for run in candidates:
            if (run / "summary.json").is_file():
                done.append(run)
            elif (run / "train_summary.json").is_file():
                continue  # a training run, not an evaluation
            else:
                why = (
                    (run / "error.txt").read_text().strip()
                    if (run / "error.txt").is_file()
                    else "no summary.json"
                )
                failed.append({"run": str(run), "why": why})
    return done, failed


def load_run(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    with (run / "samples.jsonl").open() as f:
        records = [json.loads(line) for line in f]
    return {"dir": str(run), "summary": summary, "records": records, "label": draft_label(summary)}


def draft_label(summary: dict) -> str:
    draft = summary["draft"]
    if draft.get("name") == "finetuned" and draft.get("trained_on"):
        variant = f"/{draft['variant']}" if draft.get("variant") else ""
        return f"finetuned:{draft['trained_on']}/{draft.get('train_name', 'kd')}{variant}"
    return str(draft.get("name", "draft"))


def intended_cell(run: Path) -> tuple[str, str] | None:
    """(draft label, dataset) of a failed run, from the config Hydra saved before it failed."""
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        draft = {k: cfg.draft.get(k) for k in ("name", "trained_on", "train_name", "variant")}
        return draft_label({"draft": draft}), str(cfg.dataset.name)
    except Exception:  # no saved config, or one that does not resolve alone: nothing to place
        return None


def training_summary(summary: dict) -> dict | None:
    """train_summary.json beside a fine-tuned draft (its data counts per category answer Q2)."""
    path = summary["draft"].get("path")
    if not path:
        return None
    file = Path(path).parent / "train_summary.json"
    return json.loads(file.read_text()) if file.is_file() else None


def pairing_mismatch(a: dict, b: dict) -> str | None:
    for field in PAIRING_FIELDS:
        if a.get(field) != b.get(field):
            return field
    return None


# --- statistics ----------------------------------------------------------------------------------------


def by_category(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["category"], []).append(r)
    return groups


def describe(records: list[dict]) -> dict:
    return {m: stats.bootstrap_ci(records, m, resamples=RESAMPLES, seed=0) for m in METRICS}


def compare(base: dict, tuned: dict) -> dict:
    """Per category and overall: both drafts with CIs, the paired gain, tests, fairness, and Q2 shares."""
    mismatch = pairing_mismatch(base["summary"], tuned["summary"])
    if mismatch:
        raise ValueError(f"cannot pair {base['dir']} with {tuned['dir']}: they differ in {mismatch!r}")
    base_groups, tuned_groups = by_category(base["records"]), by_category(tuned["records"])
    categories = list(base["summary"]["categories"])
    result = {
        "dataset": base["summary"]["dataset"]["name"],
        "base": base["label"],
        "finetuned": tuned["label"],
        "trained_on": tuned["summary"]["draft"].get("trained_on"),
        "runs": [base["dir"], tuned["dir"]],
        "categories": {},
        "overall": {},
    }
    p_values, gains_per_prompt = {}, {}
    for scope, b_rec, t_rec in [("overall", base["records"], tuned["records"])] + [
        (c, base_groups.get(c, []), tuned_groups.get(c, [])) for c in categories
    ]:
        entry = {
            "base": describe(b_rec),
            "finetuned": describe(t_rec),
            "gain": {
                m: stats.paired_difference_ci(b_rec, t_rec, m, resamples=RESAMPLES, seed=0) for m in METRICS
            },
        }
        if scope != "overall":
            b_pair, t_pair = stats.pair_by_id(b_rec, t_rec)
            b_alpha, t_alpha = stats.per_prompt(b_pair, "alpha"), stats.per_prompt(t_pair, "alpha")
            entry["wilcoxon_alpha"] = stats.wilcoxon_paired(b_alpha, t_alpha)
            p_values[scope] = entry["wilcoxon_alpha"]["p_value"]
            gains_per_prompt[scope] = [float(x) for x in t_alpha - b_alpha if np.isfinite(x)]
            entry["position_acceptance"] = {
                "base": base["summary"]["categories"][scope]["position_acceptance"],
                "finetuned": tuned["summary"]["categories"][scope]["position_acceptance"],
            }
            result["categories"][scope] = entry
        else:
            result["overall"] = entry
    for c, p in stats.holm(p_values).items():
        result["categories"][c]["wilcoxon_alpha"]["p_holm"] = p
    result["kruskal_wallis_alpha_gain"] = stats.kruskal_wallis(gains_per_prompt)
    alpha = {
        side: {c: result["categories"][c][side]["alpha"]["value"] for c in categories}
        for side in ("base", "finetuned")
    }
    gains = {c: result["categories"][c]["gain"]["alpha"]["value"] for c in categories}
    result["fairness"] = {
        "base": stats.fairness(alpha["base"]),
        "finetuned": stats.fairness(alpha["finetuned"]),
        "gain": stats.fairness(gains),
    }
    result["q2"] = q2(tuned["summary"], categories, gains)
    result["q1_sentence"], result["q2_sentence"] = q1_sentence(result), q2_sentence(result)
    return result


def q2(tuned_summary: dict, categories: list[str], gains: dict) -> dict | None:
    """Training share (texts, tokens) per category against the alpha gain: Spearman and gain shares."""
    train, dataset = training_summary(tuned_summary), tuned_summary["dataset"]["name"]
    if not train or train.get("dataset", dataset) != dataset:
        # no training data, or another dataset's (a transfer run): its shares say nothing about these categories
        return None
    counts = train["data"]["train_counts"]
    rows = {c: counts.get(c, {}).get("rows", 0) for c in categories}
    tokens = {c: counts.get(c, {}).get("tokens", 0) for c in categories}
    total_rows, total_tokens = sum(rows.values()) or 1, sum(tokens.values()) or 1
    shares = {c: {"texts": rows[c] / total_rows, "tokens": tokens[c] / total_tokens} for c in categories}
    x = [shares[c]["tokens"] for c in categories]
    y = [gains[c] for c in categories]
    return {
        "shares": shares,
        "spearman_tokens_vs_gain": stats.spearman_permutation(x, y, seed=0),
        "gain_shares": stats.gain_shares(gains, {c: shares[c]["tokens"] for c in categories}),
        "train_summary": train.get("run_dir"),
        "imbalance": train["data"].get("imbalance"),
        # the training run's own per-category check (teacher-forced expected alpha on held-out texts)
        "validation_gain": {
            c: train["val_after"][f"expected_alpha/{c}"] - train["val_before"][f"expected_alpha/{c}"]
            for c in categories
            if f"expected_alpha/{c}" in train.get("val_after", {})
            and f"expected_alpha/{c}" in train.get("val_before", {})
        },
        "sampling": train.get("train", {}).get("sampling"),
        "seed": train.get("seed"),
    }


def _fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _speedups(entry: dict) -> str:
    before, after = entry["base"]["speedup"]["value"], entry["finetuned"]["speedup"]["value"]
    if before is None and after is None:
        return "not timed"  # runs made with baseline=false
    return f"{_fmt(before, 2)}× → {_fmt(after, 2)}×"


def q1_sentence(result: dict) -> str:
    overall = result["overall"]
    cats = result["categories"]
    rose = [c for c in cats if (cats[c]["gain"]["alpha"]["low"] or -1) > 0]
    up = [c for c in cats if (cats[c]["gain"]["alpha"]["value"] or 0) > 0]
    g = overall["gain"]["alpha"]
    return (
        f"{result['dataset']}: alpha rose in {len(up)}/{len(cats)} categories ({len(rose)} with a 95% CI above 0); "
        f"overall alpha {_fmt(overall['base']['alpha']['value'])} → {_fmt(overall['finetuned']['alpha']['value'])}, "
        f"gain 95% CI [{_fmt(g['low'])}, {_fmt(g['high'])}]; speedup {_speedups(overall)}."
    )


def q2_sentence(result: dict) -> str:
    fair = result["fairness"]
    gap_before, gap_after = fair["base"]["gap"], fair["finetuned"]["gap"]
    text = (
        f"{result['dataset']}: the alpha gap between categories went {_fmt(gap_before)} → {_fmt(gap_after)} "
        f"(worst category {fair['finetuned']['worst_category']} at {_fmt(fair['finetuned']['worst'])}); "
        f"gains ranged {_fmt(fair['gain']['worst'])}–{_fmt(fair['gain']['best'])}"
    )
    q = result.get("q2")
    if q and q["spearman_tokens_vs_gain"]["rho"] is not None:
        s = q["spearman_tokens_vs_gain"]
        token_shares = [v["tokens"] for v in q["shares"].values()]
        text += (
            f"; Spearman correlation between a category's share of training tokens "
            f"({min(token_shares):.2f}–{max(token_shares):.2f}) and its gain "
            f"{s['rho']:+.2f} (permutation p = {s['p_value']:.2f})"
        )
    elif q:
        text += "; training shares are known but too few categories vary for a rank correlation"
    return text + "."


# --- outputs -------------------------------------------------------------------------------------------


def plot(result: dict, out_dir: Path, prefix: str | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    prefix = prefix or result["dataset"]
    cats = list(result["categories"])
    x = np.arange(len(cats))
    for metric in ("alpha", "speedup"):
        if result["overall"]["base"][metric]["value"] is None:
            continue  # not measured (speedup of runs made with baseline=false)
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(cats) + 2), 3.8))
        for offset, side in ((-0.2, "base"), (0.2, "finetuned")):
            vals = [result["categories"][c][side][metric] for c in cats]
            v = np.array([d["value"] if d["value"] is not None else np.nan for d in vals])
            lo = np.array([d["value"] - d["low"] if d["low"] is not None else 0 for d in vals])
            hi = np.array([d["high"] - d["value"] if d["high"] is not None else 0 for d in vals])
            ax.bar(x + offset, v, 0.4, yerr=[lo, hi], capsize=3, label=result[side])
        ax.set_xticks(x, cats, rotation=20, ha="right")
        ax.set_ylabel(metric)
        ax.set_title(f"{result['dataset']}: {metric} per category (95% bootstrap CI)", fontsize=10)
        ax.legend()
        fig.tight_layout()
        files.append(out_dir / f"{prefix}_{metric}_bars.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for c in cats:
        for side, style in (("base", "--"), ("finetuned", "-")):
            curve = result["categories"][c]["position_acceptance"][side]
            ax.plot(
                range(1, len(curve) + 1),
                [np.nan if v is None else v for v in curve],
                style,
                marker="o",
                label=f"{c} ({side})",
            )
    ax.set_xticks(range(1, len(curve) + 1))
    ax.set_xlabel("draft position i")
    ax.set_ylabel("P(first i drafts accepted)")
    ax.set_title(f"{result['dataset']}: acceptance by draft position")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    files.append(out_dir / f"{prefix}_position_acceptance.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    if result.get("q2"):
        shares = [result["q2"]["shares"][c]["tokens"] for c in cats]
        gains = [result["categories"][c]["gain"]["alpha"]["value"] for c in cats]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.scatter(shares, gains)
        for s, g, c in zip(shares, gains, cats, strict=True):
            ax.annotate(c, (s, g), fontsize=8)
        if len(set(shares)) > 1:
            slope, intercept = np.polyfit(shares, gains, 1)
            xs = np.linspace(min(shares), max(shares), 10)
            ax.plot(xs, slope * xs + intercept, "--", label=f"fit: slope {slope:.2f}")
            ax.legend()
        ax.set_xlabel("share of training tokens")
        ax.set_ylabel("alpha gain (fine-tuned − base)")
        ax.set_title(f"{result['dataset']}: gain vs training share")
        fig.tight_layout()
        files.append(out_dir / f"{prefix}_gain_vs_share.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


def markdown(report: dict) -> str:
    lines = ["# specfair report", ""]
    for r in report["comparisons"]:
        lines += [
            f"## {r['dataset']}: {r['base']} → {r['finetuned']}",
            "",
            f"**Q1.** {r['q1_sentence']}",
            "",
            f"**Q2.** {r['q2_sentence']}",
            "",
            "| category | alpha base | alpha fine-tuned | gain [95% CI] | Wilcoxon p (Holm) | speedup base → fine-tuned |",
            "|---|---|---|---|---|---|",
        ]
        for c, e in [*r["categories"].items(), ("overall", r["overall"])]:
            g = e["gain"]["alpha"]
            p = e.get("wilcoxon_alpha", {}).get("p_holm")
            lines.append(
                f"| {c} | {_fmt(e['base']['alpha']['value'])} | {_fmt(e['finetuned']['alpha']['value'])} | "
                f"{_fmt(g['value'])} [{_fmt(g['low'])}, {_fmt(g['high'])}] | {_fmt(p)} | "
                f"{_speedups(e)} |"
            )
        kw = r["kruskal_wallis_alpha_gain"]
        lines += [
            "",
            f"Kruskal–Wallis on per-prompt alpha gains across categories: p = {_fmt(kw['p_value'])}.",
            "",
        ]
        for side in ("base", "finetuned", "gain"):
            f = r["fairness"][side]
            lines.append(
                f"- fairness of {side} alpha: worst {f['worst_category']} {_fmt(f['worst'])}, gap "
                f"{_fmt(f['gap'])}, min/max {_fmt(f['min_max_ratio'])}, CV {_fmt(f['cv'])}"
            )
        lines += [""] + [f"![{p.name}]({p.name})" for p in map(Path, r.get("plots", []))] + [""]
    for result in (report.get("imbalance") or {}).values():
        lines += imbalance.markdown(result) + [
            f"![{Path(result['plot']).name}]({Path(result['plot']).name})",
            "",
        ]
    if report.get("transfer"):
        m = report["transfer"]
        lines += transfer.markdown(m) + [f"![{Path(m['plot']).name}]({Path(m['plot']).name})", ""]
    if report["unpaired"]:
        lines += ["## Runs without a partner", ""] + [f"- {u}" for u in report["unpaired"]] + [""]
    if report["failed"]:
        lines += ["## Failed runs", ""] + [f"- {f['run']}: {f['why']}" for f in report["failed"]] + [""]
    return "\n".join(lines)


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def build_report(paths, out_dir: Path, wandb_cfg: dict | None = None, expected=()) -> dict:
    """The report over run folders; `expected` (draft label, dataset) cells of a planned transfer matrix
    that have no completed run are shown as missing (an experiment knows them even where a run never started)."""
    runs_dirs, failed = find_runs(paths)
    runs = [load_run(d) for d in runs_dirs]
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs, unpaired, used = [], [], set()
    for tuned in [r for r in runs if r["label"] != "base"]:
        bases = [
            b
            for b in runs
            if b["label"] == "base" and b["summary"]["dataset"]["name"] == tuned["summary"]["dataset"]["name"]
        ]
        matching = [b for b in bases if pairing_mismatch(b["summary"], tuned["summary"]) is None]
        if not matching:
            why = (
                f"differs in {pairing_mismatch(bases[0]['summary'], tuned['summary'])!r}"
                if bases
                else "no base run"
            )
            unpaired.append(f"{tuned['dir']} ({tuned['label']}): {why}")
            continue
        pairs.append((matching[0], tuned))
        used |= {matching[0]["dir"], tuned["dir"]}
    per_dataset = [base["summary"]["dataset"]["name"] for base, _ in pairs]
    comparisons = []
    for base, tuned in pairs:
        result = compare(base, tuned)
        dataset = result["dataset"]
        prefix = dataset if per_dataset.count(dataset) == 1 else f"{dataset}__{slug(tuned['label'])}"
        result["plots"] = [str(p) for p in plot(result, out_dir, prefix)]
        comparisons.append(result)
    unpaired += [
        f"{r['dir']} ({r['label']}): no fine-tuned partner"
        for r in runs
        if r["dir"] not in used and r["label"] == "base"
    ]
    report = {"comparisons": comparisons, "unpaired": unpaired, "failed": failed}
    report["imbalance"] = imbalance.analyze(comparisons)
    for result in report["imbalance"].values():
        result["plot"] = str(imbalance.plot(result, out_dir))
    cells = [*expected, *filter(None, (intended_cell(Path(f["run"])) for f in failed))]
    cells = [(row.removeprefix("finetuned:"), dataset) for row, dataset in cells]
    if transfer.applies(comparisons) or any(row.split("/")[0] not in ("base", d) for row, d in cells):
        paired = {c["dataset"] for c in comparisons}  # their base alpha is in the comparison already
        base_alpha = {}
        for r in runs:
            dataset = r["summary"]["dataset"]["name"]
            if r["label"] == "base" and dataset not in paired and dataset not in base_alpha:
                base_alpha[dataset] = stats.bootstrap_ci(r["records"], "alpha", resamples=RESAMPLES, seed=0)
        report["transfer"] = transfer.build(comparisons, base_alpha, cells)
        report["transfer"]["plot"] = str(transfer.heatmap(report["transfer"], out_dir))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report) + "\n")
    if wandb_cfg and wandb_cfg.get("enabled") and comparisons:
        log_report(report, out_dir, wandb_cfg)
    return report


def log_report(report: dict, out_dir: Path, wandb_cfg: dict) -> None:
    import wandb

    run = wandb.init(
        project=wandb_cfg.get("project", "specfair"),
        entity=wandb_cfg.get("entity"),
        mode=wandb_cfg.get("mode", "offline"),
        group=wandb_cfg.get("group"),
        job_type="report",
        name="report",
        dir=str(out_dir),
    )
    try:
        table = wandb.Table(
            columns=[
                "dataset",
                "category",
                "alpha_base",
                "alpha_finetuned",
                "gain",
                "gain_low",
                "gain_high",
                "p_holm",
            ]
        )
        for r in report["comparisons"]:
            for c, e in r["categories"].items():
                g = e["gain"]["alpha"]
                table.add_data(
                    r["dataset"],
                    c,
                    e["base"]["alpha"]["value"],
                    e["finetuned"]["alpha"]["value"],
                    g["value"],
                    g["low"],
                    g["high"],
                    e["wilcoxon_alpha"].get("p_holm"),
                )
        images = {Path(p).stem: wandb.Image(p) for r in report["comparisons"] for p in r["plots"]}
        images |= {
            Path(r["plot"]).stem: wandb.Image(r["plot"]) for r in (report.get("imbalance") or {}).values()
        }
        extra = {}
        if report.get("transfer"):
            m = report["transfer"]
            images["transfer_heatmap"] = wandb.Image(m["plot"])
            columns = [
                "draft",
                "dataset",
                "alpha",
                "alpha_low",
                "alpha_high",
                "change",
                "change_low",
                "change_high",
            ]
            matrix = wandb.Table(columns=columns)
            for row in m["rows"]:
                for d in m["columns"]:
                    a, g = m["alpha"][row][d] or {}, m["delta"][row][d] or {}
                    matrix.add_data(row, d, *(x.get(k) for x in (a, g) for k in ("value", "low", "high")))
            extra["transfer_matrix"] = matrix
        answers = wandb.Table(
            columns=["dataset", "Q1", "Q2"],
            data=[[r["dataset"], r["q1_sentence"], r["q2_sentence"]] for r in report["comparisons"]],
        )
        run.log({"q1_q2": table, "answers": answers, **extra, **images})
    finally:
        run.finish()


class ReportCallback:
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
        try:
            report = build_report([sweep], sweep, logger)
        except Exception as err:  # a report failure must not hide the runs that completed
            log.error("report for %s failed: %s", sweep, err)
            return
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
    args = parser.parse_args(argv)
    out = Path(args.out or args.dirs[0])
    wandb_cfg = {"enabled": args.wandb != "disabled", "mode": args.wandb}
    try:
        report = build_report(args.dirs, out, wandb_cfg)
    except ValueError as err:
        sys.exit(f"error: {err}")
    for r in report["comparisons"]:
        print(r["q1_sentence"])
        print(r["q2_sentence"])
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
