"""The task wrapper every entry point shares: bad input becomes one line, never a traceback."""

from specfair.errors import SpecfairError


def run_app(task, cfg):
    """Run a Hydra task; a SpecfairError becomes one line on stderr (and error.txt in the run folder).

    A single run exits with status 2; inside a multirun the sweep goes on with the next job.
    """
    import sys
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return task(cfg)
    except SpecfairError as err:
        print(f"error: {err}", file=sys.stderr)
        hydra = HydraConfig.get() if HydraConfig.initialized() else None
        if hydra is not None:
            Path(hydra.runtime.output_dir, "error.txt").write_text(f"{err}\n", encoding="utf-8")
            if hydra.mode == RunMode.MULTIRUN:
                return None
        sys.exit(2)
