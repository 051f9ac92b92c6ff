"""What every entry point shares: bad input becomes one `error:` line and exit status 2, never a traceback.

`cli(main)` wraps a `@hydra.main` function so that Hydra's own errors (an unknown option, a malformed override)
reach it as exceptions instead of Hydra's multi-line report; `run_app(task, cfg)` runs the task after the
start-up checks. `--debug` (or `SPECFAIR_DEBUG=1`, or the user's own `HYDRA_FULL_ERROR=1`) keeps the full trace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from pathlib import Path

from specfair.errors import SpecfairError

FULL = (errno.ENOSPC, errno.EDQUOT)
BAD_INPUT = 2  # exit status for bad input; an unexpected error exits 1
_OURS = "_SPECFAIR_SET_HYDRA_FULL_ERROR"  # HYDRA_FULL_ERROR=1 set by cli(), not by the user


def debugging() -> bool:
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1" and not os.environ.get(_OURS)
    return os.environ.get("SPECFAIR_DEBUG") == "1" or user_full_error


def one_line(text: str) -> str:
    """A multi-line message (Hydra's option lists, OmegaConf's full_key lines) folded into one line."""
    out: list[str] = []
    for raw in str(text).splitlines():
        line = raw.strip()
        if not line:
            continue
        if out and raw.startswith("\t"):  # a list item ("Available options in 'dataset':" then one per line)
            if not line.startswith("_"):  # _common.yaml and the like are building blocks, not options
                out[-1] += (" " if out[-1].endswith(":") else ", ") + line
        else:
            out.append(line)
    return "; ".join(out) or type(text).__name__


def describe(err: BaseException) -> tuple[int, str]:
    """(exit status, one line) for an exception that reached the entry point."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, SpecfairError):
        return BAD_INPUT, one_line(err)
    if isinstance(err, HydraException | OmegaConfBaseException):
        text = str(err).split("\nConfig search path")[0]  # Hydra's list of search paths: noise to a user
        key = re.match(r"Could not override '([^']+)'", text)
        if key and "not in struct" in str(err.__cause__):
            name = key.group(1)
            return BAD_INPUT, f"{name}: no such option (a typo? to add a new key use +{name}=VALUE)"
        line = one_line(text)
        cause = err.__cause__
        if cause is not None and str(cause).strip():
            line += f" ({one_line(cause)})"
        return BAD_INPUT, line
    if isinstance(err, OSError) and (err.filename or err.errno in FULL):
        where = err.filename or "output"
        if err.errno in FULL:
            return BAD_INPUT, f"{where}: no space left on the device ({err.strerror}); free space and rerun"
        return BAD_INPUT, f"{where}: {err.strerror or err}; expected a readable file or a writable folder"
    return 1, f"unexpected {type(err).__name__}: {one_line(err)} (rerun with --debug for the traceback)"


def check_launcher(args: list[str]) -> None:
    """A SLURM launcher needs `sbatch`: outside a cluster, one line instead of submitit's traceback."""
    import shutil

    for arg in args:
        if arg.startswith("hydra/launcher=") and "slurm" in arg and shutil.which("sbatch") is None:
            print(f"error: {arg}: no SLURM on this machine (sbatch not found); try the sweep here with "
                  "hydra/launcher=submitit_local", file=sys.stderr)  # fmt: skip
            sys.exit(BAD_INPUT)


def cli(hydra_main) -> None:
    """Run a `@hydra.main` function as a command: every error one line on stderr, nothing half-written."""
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
        os.environ["SPECFAIR_DEBUG"] = "1"  # inherited by DDP workers and experiment steps
    debug = debugging()
    check_launcher(sys.argv[1:])
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its own report
    os.environ[_OURS] = "1"
    try:
        hydra_main()
    except Exception as err:
        if debug:
            raise
        status, line = describe(err)
        print(f"error: {line}", file=sys.stderr)
        sys.exit(status)


def run_app(task, cfg):
    """Check the config, run the task; a failure is one line on stderr and in the run folder's `error.txt`.

    A single run exits (status 2 for bad input, 1 otherwise); in a multirun the sweep goes on with the next job,
    and the report lists the failed one with its line.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from specfair.config_check import check_config

    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is not None:  # an earlier attempt's failure line would outlive a rerun that succeeds
        Path(hydra.runtime.output_dir, "error.txt").unlink(missing_ok=True)
    try:
        check_config(cfg)
        return task(cfg)
    except Exception as err:
        if debugging():
            raise
        status, line = describe(err)
        print(f"error: {line}", file=sys.stderr)
        if hydra is not None:
            with contextlib.suppress(OSError):  # an unwritable run folder is itself the error being reported
                Path(hydra.runtime.output_dir, "error.txt").write_text(f"{line}\n", encoding="utf-8")
            if hydra.mode == RunMode.MULTIRUN:
                return None
        sys.exit(status)
