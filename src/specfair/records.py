"""Typed run records: the files one stage writes and the next reads, with their schema in one place.

- `SampleRecord`: one line of `samples.jsonl` (one prompt: ids, outputs, block counters, timings).
- `RunSummary`: `summary.json` (run metadata plus the metric's per-category and overall glossary values).
- `TrainSummary`: `train_summary.json` beside an exported draft (what it was trained on and how).

Each is a dataclass (attribute access, a field list a reader can trust) that is also a read-only Mapping, so the
statistics code can take plain dicts and records alike. `summary.json` and `train_summary.json` carry `version`
(samples.jsonl rows go with their run's summary); a reader refuses a newer version in one line and fills fields
an older file lacks with their defaults. No torch here: the analysis layer reads
these without loading a model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from specfair.errors import SpecfairError

VERSION = 1

# The glossary metrics the report compares (CIs, paired tests); every one is a ratio of summed counters.
METRICS = ("alpha", "acceptance_rate", "block_efficiency", "speedup")
# What W&B and tables show per category: the comparable metrics plus the two throughputs.
LOGGED_METRICS = (*METRICS, "tokens_per_s", "baseline_tokens_per_s", "expected_alpha")
# Per-prompt counters the metric sums (the DDP states); ratios are derived from their sums only.
COUNTERS = (
    "prompts",
    "new_tokens",
    "proposed",
    "accepted",
    "blocks",
    "rejections",
    "wall_s",
    "draft_s",
    "draft_steps",
    "verify_s",
    "baseline_new_tokens",
    "baseline_wall_s",
    "baseline_prefill_s",
    "expected_accept_sum",
    "expected_positions",
    "timed_prompts",
)


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None where the ratio is undefined (no denominator): never a silent 0 or NaN."""
    if num is None or den is None or den <= 0:
        return None
    return num / den


R = TypeVar("R", bound="Record")
# declared container types a file's field must have (the rest is read as written)
_CONTAINERS = {"dict": (Mapping, "a JSON object"), "list": (list, "a JSON list")}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Record(Mapping):
    """Dataclass base: `record.field` and `record["field"]` both work; unknown keys are kept in `extra`."""

    kind: ClassVar[str] = "record"
    latest: ClassVar[int] = VERSION  # the newest version of this kind that this code writes and reads

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            return getattr(self, key)
        extra = self.__dict__.get("extra") or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield from (n for n in self._names() if n != "extra")
        yield from self.__dict__.get("extra") or {}

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict:
        return {key: self[key] for key in self}

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        """An older version's fields in today's shape (the version number itself is kept as read)."""
        return fields

    @classmethod
    def from_dict(cls: type[R], data: Mapping, source: str | Path = "<dict>") -> R:
        if not isinstance(data, Mapping):
            raise SpecfairError(
                f"{source}: expected a JSON object for a {cls.kind}, got {type(data).__name__}"
            )
        version = data.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise SpecfairError(
                f"{source}: {cls.kind} version must be an integer >= 0, got {version!r} (a hand-edited file?)"
            )
        if version > cls.latest:
            raise SpecfairError(
                f"{source}: {cls.kind} version {version!r} is newer than this specfair reads ({cls.latest}); "
                "upgrade specfair"
            )
        names = set(cls._names())
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if missing:
            raise SpecfairError(f"{source}: {cls.kind} lacks field(s) {', '.join(missing)}")
        for f in dataclasses.fields(cls):  # a container field of another type would fail far from here
            expected = _CONTAINERS.get(str(f.type).split("[")[0].split(" ")[0])
            value = data.get(f.name)
            if expected and f.name in data and not isinstance(value, expected[0]):
                if value is None and "None" in str(f.type):
                    continue
                raise SpecfairError(
                    f"{source}: {cls.kind} field {f.name!r} must be {expected[1]}, "
                    f"got {type(value).__name__} {_short(value)}"
                )
        known = {k: v for k, v in data.items() if k in names and k != "extra"}
        extra = {k: v for k, v in data.items() if k not in names}
        if "version" in names:
            known["version"] = version  # as read (0: written before records were versioned)
        record = cls(**cls.upgrade(known, version))
        if "extra" in names:
            record.extra = {**(data.get("extra") or {}), **extra}
        return record


@dataclass
class SampleRecord(Record):
    """One prompt's evaluation. Counters follow the README's glossary; times in seconds, None if not timed.

    In `mode=replay` the counters are computed from the target's cached greedy continuation and the draft's
    teacher-forced argmax (exactly what decoding would count); the timing fields are None, never 0.
    """

    kind: ClassVar[str] = "samples.jsonl row"

    index: int
    id: str
    category: str
    prompt_ids: list[int]
    output_ids: list[int]
    new_tokens: int
    proposed: int
    accepted: int
    blocks: int
    rejections: int
    accept_lengths: list[int]
    proposed_lengths: list[int]
    target_calls: int = 0
    baseline_output_ids: list[int] | None = None
    matches_baseline: bool | None = None
    baseline_new_tokens: int = 0
    wall_s: float | None = None
    baseline_wall_s: float | None = None
    draft_s: float | None = None
    verify_s: float | None = None
    prefill_s: float | None = None
    baseline_prefill_s: float | None = (
        None  # the baseline's first token: the step time c divides by excludes it
    )
    # replay at temperature > 0: Σ_j β_j and the number of positions j (β_j = Σ_v min(p_j, q_j))
    expected_accept_sum: float | None = None
    expected_positions: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.target_calls:
            self.target_calls = 1 + self.blocks


@dataclass
class RunSummary(Record):
    """`summary.json` of one evaluation run: what was evaluated, how, and the metric's result."""

    kind: ClassVar[str] = "summary.json"

    dataset: dict
    pair: dict
    draft: dict
    spec: dict
    seed: int
    overall: dict
    categories: dict
    version: int = VERSION
    mode: str = "decode"  # decode: real generation, timed; replay: exact counters from cached continuations
    draft_training: dict | None = None
    baseline: bool = True
    prompt_set: str | None = None
    device: str | None = None
    dtype: str | None = None
    world_size: int = 1
    target_layers: int | None = None
    draft_layers: int | None = None
    lossless_mismatches: int | None = None
    replay_mismatches: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class TrainSummary(Record):
    """`train_summary.json` beside an exported draft: the data and settings it was fine-tuned with."""

    kind: ClassVar[str] = "train_summary.json"
    latest: ClassVar[int] = 2  # 2: each validation's per-category values nested under "per_category"

    pair: str
    dataset: str
    train: dict
    seed: int
    steps: int
    data: dict
    version: int = 2
    draft_layers: int | None = None
    start: str = "base"  # the draft training started from (base: the truncated target; generalist; ...)
    val_before: dict = field(default_factory=dict)
    val_after: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    best_checkpoint: str | None = None
    run_dir: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        if version >= 2:
            return fields
        out = {k: nest_validation(fields[k]) for k in ("val_before", "val_after") if k in fields}
        if "history" in fields:
            out["history"] = [nest_validation(entry) for entry in fields["history"]]
        return {**fields, **out}


def nest_validation(values: Mapping) -> dict:
    """A validation entry with its flat `<metric>/<category>` keys (as logged) nested as
    `per_category: {category: {metric: value}}`; a category may hold "/" itself (chat/greedy)."""
    out: dict = {}
    per: dict = {}
    for key, value in values.items():
        metric, sep, category = key.partition("/")
        if sep:
            per.setdefault(category, {})[metric] = value
        else:
            out[key] = value
    if per:
        out["per_category"] = {**(out.get("per_category") or {}), **per}
    return out


def category_value(entry: Mapping, category: str, metric: str = "expected_alpha"):
    """One category's value in a validation entry (None where it was not measured)."""
    return ((entry.get("per_category") or {}).get(category) or {}).get(metric)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write to a sibling temporary file, then rename: a reader sees the old file or the whole new one."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path, kind: str):
    if not path.is_file():
        raise SpecfairError(f"{path}: no {kind} there")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SpecfairError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError as err:
        raise SpecfairError(
            f"{path}: not UTF-8 text at byte {err.start} (a binary or damaged file?)"
        ) from None


def save_json(record: Record, path: str | Path) -> None:
    data = record.to_dict()
    if "version" in {f.name for f in dataclasses.fields(record)}:
        data["version"] = record.latest
    write_atomic(Path(path), json.dumps(data, indent=2) + "\n")


def load_summary(path: str | Path) -> RunSummary:
    """`summary.json` from a file or a run folder."""
    path = Path(path)
    path = path / "summary.json" if path.is_dir() else path
    return RunSummary.from_dict(_read_json(path, "summary.json"), path)


def load_train_summary(path: str | Path) -> TrainSummary:
    """`train_summary.json` from a file, an export folder, or the `draft/` folder inside one."""
    path = Path(path)
    if path.is_dir():
        path = path / "train_summary.json" if (path / "train_summary.json").is_file() else path.parent
        path = path if path.name == "train_summary.json" else path / "train_summary.json"
    return TrainSummary.from_dict(_read_json(path, "train_summary.json"), path)


def find_train_summary(draft_path: str | Path | None) -> TrainSummary | None:
    """The training record beside a fine-tuned draft folder, or None for a draft that was not trained here."""
    if not draft_path:
        return None
    file = Path(draft_path).parent / "train_summary.json"
    return load_train_summary(file) if file.is_file() else None


def save_samples(records: list[SampleRecord] | list[dict], path: str | Path) -> None:
    lines = (json.dumps(r.to_dict() if isinstance(r, Record) else dict(r)) + "\n" for r in records)
    write_atomic(Path(path), "".join(lines))


def load_samples(path: str | Path) -> list[SampleRecord]:
    """`samples.jsonl` from a file or a run folder; a cut-short or malformed line is named, never skipped."""
    path = Path(path)
    path = path / "samples.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise SpecfairError(f"{path}: no samples.jsonl there")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise SpecfairError(
            f"{path}: not UTF-8 text at byte {err.start} (a binary or damaged file?)"
        ) from None
    for number, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise SpecfairError(f"{path}:{number}: not a JSON line (file cut short?)") from None
        records.append(SampleRecord.from_dict(data, f"{path}:{number}"))
    return records


def save_run(out_dir: str | Path, records: list, summary: RunSummary) -> None:
    """samples.jsonl first, summary.json last: a folder with a summary is a complete run."""
    out_dir = Path(out_dir)
    save_samples(records, out_dir / "samples.jsonl")
    save_json(summary, out_dir / "summary.json")


def settings_conflict(summary: TrainSummary, train: dict, imbalance: dict | None) -> str | None:
    """`key.field=found, asked for wanted` for the first training setting an export was made with that differs
    from the asked ones (train.* and the imbalance mix); None when they agree. Settings recorded by neither side
    (an older summary, or no dataset: the generalist), and keys an older summary lacks, are not compared."""
    wanted = {"train": train, "imbalance": imbalance}
    found = {"train": summary.train, "imbalance": summary.data.get("imbalance")}
    for key in ("train", "imbalance"):
        if found[key] is None or wanted[key] is None:
            continue
        differ = sorted(  # a setting newer than the export (absent from its summary) is not compared
            k for k in set(wanted[key]) & set(found[key]) if wanted[key].get(k) != found[key].get(k)
        )
        if differ:
            k = differ[0]
            return f"{key}.{k}={found[key].get(k)!r}, asked for {wanted[key].get(k)!r}"
    return None
