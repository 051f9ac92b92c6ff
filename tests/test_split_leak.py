"""No evaluation prompt in any training mix (issue 29): a single-pool dataset is cut into held-out rows and
training candidates by `dataset.split_seed` and `dataset.held_out` only, so neither the training seed nor a
smaller `dataset.per_category` at training time can move an evaluation prompt into training."""

import hashlib
import json
import os
from collections import Counter

import pytest
from omegaconf import OmegaConf

from specfair.data.splits import build_splits
from specfair.errors import SpecfairError

CATEGORIES = {"red": 90, "green": 70, "blue": 60}
TRAINING = [  # (seed, per_category, imbalance): what drafts train with, smaller than evaluation's 40
    (seed, per_category, imbalance)
    for seed in (0, 1, 2)
    for per_category in (8, 16)
    for imbalance in ({"ratio": 1}, {"ratio": 4, "head": 2})
]


def content_hash(text: str) -> str:
    """A hash of the whitespace-normalised text, independent of Row.id (which the code under test computes)."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


@pytest.fixture
def one_pool(compose_cfg, tmp_path):
    """A factory: conf/dataset/local.yaml on one JSONL file of three categories, with `dataset.*` settings."""
    rows = [
        {"text": f"a {c} sentence, number {i}, about {c} things", "label": c}
        for c, n in CATEGORIES.items()
        for i in range(n)
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def make(**fields):
        cfg = compose_cfg("dataset=local", f"dataset.path={path}", "dataset.category_field=label").dataset
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        return OmegaConf.merge(cfg, {"held_out": 40, **fields})

    return make


def assert_no_leak(evaluation, training):
    ids = {r.id for r in evaluation}
    hashes = {content_hash(r.text) for r in evaluation}
    assert not ids & {r.id for r in training}
    assert not hashes & {content_hash(r.text) for r in training}


def test_no_evaluation_prompt_in_any_training_mix(one_pool):
    evaluation = build_splits(one_pool(per_category=40), seed=0).eval
    assert Counter(r.category for r in evaluation) == dict.fromkeys(CATEGORIES, 40)
    for seed, per_category, imbalance in TRAINING:
        cfg = one_pool(per_category=per_category, imbalance=imbalance, train_per_category=20)
        training = build_splits(cfg, seed=seed)
        assert training.train and set(training.train_counts) == set(CATEGORIES)
        assert_no_leak(evaluation, training.train)
        assert {r.id for r in training.eval} <= {r.id for r in evaluation}  # validation: held-out rows too


def test_the_cut_moves_with_split_seed_and_held_out_only(one_pool):
    held = {s: {r.id for r in build_splits(one_pool(per_category=40), seed=s).eval} for s in (0, 1, 2)}
    assert held[0] == held[1] == held[2]  # the run's seed does not move the held-out rows
    fewer = [r.id for r in build_splits(one_pool(per_category=10), seed=2).eval]
    assert set(fewer) <= held[0]  # a smaller per_category takes the first of the same held-out rows
    other = {r.id for r in build_splits(one_pool(per_category=40, split_seed=1), seed=0).eval}
    assert other != held[0]
    share = build_splits(one_pool(per_category=10, held_out=0.25), seed=0)  # a fraction, rounded up
    assert Counter(r.category for r in share.train) == {"red": 67, "green": 52, "blue": 45}


def test_more_prompts_than_held_out_is_refused(one_pool):
    with pytest.raises(
        SpecfairError, match=r"dataset.per_category=41 exceeds the 40 rows dataset.held_out=40"
    ):
        build_splits(one_pool(per_category=41), seed=0)
    with pytest.raises(SpecfairError, match="dataset.held_out=0: expected rows per category"):
        build_splits(one_pool(held_out=0), seed=0)


def test_a_category_smaller_than_held_out_is_all_evaluation(one_pool, caplog):
    splits = build_splits(one_pool(per_category=75, held_out=80), seed=0)
    assert Counter(r.category for r in splits.eval) == {"red": 75, "green": 70, "blue": 60}
    assert "fewer than dataset.per_category=75" in caplog.text  # warned, as select_prompts does
    assert Counter(r.category for r in splits.train) == {"red": 10}


def test_separate_training_pools_keep_their_selection(dataset_cfg_bundled):
    """agnews (bundled eval and train rows): the run's seed still picks the prompts, as before the cut."""
    first, second = (build_splits(dataset_cfg_bundled, seed=s) for s in (0, 1))
    assert [r.id for r in first.eval] != [r.id for r in second.eval]
    assert_no_leak(first.eval, first.train)


@pytest.fixture
def dataset_cfg_bundled(compose_cfg):
    return compose_cfg("dataset=agnews", "dataset.source=bundled").dataset


def test_emotion_full_seeds_never_train_on_the_evaluation_prompts(compose_cfg, shared_data):
    """The emotion Q2 design on the real file: evaluation at seed 0 with 50 prompts a category, drafts with
    seeds 0-2 at rho 10 with every head; before the cut, seeds 1 and 2 trained on up to 46 of the prompts."""
    assert os.path.isfile(os.path.join(shared_data, "emotion_sample.jsonl"))

    def cfg(*overrides):
        return compose_cfg("dataset=emotion_full", "dataset.per_category=50", *overrides).dataset

    evaluation = build_splits(cfg(), seed=0).eval
    assert Counter(r.category for r in evaluation) == dict.fromkeys(
        ["sadness", "joy", "love", "anger", "fear", "surprise"], 50
    )
    mix = ["dataset.imbalance.budget=6000", "dataset.imbalance.ratio=10"]
    for seed in (0, 1, 2):
        for head in range(6):
            training = build_splits(cfg(*mix, f"dataset.imbalance.head={head}"), seed=seed)
            assert_no_leak(evaluation, training.train)
        assert_no_leak(evaluation, build_splits(cfg("dataset.per_category=16"), seed=seed).train)


def test_evaluation_refuses_a_draft_trained_on_its_prompts(tmp_path):
    """train_ids.txt beside a draft: an evaluation whose prompts it holds is refused in one line."""
    from specfair.data.rows import Row
    from specfair.evaluation.run import check_not_trained_on

    rows = [Row(f"text {i}", "a") for i in range(4)]
    (tmp_path / "draft").mkdir()
    (tmp_path / "train_ids.txt").write_text("".join(r.id + "\n" for r in rows[:2]))
    with pytest.raises(SpecfairError, match=r"draft.path=.*was trained on 1 of these evaluation prompts"):
        check_not_trained_on(str(tmp_path / "draft"), rows[1:2])
    check_not_trained_on(str(tmp_path / "draft"), rows[2:])  # disjoint: fine
    check_not_trained_on(None, rows)  # the truncated base has no training rows


def test_an_evaluation_only_sample_is_not_cut_by_held_out(compose_cfg):
    """Debian's sample marks every row "eval": there is nothing to train on, so per_category may exceed
    held_out (the generalist experiment evaluates 64 per category there; held_out is 50)."""
    cfg = compose_cfg("dataset=debian", "dataset.per_category=64").dataset
    splits = build_splits(cfg, seed=0)
    assert Counter(r.category for r in splits.eval) == dict.fromkeys(splits.categories, 64)
    assert splits.train == []
