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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from specfair.data import cnndm
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


class Records(list):
    """Raw records of a JSON-lines file, with each one's line number (`lines`), so errors name the line."""

    lines: list[int]

    def __init__(self, records=(), lines=()):
        super().__init__(records)
        self.lines = list(lines)

    def where(self, predicate) -> Records:
        """The records `predicate` keeps, with their line numbers."""
        kept = [(r, n) for r, n in zip(self, self.lines, strict=True) if predicate(r)]
        return Records([r for r, _ in kept], [n for _, n in kept])


def read_jsonl(path: str | Path) -> Records:
    path = Path(path)
    if not path.is_file():
        raise SpecfairError(f"dataset file {path} not found")
    records = Records()
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
            records.lines.append(number)
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


def table_pools(cfg: DictConfig) -> tuple[list[dict], list[dict] | None, str]:
    """Raw eval and train records of a table dataset and the source used; train is None when both come from
    one pool."""
    source = "local" if cfg.get("path") else cfg.get("source", "auto")
    if source not in ("auto", "hub", "local", "bundled"):
        raise SpecfairError(f"dataset.source={source!r}: expected auto, hub, local or bundled")
    if source == "local":
        return _local_pools(cfg)
    if source == "hub" or (
        source == "auto" and cfg.get("hub") and (hub_reachable() or os.environ.get("HF_HUB_OFFLINE"))
    ):
        pools = _hub_pools(cfg, source)
        if pools is not None:
            return pools
    return _bundled_pools(cfg)


def _local_pools(cfg: DictConfig) -> tuple[list[dict], list[dict] | None, str]:
    """A user's file: one pool, two files (path and train_path), or one file split by a field."""
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
    eval_records, train_records = _split_by_field(records, cfg, split_field)
    return eval_records, train_records, "local"


def _split_by_field(records: list[dict], cfg: DictConfig, split_field: str) -> tuple[list[dict], list[dict]]:
    """Eval and train rows of one file by `split_field`; a field or eval value no row has is an error."""
    if records and not any(split_field in r for r in records):
        raise SpecfairError(
            f"dataset.split_field={split_field!r}: no row of {cfg.path} has that field "
            f"(rows have fields {sorted(records[0])})"
        )
    by_split = {}
    for role in ("eval", "train"):
        wanted = str(cfg.get(f"{role}_split_value", role))
        by_split[role] = _subset(records, lambda r, wanted=wanted: str(r.get(split_field)) == wanted)
    if records and not by_split["eval"]:
        found = sorted({str(r.get(split_field)) for r in records})[:8]
        raise SpecfairError(
            f"dataset.eval_split_value={cfg.get('eval_split_value', 'eval')!r}: no row of {cfg.path} has "
            f"{split_field}={cfg.get('eval_split_value', 'eval')!r} (values found: {', '.join(found)})"
        )
    return by_split["eval"], by_split["train"]


def _hub_pools(cfg: DictConfig, source: str) -> tuple[list[dict], list[dict] | None, str] | None:
    """The hub's splits; None (fall back to the bundled sample) when auto cannot load them."""
    try:
        same = cfg.hub.get("train_split") in (None, cfg.hub.eval_split)  # one pool: hold prompts out
        return read_hub(cfg, "eval"), None if same else read_hub(cfg, "train"), "hub"
    except Exception as err:
        if source == "hub":
            raise SpecfairError(
                f"dataset {cfg.name}: cannot load {cfg.hub.id} from the hub ({err})"
            ) from None
        log.info("hub dataset %s unavailable (%s); using the bundled sample", cfg.hub.id, type(err).__name__)
        return None


def _bundled_pools(cfg: DictConfig) -> tuple[list[dict], list[dict], str]:
    """The sample shipped with the dataset config, whose rows each carry their split."""
    if not cfg.get("bundled"):
        raise SpecfairError(
            f"dataset {cfg.name} ships no bundled sample (dataset.bundled=null) and the hub is unreachable: "
            "set dataset.path=FILE or run with internet (dataset.source=hub)"
        )
    records = read_jsonl(cfg.bundled)
    if records and not any(r.get("split") == "eval" for r in records):
        raise SpecfairError(
            f'{cfg.bundled}: no row with "split": "eval" (a bundled sample marks each row\'s split)'
        )
    return (
        records.where(lambda r: r.get("split") == "eval"),
        records.where(lambda r: r.get("split") == "train"),
        "bundled",
    )


def _subset(records: list[dict], predicate) -> list[dict]:
    return records.where(predicate) if isinstance(records, Records) else [r for r in records if predicate(r)]


# --- normalising -------------------------------------------------------------------------------------


def _field_text(value) -> str:
    if isinstance(value, list):  # multi-turn prompts (mt_bench): the first turn
        value = value[0] if value else ""
    return "" if value is None else str(value)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


KINDS = {str: "a string", int: "an integer", float: "a number with a point", bool: "true or false"}


def _kind(value) -> str:
    return KINDS.get(type(value), f"a {type(value).__name__}")


def _check_text(value, name: str, where: str) -> None:
    """A text field holds a string (or null: an empty text), or a list of turns whose first is a string."""
    first = (value[0] if value else None) if isinstance(value, list) else value
    if first is not None and not isinstance(first, str):
        what = f"{_shown(first)} ({_kind(first)})"
        if isinstance(value, list):
            what = f"a list whose first turn is {what}"
        raise SpecfairError(f"{where}: field {name!r} is {what}; expected a string")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # a CSV's empty cell: NaN


def to_rows(records: list[dict], cfg: DictConfig, origin: str, source: str = "local") -> list[Row]:
    """Normalise raw records to rows; skip (and count) empty texts; a bad field is one error naming the file,
    the line (row, where lines are unknown) and the field.

    Checked on every row: texts are strings; a category is one scalar, of one type for the whole file (1, 1.0
    and true are three categories as strings, so a mix is refused); integer labels are within `label_names`.
    A text filed under two categories is kept under each (the emotion sample has five such texts) and counted
    in one log line; `splits` evaluates it once and never trains on a text it evaluates.
    """
    text_fields = [cfg.text_field] if isinstance(cfg.text_field, str) else list(cfg.text_field)
    target_field = cfg.get("target_field")
    category_field = cfg.get("category_field")
    label_names = list(cfg.get("label_names") or [])
    if not records:
        raise SpecfairError(f"{origin}: no rows")
    where = _locator(records, origin)
    fields = sorted(records[0])
    _check_fields(records[0], cfg, origin, fields, text_fields, category_field, target_field)
    categories = cnndm.url_categories(records, cfg, source) if cfg.get("category_from") == "url" else None
    category_of = _category_reader(category_field, label_names, origin, fields, where)
    rows, empty, unknown = [], 0, 0
    filed: dict[str, tuple[str, int]] = {}  # text id -> (category, row number) where first seen
    twice: dict[str, tuple[int, str, int, str]] = {}  # text id -> (first row, its category, row, category)
    for number, record in enumerate(records, 1):
        if categories is not None:
            category = categories[number - 1]
            if category is None:
                unknown += 1
                continue
        else:
            category = category_of(record, number)
        text = _row_text(record, cfg, text_fields, target_field, where(number))
        if not text.strip():
            empty += 1
            continue
        row = Row(text, str(category), _field_text(record.get(target_field)) if target_field else "")
        seen = filed.setdefault(row.id, (row.category, number))
        if seen[0] != row.category:
            twice.setdefault(row.id, (seen[1], seen[0], number, row.category))
        rows.append(row)
    _log_dropped(origin, empty, unknown, twice, where)
    if not rows and unknown:
        raise SpecfairError(f"{origin}: no row's URL is in dataset.url_lists, so no row has a category")
    if not rows:
        raise SpecfairError(f"{origin}: every text is empty")
    return rows


def _locator(records: list[dict], origin: str) -> Callable[[int], str]:
    """Names a row in errors: by its file line where the reader kept lines, else by its row number."""
    lines = getattr(records, "lines", None)

    def where(number: int) -> str:
        return f"{origin}:{lines[number - 1]}" if lines else f"{origin}: row {number}"

    return where


def _check_fields(
    first: dict,
    cfg: DictConfig,
    origin: str,
    fields: list[str],
    text_fields: list[str],
    category_field: str | None,
    target_field: str | None,
) -> None:
    """The configured fields exist in the first row, so a misnamed option fails once, not on every row."""
    if not category_field and cfg.get("category_from") != "url":
        raise SpecfairError(
            f"dataset.category_field={'null' if category_field is None else repr(category_field)}: name the "
            f"field holding each row's category, or set dataset.category_from=url (rows of {origin} have "
            f"fields {fields})"
        )
    named = [(f, "text_field") for f in text_fields] + [
        (f, option) for f, option in ((category_field, "category_field"), (target_field, "target_field")) if f
    ]
    for name, option in named:
        if name not in first:
            raise SpecfairError(f"{origin}: no field {name!r}; rows have fields {fields} (dataset.{option})")


def _category_reader(
    category_field: str, label_names: list, origin: str, fields: list[str], where: Callable[[int], str]
) -> Callable[[dict, int], str | int | float]:
    """Reads each row's category; remembers the file's first category type, since types may not mix."""
    # the file's category type, and where it was first seen
    first_kind: tuple[type, object, int] | None = None

    def category_of(record: dict, number: int) -> str | int | float:
        nonlocal first_kind
        category = _scalar_category(record, number, category_field, origin, fields, where)
        if first_kind is None:
            first_kind = (type(category), category, number)
        elif type(category) is not first_kind[0]:
            raise SpecfairError(
                f"{where(number)}: field {category_field!r} is {_shown(category)} ({_kind(category)}), but "
                f"{where(first_kind[2])} has {_shown(first_kind[1])} ({_kind(first_kind[1])}): one type of "
                "category per file"
            )
        return _label_name(category, number, label_names, category_field, origin, where)

    return category_of


def _scalar_category(
    record: dict,
    number: int,
    category_field: str,
    origin: str,
    fields: list[str],
    where: Callable[[int], str],
) -> str | int | float:
    """A row's category is present and one scalar: a list or a mapping is no category."""
    category = record.get(category_field)
    if _missing(category):
        raise SpecfairError(f"{origin}: row {number} has no {category_field!r} (rows have fields {fields})")
    if not isinstance(category, str | int | float):  # bool is an int
        raise SpecfairError(
            f"{where(number)}: field {category_field!r} is {_shown(category)} ({_kind(category)}); "
            "expected one category: a string or a number"
        )
    return category


def _label_name(
    category: str | int | float,
    number: int,
    label_names: list,
    category_field: str,
    origin: str,
    where: Callable[[int], str],
) -> str | int | float:
    """With `label_names`, an integer label becomes its name; names (and labels without names) pass through."""
    if not label_names or isinstance(category, str):
        return category
    if isinstance(category, bool) or not isinstance(category, int):
        raise SpecfairError(
            f"{where(number)}: field {category_field!r} is {_shown(category)}; with label_names "
            "a label is an index (an integer) or a name"
        )
    if not 0 <= category < len(label_names):
        raise SpecfairError(
            f"{origin}: row {number}: label {category} outside dataset.label_names {label_names}"
        )
    return label_names[category]


def _row_text(
    record: dict, cfg: DictConfig, text_fields: list[str], target_field: str | None, at: str
) -> str:
    """The row's text fields (and target) checked, then joined; empty fields add no separator."""
    for f in text_fields:
        _check_text(record.get(f), f, at)
    if target_field:
        _check_text(record.get(target_field), target_field, at)
    return cfg.get("text_join", " ").join(t for t in (_field_text(record.get(f)) for f in text_fields) if t)


def _log_dropped(
    origin: str,
    empty: int,
    unknown: int,
    twice: dict[str, tuple[int, str, int, str]],
    where: Callable[[int], str],
) -> None:
    """One log line per kind of row skipped or doubled, rather than one per row."""
    if empty:
        log.warning("%s: skipped %d empty or whitespace-only texts", origin, empty)
    if unknown:
        log.warning(
            "%s: dropped %d rows whose URL is not in dataset.url_lists (no category)", origin, unknown
        )
    if twice:
        a, ca, b, cb = next(iter(twice.values()))
        log.warning(
            "%s: %d text(s) filed under two categories (e.g. %s %r and %s %r): each is kept under both; "
            "a text drawn as a prompt is evaluated once and never trained on",
            origin, len(twice), where(a), ca, where(b), cb,
        )  # fmt: skip


def categories_of(rows: list[Row], cfg: DictConfig) -> list[str]:
    """Label order when the config names labels, else sorted; only categories present in the rows."""
    present = {r.category for r in rows}
    named = [str(n) for n in cfg.get("label_names") or [] if str(n) in present]
    return named + sorted(present - set(named))


# --- selecting ---------------------------------------------------------------------------------------


def table_origin(cfg: DictConfig, source: str) -> str:
    """What error messages name as a table's origin: the file or the hub id."""
    return str(cfg.get("path") or (cfg.hub.id if source == "hub" else cfg.get("bundled")))


def category_counts(rows: list[Row]) -> dict[str, int]:
    return dict(Counter(r.category for r in rows))
