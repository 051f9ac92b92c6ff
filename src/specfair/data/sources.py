"""Where a dataset's records come from, by `dataset.format`: the tables of `rows.py` (JSONL, CSV, Parquet, the
hub, a bundled sample) or Spec-Bench's question files. The one place that knows both readers, so neither
imports the other."""

from __future__ import annotations

from omegaconf import DictConfig

from specfair.data import spec_bench
from specfair.data.rows import Row, table_origin, table_pools, to_rows


def load_pools(cfg: DictConfig) -> tuple[list[dict], list[dict] | None, str]:
    """Raw eval and train records and the source used; train is None when both come from one pool."""
    if cfg.get("format") == "spec_bench":  # question files (turns, no training split): their own reader
        return spec_bench.load_pools(cfg)
    return table_pools(cfg)


def origin_of(cfg: DictConfig, source: str) -> str:
    """What error messages name as the rows' origin."""
    if cfg.get("format") == "spec_bench":
        return spec_bench.origin(cfg, source)
    return table_origin(cfg, source)


def load_rows(cfg: DictConfig) -> tuple[list[Row], str]:
    """Every evaluation-pool row (no selection), for inspection and tests."""
    records, _, source = load_pools(cfg)
    return to_rows(records, cfg, origin_of(cfg, source), source), source
