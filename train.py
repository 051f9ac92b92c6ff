"""Draft fine-tuning: `python train.py dataset=imdb [train=lm] [train.divergence=rkl] ...`."""

import logging

import hydra
from omegaconf import DictConfig

import specfair  # noqa: F401  (registers the ${specfair_root:} resolver)
from specfair.app import cli, run_app

log = logging.getLogger("train")


def task(cfg: DictConfig) -> dict | None:
    from rich.console import Console

    from specfair.training.run import summary_table, train

    summary = train(cfg)
    if summary is None:  # not rank 0
        return None
    Console(width=max(Console().width, 100)).print(summary_table(summary))
    if cfg.train.get("data") == "generalist":
        draft = f"draft=generalist draft.recipe={cfg.train.name} draft.seed={cfg.seed}"
    else:
        draft = f"draft=finetuned draft.train_name={cfg.train.name} draft.start={cfg.draft.name} draft.seed={cfg.seed}"
    log.info(
        "evaluate it with: python evaluate.py dataset=%s pair=%s %s", cfg.dataset.name, cfg.pair.name, draft
    )
    return summary.val_after


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict | None:
    return run_app(task, cfg)


if __name__ == "__main__":
    cli(main)
