"""Draft fine-tuning: `python train.py dataset=imdb`. Not implemented yet (see the training issue)."""

import sys

import hydra
from omegaconf import DictConfig

import specfair  # noqa: F401  (registers the ${specfair_root:} resolver)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    print(
        "error: train.py is not implemented yet: draft fine-tuning lands with the training issue",
        file=sys.stderr,
    )
    sys.exit(2)


if __name__ == "__main__":
    main()
