"""Spec-Bench (Xia et al. 2024): 480 questions in 13 categories, the benchmark speculative decoding reports on.

MT-Bench's 8 categories (10 questions each, two turns) form its "multi-turn conversation" task; translation,
summarization, qa, math_reasoning and rag hold 80 single-turn questions each. A question is
`{"question_id", "category", "turns": [str, ...]}` (hemingkx/Spec-Bench data/spec_bench/question.jsonl).

`dataset=spec_bench` reads the full file from ../shared/data where present (`dataset.full_path`), else the
bundled sample (3 questions per category); `dataset.path=FILE` reads any file of that schema. The prompt is
the first turn in the pair's chat template; `dataset.group_by=task` folds categories into
`dataset.task_groups` (the leaderboard's 6 columns). There is no training split: training rows come only from
`dataset.train_path`. With `dataset.turns=2` the second turn follows the target's own first answer, as
Spec-Bench runs it: `second_turn_prompts` builds those prompts given the target's greedy decoding.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig

from specfair.data.prompts import chat_ids, prompt_content, uses_chat
from specfair.data.rows import Prompt, Row, read_jsonl, read_table
from specfair.errors import SpecfairError

log = logging.getLogger(__name__)

FORMAT = "spec_bench"
GROUP_BY = ("category", "task")
TURNS = (1, 2)
SOURCES = ("auto", "local", "bundled")
EXPECTED = 'expected "turns": a non-empty list of strings, as in Spec-Bench\'s question.jsonl'


def is_spec_bench(cfg: DictConfig) -> bool:
    return cfg.get("format") == FORMAT


# --- reading -----------------------------------------------------------------------------------------


def _where(path: Path, number: int, record: dict) -> str:
    qid = record.get("question_id")
    return f"{path}:{number}: question {qid}" if qid is not None else f"{path}:{number}: question"


def check_question(record, path: Path, number: int) -> None:
    """One Spec-Bench question: `turns` a non-empty list of strings (the first not blank), `category` a string."""
    if not isinstance(record, dict):
        raise SpecfairError(
            f"{path}:{number}: expected a JSON object (a question), got {type(record).__name__}"
        )
    where = _where(path, number, record)
    if "turns" not in record:
        raise SpecfairError(f"{where} has no 'turns' ({EXPECTED}); it has fields {sorted(record)}")
    turns = record["turns"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        shown = json.dumps(turns, ensure_ascii=False)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise SpecfairError(f"{where}: 'turns' is {shown} ({EXPECTED})")
    if not turns[0].strip():
        raise SpecfairError(f"{where}: its first turn is empty ({EXPECTED}, the first one the prompt)")
    category = record.get("category")
    if not isinstance(category, str) or not category.strip():
        raise SpecfairError(
            f"{where}: 'category' is {json.dumps(category)} (expected a category name, e.g. \"writing\")"
        )


def read_questions(path: str | Path) -> list[dict]:
    """The questions of a Spec-Bench .jsonl file, each checked; a bad one is one error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise SpecfairError(f"Spec-Bench question file {path} not found")
    if path.suffix not in (".jsonl", ".json"):
        raise SpecfairError(f"{path}: expected a Spec-Bench .jsonl question file (one question per line)")
    records = read_jsonl(path)  # malformed lines named with their line number
    for record, number in zip(records, records.lines, strict=True):
        check_question(record, path, number)
    questions = list(records)
    if not questions:
        raise SpecfairError(f"{path}: no questions")
    return questions


def question_file(cfg: DictConfig) -> tuple[str, str]:
    """(the question file, the source name): dataset.path, else the full file where present, else the sample."""
    source = "local" if cfg.get("path") else cfg.get("source", "auto")
    if source not in SOURCES:
        raise SpecfairError(
            f"dataset.source={source!r}: dataset={cfg.name} is not on the hub; expected one of {', '.join(SOURCES)}"
        )
    if source == "local":
        if not cfg.get("path"):
            raise SpecfairError("dataset.source=local needs dataset.path=FILE (a Spec-Bench question .jsonl)")
        return str(cfg.path), "local"
    full = cfg.get("full_path")
    if source == "auto" and full and Path(full).is_file():
        return str(full), "local"
    if source == "auto" and full:
        log.info("%s not found: using the bundled Spec-Bench sample", full)
    if not cfg.get("bundled"):
        raise SpecfairError(f"dataset {cfg.name} ships no bundled sample: set dataset.path=FILE")
    return str(cfg.bundled), "bundled"


def origin(cfg: DictConfig, source: str) -> str:
    """What error messages name as the questions' origin."""
    return question_file(cfg)[0]


# --- categories --------------------------------------------------------------------------------------


def group_by(cfg: DictConfig) -> str:
    value = cfg.get("group_by") or "category"
    if value not in GROUP_BY:
        raise SpecfairError(
            f"dataset.group_by={value!r}: expected one of {', '.join(GROUP_BY)} "
            "(Spec-Bench's 13 categories, or its 6 task groups with MT-Bench's 8 as multi-turn)"
        )
    return value


def folder(cfg: DictConfig) -> Callable[[str], str]:
    """category -> what results are grouped by: itself, or its task group under group_by=task."""
    if group_by(cfg) == "category":
        return lambda c: c
    groups = {str(c): str(g) for g, members in (cfg.get("task_groups") or {}).items() for c in members}
    return lambda c: groups.get(c, c)


# --- pools -------------------------------------------------------------------------------------------


def _train_records(path: str, categories: set[str], fold) -> list[dict]:
    """Training rows from another file: `text` (or `turns`, joined) and `category`, in the eval rows' schema."""
    records = read_table(path)
    if not records:
        raise SpecfairError(f"dataset.train_path={path}: no rows")
    out = []
    for number, r in enumerate(records, 1):
        text = r.get("text")
        if text is None and isinstance(r.get("turns"), list):
            text = "\n\n".join(str(t) for t in r["turns"])
        if not isinstance(text, str) or r.get("category") is None:
            raise SpecfairError(
                f"dataset.train_path={path}: row {number} needs a 'text' (or 'turns') and a 'category'; "
                f"it has fields {sorted(r)}"
            )
        out.append({"turns": [text], "category": fold(str(r["category"]))})
    found = {r["category"] for r in out}
    if not found & categories:
        raise SpecfairError(
            f"dataset.train_path={path}: no row has a category of the evaluation questions "
            f"(expected some of {sorted(categories)}; the file has {sorted(found)[:8]})"
        )
    if categories - found:
        log.warning("dataset.train_path=%s: no training rows for %s", path, sorted(categories - found))
    return out


def load_pools(cfg: DictConfig) -> tuple[list[dict], list[dict] | None, str]:
    """sources.load_pools for dataset.format=spec_bench: the questions (category folded per group_by), and the
    training rows of dataset.train_path (None without it: the benchmark has no training split)."""
    if cfg.get("split_field"):
        raise SpecfairError(
            "dataset.split_field: Spec-Bench has no splits; give training rows with dataset.train_path"
        )
    fold = folder(cfg)
    path, source = question_file(cfg)
    questions = [{**q, "category": fold(q["category"])} for q in read_questions(path)]
    train = None
    if cfg.get("train_path"):
        train = _train_records(str(cfg.train_path), {q["category"] for q in questions}, fold)
    return questions, train, source


def questions_by_row_id(cfg: DictConfig) -> dict[str, list[str]]:
    """Row id (the content hash of the first turn, as `Row.id`) -> every turn of that question."""
    path, _ = question_file(cfg)
    return {Row(q["turns"][0], q["category"]).id: list(q["turns"]) for q in read_questions(path)}


# --- the second turn ---------------------------------------------------------------------------------


def second_turn_messages(question: dict | Sequence[str], first_answer: str) -> list[dict]:
    """Spec-Bench's turn 2: the first question, the model's own answer to it, the second question."""
    turns = question["turns"] if isinstance(question, dict) else list(question)
    if len(turns) < 2:
        raise SpecfairError(f"question {turns[0][:40]!r}... has no second turn")
    return [
        {"role": "user", "content": turns[0]},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": turns[1]},
    ]


def answer_text(tokenizer, answer_ids: Sequence[int]) -> str:
    """The decoded first answer (special tokens such as the end of turn dropped, whitespace stripped)."""
    return tokenizer.decode(list(answer_ids), skip_special_tokens=True).strip()


def second_turn_ids(tokenizer, cfg: DictConfig, turns: Sequence[str], first_prompt_ids: Sequence[int],
                    answer_ids: Sequence[int]) -> list[int]:  # fmt: skip
    """Token ids of the turn-2 prompt: the whole conversation in the chat template, ending at the assistant's
    turn; without a chat template (or dataset.chat=false), the first prompt, the answer and the second turn."""
    first = answer_text(tokenizer, answer_ids)
    if uses_chat(tokenizer, cfg):
        contents = [prompt_content(t, tokenizer, cfg) for t in turns[:2]]
        return chat_ids(tokenizer, second_turn_messages(contents, first))
    return (
        list(first_prompt_ids)
        + tokenizer(first, add_special_tokens=False)["input_ids"]
        + tokenizer("\n\n" + prompt_content(turns[1], tokenizer, cfg), add_special_tokens=False)["input_ids"]
    )


def second_turn_prompts(
    prompts: Sequence[Prompt],
    cfg: DictConfig,
    tokenizer,
    answer: Callable[[list[int]], Sequence[int]],
    max_prompt_tokens: int,
    questions: dict[str, list[str]] | None = None,
) -> list[Prompt]:
    """The turn-2 prompt of every prompt whose question has a second turn (MT-Bench's 80 in Spec-Bench).

    `answer(prompt_ids) -> answer_ids` is the target's greedy continuation of a first-turn prompt (what
    Spec-Bench feeds back: with a lossless decoder, the target's own answer). A turn-2 prompt keeps the
    first prompt's category, its text is the second turn, its id the first's plus ":turn2"; one longer than
    `max_prompt_tokens` keeps its last tokens, as `tokenize_prompts` does.
    """
    questions = questions_by_row_id(cfg) if questions is None else questions
    out, truncated = [], 0
    for p in prompts:
        turns = questions.get(p.id)
        if turns is None:
            raise SpecfairError(f"prompt {p.id} ({p.text[:40]!r}) is not a question of {origin(cfg, '')}")
        if len(turns) < 2:
            continue
        ids = second_turn_ids(tokenizer, cfg, turns, p.input_ids, answer(list(p.input_ids)))
        if len(ids) > max_prompt_tokens:
            ids, truncated = ids[-max_prompt_tokens:], truncated + 1
        out.append(Prompt(f"{p.id}:turn2", p.category, turns[1], ids))
    if truncated:
        log.warning("%d turn-2 prompts exceed the model context: kept their last %d tokens", truncated,
                    max_prompt_tokens)  # fmt: skip
    return out


def greedy_answer(model, tokenizer, vocab: int, max_new_tokens: int) -> Callable[[list[int]], list[int]]:
    """`answer(prompt_ids) -> answer_ids`: the target's greedy continuation (up to and with its first EOS), the
    output a lossless greedy run gives for that turn and what Spec-Bench feeds back before the second."""
    from specfair.decoding.continuations import generate_batch
    from specfair.decoding.sampling import eos_set

    eos = eos_set(tokenizer.eos_token_id)

    def answer(prompt_ids: list[int]) -> list[int]:
        (made,) = generate_batch(
            model, [list(prompt_ids)], max_new_tokens=max_new_tokens, vocab=vocab, eos=eos
        )
        return list(made.tokens)

    return answer


def with_turns(prompts, cfg, tokenizer, answer, max_prompt_tokens) -> list[Prompt]:
    """The run's prompts under dataset.turns: the first turns (turns=1), or each followed by its second."""
    turns = int(cfg.get("turns") or 1)
    if turns not in TURNS:
        raise SpecfairError(f"dataset.turns={turns}: expected one of 1, 2")
    if turns == 1:
        return list(prompts)
    second = second_turn_prompts(prompts, cfg, tokenizer, answer, max_prompt_tokens)
    after = {q.id.removesuffix(":turn2"): q for q in second}
    return [q for p in prompts for q in ([p, after[p.id]] if p.id in after else [p])]
