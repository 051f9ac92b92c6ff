"""The LightningModule on tiny random Llamas: every objective trains, the target stays frozen, a resumed run
reproduces the uninterrupted one bit for bit, the exported draft reloads, a non-finite loss stops the run."""

import copy
import functools

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from specfair.errors import SpecfairError
from specfair.training.datamodule import DraftDataModule, TrainTexts
from specfair.training.losses import DistillationLoss
from specfair.training.module import DraftModule, warmup_cosine
from specfair.training.run import SaveOnInterrupt

SETTINGS = {
    "objective": "kd",
    "divergence": "fkl",
    "beta": 0.5,
    "kd_weight": 1.0,
    "temperature": 1.0,
    "on_policy_fraction": 0.0,
    "freeze_embeddings": False,
    "sampling": "natural",
    "max_steps": 6,
    "warmup_steps": 2,
}


@pytest.fixture
def tiny_run(tiny_llama):
    """build(**settings) -> (DraftModule, DraftDataModule): a 3-layer target, a 1-layer draft, vocab 32,
    12 random 20-token texts in 3 categories, batches of 2 windows of at most 12 tokens."""

    def build(**overrides):
        s = SETTINGS | overrides
        g = torch.Generator().manual_seed(5)
        ids = [torch.randint(1, 32, (20,), generator=g).tolist() for _ in range(12)]
        cats = [i % 3 for i in range(12)]
        texts = TrainTexts(["x", "y", "z"], ids, cats, ids[:6], cats[:6])
        data = DraftDataModule(
            texts=texts, seed=0, batch_size=2, max_length=12, sampling=s["sampling"], pad_id=0
        )
        loss = DistillationLoss(s["objective"], s["divergence"], s["kd_weight"], s["beta"], s["temperature"])
        module = DraftModule(
            tiny_llama(1, vocab=32, layers=1),
            tiny_llama(0, vocab=32, layers=3),
            texts.categories,
            32,
            loss=loss,
            optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
            scheduler=functools.partial(
                warmup_cosine, warmup_steps=s["warmup_steps"], total_steps=s["max_steps"], min_lr_ratio=0.1
            ),
            on_policy_fraction=s["on_policy_fraction"],
            freeze_embeddings=s["freeze_embeddings"],
            sampling=s["sampling"],
            group_dro_step=s.get("group_dro_step", 0.1),
            kept_ids=s.get("kept_ids"),
        )
        return module, data

    return build


def trainer(tmp_path, steps, **kw):
    return pl.Trainer(
        **{
            "accelerator": "cpu",
            "max_steps": steps,
            "max_epochs": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "val_check_interval": 3,
            "default_root_dir": str(tmp_path),
            "gradient_clip_val": 1.0,
            **kw,
        }
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
        {"sampling": "group_dro"},
        {"freeze_embeddings": True},
    ],
)
def test_every_objective_trains_and_leaves_the_target_untouched(tmp_path, tiny_run, overrides):
    module, data = tiny_run(**overrides)
    target_before = copy.deepcopy(module.target.state_dict())
    draft_before = copy.deepcopy(module.draft.state_dict())
    t = trainer(tmp_path, 6)
    t.fit(module, datamodule=data)
    assert t.global_step == 6 and [h["step"] for h in module.history] == [3, 6]
    assert all(torch.equal(v, module.target.state_dict()[k]) for k, v in target_before.items())
    assert not module.target.training and all(not p.requires_grad for p in module.target.parameters())
    changed = {k for k, v in draft_before.items() if not torch.equal(v, module.draft.state_dict()[k])}
    assert changed
    if overrides.get("freeze_embeddings"):
        assert not changed & {"model.embed_tokens.weight", "lm_head.weight"}
    assert all(
        k.startswith(("draft.", "val_metric.", "group_dro.")) for k in module.state_dict()
    )  # no target
    if overrides.get("sampling") == "group_dro":
        assert not torch.allclose(module.group_dro.weights, torch.full((3,), 1 / 3))  # the weights moved


def test_one_step_lowers_the_loss(tiny_run):
    module, data = tiny_run(max_steps=1, warmup_steps=0)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    optimizer = torch.optim.AdamW([p for p in module.draft.parameters() if p.requires_grad], lr=1e-2)

    def loss():
        t, d = module.logits(batch)
        return module.loss_fn(batch["input_ids"], batch["attention_mask"], t, d, 32)[0]

    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        assert loss().item() < before.item()


def test_group_dro_weights_the_worst_category_and_moves_toward_it(tiny_run):
    """Σ_g q_g·L_g with L_g the mean row loss of category g; q rises for the category with the highest loss and
    a category absent from the batch keeps its weight relative to the others' update."""
    module, data = tiny_run(sampling="group_dro", group_dro_step=1.0)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    batch["category"] = torch.tensor([0, 1])  # category 2 absent from this batch
    t, d = module.logits(batch)
    rows, _ = module.loss_fn(batch["input_ids"], batch["attention_mask"], t, d, 32, reduction="row")
    mean, _ = module.loss_fn(batch["input_ids"], batch["attention_mask"], t, d, 32)
    assert rows.shape == (2,) and torch.isclose(rows.mean(), mean)  # equal row lengths: same mean
    module.log = lambda *a, **k: None  # outside a Trainer
    loss, _ = module.objective(batch["category"], batch["input_ids"], batch["attention_mask"], t, d, 32)
    q = torch.softmax(torch.log(torch.full((3,), 1 / 3)) + torch.tensor([rows[0], rows[1], 0.0]), 0)
    assert torch.allclose(module.group_dro.weights, q) and torch.isclose(loss, (q[:2] * rows).sum())
    worst = int(rows.argmax())
    assert module.group_dro.weights[worst] == module.group_dro.weights.max()


def test_warmup_cosine_schedule():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.5, 1.0, 1.0])  # warmup, then the cosine starts at the full rate
    assert rates[4] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert rates[6:] == pytest.approx([0.1, 0.1])  # held at the floor after total_steps


@pytest.mark.parametrize("accumulate, sampling", [(1, "natural"), (2, "natural"), (1, "group_dro")])
def test_resuming_reproduces_the_uninterrupted_run(tmp_path, tiny_run, accumulate, sampling):
    kw = {"accumulate_grad_batches": accumulate, "val_check_interval": 3 * accumulate}
    straight, data = tiny_run(sampling=sampling)
    trainer(tmp_path / "a", 6, **kw).fit(straight, datamodule=data)

    class CtrlC(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 4:  # mid-stream, off a validation boundary
                raise KeyboardInterrupt

    first, data = tiny_run(sampling=sampling)
    ckpt = tmp_path / "interrupted.ckpt"
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
        trainer(tmp_path / "b", 6, callbacks=[CtrlC(), SaveOnInterrupt(ckpt)], **kw).fit(
            first, datamodule=data
        )
    assert ckpt.is_file()
    resumed, data = tiny_run(sampling=sampling)
    trainer(tmp_path / "c", 6, **kw).fit(resumed, datamodule=data, ckpt_path=ckpt)
    if sampling == "group_dro":  # its weights are in the checkpoint
        assert torch.equal(resumed.group_dro.weights, straight.group_dro.weights)
    assert data.sampler.start == 4 * accumulate * 2  # the stream restarted at the first unseen example
    for k, v in straight.draft.state_dict().items():
        assert torch.equal(v, resumed.draft.state_dict()[k]), k
    untimed = [
        [{k: v for k, v in h.items() if k != "train_s"} for h in m.history] for m in (resumed, straight)
    ]
    assert untimed[0] == untimed[1]  # the validation curve survives the interruption (timings aside)


def test_exported_draft_reloads_with_identical_logits(tmp_path, tiny_run):
    from transformers import AutoModelForCausalLM

    module, data = tiny_run(max_steps=3)
    trainer(tmp_path, 3).fit(module, datamodule=data)
    module.draft.save_pretrained(tmp_path / "draft")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "draft").eval()
    ids = torch.tensor([[1, 4, 9, 16, 25]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, module.draft.eval()(ids).logits)


def test_non_finite_loss_stops_with_the_step(tmp_path, tiny_run):
    module, data = tiny_run()
    with torch.no_grad():
        module.draft.model.norm.weight.fill_(float("nan"))
    with pytest.raises(SpecfairError, match="non-finite training loss .* at step 0"):
        trainer(tmp_path, 6).fit(module, datamodule=data)


def test_a_pruned_head_trains_and_validates_on_its_kept_ids(tmp_path, tiny_run):
    """draft.vocab_size=N in training: finite loss over the kept ids, and validation's expected alpha is the
    pruned draft's (q zero outside the kept ids) against the target's whole p, as evaluation will see it."""
    from specfair.training.losses import next_token_views
    from specfair.training.validation import ExpectedAlpha
    from specfair.vocab import prune_head

    kept = list(range(0, 32, 2)) + [1, 3]
    module, data = tiny_run(kept_ids=kept)
    t = trainer(tmp_path, 6)
    t.fit(module, datamodule=data)
    assert t.global_step == 6 and all(0 < h["expected_alpha"] < 1 for h in module.history)
    pruned = prune_head(copy.deepcopy(module.draft).eval(), kept)
    metric = ExpectedAlpha(module.categories)
    with torch.no_grad():
        for batch in data.val_dataloader():
            target_logits = module.target(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            draft_logits = pruned(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            _, mask, p, q = next_token_views(
                batch["input_ids"], batch["attention_mask"], target_logits, draft_logits, 32
            )
            metric.update(p, q, mask, batch["category"])
    module.val_metric.reset()
    t.validate(module, datamodule=data, verbose=False)
    assert module.history[-1]["expected_alpha"] == pytest.approx(
        float(metric.compute()["expected_alpha"]), abs=1e-5
    )
