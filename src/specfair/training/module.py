"""The LightningModule: fine-tune the draft toward a frozen target, validate with per-category expected alpha.

The target is held outside the module's registered children: it is never in a checkpoint, never switched to
train mode by Lightning, and never receives gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import lightning.pytorch as pl
import torch

from specfair.records import nest_validation
from specfair.training.losses import (
    DistillationLoss,
    GroupDRO,
    check_finite,
    kept_mask,
    next_token_views,
    outside_kept,
)
from specfair.training.on_policy import draft_written, is_on_policy
from specfair.training.validation import ExpectedAlpha


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning-rate factor: linear warmup over `warmup_steps` optimizer steps, then cosine decay
    to `min_lr_ratio` at `total_steps` (held there after)."""
    warmup, total, floor = int(warmup_steps), int(total_steps), float(min_lr_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class DraftModule(pl.LightningModule):
    """Trains `draft` with `loss` toward the frozen `target`; records validation in `history`.

    Built from `module` in conf/train.yaml (loss, optimizer, scheduler: `_target_` configs; the keys are
    documented in conf/train/kd.yaml); the models, category names and `vocab` (the rows both models score) come
    at run time. `history` holds one entry per validation ({"step", "expected_alpha", "categories": {...}}), the
    first at step 0 (the base draft); it is saved in checkpoints so a resumed run keeps the whole curve.
    """

    def __init__(self, draft, target, categories: list[str], vocab: int, loss: Callable | None = None,
                 optimizer: Callable | None = None, scheduler: Callable | None = None, on_policy_fraction: float = 0.0,
                 freeze_embeddings: bool = False, seed: int = 0, teacher: str = "stored", sampling: str = "natural",
                 group_dro_step: float = 0.1, kept_ids: list[int] | None = None):  # fmt: skip
        super().__init__()
        self.draft = draft.train().requires_grad_(True)
        self._frozen = [target.eval().requires_grad_(False)]  # a list: not a registered child module
        self.vocab, self.categories = vocab, list(categories)
        self.loss_fn = loss or DistillationLoss()
        self.optimizer_factory, self.scheduler_factory = optimizer or torch.optim.AdamW, scheduler
        self.on_policy_fraction, self.seed = float(on_policy_fraction), int(seed)
        # "target": ignore a corpus's stored top-k and run the target; "cached": the dataset text's stored top-k
        self.stored_teacher = teacher in ("stored", "cached")
        self.val_metric = ExpectedAlpha(categories)
        dro = sampling == "group_dro"
        self.group_dro = GroupDRO(self.loss_fn, len(categories), group_dro_step) if dro else None
        # draft.vocab_size: the ids its pruned head will score; training and validation see only those. Moves
        # with the module; derived, not saved.
        rows = None if kept_ids is None else draft.get_output_embeddings().weight.shape[0]
        self.register_buffer("kept", kept_mask(kept_ids, rows), persistent=False)
        self.history: list[dict] = []
        self.needs_target = getattr(self.loss_fn, "objective", "kd") != "lm"  # lm: steps never run the target
        self.train_seconds = 0.0  # wall time inside training batches (no validation, no data setup): steps/s
        if freeze_embeddings:  # train the decoder layers only
            for layer in (draft.get_input_embeddings(), draft.get_output_embeddings()):
                layer.requires_grad_(False)

    @property
    def target(self):
        return self._frozen[0]

    def _sync_target(self):
        if self.target.device != self.device:
            self._frozen[0] = self.target.to(self.device)
        self.target.eval()

    def on_fit_start(self):
        self._sync_target()

    def on_validation_start(self):
        self._sync_target()

    def logits(self, batch: dict, with_target: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(target logits, draft logits), each [B, T, V_model]; only the draft's carry gradients. Without
        `with_target` (plain LM training, a stored teacher) the target is not run: None."""
        draft_logits = self.draft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if not with_target:
            return None, draft_logits
        with torch.no_grad():
            out = self.target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits, draft_logits

    def _on_policy(self, batch: dict, batch_idx: int) -> tuple[dict, torch.Tensor | None]:
        """The batch to train on and a loss mask [B, T] (None: every position counts): on a drawn step, the
        second half of each text is the draft's own sample and only the sampled tokens count."""
        step = self.trainer.global_step * self.trainer.accumulate_grad_batches + batch_idx
        if not is_on_policy(self.seed, step, self.on_policy_fraction):
            return batch, None
        return draft_written(self.draft, batch, self.seed, step)

    def objective(self, categories: torch.Tensor, *args, **kwargs):
        """The loss (the batch mean, or `GroupDRO`'s weighted category means), over the kept ids."""
        if self.kept is not None:
            kwargs["kept"] = self.kept
        if self.group_dro is None:
            return self.loss_fn(*args, **kwargs)
        loss, parts = self.group_dro(categories, *args, **kwargs)
        for name, weight in zip(self.categories, self.group_dro.weights.tolist(), strict=True):
            self.log(f"train/dro_weight/{name}", weight, on_step=True, on_epoch=False)
        return loss, parts

    def training_step(self, batch, batch_idx):
        teacher = None
        if (
            "top_ids" in batch
        ):  # a target-written corpus: its target-written tokens are taught, never on-policy
            loss_mask, ce_mask = batch["taught"], None
            if self.stored_teacher:  # its stored top-k: no target pass
                teacher = (batch["top_ids"], batch["top_logprobs"])
            target_logits, draft_logits = self.logits(batch, with_target=not self.stored_teacher)
        else:
            batch, loss_mask = self._on_policy(batch, batch_idx)
            ce_mask = None if loss_mask is None else torch.zeros_like(loss_mask)  # no CE on own samples
            target_logits, draft_logits = self.logits(batch, with_target=self.needs_target)
        loss, parts = self.objective(
            batch["category"], batch["input_ids"], batch["attention_mask"], target_logits, draft_logits,
            self.vocab, loss_mask=loss_mask, ce_mask=ce_mask, teacher=teacher,
        )  # fmt: skip
        return self.log_step(loss, parts)

    def log_step(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stop on a non-finite loss (the last checkpoint keeps the last good weights); log loss, parts, lr."""
        check_finite(loss, self.trainer.global_step)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        target_logits, draft_logits = self.logits(batch)
        _, mask, t, d = next_token_views(
            batch["input_ids"], batch["attention_mask"], target_logits, draft_logits, self.vocab
        )
        d = outside_kept(
            d, self.kept
        )  # a pruned draft's q against the target's whole p, as evaluation sees them
        if "taught" in batch:  # the target's continuation only, not the prompt before it
            mask = mask & batch["taught"][:, 1:]
        self.val_metric.update(t, d, mask, batch["category"])

    def on_validation_epoch_end(self):
        values = self.val_metric.compute()
        self.val_metric.reset()
        self.log("val/expected_alpha", values["expected_alpha"], prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in values.items() if k != "expected_alpha"})
        if not self.trainer.sanity_checking:
            entry = {"step": self.trainer.global_step, **values, "train_s": self.train_seconds}
            self.history.append(nest_validation(entry))

    def on_train_batch_start(self, batch, batch_idx):
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.train_seconds += time.perf_counter() - self._batch_started

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.draft.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["specfair_history"] = self.history

    def on_load_checkpoint(self, checkpoint):
        self.history = [nest_validation(h) for h in checkpoint.get("specfair_history", [])]  # older: flat
