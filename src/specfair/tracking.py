"""Weights & Biases logging of one evaluation run (offline by default; `wandb sync` uploads later)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

METRICS = ("alpha", "acceptance_rate", "block_efficiency", "speedup", "tokens_per_s", "baseline_tokens_per_s")


def sweep_group(logger_cfg) -> str | None:
    """The W&B group: logger.group if set, else the multirun's sweep folder name (so one sweep is one group)."""
    if logger_cfg.get("group"):
        return logger_cfg.get("group")
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def log_evaluation(summary: dict, records: list[dict], decode, logger_cfg, run_dir: Path, name: str) -> None:
    """Per-category metrics (scalars, a table and bar charts) and a table of samples, in one W&B run."""
    if not logger_cfg or not logger_cfg.get("enabled"):
        return
    import wandb

    config = {k: summary[k] for k in ("dataset", "pair", "draft", "spec", "seed", "prompt_set", "device")}
    run = wandb.init(
        project=logger_cfg.get("project", "specfair"),
        entity=logger_cfg.get("entity"),
        mode=logger_cfg.get("mode", "offline"),
        group=sweep_group(logger_cfg),
        tags=list(logger_cfg.get("tags") or []),
        job_type="evaluate",
        name=name,
        dir=str(run_dir),
        config=config,
    )
    try:
        categories = wandb.Table(columns=["category", *METRICS])
        for category, group in summary["categories"].items():
            categories.add_data(category, *[group.get(m) for m in METRICS])
        flat = {
            f"{scope}/{m}": group.get(m)
            for scope, group in [("overall", summary["overall"]), *summary["categories"].items()]
            for m in METRICS
        }
        samples = wandb.Table(
            columns=["id", "category", "prompt", "output", "proposed", "accepted", "new_tokens", "speedup"]
        )
        for r in records:
            samples.add_data(
                r["id"],
                r["category"],
                decode(r["prompt_ids"]),
                decode(r["output_ids"]),
                r["proposed"],
                r["accepted"],
                r["new_tokens"],
                r["baseline_wall_s"] / r["wall_s"] if r["baseline_wall_s"] and r["wall_s"] > 0 else None,
            )
        run.log(
            {
                **{k: v for k, v in flat.items() if v is not None},
                "categories": categories,
                "samples": samples,
                "alpha_by_category": wandb.plot.bar(
                    categories, "category", "alpha", title="alpha by category"
                ),
                "speedup_by_category": wandb.plot.bar(
                    categories, "category", "speedup", title="speedup by category"
                ),
            }
        )
        run.summary.update({k: v for k, v in flat.items() if v is not None})
    finally:
        run.finish()
    log.info("W&B run %s logged (%s mode) under %s", name, logger_cfg.get("mode", "offline"), run_dir)
