"""Rows of (text, category) from the HF hub, a local file or a bundled sample; balanced evaluation prompts.

Every source goes through the same normalisation: pick the text field, map the category field (label
ids through `label_names`), skip and count empty texts. Prompts are chosen per category by a seeded
shuffle, so the same seed gives the same prompt ids on any machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from specfair.errors import SpecfairError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    text: str
    category: str

    @property
    def id(self) -> str:
        """Content hash: stable across file orders and machines, and what disjointness checks compare."""
        return hashlib.sha1(self.text.encode("utf-8")).hexdigest()[:16]


@dataclass
class Prompt:
    id: str
    category: str
    text: str
    input_ids: list[int]


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise SpecfairError(f"dataset file {path} not found")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SpecfairError(f"{path}:{number}: malformed JSON line ({err.msg})") from None
            if not isinstance(record, dict):
                raise SpecfairError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def read_table(path: str | Path) -> list[dict]:
    """JSONL through our own reader (errors name the line); CSV and parquet through `datasets`."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if not path.is_file():
        raise SpecfairError(f"dataset file {path} not found")
    builders = {".csv": "csv", ".parquet": "parquet", ".tsv": "csv"}
    if path.suffix not in builders:
        raise SpecfairError(f"dataset file {path}: expected .jsonl, .csv, .tsv or .parquet")
    import datasets

    extra = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
    return datasets.load_dataset(
        builders[path.suffix], data_files=str(path), split="train", **extra
    ).to_list()


def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def read_hub(cfg: DictConfig) -> list[dict]:
    """The real `datasets.load_dataset` call users with internet make (or its local cache offline)."""
    import datasets

    return datasets.load_dataset(cfg.hub.id, cfg.hub.get("config"), split=cfg.hub.split).to_list()


def load_records(cfg: DictConfig) -> tuple[list[dict], str]:
    """Raw records and the source actually used (hub, local or bundled)."""
    source = cfg.get("source", "auto")
    if cfg.get("path"):
        source = "local"
    if source == "local":
        if not cfg.get("path"):
            raise SpecfairError("dataset.source=local needs dataset.path=FILE (.jsonl, .csv or .parquet)")
        return read_table(cfg.path), "local"
    if source == "hub":
        return read_hub(cfg), "hub"
    if source == "auto" and cfg.get("hub") and (hub_reachable() or os.environ.get("HF_HUB_OFFLINE")):
        try:
            return read_hub(cfg), "hub"
        except Exception as err:  # unreachable or not cached: fall back, and say so
            log.info(
                "hub dataset %s unavailable (%s); using the bundled sample", cfg.hub.id, type(err).__name__
            )
    if source not in ("auto", "bundled"):
        raise SpecfairError(f"dataset.source={source!r}: expected hub, local, bundled or auto")
    if not cfg.get("bundled"):
        raise SpecfairError(
            f"dataset {cfg.name} has no bundled sample: set dataset.source=hub or dataset.path"
        )
    records = read_jsonl(cfg.bundled)
    split = cfg.get("bundled_split")
    if split:
        records = [r for r in records if r.get("split") == split]
    return records, "bundled"


def to_rows(records: list[dict], cfg: DictConfig, origin: str) -> list[Row]:
    """Normalise raw records to rows; skip (and count) empty texts; bad fields are one clear error."""
    text_fields = list(cfg.text_field) if not isinstance(cfg.text_field, str) else [cfg.text_field]
    category_field = cfg.category_field
    label_names = list(cfg.get("label_names") or [])
    if not records:
        raise SpecfairError(f"{origin}: no rows")
    fields = sorted(records[0])
    for name in [*text_fields, category_field]:
        if name not in records[0]:
            raise SpecfairError(f"{origin}: no field {name!r}; rows have fields {fields}")
    rows, empty = [], 0
    for number, record in enumerate(records, 1):
        if category_field not in record or record[category_field] is None:
            raise SpecfairError(
                f"{origin}: row {number} has no {category_field!r} (rows have fields {fields})"
            )
        text = cfg.get("text_join", " ").join(str(record.get(f) or "") for f in text_fields)
        if not text.strip():
            empty += 1
            continue
        category = record[category_field]
        if label_names and isinstance(category, int):
            if not 0 <= category < len(label_names):
                raise SpecfairError(
                    f"{origin}: row {number}: label {category} outside label_names {label_names}"
                )
            category = label_names[category]
        rows.append(Row(text, str(category)))
    if empty:
        log.warning("%s: skipped %d empty or whitespace-only texts", origin, empty)
    if not rows:
        raise SpecfairError(f"{origin}: every text is empty")
    return rows


def load_rows(cfg: DictConfig) -> tuple[list[Row], str]:
    records, source = load_records(cfg)
    origin = cfg.get("path") or (cfg.hub.id if source == "hub" else cfg.get("bundled"))
    return to_rows(records, cfg, str(origin)), source


def categories_of(rows: list[Row], cfg: DictConfig) -> list[str]:
    """Label order when the config names labels, else sorted; only categories present in the rows."""
    present = {r.category for r in rows}
    named = [str(n) for n in cfg.get("label_names") or [] if str(n) in present]
    return named + sorted(present - set(named))


def select_prompts(rows: list[Row], categories: list[str], per_category: int, seed: int) -> list[Row]:
    """`per_category` distinct texts per category by a seeded shuffle; fewer (with a warning) if short."""
    if per_category < 1:
        raise SpecfairError(f"dataset.per_category={per_category}: must be >= 1")
    chosen = []
    for category in categories:
        unique = list({r.id: r for r in rows if r.category == category}.values())
        random.Random(f"{seed}:{category}").shuffle(unique)
        if len(unique) < per_category:
            log.warning(
                "category %r has %d rows, fewer than dataset.per_category=%d: using all of them",
                category,
                len(unique),
                per_category,
            )
        chosen.extend(unique[:per_category])
    return chosen


def tokenize_prompts(rows: list[Row], tokenizer, prompt_tokens: int, max_prompt_tokens: int) -> list[Prompt]:
    """A prompt is the first `prompt_tokens` tokens of a text (left-truncated if it exceeds the context)."""
    if prompt_tokens < 1:
        raise SpecfairError(f"dataset.prompt_tokens={prompt_tokens}: must be >= 1")
    prompts = []
    truncated = 0
    for row in rows:
        ids = tokenizer(row.text, add_special_tokens=False)["input_ids"][:prompt_tokens]
        if len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]
            truncated += 1
        prompts.append(Prompt(row.id, row.category, row.text, ids))
    if truncated:
        log.warning(
            "%d prompts exceed the model context: kept their last %d tokens", truncated, max_prompt_tokens
        )
    return prompts
