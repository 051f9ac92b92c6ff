"""Typed run records: round trips, old files, and one-line errors for bad ones."""

import json

import pytest

from specfair import records as rec
from specfair.errors import SpecfairError

SUMMARY = dict(dataset={"name": "toy"}, pair={"name": "p"}, draft={"name": "base"}, spec={"gamma": 4}, seed=0,
               overall={"alpha": 0.5}, categories={"a": {"alpha": 0.5}})  # fmt: skip
ROW = dict(index=0, id="x", category="a", prompt_ids=[1, 2], output_ids=[3, 4], new_tokens=2, proposed=1,
           accepted=1, blocks=1, rejections=0, accept_lengths=[1], proposed_lengths=[1])  # fmt: skip


def test_run_round_trip_keeps_fields_types_and_unknown_keys(tmp_path):
    summary = rec.RunSummary.from_dict({**SUMMARY, "mode": "replay", "custom": 7})
    row = rec.SampleRecord.from_dict({**ROW, "wall_s": None})
    rec.save_run(tmp_path, [row], summary)
    back, rows = rec.load_summary(tmp_path), rec.load_samples(tmp_path)
    assert back.mode == "replay" and back["custom"] == 7 and back.version == rec.VERSION
    assert rows == [row] and rows[0].target_calls == 2 and rows[0]["wall_s"] is None
    assert json.loads((tmp_path / "summary.json").read_text())["version"] == rec.VERSION
    assert dict(rows[0])["accept_lengths"] == [1]  # a Mapping: the statistics code reads it like a dict


def test_old_files_load_with_defaults_and_newer_ones_are_refused(tmp_path):
    old = rec.RunSummary.from_dict(SUMMARY)  # written before versions and modes existed
    assert old.version == 0 and old.mode == "decode" and old.replay_mismatches is None
    (tmp_path / "summary.json").write_text(json.dumps({**SUMMARY, "version": rec.VERSION + 1}))
    with pytest.raises(SpecfairError, match="summary.json version 2 is newer"):
        rec.load_summary(tmp_path)


def test_bad_files_are_one_line_naming_file_and_field(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({k: v for k, v in SUMMARY.items() if k != "spec"}))
    with pytest.raises(SpecfairError, match="summary.json lacks field.* spec"):
        rec.load_summary(tmp_path)
    (tmp_path / "samples.jsonl").write_text(json.dumps(ROW) + "\n" + json.dumps(ROW)[:30])
    with pytest.raises(SpecfairError, match="samples.jsonl:2: not a JSON line"):
        rec.load_samples(tmp_path)
    with pytest.raises(SpecfairError, match="no train_summary.json there"):
        rec.load_train_summary(tmp_path / "nothing")
    assert rec.find_train_summary(tmp_path / "draft") is None and rec.find_train_summary(None) is None


def test_ratio_is_none_where_undefined_never_zero_or_nan():
    assert rec.ratio(1, 4) == 0.25 and rec.ratio(0, 0) is None and rec.ratio(None, 3) is None


def test_a_version_1_train_summary_reads_with_its_categories_nested(tmp_path):
    flat = {
        "step": 4,
        "expected_alpha": 0.3,
        "expected_alpha/chat/greedy": 0.4,
        "greedy_agreement/chat/greedy": 0.5,
    }
    old = dict(pair="p", dataset="toy", train={}, seed=0, steps=4, data={}, version=1,
               val_before=flat, val_after=flat, history=[flat, flat])  # fmt: skip
    (tmp_path / "train_summary.json").write_text(json.dumps(old))
    summary = rec.load_train_summary(tmp_path)
    assert summary.version == 1  # as read
    for entry in (summary.val_before, summary.val_after, *summary.history):
        assert entry == {"step": 4, "expected_alpha": 0.3,
                         "per_category": {"chat/greedy": {"expected_alpha": 0.4, "greedy_agreement": 0.5}}}  # fmt: skip
        assert rec.category_value(entry, "chat/greedy") == 0.4 and rec.category_value(entry, "other") is None
    rec.save_json(summary, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["version"] == rec.TrainSummary.latest == 2
