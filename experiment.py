"""Whole experiments: `python experiment.py experiment=q1 | q2_imbalance | transfer`."""

import hydra
from omegaconf import DictConfig

import specfair  # noqa: F401  (registers the ${specfair_root:} resolver)
from specfair.app import cli, run_app


def task(cfg: DictConfig) -> None:
    from specfair.experiment import run_experiment

    report = run_experiment(cfg)
    for r in report.get("comparisons", []):
        print(r["q1_sentence"])
        print(r["q2_sentence"])
    for key in ("imbalance", "transfer"):
        for sentence in (report.get(key) or {}).get("sentences", []):
            print(sentence)


@hydra.main(version_base="1.3", config_path="conf", config_name="experiments")
def main(cfg: DictConfig) -> None:
    run_app(task, cfg)


if __name__ == "__main__":
    cli(main)
