"""Per-category speculative-decoding evaluation: `python evaluate.py [-m] dataset=agnews,imdb ...`."""

import logging

import hydra
from omegaconf import DictConfig

import specfair  # noqa: F401  (registers the ${specfair_root:} resolver)
from specfair.app import cli, run_app

log = logging.getLogger("evaluate")


def task(cfg: DictConfig) -> dict | None:
    from rich.console import Console

    from specfair.evaluation.run import evaluate, summary_table

    summary = evaluate(cfg)  # also logs to W&B unless logger=none
    if summary is None:  # not rank 0
        return None
    Console(width=max(Console().width, 120)).print(summary_table(summary))
    log.info("results in %s", cfg.paths.output_dir)
    return summary["overall"]


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict | None:
    return run_app(task, cfg)


if __name__ == "__main__":
    cli(main)
