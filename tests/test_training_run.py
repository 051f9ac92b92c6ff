"""`train.py` end to end: config composition, CLI overrides reaching the module, the export that
evaluate.py and transformers load, train_summary.json, bad input as one line."""

import re
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from specfair import ROOT
from specfair.errors import SpecfairError
from specfair.records import TrainSummary, category_value, load_train_summary
from specfair.training.module import DraftModule
from specfair.training.run import check_train_cfg


def test_train_configs_compose(compose_cfg):
    for option in ("kd", "lm", "kd_short"):
        cfg = compose_cfg(f"train={option}", config="train")
        assert cfg.train.name == option and cfg.train.optimizer._partial_
        assert cfg.export_dir.endswith(f"smollm2_135m/agnews/{option}/from-base/seed0")


def test_cli_overrides_reach_the_module(compose_cfg, tiny_llama):
    cfg = compose_cfg(
        "train=lm",
        "train.divergence=rkl",
        "train.kd_weight=0.3",
        "train.on_policy_fraction=0.25",
        "train.freeze_embeddings=true",
        "train.optimizer.lr=0.01",
        "train.warmup_steps=0",
        "train.max_steps=4",
        "seed=7",
        config="train",
    )
    module = instantiate(
        cfg.module,
        draft=tiny_llama(1, vocab=16, layers=1),
        target=tiny_llama(0, vocab=16, layers=2),
        categories=["a", "b"],
        vocab=16,
    )
    assert isinstance(module, DraftModule)
    loss = module.loss_fn
    assert (loss.objective, loss.divergence, loss.kd_weight, loss.beta) == ("lm", "rkl", 0.3, 0.5)
    assert (module.on_policy_fraction, module.seed) == (0.25, 7)
    assert not module.draft.get_input_embeddings().weight.requires_grad
    optimizer = module.optimizer_factory([torch.zeros(1, requires_grad=True)])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["lr"] == 0.01
    scheduler = module.scheduler_factory(optimizer)
    assert scheduler.lr_lambdas[0](0) == 1.0 and scheduler.lr_lambdas[0](4) == pytest.approx(0.1)


def run(script, *overrides):
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides], capture_output=True, text=True, timeout=900, cwd="/"
    )


def test_train_py_exports_a_draft_that_evaluate_and_transformers_load(tmp_path):
    ckpts = tmp_path / "ckpts"
    common = [f"paths.ckpt_dir={ckpts}", "dataset.per_category=2", "seed=1"]
    result = run(
        "train.py",
        *common,
        "train.max_steps=3",
        "train.batch_size=2",
        "train.max_length=24",
        "train.val_every=2",
        "logger=wandb",
        f"hydra.run.dir={tmp_path / 'train'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = ckpts / "smollm2_135m" / "agnews" / "kd" / "from-base" / "seed1"  # data, arm, start, seed
    summary = load_train_summary(folder)
    assert summary.version == TrainSummary.latest and summary.steps == 3 and summary.pair == "smollm2_135m"
    assert summary.train["divergence"] == "fkl" and "module" not in summary.train  # train.* as configured
    assert [h["step"] for h in summary.history] == [0, 2, 3]
    assert set(summary.data["train_counts"]) == {"World", "Sports", "Business", "Sci/Tech"}
    assert 0 < summary.val_before["expected_alpha"] < 1 and category_value(summary.val_after, "World") > 0
    assert load_train_summary(tmp_path / "train").to_dict() == summary.to_dict()
    from specfair.training.run import load_train_ids  # the training rows' ids, beside train_summary.json

    trained = load_train_ids(folder)
    assert len(trained) == sum(v["rows"] for v in summary.data["train_counts"].values())
    assert all(len(i) == 16 for i in trained) and load_train_ids(tmp_path / "train") == trained
    assert summary.data["held_out"] == {"split_seed": 0, "held_out": 50}
    assert list((tmp_path / "train" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "train" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "train" / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    from specfair.vocab import load_id_map  # the ids it trained on, most frequent first (draft.vocab_size)

    ids, source = load_id_map(folder / "draft", 50, tokens=49152)
    assert len(set(ids)) == 50 and ids[0] == 2 and source.startswith("agnews training texts")
    assert summary.start == "base" and summary.data["validation_texts"] == 8
    assert (
        0 < summary.val_before["greedy_agreement"] < 1
    )  # on the target's own continuations of the 8 prompts

    from transformers import AutoModelForCausalLM

    draft = AutoModelForCausalLM.from_pretrained(folder / "draft").eval()
    from specfair.models import EMBEDDED, load_model

    target = load_model(EMBEDDED)
    ids = torch.tensor([[504, 3458, 314, 253, 1542, 30]])
    assisted = target.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        assistant_model=draft,
        do_sample=False,
        max_new_tokens=8,
        pad_token_id=2,
    )
    plain = target.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8, pad_token_id=2
    )
    assert torch.equal(assisted, plain)  # transformers' assisted generation takes the exported draft
    ckpt = torch.load(
        tmp_path / "train" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    weights = {k.removeprefix("draft."): v for k, v in ckpt["state_dict"].items() if k.startswith("draft.")}
    assert all(torch.equal(draft.state_dict()[k], v) for k, v in weights.items() if k in draft.state_dict())

    out = tmp_path / "eval"
    result = run(
        "evaluate.py",
        *common,
        "draft=finetuned",
        "spec.max_new_tokens=6",
        "logger=none",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from specfair.records import load_summary

    evaluated = load_summary(out)
    assert evaluated.draft["name"] == "finetuned" and evaluated.lossless_mismatches == 0
    from specfair.records import load_samples

    assert not trained & {r["id"] for r in load_samples(out)}  # no evaluation prompt among its training rows
    result = run(  # the exported draft cut to its first 2 layers (issue 14: a cheaper draft step)
        "evaluate.py", *common, "draft=finetuned", "draft.num_layers=2", "spec.max_new_tokens=6",
        "logger=none", f"hydra.run.dir={tmp_path / 'cut'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    cut = load_summary(tmp_path / "cut")
    assert cut.lossless_mismatches == 0 and cut.overall["alpha"] != evaluated.overall["alpha"]

    result = run(
        "evaluate.py",
        *common,
        "draft=finetuned",
        "draft.trained_on=imdb",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'missing'}",
    )
    assert result.returncode == 2
    assert (
        "holds no model: make it with `python train.py dataset=imdb pair=smollm2_135m train=kd draft=base seed=1`"
        in result.stderr
    )
    result = run(
        "evaluate.py",
        *common,
        "draft=finetuned",
        "pair.name=other_pair",
        "logger=none",
        f"draft.path={folder / 'draft'}",
        f"hydra.run.dir={tmp_path / 'wrong'}",
    )
    assert result.returncode == 2 and "fine-tuned for pair 'smollm2_135m', not 'other_pair'" in result.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.divergence=kl", "train.divergence='kl'"),
        ("train.objective=rl", "train.objective='rl'"),
        ("train.kd_weight=2", "train.kd_weight=2"),
        ("train.on_policy_fraction=-0.1", "train.on_policy_fraction=-0.1"),
        ("train.max_steps=0", "train.max_steps=0"),
        ("ckpt_path=/nonexistent.ckpt", "no such checkpoint"),
    ],
)
def test_bad_train_settings_are_refused_before_loading_models(compose_cfg, override, message):
    with pytest.raises(SpecfairError, match=re.escape(message)):
        check_train_cfg(compose_cfg(override, config="train"))


def test_train_bad_input_is_one_line(tmp_path):
    result = run("train.py", "train.divergence=kl", "logger=none", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and "train.divergence='kl'" in result.stderr
    assert "Traceback" not in result.stderr
