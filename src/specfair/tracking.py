"""Weights & Biases, in one place for the three producers: training (a Lightning logger), evaluation (one run
per evaluation: metrics, tables, charts) and the report (the Q1/Q2 tables, answers and plots).

Every producer reads the same `logger` config (conf/logger/*.yaml: enabled, project, entity, mode, group,
tags); offline is the default and `wandb sync` uploads later. `wandb` (and Lightning) are imported only when
logging is enabled, so reading runs or writing a report never loads them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from specfair.records import LOGGED_METRICS, ratio

log = logging.getLogger(__name__)


def enabled(logger_cfg: Mapping | None) -> bool:
    """Whether the logger config asks for W&B at all (a missing config means no)."""
    return bool(logger_cfg) and bool(logger_cfg.get("enabled"))


def sweep_group(logger_cfg: Mapping) -> str | None:
    """The W&B group: logger.group if set, else the multirun's sweep folder name (so one sweep is one group)."""
    if logger_cfg.get("group"):
        return logger_cfg.get("group")
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def server_reachable(timeout: float = 3.0) -> bool:
    """Whether the W&B server (WANDB_BASE_URL, default api.wandb.ai) accepts a TCP connection."""
    import os
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def run_mode(logger_cfg: Mapping) -> str:
    """logger.mode, except that online without a reachable server logs offline (within seconds, with a warning)
    instead of waiting on wandb's retries: the run's results must not depend on the network."""
    mode = str(logger_cfg.get("mode", "offline"))
    if mode == "online" and not server_reachable():
        log.warning("W&B server unreachable: logging offline instead (upload later with `wandb sync`)")
        return "offline"
    return mode


def _init_args(logger_cfg: Mapping, job_type: str, name: str) -> dict:
    """The `wandb.init` keywords every producer shares."""
    return {
        "project": logger_cfg.get("project", "specfair"),
        "entity": logger_cfg.get("entity"),
        "mode": run_mode(logger_cfg),
        "group": sweep_group(logger_cfg),
        "tags": list(logger_cfg.get("tags") or []),
        "job_type": job_type,
        "name": name,
    }


# --- training --------------------------------------------------------------------------------------------


def lightning_logger(
    logger_cfg: Mapping | None, out_dir: str | Path, name: str, config: Mapping | None = None
):
    """A Lightning `WandbLogger` for a training run writing under `out_dir`, or False when W&B is off.

    `config` (a plain dict, e.g. the resolved Hydra config) becomes the W&B run's config when the run starts,
    so the caller needs no separate `log_hyperparams`. False is what `Trainer(logger=...)` takes for "none".
    """
    if not enabled(logger_cfg):
        return False
    from lightning.pytorch.loggers import WandbLogger

    extra = {"config": dict(config)} if config else {}
    args = _init_args(logger_cfg, "train", name)
    return WandbLogger(save_dir=str(out_dir), **args, **extra)


# --- evaluation ------------------------------------------------------------------------------------------


def _samples_table(wandb, records: list[Mapping], decode: Callable[[list[int]], str]):
    """One row per prompt: text in and out, counters, and its speedup (None where the prompt was not timed)."""
    table = wandb.Table(
        columns=["id", "category", "prompt", "output", "proposed", "accepted", "new_tokens", "speedup"]
    )
    for r in records:
        table.add_data(
            r["id"],
            r["category"],
            decode(r["prompt_ids"]),
            decode(r["output_ids"]),
            r["proposed"],
            r["accepted"],
            r["new_tokens"],
            ratio(r.get("baseline_wall_s"), r.get("wall_s")),
        )
    return table


def log_evaluation(
    summary: Mapping,
    records: list[Mapping],
    decode: Callable[[list[int]], str],
    logger_cfg: Mapping | None,
    run_dir: Path,
    name: str,
) -> None:
    """One W&B run per evaluation: `<scope>/<metric>` scalars, a per-category table with bar charts, samples.

    summary: a `RunSummary` (or its dict); records: `SampleRecord`s; decode: token ids -> text. Speedup is
    charted only when some category was timed (a replay or baseline=false run has none). No-op when disabled.
    """
    if not enabled(logger_cfg):
        return
    import wandb

    config = {k: summary.get(k) for k in ("dataset", "pair", "draft", "spec", "seed", "prompt_set", "device")}
    config["mode"] = summary.get("mode", "decode")
    run = wandb.init(**_init_args(logger_cfg, "evaluate", name), dir=str(run_dir), config=config)
    try:
        categories = wandb.Table(columns=["category", *LOGGED_METRICS])
        for category, group in summary["categories"].items():
            categories.add_data(category, *[group.get(m) for m in LOGGED_METRICS])
        scopes = [("overall", summary["overall"]), *summary["categories"].items()]
        flat = {f"{scope}/{m}": group.get(m) for scope, group in scopes for m in LOGGED_METRICS}
        flat = {k: v for k, v in flat.items() if v is not None}
        charts = {
            "alpha_by_category": wandb.plot.bar(categories, "category", "alpha", title="alpha by category")
        }
        if any(g.get("speedup") is not None for g in summary["categories"].values()):
            charts["speedup_by_category"] = wandb.plot.bar(
                categories, "category", "speedup", title="speedup by category"
            )
        samples = _samples_table(wandb, records, decode)
        run.log({**flat, "categories": categories, "samples": samples, **charts})
        run.summary.update(flat)
    finally:
        run.finish()
    log.info("W&B run %s logged (%s mode) under %s", name, logger_cfg.get("mode", "offline"), run_dir)


# --- report ----------------------------------------------------------------------------------------------


def _q1_q2_table(wandb, report: Mapping):
    """Per dataset and category: alpha before/after, the gain with its 95% CI, Holm-adjusted Wilcoxon p."""
    columns = [
        "dataset",
        "category",
        "alpha_base",
        "alpha_finetuned",
        "gain",
        "gain_low",
        "gain_high",
        "p_holm",
    ]
    table = wandb.Table(columns=columns)
    for r in report["comparisons"]:
        for c, e in r["categories"].items():
            g = e["gain"]["alpha"]
            alphas = (e["base"]["alpha"]["value"], e["finetuned"]["alpha"]["value"])
            table.add_data(
                r["dataset"], c, *alphas, g["value"], g["low"], g["high"], e["wilcoxon_alpha"].get("p_holm")
            )
    return table


def _transfer_table(wandb, m: Mapping):
    """The transfer matrix flattened: one row per draft × dataset, alpha and its change with CIs."""
    columns = ["draft", "dataset", "alpha", "alpha_low", "alpha_high", "change", "change_low", "change_high"]
    table = wandb.Table(columns=columns)
    for row in m["rows"]:
        for d in m["columns"]:
            a, g = m["alpha"][row][d] or {}, m["delta"][row][d] or {}
            table.add_data(row, d, *(x.get(k) for x in (a, g) for k in ("value", "low", "high")))
    return table


def _report_images(wandb, report: Mapping) -> dict:
    """Every plot of the report, keyed by its file stem (the transfer heatmap as `transfer_heatmap`)."""
    images = {Path(p).stem: wandb.Image(p) for r in report["comparisons"] for p in r.get("plots", [])}
    images |= {Path(r["plot"]).stem: wandb.Image(r["plot"]) for r in (report.get("imbalance") or {}).values()}
    if report.get("transfer"):
        images["transfer_heatmap"] = wandb.Image(report["transfer"]["plot"])
    return images


def log_report(report: Mapping, out_dir: Path, logger_cfg: Mapping | None) -> None:
    """One W&B run (job type "report") in the sweep's or experiment's group: tables, Q1/Q2 answers, plots.

    report: what `specfair.report.build_report` returns, with its plots already written. No-op when disabled.
    """
    if not enabled(logger_cfg):
        return
    import wandb

    run = wandb.init(**_init_args(logger_cfg, "report", "report"), dir=str(out_dir))
    try:
        answers = wandb.Table(
            columns=["dataset", "Q1", "Q2"],
            data=[[r["dataset"], r["q1_sentence"], r["q2_sentence"]] for r in report["comparisons"]],
        )
        extra = (
            {"transfer_matrix": _transfer_table(wandb, report["transfer"])} if report.get("transfer") else {}
        )
        run.log(
            {
                "q1_q2": _q1_q2_table(wandb, report),
                "answers": answers,
                **extra,
                **_report_images(wandb, report),
            }
        )
    finally:
        run.finish()
    log.info("W&B report run logged (%s mode) under %s", logger_cfg.get("mode", "offline"), out_dir)
