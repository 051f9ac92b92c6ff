"""What every entry point shares: bad input becomes one `error:` line and exit status 2, never a traceback.

`cli(main)` wraps a `@hydra.main` function so that Hydra's own errors (an unknown option, a malformed override)
reach it as exceptions instead of Hydra's multi-line report; `run_app(task, cfg)` runs the task after the
start-up checks. `--debug` (or `SPECFAIR_DEBUG=1`, or the user's own `HYDRA_FULL_ERROR=1`) keeps the full trace.

Signals: SIGTERM (`kill`, a pre-empted SLURM job) and SIGINT (Ctrl-C) stop the run at once, wherever it is
(loading, decoding, training), as one `error:` line and exit status 128 + the signal (143, 130). Lightning's own
SIGTERM handler only logs and goes on; it calls the handler installed here after its own, so ours still stops
the run. An evaluation keeps the records it appended (`samples.rank*.partial.jsonl`) and writes no summary: the
same command resumes it. A multirun in which any job failed exits non-zero once every job ran and the report
was written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from specfair.errors import SpecfairError

FULL = (errno.ENOSPC, errno.EDQUOT)
BAD_INPUT = 2  # exit status for bad input; an unexpected error exits 1
_OURS = "_SPECFAIR_SET_HYDRA_FULL_ERROR"  # HYDRA_FULL_ERROR=1 set by cli(), not by the user
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCE_AFTER_S = 5.0  # a repeated signal this long after the first stops the process without cleaning up


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised in the main thread by `cli`'s handler.

    A KeyboardInterrupt, so Lightning's interrupt path runs (a training saves `interrupted.ckpt`) and every
    `except Exception` between here and the entry point lets it through.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class _Stop:
    signum: int | None = None
    since: float = 0.0


STOP = _Stop()


def _on_signal(signum, frame) -> None:
    if STOP.signum is not None:  # already stopping: a second signal (terminal and parent both) is ignored,
        if time.monotonic() - STOP.since > FORCE_AFTER_S:  # unless the stop hangs: then it is forced
            os._exit(128 + signum)
        return
    STOP.signum, STOP.since = signum, time.monotonic()
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals():
    """While inside: SIGTERM and SIGINT raise `Interrupted` (the previous handlers come back after)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a signal the parent process set to be ignored (nohup, a background job) stays ignored
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
    STOP.signum = None
    for s in previous:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        STOP.signum = None


def interrupted_line(signum: int, out_dir: Path | None, hint: str | None = None) -> str:
    """The one line for a run stopped by a signal: what it kept and how to go on (`hint`: the task's own)."""
    name = signal.Signals(signum).name
    if hint:
        return f"{name}: {hint}"
    # an experiment's records are in its step's folder
    partial = sorted(out_dir.rglob("samples.rank*.partial.jsonl")) if out_dir is not None else []
    if partial:
        lines = 0
        for path in partial:
            with contextlib.suppress(OSError):
                lines += path.read_bytes().count(b"\n")
        return (
            f"{name}: stopped; the {lines} prompt record(s) in {out_dir} are kept and no summary was written: "
            "rerun the same command to resume"
        )
    ckpt = next(iter(out_dir.rglob("interrupted.ckpt")), None) if out_dir is not None else None
    if ckpt is not None:
        return f"{name}: stopped; resume the training with ckpt_path={ckpt}"
    return f"{name}: stopped before any result was written"


@dataclass
class _Sweep:
    """What the jobs of a multirun run in this process, and the report callback, learned about failures."""

    jobs: int = 0
    failed: list[tuple[str, int, str]] = field(default_factory=list)  # (run folder, exit status, line)
    report: Path | None = None  # report.md, once the callback wrote it
    report_failed: list[dict] | None = None  # the report's failed runs (every job, whatever the launcher)
    report_error: str | None = None

    def outcome(self) -> tuple[int, str] | None:
        """(exit status, line) when a job or the report failed; None when the whole sweep succeeded."""
        found = self.report_failed or []
        failed = max(len(self.failed), len(found))
        if not failed:
            if self.report_error:
                return 1, f"every job ran, but the report failed: {self.report_error}"
            return None
        run, why = (
            (self.failed[0][0], self.failed[0][2]) if self.failed else (found[0]["run"], found[0]["why"])
        )
        total = f" of {self.jobs}" if self.jobs >= failed else ""
        line = f"{failed}{total} multirun job(s) failed (first: {run}: {why})"
        if self.report is not None:
            line += f"; the report in {self.report} covers the rest"
        elif self.report_error:
            line += f"; the report failed too: {self.report_error}"
        bad_input = len(self.failed) == failed and all(status == BAD_INPUT for _, status, _ in self.failed)
        return (BAD_INPUT if bad_input else 1), line


SWEEP = _Sweep()


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
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, SpecfairError):
        return BAD_INPUT, one_line(err)
    if isinstance(err, OverrideParseException) and err.override.startswith(("overrides=", "+overrides=")):
        return BAD_INPUT, (
            f"overrides: cannot parse {err.override!r} ({one_line(err.message)}); quote each setting inside "
            """the list: 'overrides=["trainer=gpu","spec.gamma=3"]'"""
        )
    if isinstance(err, OverrideParseException):
        return BAD_INPUT, f"{err.override}: {one_line(err.message)}"
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
    SWEEP.__init__()  # what an earlier command run in this process (a test) left
    with stop_on_signals():
        try:
            hydra_main()
        except KeyboardInterrupt as err:  # a signal outside a job (Hydra composing, the report callback)
            if debug:
                raise
            signum = getattr(err, "signum", signal.SIGINT)
            print(f"error: {interrupted_line(signum, None)}", file=sys.stderr)
            sys.exit(128 + signum)
        except Exception as err:
            if debug:
                raise
            status, line = describe(err)
            print(f"error: {line}", file=sys.stderr)
            sys.exit(status)
    outcome = SWEEP.outcome()  # a multirun: every job ran and the report is written; now say what failed
    if outcome is not None:
        print(f"error: {outcome[1]}", file=sys.stderr)
        sys.exit(outcome[0])


def _not_an_advert(record) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def one_console() -> None:
    """Each log line once and no adverts: Lightning gives its loggers a console handler of their own when it is
    imported before Hydra configures logging, so its lines came out twice (its copy and Hydra's); and it
    advertises a cloud logger on every Trainer."""
    import logging

    import lightning.pytorch  # noqa: F401  (its import adds the handlers removed here)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:  # Hydra's: let them format and write every line once
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _not_an_advert not in logger.filters:
            logger.addFilter(_not_an_advert)


def run_app(task, cfg):
    """Check the config, run the task; a failure is one line on stderr and in the run folder's `error.txt`.

    A single run exits (status 2 for bad input, 1 otherwise); in a multirun the sweep goes on with the next job,
    the report lists the failed one with its line, and `cli` exits non-zero at the end. A signal (SIGTERM,
    SIGINT) stops the run, or the whole sweep, with status 128 + the signal.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from specfair.config_check import check_config

    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    out_dir = Path(hydra.runtime.output_dir) if hydra is not None else None
    multirun = hydra is not None and hydra.mode == RunMode.MULTIRUN
    SWEEP.jobs += multirun
    if out_dir is not None:  # an earlier attempt's failure line would outlive a rerun that succeeds
        (out_dir / "error.txt").unlink(missing_ok=True)

    def report(line: str) -> None:
        print(f"error: {line}", file=sys.stderr)
        if out_dir is not None:
            with contextlib.suppress(OSError):  # an unwritable run folder is itself the error being reported
                (out_dir / "error.txt").write_text(f"{line}\n", encoding="utf-8")

    one_console()
    try:
        check_config(cfg)
        return task(cfg)
    except BaseException as err:
        # a signal reaches here as Interrupted, or as the SystemExit(1) Lightning turns a KeyboardInterrupt into
        signum = STOP.signum if STOP.signum is not None else getattr(err, "signum", None)
        if signum is None and isinstance(err, KeyboardInterrupt):
            signum = signal.SIGINT  # Ctrl-C without cli()'s handlers (a task run from Python)
        if signum is not None:
            if debugging():
                raise
            report(interrupted_line(signum, out_dir, getattr(err, "hint", None)))
            sys.exit(128 + signum)  # a multirun stops too: its remaining jobs would be stopped alike
        if not isinstance(err, Exception) or debugging():
            raise
        status, line = describe(err)
        report(line)
        if multirun:
            SWEEP.failed.append((str(out_dir), status, line))
            return None
        sys.exit(status)
