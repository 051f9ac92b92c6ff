"""The LightningModule: fine-tune the draft toward a frozen target, validate with per-category expected alpha.

The target is held outside the module's registered children: it is never in a checkpoint, never switched to
train mode by Lightning, and never receives gradients.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import lightning.pytorch as pl
import torch

from specfair.decoding.continuations import left_pad
from specfair.errors import SpecfairError
from specfair.records import nest_validation
from specfair.training.losses import DistillationLoss, next_token_views, outside_kept
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

    Built from `module` in conf/train.yaml (loss, optimizer and scheduler are themselves `_target_` configs);
    the models, the data's category names and `vocab` (rows both models score) are passed in at run time.
    `optimizer` maps parameters to an optimizer (a `_partial_`); `scheduler` maps the optimizer to a per-step
    LR scheduler, or None for a constant rate. `on_policy_fraction` of the batches (chosen by (seed, step))
    have their second half written by the draft itself (GKD / DistillSpec). On a target-written corpus,
    `teacher` "stored" distils toward its stored top-k, "target" toward the target's full logits (one more
    forward pass per step: what the top-k saves). `history` holds one entry per
    validation ({"step", "expected_alpha", ... per category}), the first at step 0 (the base draft); it is
    saved in checkpoints so a resumed run keeps the whole curve.
    """

    def __init__(
        self,
        draft,
        target,
        categories: list[str],
        vocab: int,
        loss: Callable | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        on_policy_fraction: float = 0.0,
        freeze_embeddings: bool = False,
        seed: int = 0,
        teacher: str = "stored",
        sampling: str = "natural",
        group_dro_step: float = 0.1,
        kept_ids: list[int] | None = None,
    ):
        super().__init__()
        self.draft = draft.train().requires_grad_(True)
        self._frozen = [target.eval().requires_grad_(False)]  # a list: not a registered child module
        self.vocab = vocab
        self.loss_fn = loss or DistillationLoss()
        self.optimizer_factory = optimizer or torch.optim.AdamW
        self.scheduler_factory = scheduler
        self.on_policy_fraction, self.seed = float(on_policy_fraction), int(seed)
        # "target": ignore a corpus's stored top-k and run the target; "cached": the dataset text's stored top-k
        self.stored_teacher = teacher in ("stored", "cached")
        self.val_metric = ExpectedAlpha(categories)
        self.categories = list(categories)
        self.group_dro = sampling == "group_dro"
        self.group_dro_step = float(group_dro_step)
        # online group DRO (Sagawa et al. 2020): q over categories, q_g ∝ q_g·exp(η·L_g) after every step;
        # a buffer, so a resumed run continues with the same weights
        self.register_buffer("group_weights", torch.full((len(categories),), 1.0 / max(1, len(categories))))
        # draft.vocab_size: the ids its pruned head will score; training and validation see only those
        kept = None
        if kept_ids is not None:
            kept = torch.zeros(draft.get_output_embeddings().weight.shape[0], dtype=torch.bool)
            kept[torch.tensor(kept_ids, dtype=torch.long)] = True
        self.register_buffer("kept", kept, persistent=False)  # moves with the module; derived, not saved
        self.history: list[dict] = []
        self.needs_target = (
            getattr(self.loss_fn, "objective", "kd") != "lm"
        )  # lm: training steps never run the target
        self.train_seconds = 0.0  # wall time inside training batches (no validation, no data setup): steps/s
        if freeze_embeddings:  # train the decoder layers only
            for p in [
                *draft.get_input_embeddings().parameters(),
                *draft.get_output_embeddings().parameters(),
            ]:
                p.requires_grad_(False)

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
        `with_target` (plain LM training: cross-entropy needs no teacher) the target is not run: None."""
        draft_logits = self.draft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if not with_target:
            return None, draft_logits
        with torch.no_grad():
            target_logits = self.target(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        return target_logits, draft_logits

    def _on_policy(self, batch: dict, batch_idx: int) -> tuple[dict, torch.Tensor | None]:
        """With probability on_policy_fraction, the second half of each text becomes the draft's own sample.

        Returns the batch to train on and a loss mask [B, T] (None: every position counts) that restricts
        the loss to the sampled tokens.
        """
        step = self.trainer.global_step * self.trainer.accumulate_grad_batches + batch_idx
        if (
            self.on_policy_fraction <= 0
            or random.Random(f"{self.seed}:{step}").random() >= self.on_policy_fraction
        ):
            return batch, None
        ids, attention = batch["input_ids"], batch["attention_mask"]
        lengths = attention.sum(1).tolist()
        keeps = [max(1, n // 2) for n in lengths]
        width = ids.shape[1] - min(keeps)  # every row ends up at most ids.shape[1] long
        prompts = [ids[i, :k].tolist() for i, k in enumerate(keeps)]
        prompt, prompt_mask = left_pad(prompts, int(ids[0, 0]), ids.device)  # generate needs left padding
        torch.manual_seed(self.seed * 7919 + step)
        was_training = self.draft.training
        self.draft.eval()
        with torch.no_grad():
            out = self.draft.generate(
                prompt,
                attention_mask=prompt_mask,
                do_sample=True,
                top_k=0,
                temperature=1.0,
                max_new_tokens=width,
                min_new_tokens=width,
                pad_token_id=int(ids[0, 0]),
            )
        self.draft.train(was_training)
        new_ids, new_attention, loss_mask = (
            torch.zeros_like(ids),
            torch.zeros_like(attention),
            torch.zeros_like(attention),
        )
        for i, (k, n) in enumerate(
            zip(keeps, lengths, strict=True)
        ):  # back to right padding, row length kept
            sampled = out[i, prompt.shape[1] : prompt.shape[1] + n - k]
            new_ids[i, :n] = torch.cat([ids[i, :k], sampled])
            new_attention[i, :n] = 1
            loss_mask[i, k:n] = 1  # sampled tokens only: the first is predicted from the last prompt position
        return {
            "input_ids": new_ids,
            "attention_mask": new_attention,
            "category": batch["category"],
        }, loss_mask

    def objective(self, categories: torch.Tensor, *args, **kwargs):
        """The loss: the batch mean, or under group DRO Σ_g q_g·L_g with L_g the mean loss of category g's
        rows in the batch (a category absent from the batch counts 0) and q moved toward the worst ones."""
        if self.kept is not None:
            kwargs["kept"] = self.kept
        if not self.group_dro:
            return self.loss_fn(*args, **kwargs)
        rows, parts = self.loss_fn(*args, reduction="row", **kwargs)
        k = len(self.categories)
        sums = torch.zeros(k, device=rows.device, dtype=rows.dtype).index_add(0, categories, rows)
        counts = torch.zeros(k, device=rows.device, dtype=rows.dtype).index_add(
            0, categories, torch.ones_like(rows)
        )
        group_loss = sums / counts.clamp_min(1)
        with torch.no_grad():
            q = self.group_weights * torch.exp(self.group_dro_step * group_loss.detach() * (counts > 0))
            self.group_weights.copy_(q / q.sum())
        for name, weight in zip(self.categories, self.group_weights.tolist(), strict=True):
            self.log(f"train/dro_weight/{name}", weight, on_step=True, on_epoch=False)
        parts = {name: value.mean() for name, value in parts.items()}
        return (self.group_weights.to(rows.dtype) * group_loss).sum(), parts

    def training_step(self, batch, batch_idx):
        if "top_ids" in batch and not self.stored_teacher:  # full logits from the target on the same tokens
            target_logits, draft_logits = self.logits(batch)
            loss, parts = self.objective(
                batch["category"], batch["input_ids"], batch["attention_mask"], target_logits, draft_logits,
                self.vocab, loss_mask=batch["taught"],
            )  # fmt: skip
        elif "top_ids" in batch:  # a stored teacher (target-written corpus): no target pass, no on-policy
            draft_logits = self.draft(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            loss, parts = self.objective(
                batch["category"], batch["input_ids"], batch["attention_mask"], None, draft_logits, self.vocab,
                loss_mask=batch["taught"], teacher=(batch["top_ids"], batch["top_logprobs"]),
            )  # fmt: skip
        else:
            batch, loss_mask = self._on_policy(batch, batch_idx)
            target_logits, draft_logits = self.logits(batch, with_target=self.needs_target)
            ce_mask = None if loss_mask is None else torch.zeros_like(loss_mask)  # no CE on own samples
            loss, parts = self.objective(
                batch["category"], batch["input_ids"], batch["attention_mask"], target_logits, draft_logits,
                self.vocab, loss_mask=loss_mask, ce_mask=ce_mask,
            )  # fmt: skip
        return self.log_step(loss, parts)

    def log_step(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stop on a non-finite loss (the last checkpoint keeps the last good weights); log loss, parts, lr."""
        if not torch.isfinite(loss):
            raise SpecfairError(
                f"non-finite training loss ({float(loss.detach())}) at step {self.trainer.global_step}: "
                "stopped; the last checkpoint holds the last good weights (lower train.optimizer.lr?)"
            )
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
        if (
            self.kept is not None
        ):  # the pruned draft's q against the target's whole p, as evaluation sees them
            d = outside_kept(d, self.kept)
        if "taught" in batch:  # the target's continuation only, not the prompt before it
            mask = mask & batch["taught"][:, 1:]
        self.val_metric.update(t, d, mask, batch["category"])

    def on_validation_epoch_end(self):
        values = self.val_metric.compute()
        self.val_metric.reset()
        self.log("val/expected_alpha", values["expected_alpha"], prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in values.items() if k != "expected_alpha"})
        if not self.trainer.sanity_checking:
            entry = nest_validation(
                {"step": self.trainer.global_step, **values, "train_s": self.train_seconds}
            )
            self.history.append(entry)

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
