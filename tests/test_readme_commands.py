"""Every command the README shows runs, or dry-runs: evaluate.py and train.py lines are composed as Hydra composes
them and put through every check the command makes before it loads a model; experiment.py lines run with
`dry_run=true`; the report and leaderboard commands answer --help. A command that needs a checkpoint CI does not
have must say, in its one line, how to make it."""

import re
import shlex
import subprocess
import sys

import pytest
from conftest import compose_app_cfg

from specfair import ROOT
from specfair.errors import SpecfairError

README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_lines() -> list[str]:
    """The command lines of the README's ```bash blocks, comments cut."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("python ")]


def hydra_overrides(line: str) -> tuple[str, list[str]]:
    """(config name, overrides) of a `python evaluate.py|train.py [-m] ...` line; a sweep's first value."""
    words = shlex.split(line)
    config = words[1].removesuffix(".py")
    overrides = [w for w in words[2:] if w != "-m"]
    return config, [re.sub(r"=([^,\[\]]+),.*$", r"=\1", o) for o in overrides]


COMMANDS = code_lines()
HYDRA = [c for c in COMMANDS if c.split()[1] in ("evaluate.py", "train.py")]
EXPERIMENTS = [c for c in COMMANDS if c.split()[1] == "experiment.py"]
MODULES = [c for c in COMMANDS if c.startswith("python -m specfair.")]


def test_the_readme_shows_commands_of_every_kind():
    assert (
        len(HYDRA) >= 10 and EXPERIMENTS and MODULES
    )  # the premise: the parsing found the README's commands


@pytest.mark.parametrize("line", HYDRA)
def test_evaluate_and_train_commands_pass_their_start_up_checks(line):
    from specfair.config_check import check_config
    from specfair.evaluation.run import check_before_loading
    from specfair.training.run import check_train_cfg

    config, overrides = hydra_overrides(line)
    cfg = compose_app_cfg(*overrides, config=config)
    try:
        check_config(cfg)
        if config == "evaluate":
            check_before_loading(cfg)
        else:
            check_train_cfg(cfg)
    except SpecfairError as err:  # a draft this machine has not trained yet: the line names the command
        assert "make it with" in str(err) or "make generalist" in str(err), f"{line}: {err}"


@pytest.mark.parametrize("line", EXPERIMENTS)
def test_experiment_commands_dry_run(line):
    words = [w for w in shlex.split(line)[1:] if not w.startswith("dry_run=")]
    result = subprocess.run([sys.executable, *words, "dry_run=true"], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)  # fmt: skip
    import torch

    if "trainer=gpu" in line and not torch.cuda.is_available():  # the hardware check a CPU machine must fail
        assert result.returncode == 2 and "no CUDA GPU on this machine" in result.stderr, result.stderr[
            -2000:
        ]
        return
    assert result.returncode == 0, f"{line}: {result.stderr[-2000:]}"


@pytest.mark.parametrize("line", MODULES)
def test_module_commands_answer_help(line):
    module = shlex.split(line)[2]
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "usage" in result.stdout.lower(), result.stderr[-2000:]
