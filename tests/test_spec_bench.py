"""dataset=spec_bench: Spec-Bench's 480 questions (or the bundled 39), its 13 categories or 6 task groups, the
first turn in the chat template, the second after the target's own answer, and its bad inputs."""

import json
from collections import Counter
from pathlib import Path

import pytest

from specfair import ROOT
from specfair.data import spec_bench
from specfair.data.prompts import tokenize_prompts
from specfair.data.sources import load_rows
from specfair.data.splits import build_splits
from specfair.errors import SpecfairError

MT_BENCH = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]
TASKS = ["translation", "summarization", "qa", "math_reasoning", "rag"]
SAMPLE = ROOT / "data/samples/spec_bench.jsonl"


@pytest.fixture
def bench_cfg(compose_cfg):
    """The composed dataset config of dataset=spec_bench with `dataset.*` overrides."""
    return lambda **kv: (
        compose_cfg("dataset=spec_bench", *[f"dataset.{k}={v}" for k, v in kv.items()]).dataset
    )


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded SmolLM2-135M-Instruct tokenizer (offline, with its chat template)."""
    from transformers import AutoTokenizer

    from specfair.models import embedded_folder

    return AutoTokenizer.from_pretrained(embedded_folder())


def test_bundled_sample_has_three_questions_of_each_of_the_13_categories(bench_cfg):
    splits = build_splits(bench_cfg(source="bundled"), seed=0)
    assert splits.source == "bundled" and splits.categories == MT_BENCH + TASKS
    assert Counter(r.category for r in splits.eval) == dict.fromkeys(MT_BENCH + TASKS, 3)
    assert splits.train == []  # no training split, and no question becomes a training candidate
    by_task = build_splits(bench_cfg(source="bundled", group_by="task"), seed=0)
    assert by_task.categories == ["multi-turn", *TASKS]
    assert Counter(r.category for r in by_task.eval) == {"multi-turn": 24, **dict.fromkeys(TASKS, 3)}


def test_the_first_turn_is_the_prompt_text(bench_cfg):
    questions = [json.loads(line) for line in SAMPLE.open()]
    rows, _ = load_rows(bench_cfg(source="bundled"))
    assert [(r.text, r.category) for r in rows] == [(q["turns"][0], q["category"]) for q in questions]


def test_auto_falls_back_to_the_sample_without_the_full_file(bench_cfg, tmp_path):
    splits = build_splits(bench_cfg(full_path=str(tmp_path / "absent.jsonl")), seed=0)
    assert splits.source == "bundled" and len(splits.eval) == 39


def test_full_file_gives_480_prompts_13_categories_or_6_task_groups(bench_cfg, shared_data, caplog):
    cfg = bench_cfg()
    assert Path(cfg.full_path).resolve() == (Path(shared_data) / "spec_bench_question.jsonl").resolve()
    splits = build_splits(cfg, seed=0)
    assert splits.source == "local" and splits.categories == MT_BENCH + TASKS
    assert Counter(r.category for r in splits.eval) == {
        **dict.fromkeys(MT_BENCH, 10),
        **dict.fromkeys(TASKS, 80),
    }
    assert len({r.id for r in splits.eval}) == 480 and splits.train == []
    # per_category=80 keeps every question; MT-Bench's 10-question categories say so, once each
    assert sum("fewer than dataset.per_category=80" in m for m in caplog.messages) == len(MT_BENCH)
    by_task = build_splits(bench_cfg(group_by="task"), seed=0)
    assert by_task.categories == ["multi-turn", *TASKS]
    assert Counter(r.category for r in by_task.eval) == dict.fromkeys(["multi-turn", *TASKS], 80)
    assert {r.id for r in by_task.eval} == {r.id for r in splits.eval}
    balanced = build_splits(bench_cfg(per_category=10), seed=0)
    assert len(balanced.eval) == 130 and set(Counter(r.category for r in balanced.eval).values()) == {10}


def test_the_sample_is_unchanged_lines_of_the_full_file(shared_data):
    full = set((Path(shared_data) / "spec_bench_question.jsonl").read_text(encoding="utf-8").splitlines())
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 39 and all(line in full for line in lines)
    assert (
        "Spec-Bench" in (ROOT / "data/samples/PROVENANCE.md").read_text()
        and "Apache" in (ROOT / "data/samples/PROVENANCE.md").read_text()
    )


def test_prompts_are_whole_first_turns_in_the_chat_template(bench_cfg, tokenizer):
    cfg = bench_cfg(source="bundled")
    splits = build_splits(cfg, seed=0)
    prompts = tokenize_prompts(splits.eval, tokenizer, cfg, max_prompt_tokens=8000)
    assert len(prompts) == 39
    for row, prompt in zip(splits.eval, prompts, strict=True):
        expected = tokenizer.apply_chat_template(
            [{"role": "user", "content": row.text}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        expected = list(expected["input_ids"] if isinstance(expected, dict) else expected)
        assert prompt.input_ids == expected  # nothing cut: prompt_tokens holds the longest question
        text = tokenizer.decode(prompt.input_ids)
        assert text.rstrip().endswith("<|im_start|>assistant") and "<|im_start|>user\n" + row.text in text


def test_second_turn_messages_follow_the_first_answer():
    question = {"turns": ["Write a haiku.", "Now translate it into French."]}
    assert spec_bench.second_turn_messages(question, "An old pond...") == [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "An old pond..."},
        {"role": "user", "content": "Now translate it into French."},
    ]
    with pytest.raises(SpecfairError, match="no second turn"):
        spec_bench.second_turn_messages({"turns": ["Only one."]}, "answer")


def test_turn_two_prompts_after_the_targets_own_answer(bench_cfg, tokenizer):
    cfg = bench_cfg(source="bundled", turns=2)
    splits = build_splits(cfg, seed=0)
    first = tokenize_prompts(splits.eval, tokenizer, cfg, max_prompt_tokens=8000)
    answered = []
    answer_ids = tokenizer("Sure, here it is.", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]

    def answer(prompt_ids):  # the target's greedy continuation, faked: what matters is what is fed back
        answered.append(prompt_ids)
        return answer_ids

    prompts = spec_bench.with_turns(first, cfg, tokenizer, answer, max_prompt_tokens=8000)
    questions = spec_bench.questions_by_row_id(cfg)
    second = [p for p in prompts if p.id.endswith(":turn2")]
    assert len(prompts) == 39 + 24 and len(second) == 24  # the 24 MT-Bench questions have two turns
    assert answered == [p.input_ids for p in first if len(questions[p.id]) == 2]
    for p in second:
        turns = questions[p.id.removesuffix(":turn2")]
        messages = spec_bench.second_turn_messages(turns, "Sure, here it is.")
        expected = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert p.input_ids == list(expected["input_ids"] if isinstance(expected, dict) else expected)
        assert p.text == turns[1] and p.category in MT_BENCH
    # each turn-2 prompt right after its first turn, the others unchanged
    index = {p.id: i for i, p in enumerate(prompts)}
    assert all(index[p.id] == index[p.id.removesuffix(":turn2")] + 1 for p in second)
    assert spec_bench.with_turns(first, bench_cfg(source="bundled"), tokenizer, answer, 8000) == first


def test_the_fed_back_answer_is_the_targets_own_greedy_output(bench_cfg, real_pair):
    import torch

    from specfair.decoding.engine import autoregressive_generate

    cfg = bench_cfg(source="bundled", turns=2)
    tok = real_pair.tokenizer
    rows = [r for r in build_splits(cfg, seed=0).eval if r.category == "writing"][:2]
    first = tokenize_prompts(rows, tok, cfg, max_prompt_tokens=8000)
    answer = spec_bench.greedy_answer(real_pair.target, tok, real_pair.vocab_size, max_new_tokens=8)
    for p in first:
        alone = autoregressive_generate(real_pair.target, torch.tensor([p.input_ids]), max_new_tokens=8,
                                        eos_token_id=tok.eos_token_id, vocab=real_pair.vocab_size)  # fmt: skip
        assert answer(p.input_ids) == alone[0].tolist()  # the new tokens only
    second = spec_bench.second_turn_prompts(first, cfg, tok, answer, max_prompt_tokens=8000)
    assert len(second) == 2
    for f, s2 in zip(first, second, strict=True):
        text = tok.decode(s2.input_ids)
        said = spec_bench.answer_text(tok, answer(f.input_ids))
        assert said and text.startswith(tok.decode(f.input_ids) + said + "<|im_end|>\n<|im_start|>user\n")


def test_train_path_gives_training_rows_from_another_file(bench_cfg, tmp_path):
    rows = [{"text": f"a {c} training text {i}", "category": c} for c in ["writing", "qa"] for i in range(5)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = build_splits(bench_cfg(source="bundled", train_path=str(path)), seed=0)
    assert len(splits.eval) == 39 and Counter(r.category for r in splits.train) == {"writing": 5, "qa": 5}
    by_task = build_splits(bench_cfg(source="bundled", group_by="task", train_path=str(path)), seed=0)
    assert Counter(r.category for r in by_task.train) == {"multi-turn": 5, "qa": 5}
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "x", "category": "sports"}) + "\n")
    with pytest.raises(SpecfairError, match="no row has a category of the evaluation questions"):
        build_splits(bench_cfg(source="bundled", train_path=str(other)), seed=0)


def _question(qid, **fields):
    return json.dumps({"question_id": qid, "category": "writing", "turns": ["Write a poem."], **fields})


@pytest.mark.parametrize(
    "line, message",
    [
        (json.dumps({"question_id": 82, "category": "writing"}), ":2: question 82 has no 'turns'"),
        (_question(82, turns=[]), ":2: question 82: 'turns' is [] (expected \"turns\": a non-empty list"),
        (_question(82, turns="Write."), "'turns' is \"Write.\""),
        (_question(82, turns=[1, 2]), "'turns' is [1, 2]"),
        (_question(82, turns=["  "]), "its first turn is empty"),
        (_question(82, category=None), ":2: question 82: 'category' is null"),
        ('{"question_id": 82, "turns": ["a"', ":2: malformed JSON line"),
    ],
)
def test_a_bad_question_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "questions.jsonl"
    path.write_text(_question(81) + "\n" + line + "\n")
    with pytest.raises(SpecfairError) as err:
        spec_bench.read_questions(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


# --- bad input on the command line: one `error:` line, exit status 2 (as tests/test_bad_input.py) -----------

BAD = [
    ("evaluate", ["dataset.path=FILES/no_turns.jsonl"], "FILES/no_turns.jsonl:2: question 82 has no 'turns'"),
    (
        "evaluate",
        ["dataset.group_by=tasks"],
        "dataset.group_by='tasks': expected one of category, task",
    ),
    ("evaluate", ["dataset.turns=3"], "dataset.turns=3: expected one of 1, 2"),
    ("evaluate", ["dataset.source=hub"], "dataset.source=hub: dataset=spec_bench is not on the hub"),
    (
        "train",
        [],
        "dataset=spec_bench has no training split (its questions are evaluation prompts only): train on "
        "another dataset, or give training rows with dataset.train_path=<file>",
    ),
    ("train", ["dataset.train_path=FILES/none.jsonl"], "dataset.train_path=FILES/none.jsonl: no such file"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_spec_bench")
    good = {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]}
    (root / "no_turns.jsonl").write_text(
        json.dumps(good) + "\n" + json.dumps({"question_id": 82, "category": "writing"}) + "\n"
    )
    return root


@pytest.mark.parametrize("command, args, message", BAD, ids=[f"{c}:{' '.join(a)}" for c, a, _ in BAD])
def test_bad_input_is_one_error_line_with_exit_status_2(bad_files, one_line_error, command, args, message):
    error = one_line_error(command, "dataset=spec_bench", *(a.replace("FILES", str(bad_files)) for a in args))
    assert message.replace("FILES", str(bad_files)) in error, error


def test_train_path_or_the_generalist_corpus_lift_the_training_refusal(compose_cfg, tmp_path):
    from specfair.config_check import check_spec_bench

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "a text", "category": "qa"}) + "\n")
    check_spec_bench(compose_cfg("dataset=spec_bench", f"dataset.train_path={path}", config="train"))
    check_spec_bench(compose_cfg("dataset=spec_bench", "train=generalist", config="train"))
    check_spec_bench(compose_cfg("dataset=spec_bench"))  # evaluation needs no training rows
    with pytest.raises(SpecfairError, match="dataset.turns=2: only dataset=spec_bench"):
        check_spec_bench(compose_cfg("dataset=emotion", "+dataset.turns=2"))
