"""Per-category speculative-decoding evaluation: `python evaluate.py [-m] dataset=agnews,imdb ...`."""

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import specfair  # noqa: F401  (registers the ${specfair_root:} resolver)
from specfair.errors import run_app

log = logging.getLogger("evaluate")


def task(cfg: DictConfig) -> dict | None:
    from rich.console import Console

    from specfair.evaluation import evaluate, summary_table
    from specfair.models import load_tokenizer
    from specfair.tracking import log_evaluation

    summary = evaluate(cfg)
    if summary is None:  # not rank 0
        return None
    out_dir = Path(cfg.paths.output_dir)
    Console(width=max(Console().width, 120)).print(summary_table(summary))
    if cfg.logger.get("enabled"):
        records = [json.loads(line) for line in (out_dir / "samples.jsonl").open()]
        tokenizer = load_tokenizer(cfg.pair.get("tokenizer") or cfg.pair.target)
        name = f"{cfg.dataset.name}-{cfg.draft.name}-g{cfg.spec.gamma}"
        log_evaluation(summary, records, tokenizer.decode, cfg.logger, out_dir, name)
    log.info("results in %s", out_dir)
    return summary["overall"]


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict | None:
    return run_app(task, cfg)


if __name__ == "__main__":
    main()
