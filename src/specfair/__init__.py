"""specfair: does fine-tuning a speculative-decoding draft raise acceptance, and is the gain fair?"""

import os
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]  # the repository (editable install): conf/, data/samples/

OmegaConf.register_new_resolver("specfair_root", lambda: str(ROOT), replace=True)


def cache_root() -> Path:
    """Where downloads, corpora, features and target continuations are kept ($SPECFAIR_CACHE)."""
    return Path(os.environ.get("SPECFAIR_CACHE", Path.home() / ".cache" / "specfair"))
