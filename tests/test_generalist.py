"""The general-purpose draft's pieces: the target's stored top-k, the corpus, distillation from it, the arms."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from specfair.decoding.continuations import generate_batch
from specfair.errors import SpecfairError
from specfair.training.corpus import TeacherText, continuation_corpus
from specfair.training.datamodule import DraftDataModule, TrainTexts, collate, corpus_texts
from specfair.training.losses import DistillationLoss, divergence, stored_divergence


def test_stored_top_k_is_the_targets_own_distribution(tiny_llama):
    target = tiny_llama(0, vocab=12)
    prompts = [[1, 2, 3], [4, 5]]
    made = generate_batch(target, prompts, max_new_tokens=6, vocab=12, eos=frozenset(), teacher_k=5)
    for prompt, c in zip(prompts, made, strict=True):
        full = torch.tensor([prompt + c.tokens])
        logits = target(input_ids=full).logits[0, len(prompt) - 1 : -1]  # the positions that chose each token
        best = torch.topk(F.log_softmax(logits.float(), -1), 5)
        assert c.teacher_ids.shape == (6, 5) and c.teacher_logprobs.dtype == torch.float16
        assert torch.equal(c.teacher_ids.long(), best.indices)
        assert torch.allclose(c.teacher_logprobs.float(), best.values, atol=2e-3)
        assert c.teacher_ids[:, 0].tolist() == c.tokens  # greedy: the token is the top entry


def test_stored_divergence_is_forward_kl_toward_the_renormalized_top_k():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(3, 7, 20), torch.randn(3, 7, 20)
    log_p = F.log_softmax(p_logits, -1)
    full = torch.topk(log_p, 20)
    assert torch.allclose(
        stored_divergence(full.indices, full.values, q_logits),
        divergence(p_logits, q_logits, "fkl"),
        atol=1e-5,
    )
    top = torch.topk(log_p, 4)
    p_k = F.softmax(top.values, -1)  # p renormalized over its top 4; 0 elsewhere
    log_q = F.log_softmax(q_logits, -1).gather(-1, top.indices)
    expected = (p_k * (p_k.log() - log_q)).sum(-1)
    assert torch.allclose(stored_divergence(top.indices, top.values, q_logits), expected, atol=1e-5)
    assert not torch.allclose(
        expected, divergence(p_logits, q_logits, "fkl"), atol=1e-3
    )  # truncation matters


def test_teacher_text_rows_line_up_with_the_tokens_they_predict(tiny_llama):
    target = tiny_llama(1, vocab=12)
    texts = continuation_corpus(target, [[1, 2, 3], [7]], ["a", "b"], 12, frozenset(), max_new_tokens=4,
                                teacher_k=3, batch_size=2, cache_dir=None)  # fmt: skip
    first = texts[0]
    assert len(first.ids) == 7 and first.taught.tolist() == [False] * 3 + [True] * 4
    assert first.top_ids[3:, 0].tolist() == first.ids[3:]  # greedy continuation: row j's top entry is token j
    assert (first.top_logprobs[:3] == 0).all() and texts[1].category == "b"


def test_continuation_corpus_is_cached_and_reused(tiny_llama, tmp_path):
    target = tiny_llama(2, vocab=12)
    args = dict(max_new_tokens=5, teacher_k=2, batch_size=1, cache_dir=tmp_path)
    first = continuation_corpus(target, [[1, 2], [3]], ["a", "a"], 12, frozenset(), **args)
    parts = sorted(tmp_path.rglob("part-*.pt"))
    assert len(parts) == 2
    again = continuation_corpus(target, [[1, 2], [3]], ["a", "a"], 12, frozenset(), **args)
    assert [t.ids for t in again] == [t.ids for t in first]
    other = tiny_llama(3, vocab=12)  # other weights: another key, never the cached texts
    continuation_corpus(other, [[1, 2], [3]], ["a", "a"], 12, frozenset(), **args)
    assert len(sorted(tmp_path.rglob("part-*.pt"))) == 4


def _texts(target, n=12):
    prompts = [[1 + i % 5, 2 + i % 3] for i in range(n)]
    made = continuation_corpus(target, prompts, ["x" if i % 2 else "y" for i in range(n)], 12, frozenset(),
                               max_new_tokens=10, teacher_k=12, batch_size=4, cache_dir=None)  # fmt: skip
    return corpus_texts(made, val_count=4, seed=0)


def test_corpus_texts_hold_out_validation_and_keep_categories(tiny_llama):
    texts = _texts(tiny_llama(0, vocab=12))
    assert len(texts.train_ids) == 8 and len(texts.val_ids) == 4 and texts.categories == ["x", "y"]
    assert len(texts.train_teacher) == 8 and all(t.taught.any() for t in texts.train_teacher)
    batch = collate([{"ids": t.ids, "category": 0, "top_ids": t.top_ids, "top_logprobs": t.top_logprobs,
                      "taught": t.taught} for t in texts.train_teacher[:3]], pad_id=0)  # fmt: skip
    assert batch["top_ids"].shape[:2] == batch["input_ids"].shape and batch["taught"].dtype == torch.bool


def test_distilling_on_the_stored_teacher_moves_the_draft_toward_the_target(tiny_llama):
    """No target forward in training: a draft trained on the stored top-k (k = V) gets closer to the target."""
    import lightning.pytorch as pl

    from specfair.training.module import DraftModule

    target, draft = tiny_llama(0, vocab=12), tiny_llama(5, vocab=12, layers=1)
    texts = _texts(target, n=24)
    module = DraftModule(draft, target, texts.categories, vocab=12,
                         optimizer=lambda params: torch.optim.AdamW(params, lr=3e-2))  # fmt: skip
    data = DraftDataModule(texts=texts, batch_size=8, max_length=16)
    trainer = pl.Trainer(max_steps=30, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, val_check_interval=30, num_sanity_val_steps=0)  # fmt: skip
    trainer.validate(module, datamodule=data, verbose=False)
    calls = []
    target.register_forward_hook(lambda *a: calls.append(1))
    trainer.fit(module, datamodule=data)
    assert len(calls) == 1  # the one validation batch at step 30: training never ran the target
    before, after = module.history[0]["expected_alpha"], module.history[-1]["expected_alpha"]
    assert after > before + 0.05, (before, after)


def test_on_policy_batches_keep_each_rows_prompt_and_train_on_samples_only(tiny_llama):
    from specfair.training.module import DraftModule

    module = DraftModule(tiny_llama(1, vocab=12, layers=1), tiny_llama(0, vocab=12), ["a"], vocab=12,
                         on_policy_fraction=1.0)  # fmt: skip

    class _Trainer:
        global_step, accumulate_grad_batches = 0, 1

    module.trainer = _Trainer()  # only the step counter is read
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [3, 4, 5, 0, 0, 0]])  # right-padded: the second row has 3 tokens
    attention = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    batch, mask = module._on_policy(
        {"input_ids": ids, "attention_mask": attention, "category": torch.zeros(2)}, 0
    )
    assert batch["input_ids"][0, :3].tolist() == [5, 6, 7] and batch["input_ids"][1, :1].tolist() == [3]
    assert batch["attention_mask"].tolist() == attention.tolist()  # row lengths kept
    assert mask.tolist() == [
        [0, 0, 0, 1, 1, 1],
        [0, 1, 1, 0, 0, 0],
    ]  # sampled tokens only, never a prompt token
    loss = DistillationLoss(kd_weight=0.5)
    logits = torch.randn(2, 6, 12)
    total, parts = loss(batch["input_ids"], batch["attention_mask"], logits, logits + 1.0, 12,
                        loss_mask=mask, ce_mask=torch.zeros_like(mask))  # fmt: skip
    assert torch.allclose(total, parts["kd"])  # no cross-entropy on the draft's own samples


def test_a_stored_teacher_refuses_divergences_it_cannot_compute():
    loss = DistillationLoss(divergence="rkl")
    ids = torch.tensor([[1, 2, 3]])
    teacher = (torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 3, 2))
    with pytest.raises(SpecfairError, match="fkl"):
        loss(
            ids,
            torch.ones_like(ids),
            None,
            torch.randn(1, 3, 5),
            5,
            loss_mask=torch.ones_like(ids),
            teacher=teacher,
        )


def test_train_configs_name_start_arm_and_seed_in_the_export(compose_cfg):
    lm = compose_cfg("train=lm_short", "draft=generalist", "dataset=imdb", "seed=2", config="train")
    assert lm.export_dir.endswith("smollm2_135m/imdb/lm_short/from-generalist/seed2")
    general = compose_cfg("train=generalist", config="train")
    assert general.export_dir.endswith("smollm2_135m/generalist/generalist/seed0")
    assert general.train.data == "generalist" and general.datamodule.corpus.requests > 0
    control = compose_cfg("train=control", "draft=generalist", "seed=1", config="train")
    loads = compose_cfg("draft=generalist", "draft.recipe=control", "draft.seed=1")
    assert control.export_dir + "/draft" == loads.draft.path
    finetuned = compose_cfg("draft=finetuned", "dataset=imdb", "draft.train_name=lm_short", "draft.start=generalist",
                            "draft.seed=2")  # fmt: skip
    assert finetuned.draft.path == lm.export_dir + "/draft"


def test_generalist_before_it_exists_says_how_to_make_it(tmp_path):
    from specfair.models import load_pair

    pair = OmegaConf.create(
        {"name": "smollm2_135m", "target": "embedded:smollm2-135m-instruct", "draft": None}
    )
    draft = OmegaConf.create({"name": "generalist", "recipe": "generalist", "seed": 0,
                              "path": str(tmp_path / "generalist" / "draft")})  # fmt: skip
    with pytest.raises(SpecfairError, match=r"python train.py train=generalist .*make generalist"):
        load_pair(pair, draft)


def test_corpus_texts_validation_masks_count_target_tokens_only():
    ids = [0, 1, 2, 3]
    t = TeacherText(ids, torch.zeros(4, 1, dtype=torch.int32), torch.zeros(4, 1, dtype=torch.float16),
                    torch.tensor([False, False, True, True]), "c")  # fmt: skip
    texts = corpus_texts([t, t, t, t], val_count=2, seed=0)
    assert isinstance(texts, TrainTexts) and len(texts.val_taught) == 2
    assert texts.val_taught[0].tolist() == [False, False, True, True]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.data=web"], "train.data='web': expected one of text, target, generalist"),
        (
            ["train=generalist", "train.teacher=oracle"],
            "train.teacher='oracle': expected stored, target or cached",
        ),
        (
            ["train=generalist", "train.divergence=rkl"],
            "train.divergence=rkl at train.temperature=1.0: a stored top-k",
        ),
        (["train.data=target", "train.on_policy_fraction=0.5"], "on-policy batches need train.data=text"),
        (["train.validate_on=humans"], "train.validate_on='humans': expected text or target"),
    ],
)
def test_bad_data_settings_are_one_line(compose_cfg, overrides, message):
    from specfair.training.run import check_train_cfg

    with pytest.raises(SpecfairError) as err:
        check_train_cfg(compose_cfg(*overrides, config="train"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_full_logits_teacher_is_accepted_with_any_divergence(compose_cfg, tmp_path):
    from specfair.training.run import check_train_cfg

    check_train_cfg(
        compose_cfg(
            "train=generalist",
            "train.teacher=target",
            "train.divergence=rkl",
            f"paths.ckpt_dir={tmp_path}",
            config="train",
        )  # fmt: skip
    )


def test_two_runs_asking_for_one_export_with_other_settings_are_refused(compose_cfg, tmp_path):
    from specfair.records import TrainSummary, save_json
    from specfair.training.run import check_train_cfg

    cfg = compose_cfg(f"paths.ckpt_dir={tmp_path}", "train=kd_short", config="train")
    check_train_cfg(cfg)  # nothing there yet
    train = OmegaConf.to_container(cfg.train, resolve=True)
    imbalance = OmegaConf.to_container(cfg.dataset.imbalance)
    made = TrainSummary(pair="smollm2_135m", dataset="agnews", train={**train, "max_steps": 500}, seed=0,
                        steps=500, data={"imbalance": imbalance})  # fmt: skip
    save_json(made, f"{cfg.export_dir}/train_summary.json")
    with pytest.raises(SpecfairError, match=r"holds a draft trained with train.max_steps=500, asked for 120"):
        check_train_cfg(cfg)
    check_train_cfg(
        compose_cfg(f"paths.ckpt_dir={tmp_path}", "train=kd_short", "overwrite=true", config="train")
    )
    same = TrainSummary(pair="smollm2_135m", dataset="agnews", train=train, seed=0, steps=120,
                        data={"imbalance": imbalance})  # fmt: skip
    save_json(same, f"{cfg.export_dir}/train_summary.json")
    check_train_cfg(cfg)  # the same recipe again: allowed (it is deterministic)


def test_generalist_corpus_magpie_requests_and_unconditional_text(tiny_llama, tmp_path):
    """With the real SmolLM2 tokenizer (its chat template) and a tiny target of the same vocabulary."""
    from specfair.models import EMBEDDED, load_tokenizer
    from specfair.training.corpus import generalist_corpus

    tokenizer = load_tokenizer(EMBEDDED)
    vocab = len(tokenizer)
    target = tiny_llama(0, vocab=vocab, layers=1)
    cfg = OmegaConf.create({"requests": 2, "texts": 3, "request_tokens": 4, "opening_tokens": 3,
                            "max_new_tokens": 5, "top_p": 0.95, "teacher_k": 4, "batch_size": 2, "seed": 0})  # fmt: skip
    corpus = generalist_corpus(target, tokenizer, vocab, cfg, tmp_path)
    assert [t.category for t in corpus] == [
        "chat/greedy",
        "chat/sampled",
        "text/greedy",
        "text/sampled",
        "text/greedy",
    ]
    chat = corpus[0]
    text = tokenizer.decode(chat.ids)
    assert (
        text.startswith("<|im_start|>system\n")
        and "<|im_start|>user\n" in text
        and "<|im_start|>assistant\n" in text
    )
    prefix = len(tokenizer.apply_chat_template([{"role": "user", "content": "\u2063"}], tokenize=False,
                                               add_generation_prompt=False).split("\u2063")[0])  # fmt: skip
    assert tokenizer.decode(chat.ids[: int(chat.taught.nonzero()[0])]) == text[:prefix]  # template: untaught
    assert int(chat.taught.sum()) == 4 + 5  # the request and the answer, nothing of the template
    assert chat.top_ids[-5:, 0].tolist() == chat.ids[-5:]  # a greedy answer: each token is the top entry
    plain = corpus[2]
    assert plain.ids[0] == tokenizer.convert_tokens_to_ids("<|endoftext|>") and not plain.taught[0]
    assert plain.taught[1:].all() and len(plain.ids) == 1 + 3 + 5
    again = generalist_corpus(target, tokenizer, vocab, cfg, tmp_path)  # cached: read back, identical
    assert [t.ids for t in again] == [t.ids for t in corpus] and len(
        list(tmp_path.rglob("part-*.pt"))
    ) == 1 + 2
