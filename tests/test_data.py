import json
import os
from collections import Counter

import pytest
from conftest import SHARED_DATA, compose_cfg
from omegaconf import OmegaConf

from specfair import ROOT
from specfair.data import categories_of, load_rows, read_jsonl, select_prompts, to_rows, tokenize_prompts
from specfair.errors import SpecfairError

BUNDLED = {
    "agnews": ["World", "Sports", "Business", "Sci/Tech"],
    "imdb": ["neg", "pos"],
    "emotion": ["sadness", "joy", "love", "anger", "fear", "surprise"],
    "sst2": ["negative", "positive"],
}


def dataset_cfg(name, **overrides):
    return compose_cfg(f"dataset={name}", *[f"dataset.{k}={v}" for k, v in overrides.items()]).dataset


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_samples_load_offline_with_their_categories(name):
    cfg = dataset_cfg(name, source="bundled")
    rows, source = load_rows(cfg)
    assert source == "bundled"
    assert categories_of(rows, cfg) == BUNDLED[name]
    counts = Counter(r.category for r in rows)
    assert min(counts.values()) >= 40  # enough for the default 16 prompts per category


def test_bundled_eval_and_train_splits_are_disjoint():
    for name in BUNDLED:
        records = read_jsonl(ROOT / f"data/samples/{name}.jsonl")
        key = "sentence" if name == "sst2" else "text"
        evals = {r[key] for r in records if r["split"] == "eval"}
        trains = {r[key] for r in records if r["split"] == "train"}
        assert evals and trains and not evals & trains


def test_prompt_selection_is_balanced_and_deterministic():
    cfg = dataset_cfg("agnews", source="bundled")
    rows, _ = load_rows(cfg)
    cats = categories_of(rows, cfg)
    first = select_prompts(rows, cats, 16, seed=0)
    assert [r.id for r in first] == [r.id for r in select_prompts(rows, cats, 16, seed=0)]
    assert [r.id for r in first] != [r.id for r in select_prompts(rows, cats, 16, seed=1)]
    assert Counter(r.category for r in first) == {c: 16 for c in cats}
    assert len({r.id for r in first}) == 64


def test_short_category_warns_and_uses_what_exists(caplog):
    cfg = dataset_cfg("emotion", source="bundled")
    rows, _ = load_rows(cfg)
    chosen = select_prompts(rows, categories_of(rows, cfg), 45, seed=0)
    assert Counter(r.category for r in chosen)["surprise"] == 40
    assert "surprise" in caplog.text and "fewer than dataset.per_category=45" in caplog.text


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_jsonl_with_named_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {"body": "first text", "topic": "x"},
            {"body": "   ", "topic": "y"},
            {"body": "second", "topic": "y"},
        ],
    )
    cfg = OmegaConf.create(
        {
            "name": "local",
            "source": "local",
            "path": str(path),
            "text_field": "body",
            "category_field": "topic",
            "label_names": None,
        }
    )
    rows, source = load_rows(cfg)
    assert source == "local" and [(r.text, r.category) for r in rows] == [
        ("first text", "x"),
        ("second", "y"),
    ]


@pytest.mark.parametrize(
    "rows, fields, message",
    [
        (
            [{"text": "a", "label": "x"}],
            {"text_field": "body"},
            "no field 'body'; rows have fields \\['label', 'text'\\]",
        ),
        ([{"text": "a", "label": "x"}, {"text": "b"}], {}, "row 2 has no 'label'"),
        ([{"text": " ", "label": "x"}], {}, "every text is empty"),
        ([{"text": "a", "label": 7}], {"label_names": ["p", "q"]}, "label 7 outside label_names"),
    ],
)
def test_bad_rows_are_one_clear_error(tmp_path, rows, fields, message):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = OmegaConf.create(
        {
            "name": "local",
            "source": "local",
            "path": str(path),
            "text_field": "text",
            "category_field": "label",
            "label_names": None,
        }
        | fields
    )
    with pytest.raises(SpecfairError, match=message):
        load_rows(cfg)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(SpecfairError, match=r"bad.jsonl:2: malformed JSON line"):
        read_jsonl(path)
    with pytest.raises(SpecfairError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_csv_through_the_datasets_library(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\nhello there,1\ngood bye,0\n")
    cfg = OmegaConf.create(
        {
            "name": "local",
            "source": "local",
            "path": str(path),
            "text_field": "text",
            "category_field": "label",
            "label_names": ["neg", "pos"],
        }
    )
    rows, _ = load_rows(cfg)
    assert [(r.text, r.category) for r in rows] == [("hello there", "pos"), ("good bye", "neg")]


def test_hub_records_through_the_same_normalisation(tmp_path):
    """What `datasets.load_dataset(hub id)` returns, built offline from the real AG News rows."""
    import datasets

    source = os.path.join(SHARED_DATA, "agnews_test.jsonl")
    if not os.path.exists(source):
        pytest.skip("../shared/data is absent")
    ds = datasets.load_dataset("json", data_files=source, split="train").remove_columns(["label_name"])
    ds.save_to_disk(tmp_path / "ag")
    records = datasets.load_from_disk(str(tmp_path / "ag")).to_list()
    cfg = dataset_cfg("agnews")
    rows = to_rows(records, cfg, "fancyzhx/ag_news")
    assert Counter(r.category for r in rows) == {c: 1900 for c in BUNDLED["agnews"]}


def test_prompts_are_the_first_tokens_and_left_truncated_to_the_context(real_pair):
    cfg = dataset_cfg("agnews", source="bundled")
    rows, _ = load_rows(cfg)
    prompts = tokenize_prompts(rows[:3], real_pair.tokenizer, 32, max_prompt_tokens=10_000)
    full = real_pair.tokenizer(rows[0].text, add_special_tokens=False)["input_ids"]
    assert prompts[0].input_ids == full[:32]
    short = tokenize_prompts(rows[:1], real_pair.tokenizer, 32, max_prompt_tokens=8)
    assert short[0].input_ids == full[24:32]
