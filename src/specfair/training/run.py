"""`python train.py`: fine-tune the draft on a dataset's training texts, export it in HF format.

Validation (expected alpha per category on held-out texts) runs before the first step and every
`train.val_every` steps; the exported draft lands at `${paths.ckpt_dir}/<pair>/<dataset>/<train.name>/draft`
where `evaluate.py draft=finetuned` finds it, with `train_summary.json` (records.TrainSummary) and
`train_ids.txt` (the ids of the dataset rows in its training mix, one a line) beside it.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from specfair.data.splits import held_out_settings
from specfair.decoding.engine import eos_set
from specfair.errors import SpecfairError
from specfair.models import load_pair
from specfair.records import (
    TrainSummary,
    category_value,
    load_train_summary,
    save_json,
    settings_conflict,
    write_atomic,
)
from specfair.tracking import lightning_logger
from specfair.training.datamodule import DraftDataModule, TrainTexts
from specfair.training.eagle import eagle_head, stored_layers
from specfair.training.losses import DIVERGENCES, OBJECTIVES
from specfair.training.module import DraftModule
from specfair.vocab import check_size, frequent_ids, save_id_map

log = logging.getLogger(__name__)

DATA_SOURCES = ("text", "target", "generalist")
TRAIN_IDS = "train_ids.txt"


class SaveOnInterrupt(Callback):
    """Ctrl-C leaves a resumable `interrupted.ckpt` beside the regular checkpoints."""

    def __init__(self, path: Path):
        self.path = path

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, KeyboardInterrupt):
            trainer.save_checkpoint(self.path)
            log.warning("interrupted: resume with ckpt_path=%s", self.path)


def check_train_cfg(cfg: DictConfig) -> None:
    """Refuse bad `train.*` values in one line before any model is loaded."""
    t = cfg.train
    if t.objective not in OBJECTIVES:
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
    check_data_cfg(t)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise SpecfairError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint")
    if cfg.get("ckpt_path") and not zipfile.is_zipfile(cfg.ckpt_path):  # torch.save writes a zip archive
        raise SpecfairError(
            f"ckpt_path={cfg.ckpt_path}: not a checkpoint (expected a .ckpt that train.py wrote)"
        )
    check_export(cfg)


def check_export(cfg: DictConfig) -> None:
    """Refuse to overwrite an export made with other training settings (overwrite=true replaces it): two runs
    that land in the same folder must be the same recipe, or one silently loses its draft."""
    summary_file = Path(cfg.export_dir) / "train_summary.json"
    if cfg.get("overwrite") or not summary_file.is_file():
        return
    imbalance = None if cfg.train.get("data") == "generalist" else cfg.dataset.imbalance
    conflict = settings_conflict(
        load_train_summary(summary_file),
        OmegaConf.to_container(cfg.train, resolve=True),
        OmegaConf.to_container(imbalance, resolve=True) if imbalance is not None else None,
    )
    if conflict:
        raise SpecfairError(
            f"export_dir={cfg.export_dir} holds a draft trained with {conflict}: pass overwrite=true to "
            "replace it, or choose another seed= or export_dir="
        )


def check_data_cfg(t: DictConfig) -> None:
    """`train.data`, `train.teacher`, `train.validate_on` and what each one rules out."""
    data, validate_on = t.get("data", "text"), t.get("validate_on", "text")
    if data not in DATA_SOURCES:
        raise SpecfairError(f"train.data={data!r}: expected one of {', '.join(DATA_SOURCES)}")
    if validate_on not in ("text", "target"):
        raise SpecfairError(f"train.validate_on={validate_on!r}: expected text or target")
    if data != "text" and float(t.on_policy_fraction) > 0:
        raise SpecfairError(
            f"train.on_policy_fraction={t.on_policy_fraction}: on-policy batches need train.data=text"
        )
    teacher = t.get("teacher", "stored")
    if teacher not in ("stored", "target", "cached"):
        raise SpecfairError(f"train.teacher={teacher!r}: expected stored, target or cached")
    if teacher == "cached" and data != "text":
        raise SpecfairError(
            f"train.teacher=cached scores human text (train.data=text), not train.data={data}"
        )
    if teacher == "cached" and float(t.on_policy_fraction) > 0:
        raise SpecfairError(
            f"train.on_policy_fraction={t.on_policy_fraction}: the draft's own samples need the live target "
            "(train.teacher=target), not train.teacher=cached"
        )
    stored = (data != "text" and teacher == "stored") or teacher == "cached"
    if stored and t.objective == "kd" and (t.divergence != "fkl" or float(t.temperature) != 1):
        raise SpecfairError(
            f"train.divergence={t.divergence} at train.temperature={t.temperature}: a stored top-k teacher "
            f"(train.data={data}, train.teacher={teacher}) supports fkl at temperature 1"
        )
    if (data != "text" or validate_on == "target" or stored) and int(t.corpus.teacher_k) < 1:
        raise SpecfairError(f"train.corpus.teacher_k={t.corpus.teacher_k}: must be >= 1")


def train(cfg: DictConfig) -> TrainSummary | None:
    """Fine-tune, validate, export; the summary on rank 0, None on other ranks.

    The module and datamodule come from `cfg.module` / `cfg.datamodule` (`_target_` configs); a replacement
    datamodule must offer what this reads: `categories` (names, in metric order) and `texts` (TrainTexts).
    """
    check_train_cfg(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    pair = load_pair(cfg.pair, cfg.draft, "cpu")  # float32 master weights; the trainer casts (bf16-mixed)
    head = eagle_head(cfg, pair.target) if cfg.draft.name == "eagle" else None
    datamodule: DraftDataModule = instantiate(
        cfg.datamodule, tokenizer=pair.tokenizer, target=pair.target, vocab=pair.vocab_size,
        feature_layers=stored_layers(head, pair.target.config.num_hidden_layers) if head else None,
    )  # fmt: skip
    datamodule.setup("fit")  # the module's metric needs the category names
    module_cfg = cfg.module
    if head is not None:  # the same module config and losses, the feature head's training step
        module_cfg = OmegaConf.create(OmegaConf.to_container(cfg.module, resolve=True))
        module_cfg._target_ = "specfair.training.eagle.EagleModule"
        module_cfg.eagle = OmegaConf.to_container(cfg.train.eagle, resolve=True)
    module: DraftModule = instantiate(
        module_cfg,
        draft=head if head is not None else pair.draft,
        target=pair.target,
        categories=datamodule.categories,
        vocab=pair.vocab_size,
        kept_ids=kept_ids(cfg, datamodule.texts, pair.tokenizer),
    )
    trainer, checkpoint = make_trainer(cfg)
    fit(trainer, module, datamodule, cfg.get("ckpt_path"))
    if not trainer.is_global_zero:
        return None
    summary = summarize(cfg, module, datamodule.texts, checkpoint.best_model_path, trainer.global_step)
    row_ids = training_row_ids(cfg, datamodule, pair.tokenizer)
    export(cfg, module, pair.tokenizer, summary, datamodule.texts, row_ids)
    return summary


def training_row_ids(cfg: DictConfig, datamodule, tokenizer) -> list[str]:
    """Row.id (a content hash) of every dataset row in the training mix, for train_ids.txt: what a leak check
    compares against evaluation prompts without rebuilding the split. Empty for the generalist (the
    target's own generations, no dataset row).

    Taken from the texts when they list their rows (`train_rows`), else rebuilt by the split the datamodule
    drew from (same dataset config, seed and token counts): a text under 2 tokens, dropped before training,
    is then still listed, which errs on the safe side for a leak check.
    """
    listed = getattr(datamodule.texts, "train_rows", None)
    if listed is not None:
        return list(listed)
    if cfg.train.get("data") == "generalist":
        return []
    from specfair.data.prompts import train_text
    from specfair.data.splits import build_splits

    dataset = getattr(datamodule, "dataset_cfg", None) or cfg.dataset

    def count_tokens(row):
        return len(tokenizer(train_text(row, dataset), add_special_tokens=False)["input_ids"])

    seed = int(getattr(datamodule, "seed", cfg.seed))
    return [r.id for r in build_splits(dataset, seed, count_tokens).train]


def make_trainer(cfg: DictConfig) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The configured Trainer for train.max_steps optimizer steps, validating every train.val_every; its
    best-expected-alpha checkpoint callback. Checkpoints go to <run dir>/checkpoints."""
    out_dir = Path(cfg.paths.output_dir)
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
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1))  # Lightning counts validation in batches
    logger = lightning_logger(
        cfg.get("logger"),
        out_dir,
        f"train-{cfg.dataset.name}-{cfg.train.name}",
        OmegaConf.to_container(cfg, resolve=True),
    )
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        max_steps=steps,
        max_epochs=1,
        val_check_interval=min(int(cfg.train.val_every), steps) * accumulate,
        logger=logger,
        callbacks=[checkpoint, SaveOnInterrupt(ckpt_dir / "interrupted.ckpt")],
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
        enable_model_summary=False,
    )
    return trainer, checkpoint


def fit(trainer: pl.Trainer, module: DraftModule, datamodule: DraftDataModule, ckpt_path: str | None) -> None:
    """Validate the base draft (step 0, same chart), train (resuming from `ckpt_path` if given), validate the
    final step if it fell between validations, and leave the final state in checkpoints/last.ckpt."""
    if not ckpt_path:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if not module.history or module.history[-1]["step"] != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")


def trained_ids(texts: TrainTexts, tokenizer) -> list[int]:
    """Every id the training texts use, most frequent first, EOS first of all: the exported id map."""
    return frequent_ids(texts.train_ids, len(tokenizer), always=sorted(eos_set(tokenizer.eos_token_id)))


def kept_ids(cfg: DictConfig, texts: TrainTexts, tokenizer) -> list[int] | None:
    """draft.vocab_size=N: the N ids the exported draft's pruned head will score (the first N of the id map
    `export` writes), so the loss is renormalised over them; None for a whole head."""
    size = cfg.draft.get("vocab_size")
    if not size:
        return None
    check_size(int(size), len(tokenizer))
    ids = (start_id_map(cfg, tokenizer) or trained_ids(texts, tokenizer))[: int(size)]
    if len(ids) < int(size):
        raise SpecfairError(
            f"draft.vocab_size={size}: the training texts use only {len(ids)} distinct ids; ask for fewer"
        )
    return ids


def start_id_map(cfg: DictConfig, tokenizer) -> list[int] | None:
    """A feature head fine-tuned from a trained one keeps that head's id map (its kept ids stay the same)."""
    from specfair.vocab import VOCAB_MAP, load_id_map

    if cfg.draft.name != "eagle" or cfg.train.eagle.from_scratch or not cfg.draft.get("path"):
        return None
    path = Path(cfg.draft.path) / VOCAB_MAP
    if not path.is_file():
        return None
    try:
        size = len(json.loads(path.read_text(encoding="utf-8"))["ids"])
    except (ValueError, KeyError, TypeError):
        size = 1  # load_id_map names what is wrong with the file
    return load_id_map(cfg.draft.path, size, len(tokenizer))[0]


def summarize(
    cfg: DictConfig, module: DraftModule, texts: TrainTexts, best_checkpoint: str, steps: int
) -> TrainSummary:
    """What the draft was trained on and how, and its validation curve (history: one entry per validation)."""
    general = cfg.train.get("data") == "generalist"
    return TrainSummary(
        pair=cfg.pair.name,
        dataset="generalist" if general else cfg.dataset.name,
        start=cfg.draft.name,
        train=OmegaConf.to_container(cfg.train, resolve=True),
        draft_layers=module.draft.config.layers if is_head(module) else module.draft.config.num_hidden_layers,
        seed=int(cfg.seed),
        steps=steps,
        data={
            "source": texts.source,
            "categories": texts.categories,
            "train_counts": texts.train_counts,
            "imbalance": None if general else OmegaConf.to_container(cfg.dataset.imbalance, resolve=True),
            "train_per_category": None if general else cfg.dataset.get("train_per_category"),
            # a single-pool dataset's held-out cut (unused where the dataset has a training split)
            "held_out": None if general else held_out_settings(cfg.dataset),
            "validation_texts": len(texts.val_ids),
            "draft_vocab_size": cfg.draft.get("vocab_size"),  # the loss was renormalised over that many ids
        },
        val_before=module.history[0],
        val_after=module.history[-1],
        history=module.history,
        best_checkpoint=best_checkpoint or None,
        run_dir=str(Path(cfg.paths.output_dir)),
    )


def export(
    cfg: DictConfig,
    module: DraftModule,
    tokenizer,
    summary: TrainSummary,
    texts: TrainTexts | None = None,
    row_ids: list[str] | None = None,
) -> Path:
    """The fine-tuned draft as an HF folder (+ tokenizer) with train_summary.json and train_ids.txt (the
    training rows' ids, `training_row_ids`; empty when not given), at cfg.export_dir.

    Written to a sibling `.tmp` folder first and renamed, so a reader never sees half an export; the summary
    and the ids are also copied into the run folder.
    """
    final = Path(cfg.export_dir)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "draft").mkdir(parents=True)
    if is_head(module):  # its own weights and config, the target's fingerprint; no copy of the target
        from specfair.decoding.eagle import save_head

        head = module.draft.to("cpu").eval()
        save_head(head, tmp / "draft", {"trained": summary["dataset"]}, dtype=torch.bfloat16)
    else:
        module.draft.to("cpu").eval().save_pretrained(tmp / "draft")
        tokenizer.save_pretrained(tmp / "draft")
    if texts is not None:
        # every id the draft trained on, most frequent first: draft.vocab_size=N cuts from it
        start = start_id_map(cfg, tokenizer)
        save_id_map(
            tmp / "draft",
            start or trained_ids(texts, tokenizer),
            f"the start head's id map ({cfg.draft.path})" if start
            else f"{summary['dataset']} training texts ({len(texts.train_ids)})",
        )  # fmt: skip
    save_json(summary, tmp / "train_summary.json")
    save_train_ids(row_ids or [], tmp / TRAIN_IDS)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():  # renames only: a kill here leaves the old export (.old) or the new one, never a mix
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    save_json(summary, Path(cfg.paths.output_dir) / "train_summary.json")
    save_train_ids(row_ids or [], Path(cfg.paths.output_dir) / TRAIN_IDS)
    from specfair.analysis.plots import training_curve

    curve = training_curve(summary, Path(cfg.paths.output_dir) / "training_curve.png")
    log.info(
        "fine-tuned draft saved to %s%s", final / "draft", f"; validation curve: {curve}" if curve else ""
    )
    return final


def is_head(module) -> bool:
    """A feature head (draft=eagle), saved by eagle.save_head, not as an HF model."""
    from specfair.decoding.eagle import EagleHead

    return isinstance(module.draft, EagleHead)


def save_train_ids(ids: list[str], path: Path) -> None:
    """One id a line (an empty file for no dataset rows), written atomically like the summary."""
    write_atomic(path, "".join(f"{i}\n" for i in ids))


def load_train_ids(folder: str | Path) -> set[str] | None:
    """The ids in an export's (or run folder's) train_ids.txt; None where an older export has none."""
    path = Path(folder) / TRAIN_IDS
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def summary_table(summary: TrainSummary):
    """A rich Table: expected alpha per category before and after training, the gain, greedy agreement."""
    from rich.table import Table

    before, after = summary["val_before"], summary["val_after"]
    table = Table(
        title=f"{summary['dataset']} · {summary['pair']} · {summary['train']['name']} · "
        f"{summary['steps']} steps: expected alpha on held-out texts"
    )
    for column in ("category", "before", "after", "gain", "greedy agreement after"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for c in summary["data"]["categories"]:
        b, a = category_value(before, c), category_value(after, c)
        table.add_row(
            c, f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}", f"{category_value(after, c, 'greedy_agreement'):.3f}"
        )
    table.add_section()
    b, a = before["expected_alpha"], after["expected_alpha"]
    table.add_row(
        "overall", f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}", f"{after['greedy_agreement']:.3f}", style="bold"
    )
    return table
