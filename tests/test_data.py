import json
import os
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from specfair import ROOT
from specfair.data import cnndm
from specfair.data.prompts import tokenize_prompts, train_text
from specfair.data.rows import categories_of, read_jsonl, to_rows
from specfair.data.sources import load_rows
from specfair.data.splits import build_splits, check_disjoint, imbalance_counts, select_prompts
from specfair.errors import SpecfairError

BUNDLED = {
    "agnews": ["World", "Sports", "Business", "Sci/Tech"],
    "imdb": ["neg", "pos"],
    "emotion": ["sadness", "joy", "love", "anger", "fear", "surprise"],
    "sst2": ["negative", "positive"],
    "cnn_dm": ["entertainment", "lifestyle", "opinion", "other", "politics", "sport", "us", "world"],
}


@pytest.fixture
def dataset_cfg(compose_cfg):
    """A factory: the composed `dataset` config for a name and `dataset.*` overrides."""

    def make(name, **overrides):
        return compose_cfg(f"dataset={name}", *[f"dataset.{k}={v}" for k, v in overrides.items()]).dataset

    return make


@pytest.fixture
def local_cfg(dataset_cfg):
    return lambda path, **fields: _local_cfg(dataset_cfg, path, **fields)


def _local_cfg(dataset_cfg, path, **fields):
    """conf/dataset/local.yaml pointed at a file, with field settings as a user would override them."""
    return with_keys(dataset_cfg("local", path=str(path)), **fields)


def with_keys(cfg, **fields):
    """A copy of a composed (struct) config with `fields` set, keys it may not declare yet included."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return OmegaConf.merge(cfg, fields)


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_samples_load_offline_with_their_categories(dataset_cfg, name):
    splits = build_splits(dataset_cfg(name, source="bundled"), seed=0)
    assert splits.source == "bundled"
    assert splits.categories == BUNDLED[name]
    counts = Counter(r.category for r in splits.eval)
    assert min(counts.values()) >= (6 if name == "cnn_dm" else 16)  # the default prompts per category
    assert set(Counter(r.category for r in splits.train)) == set(BUNDLED[name])


def test_bundled_eval_and_train_splits_are_disjoint():
    for name in BUNDLED:
        records = read_jsonl(ROOT / f"data/samples/{name}.jsonl")
        key = {"sst2": "sentence", "cnn_dm": "article"}.get(name, "text")
        evals = {r[key] for r in records if r["split"] == "eval"}
        trains = {r[key] for r in records if r["split"] == "train"}
        assert evals and trains and not evals & trains


def test_prompt_selection_is_balanced_and_deterministic(dataset_cfg):
    cfg = dataset_cfg("agnews", source="bundled")
    rows, _ = load_rows(cfg)
    cats = categories_of(rows, cfg)
    first = select_prompts(rows, cats, 16, seed=0)
    assert [r.id for r in first] == [r.id for r in select_prompts(rows, cats, 16, seed=0)]
    assert [r.id for r in first] != [r.id for r in select_prompts(rows, cats, 16, seed=1)]
    assert Counter(r.category for r in first) == {c: 16 for c in cats}
    assert len({r.id for r in first}) == 64


def test_short_category_warns_and_uses_what_exists(dataset_cfg, caplog):
    cfg = dataset_cfg("emotion", source="bundled")
    rows, _ = load_rows(cfg)
    chosen = select_prompts(rows, categories_of(rows, cfg), 45, seed=0)
    assert Counter(r.category for r in chosen)["surprise"] == 40
    assert "surprise" in caplog.text and "fewer than dataset.per_category=45" in caplog.text


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_jsonl_with_named_fields(local_cfg, tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {"body": "first text", "topic": "x"},
            {"body": "   ", "topic": "y"},
            {"body": "second", "topic": "y"},
        ],
    )
    cfg = local_cfg(path, text_field="body", category_field="topic", label_names=None)
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
        ([{"text": "a", "label": 7}], {"label_names": ["p", "q"]}, "label 7 outside dataset.label_names"),
    ],
)
def test_bad_rows_are_one_clear_error(local_cfg, tmp_path, rows, fields, message):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = local_cfg(path, **({"text_field": "text", "category_field": "label", "label_names": None} | fields))
    with pytest.raises(SpecfairError, match=message):
        load_rows(cfg)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(SpecfairError, match=r"bad.jsonl:2: malformed JSON line"):
        read_jsonl(path)
    with pytest.raises(SpecfairError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_csv_through_the_datasets_library(local_cfg, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\nhello there,1\ngood bye,0\n")
    cfg = local_cfg(path, text_field="text", category_field="label", label_names=["neg", "pos"])
    rows, _ = load_rows(cfg)
    assert [(r.text, r.category) for r in rows] == [("hello there", "pos"), ("good bye", "neg")]


def test_hub_records_through_the_same_normalisation(dataset_cfg, shared_data, tmp_path):
    """What `datasets.load_dataset(hub id)` returns, built offline from the real AG News rows."""
    import datasets

    source = os.path.join(shared_data, "agnews_test.jsonl")
    ds = datasets.load_dataset("json", data_files=source, split="train").remove_columns(["label_name"])
    ds.save_to_disk(tmp_path / "ag")
    records = datasets.load_from_disk(str(tmp_path / "ag")).to_list()
    cfg = dataset_cfg("agnews")
    rows = to_rows(records, cfg, "fancyzhx/ag_news", "hub")
    assert Counter(r.category for r in rows) == {c: 1900 for c in BUNDLED["agnews"]}


def test_prompts_are_the_first_tokens_and_left_truncated_to_the_context(dataset_cfg, real_pair):
    cfg = dataset_cfg("agnews", source="bundled")
    rows, _ = load_rows(cfg)
    prompts = tokenize_prompts(rows[:3], real_pair.tokenizer, cfg, max_prompt_tokens=10_000)
    full = real_pair.tokenizer(rows[0].text, add_special_tokens=False)["input_ids"]
    assert prompts[0].input_ids == full[:32]
    short = tokenize_prompts(rows[:1], real_pair.tokenizer, cfg, max_prompt_tokens=8)
    assert short[0].input_ids == full[24:32]


# --- CNN/DailyMail sections from URLs ------------------------------------------------------------------


def test_cnndm_url_join_reproduces_the_sections_of_the_shared_sample(shared_data):
    raw = os.path.join(shared_data, "raw")
    lists = [os.path.join(raw, f"cnndm_url_list_all_{s}.txt") for s in ("test", "val")]
    index = cnndm.url_index(lists, Path("/nonexistent"))
    rows = read_jsonl(os.path.join(shared_data, "cnndm_sample.jsonl"))
    with_ids = [r for r in rows if r["id"]]
    assert len(with_ids) == 1500
    assert [cnndm.section_of(index[r["id"]]) for r in with_ids] == [r["category"] for r in with_ids]
    assert {cnndm.source_of(index[r["id"]]) for r in with_ids} == {"cnn"}


def test_cnndm_sections_groups_and_folding():
    assert cnndm.section_of("http://www.cnn.com/2015/04/01/middleeast/palestinians-icc/") == "middleeast"
    wayback = "http://web.archive.org/web/2015id_/http://edition.cnn.com/2015/04/06/asia/food/index.html"
    assert cnndm.section_of(wayback) == "asia" and cnndm.source_of(wayback) == "cnn"
    mail = "http://www.dailymail.co.uk/tvshowbiz/article-3025/Star.html"
    assert cnndm.section_of(mail) == "tvshowbiz" and cnndm.source_of(mail) == "dailymail"
    groups = {"world": ["asia", "europe"], "entertainment": ["tvshowbiz"]}
    assert [cnndm.group_of(s, groups) for s in ["asia", "tvshowbiz", "golf", None]] == [
        "world",
        "entertainment",
        "other",
        "other",
    ]
    assert cnndm.fold_small(["a", "a", "a", "b"], 2) == ["a", "a", "a", "other"]


def test_cnndm_bundled_uses_the_id_join_and_the_summary_prompt(dataset_cfg, real_pair):
    cfg = dataset_cfg("cnn_dm", source="bundled")
    splits = build_splits(cfg, seed=0)
    assert splits.categories == BUNDLED["cnn_dm"] and splits.eval and splits.train
    by_source = build_splits(dataset_cfg("cnn_dm", source="bundled", group_by="source"), seed=0)
    assert by_source.categories == ["cnn"]
    prompts = tokenize_prompts(splits.eval[:3], real_pair.tokenizer, cfg, max_prompt_tokens=10_000)
    cue = real_pair.tokenizer("\n\nSummary:", add_special_tokens=False)["input_ids"]
    for p in prompts:
        assert p.input_ids[-len(cue) :] == cue and len(p.input_ids) <= cfg.prompt_tokens
    assert "Summary: " + splits.train[0].target in train_text(splits.train[0], cfg)


# --- splits and imbalance ------------------------------------------------------------------------------

CATS = ["a", "b", "c", "d", "e"]


def test_exponential_and_step_profiles_give_exact_counts():
    exp = imbalance_counts(CATS, 160, {"ratio": 16, "profile": "exponential", "head": 0})
    assert exp == {"a": 160, "b": 80, "c": 40, "d": 20, "e": 10}
    step = imbalance_counts(CATS, 100, {"ratio": 10, "profile": "step", "head": "c"})
    assert step == {"a": 10, "b": 10, "c": 100, "d": 100, "e": 100}
    assert imbalance_counts(CATS, 50, {"ratio": 1}) == dict.fromkeys(CATS, 50)


def test_rotating_head_makes_the_k_cyclic_assignments():
    heads = []
    for rotation in range(5):
        counts = imbalance_counts(CATS, 160, {"ratio": 16, "head": "rotate", "rotation": rotation})
        heads.append(max(counts, key=counts.get))
        assert sorted(counts.values()) == [10, 20, 40, 80, 160]
    assert heads == CATS


@pytest.mark.parametrize(
    "imbalance, message",
    [
        ({"ratio": 1000}, "leaves 'e' with 0 rows"),
        ({"ratio": 0.5}, "must be >= 1"),
        ({"ratio": 2, "profile": "linear"}, "expected exponential or step"),
        ({"ratio": 2, "head": "zzz"}, "expected rotate, an index or one of"),
        ({"ratio": 2, "head": 5}, "dataset.imbalance.head=5: an index of the 5 categories is 0 to 4"),
        ({"ratio": 2, "head": 99}, "dataset.imbalance.head=99: an index"),  # was taken modulo: 'e' the head
        ({"ratio": 2, "head": "rotate", "rotation": 5}, "dataset.imbalance.rotation=5: an index"),
    ],
)
def test_bad_imbalance_is_one_clear_error(imbalance, message):
    with pytest.raises(SpecfairError, match=message):
        imbalance_counts(CATS, 100, imbalance)


def test_imbalanced_training_split_is_realised_and_disjoint(dataset_cfg):
    cfg = dataset_cfg("agnews", source="bundled", train_per_category=100, **{"imbalance.ratio": 10})
    splits = build_splits(cfg, seed=0)
    rows = {c: v["rows"] for c, v in splits.train_counts.items()}
    assert rows == {"World": 100, "Sports": 46, "Business": 22, "Sci/Tech": 10}
    assert Counter(r.category for r in splits.train) == rows
    assert not {r.id for r in splits.eval} & {r.id for r in splits.train}
    with pytest.raises(SpecfairError, match="fewer than the 400 asked"):
        build_splits(dataset_cfg("agnews", source="bundled", train_per_category=400), seed=0)


def test_token_budget_holds_the_total_fixed_as_the_ratio_varies(dataset_cfg):
    totals = []
    for ratio in (1, 10):
        cfg = dataset_cfg(
            "agnews",
            source="bundled",
            train_per_category=100,
            **{"imbalance.ratio": ratio, "imbalance.budget": 4000},
        )
        counts = build_splits(cfg, seed=0).train_counts
        totals.append(sum(v["tokens"] for v in counts.values()))
        if ratio == 10:
            assert counts["World"]["tokens"] > 5 * counts["Sci/Tech"]["tokens"]
    for total in totals:
        assert 4000 <= total < 4000 + 4 * 120  # each category overshoots by less than one text


def test_single_file_holds_prompts_out_of_training(local_cfg, tmp_path):
    rows = [{"text": f"text number {i}", "label": "x" if i % 2 else "y"} for i in range(40)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = local_cfg(path, text_field="text", category_field="label", per_category=5, held_out=5)
    splits = build_splits(cfg, seed=0)
    assert len(splits.eval) == 10 and len(splits.train) == 30
    everything = build_splits(with_keys(cfg, held_out=50), seed=0)  # the default: 50 a category
    assert len(everything.eval) == 10 and not everything.train  # 20 a category: all held out
    assert not {r.id for r in splits.eval} & {r.id for r in splits.train}
    with pytest.raises(SpecfairError, match="also appear in the training texts"):
        check_disjoint(splits.eval, splits.eval[:1])


def test_hub_code_path_on_a_local_dataset_folder(dataset_cfg, tmp_path, real_pair):
    """`datasets.load_dataset(<id>, split=...)` on a folder laid out like a hub repo (train/test files)."""
    folder = tmp_path / "dolly_like"
    folder.mkdir()
    rows = [
        {
            "instruction": f"Explain topic {i}.",
            "context": "",
            "response": f"Topic {i} is ...",
            "category": ["open_qa", "summarization"][i % 2],
        }
        for i in range(30)
    ]
    write_jsonl(folder / "train.jsonl", rows)
    cfg = dataset_cfg("dolly", source="hub", per_category=4, **{"hub.id": str(folder)})
    splits = build_splits(with_keys(cfg, held_out=4), seed=0)
    assert splits.source == "hub" and splits.categories == ["open_qa", "summarization"]
    assert len(splits.eval) == 8 and len(splits.train) == 22  # one split: held-out rows are not trained on
    prompts = tokenize_prompts(splits.eval, real_pair.tokenizer, cfg, max_prompt_tokens=10_000)
    start = real_pair.tokenizer("<|im_start|>user", add_special_tokens=False)["input_ids"]
    assert any(p.input_ids[: len(start)] == start or start[0] in p.input_ids[:3] for p in prompts)
    assert real_pair.tokenizer.decode(prompts[0].input_ids).rstrip().endswith("assistant")
    with pytest.raises(SpecfairError, match="cannot load"):
        build_splits(dataset_cfg("dolly", source="hub", **{"hub.id": str(tmp_path / "nothing")}), seed=0)


def test_hub_only_dataset_offline_says_what_to_do(dataset_cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpecfairError, match="ships no bundled sample"):
        build_splits(dataset_cfg("yelp"), seed=0)


def test_full_agnews_as_two_local_files(dataset_cfg, local_cfg, shared_data):
    """dataset=agnews_full: the full AG News test split for prompts and the partial train file for training
    (dataset=local with dataset.train_path), as `make q2` uses them."""
    cfg = dataset_cfg("agnews_full", per_category=100)
    assert os.path.samefile(cfg.path, os.path.join(shared_data, "agnews_test.jsonl"))
    splits = build_splits(cfg, seed=0)
    assert splits.categories == ["World", "Sports", "Business", "Sci/Tech"]
    assert Counter(r.category for r in splits.eval) == {c: 100 for c in splits.categories}
    assert Counter(r.category for r in splits.train) == {
        "World": 1719,
        "Sports": 1579,
        "Business": 1673,
        "Sci/Tech": 1942,
    }
    with pytest.raises(SpecfairError, match="train_path and dataset.split_field are both set"):
        build_splits(local_cfg(cfg.path, train_path=cfg.train_path, split_field="split"), seed=0)


def test_full_emotion_holds_its_prompts_out(dataset_cfg, shared_data):
    splits = build_splits(dataset_cfg("emotion_full", per_category=50), seed=0)
    assert splits.categories == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert Counter(r.category for r in splits.eval) == {c: 50 for c in splits.categories}
    assert Counter(r.category for r in splits.train)["surprise"] == 184 - 50


# --- issue 30: every row checked on load ----------------------------------------------------------------


def test_a_bad_row_names_its_line_past_blank_lines(local_cfg, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "category": "x"}\n\n\n{"text": 7, "category": "y"}\n')
    with pytest.raises(
        SpecfairError, match=r"rows.jsonl:4: field 'text' is 7 \(an integer\); expected a string"
    ):
        load_rows(local_cfg(path, category_field="category"))


def test_a_text_under_two_categories_is_kept_logged_and_evaluated_once(local_cfg, tmp_path, caplog):
    rows = [{"text": f"text {i}", "category": "ab"[i % 2]} for i in range(8)] + [
        {"text": "text 1", "category": "a"}
    ]
    cfg = local_cfg(write_jsonl(tmp_path / "rows.jsonl", rows), category_field="category", per_category=8)
    kept, _ = load_rows(cfg)
    assert [(r.text, r.category) for r in kept if r.text == "text 1"] == [("text 1", "b"), ("text 1", "a")]
    assert "1 text(s) filed under two categories (e.g." in caplog.text and "rows.jsonl:2 'b'" in caplog.text
    splits = build_splits(cfg, seed=0)  # every row held out: 'text 1' drawn under both, evaluated once
    assert [r.category for r in splits.eval if r.text == "text 1"] == [splits.categories[0]]
    assert len({r.id for r in splits.eval}) == len(splits.eval) == 8
    assert "1 prompt(s) drawn under two categories" in caplog.text


def test_full_emotion_keeps_its_five_texts_under_two_labels_and_its_prompts(dataset_cfg, shared_data, caplog):
    """The emotion sample files 5 texts under two labels: kept (Q2 runs on this file), said in one log line."""
    splits = build_splits(dataset_cfg("emotion_full", per_category=50), seed=0)
    assert "emotion_sample.jsonl: 5 text(s) filed under two categories" in caplog.text
    assert "prompt(s) drawn under two categories" not in caplog.text  # its prompts as before
    assert len({r.id for r in splits.eval}) == len(splits.eval) == 300  # no prompt drawn twice
    assert not {r.id for r in splits.eval} & {r.id for r in splits.train}


@pytest.mark.parametrize(
    "records, fields, message",
    [
        (
            [{"text": "a", "c": 1}, {"text": "b", "c": "1"}],
            {},
            r":2: field 'c' is '1' \(a string\), but .*:1 has 1",
        ),
        ([{"text": "a", "c": 1}, {"text": "b", "c": None}], {}, "row 2 has no 'c'"),
        ([{"text": "a", "c": [1, 2]}], {}, r"field 'c' is \[1, 2\] \(a list\); expected one category"),
        ([{"text": "a", "c": True}], {"label_names": ["x", "y"]}, "with label_names a label is an index"),
        ([{"text": ["a", "b"], "c": "x"}, {"text": [{"role": "user"}], "c": "x"}], {}, "first turn is"),
        ([{"text": "a", "c": "x", "t": 3}], {"target_field": "t"}, r"field 't' is 3 \(an integer\)"),
        ([{"text": "a", "c": "x"}], {"category_field": None}, "dataset.category_field=null: name the field"),
        ([{"text": "a", "c": "x"}], {"text_field": "body"}, r"no field 'body'; .* \(dataset.text_field\)"),
    ],
)
def test_each_row_is_checked_in_one_line(local_cfg, tmp_path, records, fields, message):
    path = write_jsonl(tmp_path / "rows.jsonl", records)
    with pytest.raises(SpecfairError, match=message) as err:
        load_rows(local_cfg(path, **{"category_field": "c", "label_names": None, **fields}))
    assert "\n" not in str(err.value)


def test_a_split_field_no_row_has_is_named(local_cfg, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "category": "x", "part": "train"}])
    with pytest.raises(SpecfairError, match="dataset.split_field='split': no row of .* has that field"):
        build_splits(local_cfg(path, category_field="category", split_field="split"), seed=0)
    with pytest.raises(SpecfairError, match=r"no row of .* has part='eval' \(values found: train\)"):
        build_splits(local_cfg(path, category_field="category", split_field="part"), seed=0)
