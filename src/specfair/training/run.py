"""`python train.py`: fine-tune the draft on a dataset's training texts, export it in HF format.

Validation (expected alpha per category on held-out texts) runs before the first step and every
`train.val_every` steps; the exported draft lands at `${paths.ckpt_dir}/<pair>/<dataset>/<train.name>/draft`
where `evaluate.py draft=finetuned` finds it, with `train_summary.json` beside it.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from specfair.data.rows import build_splits, train_text
from specfair.errors import SpecfairError
from specfair.models import load_pair
from specfair.training.distill import DIVERGENCES, DraftModule, make_loaders

log = logging.getLogger(__name__)


class SaveOnInterrupt(Callback):
    """Ctrl-C (or any crash) leaves a resumable `interrupted.ckpt` beside the regular checkpoints."""

    def __init__(self, path: Path):
        self.path = path

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, KeyboardInterrupt):
            trainer.save_checkpoint(self.path)
            log.warning("interrupted: resume with ckpt_path=%s", self.path)


def check_train_cfg(cfg: DictConfig) -> None:
    t = cfg.train
    if t.objective not in ("kd", "lm"):
        raise SpecfairError(f"train.objective={t.objective!r}: expected kd or lm")
    if t.objective == "kd" and t.divergence not in DIVERGENCES:
        raise SpecfairError(f"train.divergence={t.divergence!r}: expected one of {', '.join(DIVERGENCES)}")
    for key in ("max_steps", "batch_size", "max_length", "val_every"):
        if int(t[key]) < 1:
            raise SpecfairError(f"train.{key}={t[key]}: must be >= 1")
    if not 0 <= float(t.kd_weight) <= 1:
        raise SpecfairError(f"train.kd_weight={t.kd_weight}: must be in [0, 1]")
    if not 0 <= float(t.on_policy_fraction) <= 1:
        raise SpecfairError(f"train.on_policy_fraction={t.on_policy_fraction}: must be in [0, 1]")
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise SpecfairError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint")


def make_logger(cfg: DictConfig, out_dir: Path):
    if not cfg.logger.get("enabled"):
        return False
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(
        project=cfg.logger.get("project", "specfair"),
        entity=cfg.logger.get("entity"),
        mode=cfg.logger.get("mode", "offline"),
        group=cfg.logger.get("group"),
        tags=list(cfg.logger.get("tags") or []),
        save_dir=str(out_dir),
        job_type="train",
        name=f"train-{cfg.dataset.name}-{cfg.train.name}",
    )


def train(cfg: DictConfig) -> dict:
    check_train_cfg(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    pair = load_pair(cfg.pair, cfg.draft, "cpu")  # float32 master weights; the trainer casts (bf16-mixed)
    tok = pair.tokenizer
    max_length = int(cfg.train.max_length)

    @functools.cache
    def encode(row):
        return tok(train_text(row, cfg.dataset), add_special_tokens=False)["input_ids"]

    splits = build_splits(cfg.dataset, int(cfg.seed), lambda r: len(encode(r)))
    if not splits.train:
        raise SpecfairError(
            f"dataset {cfg.dataset.name}: no training texts left after holding out the prompts"
        )
    index = {c: i for i, c in enumerate(splits.categories)}
    train_ids = [encode(r) for r in splits.train]
    keep = [i for i, ids in enumerate(train_ids) if len(ids) >= 2]
    val_ids = [encode(r)[:max_length] for r in splits.eval]
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1))
    train_loader, val_loader, sampler = make_loaders(
        [train_ids[i] for i in keep],
        [index[splits.train[i].category] for i in keep],
        val_ids,
        [index[r.category] for r in splits.eval],
        cfg.train,
        tok.pad_token_id or 0,
        int(cfg.seed),
        accumulate,
    )
    log.info(
        "training on %d texts (%s); validating on %d held-out texts",
        len(keep),
        ", ".join(f"{c} {v['rows']}" for c, v in splits.train_counts.items()),
        len(val_ids),
    )

    train_cfg = OmegaConf.create({**OmegaConf.to_container(cfg.train, resolve=True), "seed": int(cfg.seed)})
    module = DraftModule(
        pair.draft,
        pair.target,
        train_cfg,
        splits.categories,
        pair.vocab_size,
        instantiate(cfg.train.optimizer),
    )
    module.sampler = sampler
    ckpt_dir = out_dir / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{step}",
        monitor="val/expected_alpha",
        mode="max",
        save_last=True,
        save_top_k=1,
    )
    steps = int(cfg.train.max_steps)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        max_steps=steps,
        max_epochs=1,
        val_check_interval=min(int(cfg.train.val_every), steps),
        logger=make_logger(cfg, out_dir),
        callbacks=[checkpoint, SaveOnInterrupt(ckpt_dir / "interrupted.ckpt")],
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
        enable_model_summary=False,
    )
    if trainer.logger:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if not cfg.get("ckpt_path"):
        trainer.validate(module, val_loader, verbose=False)  # the base draft, on the same chart
    trainer.fit(module, train_loader, val_loader, ckpt_path=cfg.get("ckpt_path"))
    if not module.history or module.history[-1]["step"] != trainer.global_step:
        trainer.validate(module, val_loader, verbose=False)
    trainer.save_checkpoint(ckpt_dir / "last.ckpt")  # the final state, also when it fell between validations
    if not trainer.is_global_zero:
        return {}
    return export(cfg, module, pair, splits, checkpoint, trainer.global_step)


def export(cfg, module, pair, splits, checkpoint, steps) -> dict:
    """The fine-tuned draft as an HF folder (+ tokenizer) and train_summary.json, written atomically."""
    final = Path(cfg.export_dir)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "draft").mkdir(parents=True)
    draft = module.draft.to("cpu").eval()
    draft.save_pretrained(tmp / "draft")
    pair.tokenizer.save_pretrained(tmp / "draft")
    before, after = module.history[0], module.history[-1]
    summary = {
        "pair": cfg.pair.name,
        "dataset": cfg.dataset.name,
        "train": OmegaConf.to_container(cfg.train, resolve=True),
        "draft_layers": draft.config.num_hidden_layers,
        "seed": int(cfg.seed),
        "steps": steps,
        "data": {
            "source": splits.source,
            "categories": splits.categories,
            "train_counts": splits.train_counts,
            "imbalance": OmegaConf.to_container(cfg.dataset.imbalance, resolve=True),
            "train_per_category": cfg.dataset.get("train_per_category"),
            "validation_texts": len(splits.eval),
        },
        "val_before": before,
        "val_after": after,
        "history": module.history,
        "best_checkpoint": checkpoint.best_model_path or None,
        "run_dir": str(Path(cfg.paths.output_dir)),
    }
    (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (Path(cfg.paths.output_dir) / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("fine-tuned draft saved to %s", final / "draft")
    return summary


def summary_table(summary: dict):
    from rich.table import Table

    before, after = summary["val_before"], summary["val_after"]
    table = Table(
        title=f"{summary['dataset']} · {summary['pair']} · {summary['train']['name']} · "
        f"{summary['steps']} steps: expected alpha on held-out texts"
    )
    for column in ("category", "before", "after", "gain", "greedy agreement after"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for c in summary["data"]["categories"]:
        b, a = before[f"expected_alpha/{c}"], after[f"expected_alpha/{c}"]
        table.add_row(c, f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}", f"{after[f'greedy_agreement/{c}']:.3f}")
    table.add_section()
    b, a = before["expected_alpha"], after["expected_alpha"]
    table.add_row(
        "overall", f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}", f"{after['greedy_agreement']:.3f}", style="bold"
    )
    return table
