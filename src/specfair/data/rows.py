"""Rows of (text, category) from the HF hub, a local file or a bundled sample, split into balanced
evaluation prompts and (optionally imbalanced) training texts that never overlap.

Every source goes through the same normalisation: pick the text field(s), map the category field (label
ids through `label_names`, or CNN/DM URLs to news sections), skip and count empty texts. Selections are
seeded shuffles per category, so the same seed gives the same prompt ids on any machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
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


def read_hub(cfg: DictConfig, role: str) -> list[dict]:
    """The real `datasets.load_dataset` call users with internet make (or its local cache offline)."""
    import datasets

    split = cfg.hub[f"{role}_split"]
    return datasets.load_dataset(cfg.hub.id, cfg.hub.get("config"), split=split).to_list()


def load_pools(cfg: DictConfig) -> tuple[list[dict], list[dict] | None, str]:
    """Raw eval and train records and the source used; train is None when both come from one pool."""
    source = "local" if cfg.get("path") else cfg.get("source", "auto")
    if source not in ("auto", "hub", "local", "bundled"):
        raise SpecfairError(f"dataset.source={source!r}: expected auto, hub, local or bundled")
    if source == "local":
        if not cfg.get("path"):
            raise SpecfairError("dataset.source=local needs dataset.path=FILE (.jsonl, .csv or .parquet)")
        records = read_table(cfg.path)
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


def _shuffled(rows: list[Row], category: str, seed: int, salt: str) -> list[Row]:
    unique = list({r.id: r for r in rows if r.category == category}.values())
    random.Random(f"{seed}:{salt}:{category}").shuffle(unique)
    return unique


def select_prompts(rows: list[Row], categories: list[str], per_category: int, seed: int) -> list[Row]:
    """`per_category` distinct texts per category by a seeded shuffle; fewer (with a warning) if short."""
    if per_category < 1:
        raise SpecfairError(f"dataset.per_category={per_category}: must be >= 1")
    chosen = []
    for category in categories:
        unique = _shuffled(rows, category, seed, "eval")
        if len(unique) < per_category:
            log.warning(
                "category %r has %d rows, fewer than dataset.per_category=%d: using all of them",
                category,
                len(unique),
                per_category,
            )
        chosen.extend(unique[:per_category])
    return chosen


def imbalance_counts(categories: list[str], n_max: int, imbalance: DictConfig | dict) -> dict[str, int]:
    """Rows per category: the head gets n_max, the others fall to n_max/ratio (exponentially or in one step).

    exponential: n_k = n_max * ratio^(-k/(K-1)); step: the first ceil(K/2) get n_max, the rest n_max/ratio.
    `head` names the category (or index) ranked first; `head=rotate` ranks from categories[rotation].
    """
    ratio = float(imbalance.get("ratio", 1))
    profile = imbalance.get("profile", "exponential")
    head = imbalance.get("head", 0)
    if ratio < 1:
        raise SpecfairError(f"dataset.imbalance.ratio={ratio}: must be >= 1 (n_max / n_min)")
    if profile not in ("exponential", "step"):
        raise SpecfairError(f"dataset.imbalance.profile={profile!r}: expected exponential or step")
    k = len(categories)
    if head == "rotate":
        start = int(imbalance.get("rotation", 0)) % k
    elif isinstance(head, int) or str(head).isdigit():
        start = int(head) % k
    elif head in categories:
        start = categories.index(head)
    else:
        raise SpecfairError(
            f"dataset.imbalance.head={head!r}: expected rotate, an index or one of {categories}"
        )
    order = categories[start:] + categories[:start]
    counts = {}
    for rank, category in enumerate(order):
        if profile == "step":
            share = 1.0 if rank < (k + 1) // 2 else 1.0 / ratio
        else:
            share = ratio ** (-rank / (k - 1)) if k > 1 else 1.0
        counts[category] = int(round(n_max * share))
    if min(counts.values()) < 1:
        smallest = min(counts, key=counts.get)
        raise SpecfairError(
            f"dataset.imbalance: ratio {ratio:g} with {n_max} rows for the head leaves {smallest!r} with 0 rows; "
            "raise dataset.train_per_category or lower the ratio"
        )
    return {c: counts[c] for c in categories}


def select_training(
    rows, categories, cfg: DictConfig, seed: int, count_tokens=None
) -> tuple[list[Row], dict]:
    """Training rows per the imbalance config; with a token `budget` the mix changes, not the total."""
    imbalance = cfg.get("imbalance") or {}
    available = {c: _shuffled(rows, c, seed, "train") for c in categories}
    n_max = cfg.get("train_per_category")
    if n_max is None and float(imbalance.get("ratio", 1)) == 1 and not imbalance.get("budget"):
        wanted = {c: len(available[c]) for c in categories}  # natural: every training row
    else:
        wanted = imbalance_counts(
            categories, int(n_max or min(len(v) for v in available.values())), imbalance
        )
    budget = imbalance.get("budget")
    chosen, counts = [], {}
    total_wanted = sum(wanted.values())
    for c in categories:
        if budget:
            allot = float(budget) * wanted[c] / total_wanted
            picked, tokens = [], 0
            for row in available[c]:
                if tokens >= allot:
                    break
                picked.append(row)
                tokens += count_tokens(row) if count_tokens else len(row.text.split())
            if tokens < allot:
                raise SpecfairError(
                    f"dataset.imbalance.budget={budget}: category {c!r} has {tokens} training tokens, needs {allot:.0f}"
                )
        else:
            if wanted[c] > len(available[c]):
                raise SpecfairError(
                    f"category {c!r} has {len(available[c])} training rows, fewer than the {wanted[c]} asked "
                    "(lower dataset.train_per_category or the imbalance ratio)"
                )
            picked = available[c][: wanted[c]]
            tokens = sum(count_tokens(r) if count_tokens else len(r.text.split()) for r in picked)
        chosen += picked
        counts[c] = {"rows": len(picked), "tokens": tokens}
    return chosen, counts


def origin_of(cfg: DictConfig, source: str) -> str:
    """What error messages name as the rows' origin: the file or the hub id."""
    return str(cfg.get("path") or (cfg.hub.id if source == "hub" else cfg.get("bundled")))


def check_disjoint(eval_rows: list[Row], train_rows: list[Row]) -> None:
    overlap = {r.id for r in eval_rows} & {r.id for r in train_rows}
    if overlap:
        raise SpecfairError(
            f"{len(overlap)} evaluation texts also appear in the training texts (e.g. {min(overlap)})"
        )


def build_splits(cfg: DictConfig, seed: int, count_tokens=None) -> Splits:
    """Balanced evaluation rows and disjoint training rows (imbalanced on request) from one dataset config."""
    eval_records, train_records, source = load_pools(cfg)
    origin = origin_of(cfg, source)
    eval_pool = to_rows(eval_records, cfg, origin, source)
    train_pool = to_rows(train_records, cfg, origin, source) if train_records else None
    if cfg.get("category_from") == "url" and cfg.get("group_by", "section") != "source":
        eval_pool, train_pool = _fold_small_groups(
            eval_pool, train_pool, int(cfg.get("min_category_rows", 0))
        )
    categories = categories_of(eval_pool, cfg)
    eval_rows = select_prompts(eval_pool, categories, int(cfg.per_category), seed)
    held_out = {r.id for r in eval_rows} if train_pool is None else {r.id for r in eval_pool}
    candidates = [r for r in (train_pool if train_pool is not None else eval_pool) if r.id not in held_out]
    dropped = len(train_pool or []) - len(candidates) if train_pool is not None else 0
    if dropped:
        log.info("dropped %d training texts that also occur among the evaluation texts", dropped)
    train_rows, counts = [], {}
    if candidates:
        train_rows, counts = select_training(candidates, categories, cfg, seed, count_tokens)
    check_disjoint(eval_rows, train_rows)
    return Splits(source, categories, eval_rows, train_rows, counts)


def _fold_small_groups(eval_pool, train_pool, min_rows):
    from specfair.data.cnndm import fold_small

    every = eval_pool + (train_pool or [])
    folded = dict(zip([r.id for r in every], fold_small([r.category for r in every], min_rows), strict=True))

    def refold(rows):
        return None if rows is None else [Row(r.text, folded[r.id], r.target) for r in rows]

    return refold(eval_pool), refold(train_pool)


def load_rows(cfg: DictConfig) -> tuple[list[Row], str]:
    """Every evaluation-pool row (no selection), for inspection and tests."""
    records, _, source = load_pools(cfg)
    origin = origin_of(cfg, source)
    return to_rows(records, cfg, origin, source), source


# --- prompts and training texts ----------------------------------------------------------------------


def train_text(row: Row, cfg: DictConfig) -> str:
    return cfg.get("train_template", "{text}").format(text=row.text, target=row.target)


def tokenize_prompts(rows: list[Row], tokenizer, cfg: DictConfig, max_prompt_tokens: int) -> list[Prompt]:
    """First `prompt_tokens` tokens of each text inside `prompt_template` (and the chat template if asked).

    A prompt longer than the model's context keeps its last `max_prompt_tokens` tokens, with a warning.
    """
    prompt_tokens = int(cfg.prompt_tokens)
    if prompt_tokens < 1:
        raise SpecfairError(f"dataset.prompt_tokens={prompt_tokens}: must be >= 1")
    template = cfg.get("prompt_template", "{text}")
    if "{text}" not in template:
        raise SpecfairError(f"dataset.prompt_template={template!r} must contain {{text}}")
    prefix, suffix = template.split("{text}", 1)
    chat = bool(cfg.get("chat")) and getattr(tokenizer, "chat_template", None)

    def encode(s):
        return tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

    frame = len(encode(prefix)) + len(encode(suffix))
    room = prompt_tokens - frame
    if room < 1:
        raise SpecfairError(
            f"dataset.prompt_tokens={prompt_tokens} leaves no room for text in the prompt template"
        )
    prompts, truncated = [], 0
    for row in rows:
        body = encode(row.text)[:room]
        if chat:
            content = prefix + tokenizer.decode(body) + suffix
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
            ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        else:
            ids = encode(prefix) + body + encode(suffix)
        if len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]
            truncated += 1
        prompts.append(Prompt(row.id, row.category, row.text, ids))
    if truncated:
        log.warning(
            "%d prompts exceed the model context: kept their last %d tokens", truncated, max_prompt_tokens
        )
    return prompts


def category_counts(rows: list[Row]) -> dict[str, int]:
    return dict(Counter(r.category for r in rows))
