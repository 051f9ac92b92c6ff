"""Rows of (text, category) from the HF hub, a local file or a bundled sample.

Every source goes through the same normalisation: pick the text field(s), map the category field (label
ids through `label_names`, or CNN/DM URLs to news sections), skip and count empty texts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from specfair.errors import SpecfairError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    text: str  # what a prompt is cut from (the article, for summarization)
    category: str
    target: str = ""  # the reference continuation where a dataset has one (summary, response)

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


@dataclass
class Splits:
    source: str
    categories: list[str]
    eval: list[Row]
    train: list[Row]
    train_counts: dict[str, dict] = field(default_factory=dict)


# --- reading -----------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise SpecfairError(f"dataset file {path} not found")
    records = []
    with path.open(encoding="utf-8") as f:
        lines = _utf8_lines(f, path)
        for number, line in enumerate(lines, 1):
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


def _utf8_lines(f, path: Path) -> list[str]:
    try:
        return f.readlines()
    except UnicodeDecodeError as err:
        raise SpecfairError(
            f"{path}: not UTF-8 text at byte {err.start} (a binary file?); expected JSON lines"
        ) from None


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
    try:
        return datasets.load_dataset(
            builders[path.suffix], data_files=str(path), split="train", **extra
        ).to_list()
    except Exception as err:  # pyarrow / pandas parser errors name neither the file nor the fix
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecfairError(
            f"{path}: cannot read it as {builders[path.suffix]} ({type(err).__name__}: {first})"
        ) from None


def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def read_hub(cfg: DictConfig, role: str) -> list[dict]:
    """The real `datasets.load_dataset` call users with internet make (or its local cache offline)."""
    import datasets

    split = cfg.hub[f"{role}_split"]
    return datasets.load_dataset(cfg.hub.id, cfg.hub.get("config"), split=split).to_list()


def load_pools(cfg: DictConfig) -> tuple[list[dict], list[dict] | None, str]:
    """Raw eval and train records and the source used; train is None when both come from one pool."""
    if cfg.get("format") == "spec_bench":  # question files (turns, no training split): their own reader
        from specfair.data import spec_bench

        return spec_bench.load_pools(cfg)
    source = "local" if cfg.get("path") else cfg.get("source", "auto")
    if source not in ("auto", "hub", "local", "bundled"):
        raise SpecfairError(f"dataset.source={source!r}: expected auto, hub, local or bundled")
    if source == "local":
        if not cfg.get("path"):
            raise SpecfairError("dataset.source=local needs dataset.path=FILE (.jsonl, .csv or .parquet)")
        records = read_table(cfg.path)
        if cfg.get("train_path"):  # separate files: path holds the eval prompts, train_path the training rows
            if cfg.get("split_field"):
                raise SpecfairError(
                    "dataset.train_path and dataset.split_field are both set: use two files or one split field"
                )
            return records, read_table(cfg.train_path), "local"
        split_field = cfg.get("split_field")
        if not split_field:
            return records, None, "local"
        by_split = {"eval": [], "train": []}
        for r in records:
            value = str(r.get(split_field))
            for role in by_split:
                if value == str(cfg.get(f"{role}_split_value", role)):
                    by_split[role].append(r)
        return by_split["eval"], by_split["train"], "local"
    if source == "hub" or (
        source == "auto" and cfg.get("hub") and (hub_reachable() or os.environ.get("HF_HUB_OFFLINE"))
    ):
        try:
            same = cfg.hub.get("train_split") in (None, cfg.hub.eval_split)  # one pool: hold prompts out
            return read_hub(cfg, "eval"), None if same else read_hub(cfg, "train"), "hub"
        except Exception as err:
            if source == "hub":
                raise SpecfairError(
                    f"dataset {cfg.name}: cannot load {cfg.hub.id} from the hub ({err})"
                ) from None
            log.info(
                "hub dataset %s unavailable (%s); using the bundled sample", cfg.hub.id, type(err).__name__
            )
    if not cfg.get("bundled"):
        raise SpecfairError(
            f"dataset {cfg.name} ships no bundled sample and the hub is unreachable: "
            "set dataset.path=FILE or run with internet (dataset.source=hub)"
        )
    records = read_jsonl(cfg.bundled)
    return (
        [r for r in records if r.get("split") == "eval"],
        [r for r in records if r.get("split") == "train"],
        "bundled",
    )


# --- normalising -------------------------------------------------------------------------------------


def _field_text(value) -> str:
    if isinstance(value, list):  # multi-turn prompts (mt_bench): the first turn
        value = value[0] if value else ""
    return "" if value is None else str(value)


def to_rows(records: list[dict], cfg: DictConfig, origin: str, source: str = "local") -> list[Row]:
    """Normalise raw records to rows; skip (and count) empty texts; bad fields are one clear error."""
    text_fields = [cfg.text_field] if isinstance(cfg.text_field, str) else list(cfg.text_field)
    target_field = cfg.get("target_field")
    category_field = cfg.get("category_field")
    label_names = list(cfg.get("label_names") or [])
    if not records:
        raise SpecfairError(f"{origin}: no rows")
    fields = sorted(records[0])
    for name in [
        *text_fields,
        *([category_field] if category_field else []),
        *([target_field] if target_field else []),
    ]:
        if name not in records[0]:
            raise SpecfairError(f"{origin}: no field {name!r}; rows have fields {fields}")
    categories = url_categories(records, cfg, source) if cfg.get("category_from") == "url" else None
    rows, empty, unknown = [], 0, 0
    for number, record in enumerate(records, 1):
        if categories is not None:
            category = categories[number - 1]
            if category is None:
                unknown += 1
                continue
        else:
            if record.get(category_field) is None:
                raise SpecfairError(
                    f"{origin}: row {number} has no {category_field!r} (rows have fields {fields})"
                )
            category = record[category_field]
            if label_names and isinstance(category, int):
                if not 0 <= category < len(label_names):
                    raise SpecfairError(
                        f"{origin}: row {number}: label {category} outside label_names {label_names}"
                    )
                category = label_names[category]
        text = cfg.get("text_join", " ").join(
            t for t in (_field_text(record.get(f)) for f in text_fields) if t
        )
        if not text.strip():
            empty += 1
            continue
        rows.append(Row(text, str(category), _field_text(record.get(target_field)) if target_field else ""))
    if empty:
        log.warning("%s: skipped %d empty or whitespace-only texts", origin, empty)
    if unknown:
        log.warning(
            "%s: dropped %d rows whose URL is not in dataset.url_lists (no category)", origin, unknown
        )
    if not rows:
        raise SpecfairError(f"{origin}: every text is empty")
    return rows


def url_categories(records: list[dict], cfg: DictConfig, source: str) -> list[str | None]:
    """CNN/DM: section group (or cnn/dailymail with group_by=source) from each row's URL or id."""
    from specfair.data import cnndm
    from specfair.models import cache_root

    index = None
    out = []
    for record in records:
        url = record.get("url")
        if not url and record.get("id"):
            if index is None:
                lists = (cfg.get("url_lists") or {}).get(source) or []
                index = cnndm.url_index(lists, cache_root() / "cnndm_url_lists")
            url = index.get(record["id"])
        if not url:
            out.append(None)
        elif cfg.get("group_by", "section") == "source":
            out.append(cnndm.source_of(url))
        else:
            groups = {k: list(v) for k, v in (cfg.get("section_groups") or {}).items()}
            out.append(cnndm.group_of(cnndm.section_of(url), groups))
    return out


def categories_of(rows: list[Row], cfg: DictConfig) -> list[str]:
    """Label order when the config names labels, else sorted; only categories present in the rows."""
    present = {r.category for r in rows}
    named = [str(n) for n in cfg.get("label_names") or [] if str(n) in present]
    return named + sorted(present - set(named))


# --- selecting ---------------------------------------------------------------------------------------


def origin_of(cfg: DictConfig, source: str) -> str:
    """What error messages name as the rows' origin: the file or the hub id."""
    if cfg.get("format") == "spec_bench":
        from specfair.data import spec_bench

        return spec_bench.origin(cfg, source)
    return str(cfg.get("path") or (cfg.hub.id if source == "hub" else cfg.get("bundled")))


def load_rows(cfg: DictConfig) -> tuple[list[Row], str]:
    """Every evaluation-pool row (no selection), for inspection and tests."""
    records, _, source = load_pools(cfg)
    origin = origin_of(cfg, source)
    return to_rows(records, cfg, origin, source), source


def category_counts(rows: list[Row]) -> dict[str, int]:
    return dict(Counter(r.category for r in rows))
