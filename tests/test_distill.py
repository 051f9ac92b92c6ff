"""Draft fine-tuning: divergences against their formulas, optimisation, frozen target, export, resume."""

import copy
import json
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from conftest import tiny_llama
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from specfair import ROOT
from specfair.errors import SpecfairError
from specfair.training.distill import (
    DraftModule,
    ExpectedAlpha,
    distillation_loss,
    divergence,
    make_loaders,
    sampling_weights,
)
from specfair.training.run import SaveOnInterrupt


def reference(p_logits, q_logits, kind, beta=0.5, temperature=1.0):
    """Straight from the definitions, in float64, one position at a time."""
    out = []
    for pl_, ql_ in zip(
        p_logits.double().reshape(-1, p_logits.shape[-1]),
        q_logits.double().reshape(-1, q_logits.shape[-1]),
        strict=True,
    ):
        p = torch.softmax(pl_ / temperature, -1)
        q = torch.softmax(ql_ / temperature, -1)
        if kind == "fkl":
            out.append(sum(p[v] * torch.log(p[v] / q[v]) for v in range(len(p))))
        elif kind == "rkl":
            out.append(sum(q[v] * torch.log(q[v] / p[v]) for v in range(len(p))))
        elif kind == "jsd":
            m = beta * p + (1 - beta) * q
            out.append(beta * sum(p * torch.log(p / m)) + (1 - beta) * sum(q * torch.log(q / m)))
        else:
            out.append(0.5 * sum(abs(p[v] - q[v]) for v in range(len(p))))
    return torch.stack(out).reshape(p_logits.shape[:-1])


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd", "tvd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_divergences_match_their_formulas(kind, temperature):
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(2, 3, 11, generator=g) * 3, torch.randn(2, 3, 11, generator=g) * 3
    got = divergence(p, q, kind, beta=0.3, temperature=temperature)
    assert torch.allclose(got.double(), reference(p, q, kind, beta=0.3, temperature=temperature), atol=1e-5)
    assert torch.all(divergence(p, p, kind, beta=0.3).abs() < 1e-5)


def test_loss_masks_padding_and_ignores_padded_vocabulary_rows():
    g = torch.Generator().manual_seed(1)
    vocab = 10
    ids = torch.randint(0, vocab, (2, 6), generator=g)
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    t, d = torch.randn(2, 6, vocab + 6, generator=g), torch.randn(2, 6, vocab + 6, generator=g)
    cfg = OmegaConf.create({"objective": "kd", "divergence": "fkl", "kd_weight": 1.0})
    loss, _ = distillation_loss(ids, attention, t, d, cfg, vocab)
    # by hand: positions (row, i) predicting i+1 with both tokens real: row 0 -> 5 positions, row 1 -> 2
    per_position = reference(t[:, :-1, :vocab], d[:, :-1, :vocab], "fkl")
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float64)
    assert loss.item() == pytest.approx(float((per_position * mask).sum() / mask.sum()), rel=1e-5)
    # garbage in the padding positions or padded vocabulary rows changes nothing
    t2, d2 = t.clone(), d.clone()
    t2[1, 3:] = 1e4
    d2[..., vocab:] = 50.0
    assert distillation_loss(ids, attention, t2, d2, cfg, vocab)[0].item() == pytest.approx(
        loss.item(), rel=1e-6
    )
    mixed, parts = distillation_loss(ids, attention, t, d, OmegaConf.merge(cfg, {"kd_weight": 0.25}), vocab)
    assert mixed.item() == pytest.approx(0.25 * parts["kd"].item() + 0.75 * parts["ce"].item(), rel=1e-6)


def test_expected_alpha_metric_by_hand():
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    q = torch.log(torch.tensor([[[0.2, 0.8], [0.6, 0.4]]]))
    metric = ExpectedAlpha(["a", "b"])
    metric.update(p, q, torch.tensor([[1, 1]]), torch.tensor([1]))
    out = metric.compute()
    assert out["expected_alpha/b"] == pytest.approx((0.7 + 0.7) / 2)
    assert out["greedy_agreement/b"] == pytest.approx(0.5)  # argmax differs at position 0 (tie broken to 0)
    assert out["expected_alpha"] == pytest.approx(0.7)


def test_sampling_weights():
    cats = [0, 0, 0, 1]
    assert sampling_weights(cats, "natural") == [1, 1, 1, 1]
    balanced = sampling_weights(cats, "balanced")
    assert sum(balanced[:3]) == pytest.approx(balanced[3])
    temp = sampling_weights(cats, "temperature", 2.0)  # category mass ∝ n^(1/2): 3^0.5 vs 1
    assert sum(temp[:3]) / temp[3] == pytest.approx(3**0.5)
    with pytest.raises(SpecfairError, match="train.sampling"):
        sampling_weights(cats, "uniform")


TRAIN = {
    "name": "kd",
    "objective": "kd",
    "divergence": "fkl",
    "beta": 0.5,
    "kd_weight": 1.0,
    "temperature": 1.0,
    "on_policy_fraction": 0.0,
    "sampling": "natural",
    "max_steps": 6,
    "batch_size": 2,
    "max_length": 12,
    "val_every": 3,
    "warmup_steps": 2,
    "min_lr_ratio": 0.1,
    "seed": 0,
}


def tiny_setup(**overrides):
    cfg = OmegaConf.create(TRAIN | overrides)
    target = tiny_llama(0, vocab=32, layers=3)
    draft = tiny_llama(1, vocab=32, layers=1)
    g = torch.Generator().manual_seed(5)
    texts = [torch.randint(1, 32, (20,), generator=g).tolist() for _ in range(12)]
    cats = [i % 3 for i in range(12)]
    train, val, sampler = make_loaders(texts, cats, texts[:6], cats[:6], cfg, pad_id=0, seed=0)
    module = DraftModule(
        draft, target, cfg, ["x", "y", "z"], 32, lambda params: torch.optim.AdamW(params, lr=1e-2)
    )
    module.sampler = sampler
    return module, train, val


def trainer(tmp_path, steps, **kw):
    return pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=3,
        default_root_dir=str(tmp_path),
        gradient_clip_val=1.0,
        **kw,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"divergence": "fkl"},
        {"divergence": "rkl"},
        {"divergence": "jsd"},
        {"divergence": "tvd"},
        {"objective": "lm"},
        {"kd_weight": 0.5, "on_policy_fraction": 0.5},
        {"sampling": "balanced"},
    ],
)
def test_every_objective_trains_and_leaves_the_target_untouched(tmp_path, overrides):
    module, train, val = tiny_setup(**overrides)
    target_before = copy.deepcopy(module.target.state_dict())
    draft_before = copy.deepcopy(module.draft.state_dict())
    t = trainer(tmp_path, 6)
    t.fit(module, train, val)
    assert t.global_step == 6 and len(module.history) == 2
    assert all(torch.equal(v, module.target.state_dict()[k]) for k, v in target_before.items())
    assert not module.target.training and all(not p.requires_grad for p in module.target.parameters())
    assert any(not torch.equal(v, module.draft.state_dict()[k]) for k, v in draft_before.items())
    assert all(k.startswith(("draft.", "val_metric.")) for k in module.state_dict())  # target never saved


def test_one_step_lowers_the_loss():
    module, train, _ = tiny_setup(max_steps=1, warmup_steps=0)
    batch = next(iter(train))
    optimizer = torch.optim.AdamW([p for p in module.draft.parameters() if p.requires_grad], lr=1e-2)

    def loss():
        t, d = module._logits(batch)
        return distillation_loss(batch["input_ids"], batch["attention_mask"], t, d, module.cfg, 32)[0]

    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        assert loss().item() < before.item()


def test_resuming_reproduces_the_uninterrupted_run(tmp_path):
    straight, train, val = tiny_setup()
    trainer(tmp_path / "a", 6).fit(straight, train, val)

    class CtrlC(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 4:  # mid-stream, off a validation boundary
                raise KeyboardInterrupt

    first, train, val = tiny_setup()
    ckpt = tmp_path / "interrupted.ckpt"
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
        trainer(tmp_path / "b", 6, callbacks=[CtrlC(), SaveOnInterrupt(ckpt)]).fit(first, train, val)
    assert ckpt.is_file()
    resumed, train, val = tiny_setup()
    trainer(tmp_path / "c", 6).fit(resumed, train, val, ckpt_path=ckpt)
    for k, v in straight.draft.state_dict().items():
        assert torch.equal(v, resumed.draft.state_dict()[k]), k


def test_exported_draft_reloads_with_identical_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    module, train, val = tiny_setup(max_steps=3)
    trainer(tmp_path, 3).fit(module, train, val)
    module.draft.save_pretrained(tmp_path / "draft")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "draft").eval()
    ids = torch.tensor([[1, 4, 9, 16, 25]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, module.draft.eval()(ids).logits)


def test_train_configs_compose():
    from conftest import compose_cfg

    for option in ("kd", "lm"):
        cfg = compose_cfg(f"train={option}", config="train")
        assert cfg.train.name == option and cfg.train.optimizer._partial_
        assert cfg.export_dir.endswith(f"smollm2_135m/agnews/{option}")


def test_non_finite_loss_stops_with_the_step(tmp_path):
    module, train, val = tiny_setup()
    with torch.no_grad():
        module.draft.model.norm.weight.fill_(float("nan"))
    with pytest.raises(SpecfairError, match="non-finite training loss .* at step 0"):
        trainer(tmp_path, 6).fit(module, train, val)


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
    folder = ckpts / "smollm2_135m" / "agnews" / "kd"
    summary = json.loads((folder / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["pair"] == "smollm2_135m"
    assert [h["step"] for h in summary["history"]] == [0, 2, 3]
    assert set(summary["data"]["train_counts"]) == {"World", "Sports", "Business", "Sci/Tech"}
    assert 0 < summary["val_before"]["expected_alpha"] < 1 and "expected_alpha/World" in summary["val_after"]
    assert list((tmp_path / "train" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "train" / "checkpoints" / "last.ckpt").is_file()

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
    evaluated = json.loads((out / "summary.json").read_text())
    assert evaluated["draft"]["name"] == "finetuned" and evaluated["lossless_mismatches"] == 0

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
        "holds no model: make it with `python train.py dataset=imdb pair=smollm2_135m train=kd`"
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
        ("train.kd_weight=2", "train.kd_weight=2"),
        ("ckpt_path=/nonexistent.ckpt", "no such checkpoint"),
    ],
)
def test_train_bad_input_is_one_line(tmp_path, override, message):
    result = run("train.py", override, "logger=none", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
