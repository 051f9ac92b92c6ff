"""Resuming a killed evaluation from the records its ranks had appended, never from prompt 0.

Each rank appends one JSON line per finished prompt to `samples.rank<r>.partial.jsonl`; `resume.json` holds the
run's settings (the summary's metadata, without the process count). Rerunning the same command in the same run
folder continues from those records, after checking the settings are the same; `resume=true` also finds the
latest unfinished run with the same settings beside a fresh run folder and continues it there; `resume=false`
starts over. Records are per prompt and every prompt's random stream is its own, so a resumed run's counters
equal an uninterrupted run's.

A run folder whose partial files hold no finished prompt (a run that failed at start-up or on its first prompt:
`error.txt`, `.hydra`, an empty `samples.rank0.partial.jsonl`) has nothing to resume: the corrected command
reuses it, whatever settings the failed start had.

The prompt set (`prompt_set`, a fingerprint of every prompt's token ids) is one of the settings, so a rerun with
another `dataset.prompt_template`, `dataset.chat` or `dataset.prompt_tokens` is another run, not a resumption.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from specfair.data.rows import Prompt
from specfair.errors import SpecfairError
from specfair.records import SampleRecord, write_atomic

log = logging.getLogger(__name__)
STATE = "resume.json"
PARTIAL = "samples.rank*.partial.jsonl"
MOVED = "resumed_in.txt"  # left in a run folder whose records a later run took over
VOLATILE = ("world_size",)  # may change between the killed run and its resumption
PROMPT_SET_PREFIX = (
    "t:"  # prompt-set fingerprints of token ids start so (older ones: ids, categories, lengths)
)


def settings(meta: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in meta.items() if k not in VOLATILE}))


def first_difference(old, new, prefix: str = "") -> tuple[str, object, object] | None:
    """The first (dotted key, old, new) where two JSON-like values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
        return None
    return None if old == new else (prefix or "settings", old, new)


def partial_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(PARTIAL))


def holds_a_record(path: Path) -> bool:
    """Whether a partial file holds at least one finished prompt's record (a whole JSON line)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    return False  # the line being written when the run stopped
                try:
                    if isinstance(json.loads(line), dict):
                        return True
                except ValueError:
                    continue
    except OSError:
        return False
    return False


def has_records(folder: Path) -> bool:
    return any(holds_a_record(path) for path in partial_files(folder))


def unfinished(folder: Path) -> bool:
    return has_records(folder) and not (folder / "summary.json").is_file()


def _check_same(folder: Path, meta: dict) -> None:
    try:
        old = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict):
        raise SpecfairError(
            f"{folder}: partial records without a readable {STATE}; pass resume=false to start over"
        )
    diff = first_difference(old, settings(meta))
    if diff:
        key, was, now = diff
        why = ""
        if key == "prompt_set":
            why = (
                " (a fingerprint from before prompt sets covered token ids)"
                if isinstance(was, str) and not was.startswith(PROMPT_SET_PREFIX)
                else " (other prompt tokens: another dataset.prompt_template, dataset.chat, dataset.prompt_tokens "
                "or tokenizer?)"
            )
        raise SpecfairError(
            f"{folder}: holds a killed run with {key}={was!r}, this run has {now!r}{why}; rerun with the same "
            "settings, pass resume=false to start over, or choose another hydra.run.dir"
        )


def _latest_unfinished(folder: Path, meta: dict) -> Path | None:
    """The most recent sibling run folder with partial records of these settings (resume=true)."""
    mine = settings(meta)
    candidates = sorted(
        (p for p in folder.parent.iterdir() if p != folder and p.is_dir() and unfinished(p)),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for candidate in candidates:
        try:
            if json.loads((candidate / STATE).read_text(encoding="utf-8")) == mine:
                return candidate
        except (OSError, ValueError):
            continue
    return None


def prepare(out_dir: Path, meta: dict, resume) -> None:
    """Before evaluating: start over (resume=false), or check and keep the partial records to continue."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if partial_files(out_dir) and not has_records(out_dir):  # a failed start: nothing to resume
        for path in partial_files(out_dir):
            path.unlink(missing_ok=True)
        log.info("%s: an earlier start here finished no prompt; starting afresh", out_dir)
    if resume is False or str(resume).lower() == "false":
        for path in partial_files(out_dir):
            path.unlink(missing_ok=True)
    elif not partial_files(out_dir) and str(resume).lower() == "true":
        source = _latest_unfinished(out_dir, meta)
        if source is None:
            raise SpecfairError(
                f"resume=true: no unfinished run with these settings beside {out_dir}; drop resume=true to start"
            )
        for path in partial_files(source):
            shutil.copyfile(path, out_dir / path.name)
        (source / MOVED).write_text(f"{out_dir}\n", encoding="utf-8")
        log.info("resuming the run in %s here", source)
    elif partial_files(out_dir):
        _check_same(out_dir, meta)
    write_atomic(out_dir / STATE, json.dumps(settings(meta), indent=2) + "\n")


def read_partials(out_dir: Path, prompts: list[Prompt]) -> list[SampleRecord]:
    """Every finished prompt's record, once; a line cut short by the kill is dropped (that prompt is redone)."""
    found: dict[int, SampleRecord] = {}
    dropped = 0
    for path in partial_files(out_dir):
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = SampleRecord.from_dict(json.loads(line), path)
                except (ValueError, SpecfairError):
                    dropped += 1
                    continue
                index = record.index
                if not 0 <= index < len(prompts) or prompts[index].id != record.id:
                    raise SpecfairError(
                        f"{path}: a record for prompt {record.id!r} at index {index}, which is not this run's "
                        "prompt there; pass resume=false to start over"
                    )
                found[index] = record
    if dropped:
        log.warning(
            "%d partial record(s) cut short in %s: those prompts are evaluated again", dropped, out_dir
        )
    return [found[i] for i in sorted(found)]
