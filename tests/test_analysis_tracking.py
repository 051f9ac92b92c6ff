"""tracking: the one W&B module. Training's Lightning logger from the shared `logger` config."""

import pytest

from specfair.tracking import enabled, lightning_logger


@pytest.mark.parametrize("cfg", [None, {}, {"enabled": False, "mode": "offline"}])
def test_no_logger_when_wandb_is_off(cfg, tmp_path):
    assert not enabled(cfg)
    assert lightning_logger(cfg, tmp_path, "train-toy-kd", {"seed": 0}) is False


def test_lightning_logger_mirrors_the_logger_config(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    cfg = {"enabled": True, "project": "p", "entity": None, "mode": "offline", "group": "g", "tags": ["x"]}
    logger = lightning_logger(cfg, tmp_path, "train-toy-kd", {"seed": 3, "train": {"name": "kd"}})
    assert isinstance(logger, WandbLogger)
    init = logger._wandb_init  # what wandb.init will get when training starts (nothing started yet)
    assert init["name"] == "train-toy-kd" and init["project"] == "p" and init["dir"] == str(tmp_path)
    assert init["mode"] == "offline" and init["group"] == "g" and init["tags"] == ["x"]
    assert init["job_type"] == "train" and init["config"] == {"seed": 3, "train": {"name": "kd"}}
