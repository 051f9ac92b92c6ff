"""Draft fine-tuning toward a frozen target: language modelling or distillation, with per-category validation.

The validation metric is `expected_alpha` (mean over positions of sum_v min(p_target, q_draft)), the
teacher-forced estimate of the acceptance probability, so training curves speak the evaluation's language.
The target is held outside the module's registered children: it is never in a checkpoint, never switched to
train mode by Lightning, and never receives gradients.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torchmetrics import Metric

from specfair.errors import SpecfairError

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")


# --- losses (pure) ---------------------------------------------------------------------------------------


def divergence(target_logits, draft_logits, kind: str, beta: float = 0.5, temperature: float = 1.0):
    """Per-position divergence between target p and draft q over the last dim (shared vocabulary only).

    fkl: KL(p||q) (mode covering); rkl: KL(q||p) (mode seeking); jsd: generalized Jensen-Shannon with
    m = beta p + (1 - beta) q, beta KL(p||m) + (1 - beta) KL(q||m); tvd: total variation, 1 - sum min(p, q).
    """
    log_p = F.log_softmax(target_logits.float() / temperature, -1)
    log_q = F.log_softmax(draft_logits.float() / temperature, -1)
    if kind == "fkl":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    if kind == "rkl":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if kind == "jsd":
        if not 0 < beta < 1:
            raise SpecfairError(f"train.beta={beta}: must be in (0, 1) for jsd")
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), 0)
        kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
        kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
        return beta * kl_pm + (1 - beta) * kl_qm
    if kind == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    raise SpecfairError(f"train.divergence={kind!r}: expected one of {', '.join(DIVERGENCES)}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


def next_token_views(input_ids, attention_mask, target_logits, draft_logits, vocab: int):
    """Logits at positions 0..T-2 predict tokens 1..T-1; a position counts if both tokens are real."""
    mask = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return input_ids[:, 1:], mask, target_logits[:, :-1, :vocab], draft_logits[:, :-1, :vocab]


def distillation_loss(
    input_ids, attention_mask, target_logits, draft_logits, cfg, vocab: int, loss_mask=None
):
    """(loss, parts): cross-entropy, divergence, mixed by train.kd_weight (objective lm: CE only)."""
    labels, mask, t, d = next_token_views(input_ids, attention_mask, target_logits, draft_logits, vocab)
    if loss_mask is not None:
        mask = mask & loss_mask[:, 1:].bool()
    ce = masked_mean(F.cross_entropy(d.transpose(1, 2).float(), labels, reduction="none"), mask)
    if cfg.objective == "lm":
        return ce, {"ce": ce}
    kd = masked_mean(
        divergence(t, d, cfg.divergence, cfg.get("beta", 0.5), cfg.get("temperature", 1.0)), mask
    )
    weight = float(cfg.get("kd_weight", 1.0))
    return weight * kd + (1 - weight) * ce, {"ce": ce, "kd": kd}


# --- the validation metric -------------------------------------------------------------------------------


class ExpectedAlpha(Metric):
    """Per-category teacher-forced acceptance estimate and greedy agreement, as summed states."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, categories: list[str], **kwargs):
        super().__init__(**kwargs)
        self.categories = list(categories)
        for name in ("alpha_sum", "agree_sum", "positions"):
            self.add_state(name, torch.zeros(len(categories), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, target_logits, draft_logits, mask, category) -> None:
        """Logits [B, T, V] already aligned to the same positions; mask [B, T]; category [B] indices."""
        p = F.softmax(target_logits.float(), -1)
        q = F.softmax(draft_logits.float(), -1)
        alpha = torch.minimum(p, q).sum(-1)
        agree = (target_logits.argmax(-1) == draft_logits.argmax(-1)).to(alpha.dtype)
        m = mask.to(alpha.dtype)
        onehot = F.one_hot(category, len(self.categories)).to(torch.float64)  # [B, C]
        self.alpha_sum = self.alpha_sum + onehot.T @ (alpha * m).sum(1).double()
        self.agree_sum = self.agree_sum + onehot.T @ (agree * m).sum(1).double()
        self.positions = self.positions + onehot.T @ m.sum(1).double()

    def compute(self) -> dict:
        def ratio(a, n):
            return float(a / n) if n > 0 else float("nan")

        out = {
            "expected_alpha": ratio(self.alpha_sum.sum(), self.positions.sum()),
            "greedy_agreement": ratio(self.agree_sum.sum(), self.positions.sum()),
        }
        for i, c in enumerate(self.categories):
            out[f"expected_alpha/{c}"] = ratio(self.alpha_sum[i], self.positions[i])
            out[f"greedy_agreement/{c}"] = ratio(self.agree_sum[i], self.positions[i])
        return out


# --- data ------------------------------------------------------------------------------------------------


def sampling_weights(categories: list[int], mode: str, temperature: float = 2.0) -> list[float]:
    """Row weights: natural (as the data comes), balanced (each category equally), or p_c ∝ n_c^(1/T)."""
    counts = {c: categories.count(c) for c in set(categories)}
    if mode == "natural":
        return [1.0] * len(categories)
    if mode == "balanced":
        return [1.0 / counts[c] for c in categories]
    if mode == "temperature":
        return [counts[c] ** (1.0 / temperature) / counts[c] for c in categories]
    raise SpecfairError(f"train.sampling={mode!r}: expected natural, balanced or temperature")


class TrainStream(Dataset):
    """Example i of the run is a deterministic function of (seed, i): a weighted row and a random window.

    That makes a resumed run see exactly the batches the uninterrupted run would have seen.
    """

    def __init__(
        self,
        token_ids: list[list[int]],
        categories: list[int],
        weights: list[float],
        length: int,
        max_length: int,
        seed: int,
    ):
        self.token_ids, self.categories, self.length, self.max_length, self.seed = (
            token_ids,
            categories,
            length,
            max_length,
            seed,
        )
        total = sum(weights)
        self.cumulative = list(itertools.accumulate(w / total for w in weights))

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        rng = random.Random(self.seed * 1_000_003 + i)
        row = min(bisect.bisect_right(self.cumulative, rng.random()), len(self.token_ids) - 1)
        ids = self.token_ids[row]
        start = rng.randrange(0, max(1, len(ids) - self.max_length + 1))
        return ids[start : start + self.max_length], self.categories[row]


class ResumableSampler(Sampler):
    """Sequential indices from `start`: the module sets `start` from the restored global step.

    `len` stays the full stream: Lightning counts the restored batches as already seen.
    """

    def __init__(self, length: int):
        self.length, self.start = length, 0

    def __iter__(self):
        return iter(range(self.start, self.length))

    def __len__(self):
        return self.length


class FixedTexts(Dataset):
    def __init__(self, token_ids, categories):
        self.token_ids, self.categories = token_ids, categories

    def __len__(self):
        return len(self.token_ids)

    def __getitem__(self, i):
        return self.token_ids[i], self.categories[i]


def collate(batch, pad_id: int):
    longest = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), longest), dtype=torch.long)
    for i, (ids, _) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "category": torch.tensor([c for _, c in batch]),
    }


# --- the LightningModule ---------------------------------------------------------------------------------


class DraftModule(pl.LightningModule):
    def __init__(self, draft, target, cfg, categories: list[str], vocab: int, optimizer_factory):
        super().__init__()
        self.draft = draft.train().requires_grad_(True)
        self._frozen = [target.eval().requires_grad_(False)]  # a list: not a registered child module
        self.cfg = cfg
        self.vocab = vocab
        self.optimizer_factory = optimizer_factory
        self.val_metric = ExpectedAlpha(categories)
        self.sampler: ResumableSampler | None = None
        self.history: list[dict] = []
        if cfg.get("freeze_embeddings", False):
            for p in [
                *draft.get_input_embeddings().parameters(),
                *draft.get_output_embeddings().parameters(),
            ]:
                p.requires_grad_(False)

    @property
    def target(self):
        return self._frozen[0]

    def _sync_target(self):
        target = self.target
        if target.device != self.device:
            self._frozen[0] = target.to(self.device)
        self.target.eval()

    def on_fit_start(self):
        self._sync_target()

    def on_validation_start(self):
        self._sync_target()

    def on_train_start(self):
        if self.sampler is not None:  # resume mid-stream exactly where the checkpoint stopped
            self.sampler.start = (
                self.trainer.global_step * self.trainer.accumulate_grad_batches * int(self.cfg.batch_size)
            )

    def _logits(self, batch):
        draft_logits = self.draft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with torch.no_grad():
            target_logits = self.target(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        return target_logits, draft_logits

    def _on_policy(self, batch, batch_idx) -> tuple[dict, torch.Tensor | None]:
        """With probability train.on_policy_fraction, replace the continuation by the draft's own sample."""
        fraction = float(self.cfg.get("on_policy_fraction", 0.0))
        step = self.trainer.global_step * self.trainer.accumulate_grad_batches + batch_idx
        if fraction <= 0 or random.Random(f"{self.cfg.get('seed', 0)}:{step}").random() >= fraction:
            return batch, None
        ids, attention = batch["input_ids"], batch["attention_mask"]
        keep = max(1, ids.shape[1] // 2)
        prompt, prompt_mask = ids[:, :keep], attention[:, :keep]
        torch.manual_seed(int(self.cfg.get("seed", 0)) * 7919 + step)
        was_training = self.draft.training
        self.draft.eval()
        with torch.no_grad():
            out = self.draft.generate(
                prompt,
                attention_mask=prompt_mask,
                do_sample=True,
                top_k=0,
                temperature=1.0,
                max_new_tokens=ids.shape[1] - keep,
                min_new_tokens=ids.shape[1] - keep,
                pad_token_id=int(ids[0, 0]),
            )
        self.draft.train(was_training)
        new_attention = torch.cat([prompt_mask, torch.ones_like(out[:, keep:])], 1)
        loss_mask = torch.cat([torch.zeros_like(prompt_mask), torch.ones_like(out[:, keep:])], 1)
        loss_mask[:, keep - 1] = 1  # the first generated token is predicted from the last prompt position
        return {"input_ids": out, "attention_mask": new_attention, "category": batch["category"]}, loss_mask

    def training_step(self, batch, batch_idx):
        batch, loss_mask = self._on_policy(batch, batch_idx)
        target_logits, draft_logits = self._logits(batch)
        loss, parts = distillation_loss(
            batch["input_ids"],
            batch["attention_mask"],
            target_logits,
            draft_logits,
            self.cfg,
            self.vocab,
            loss_mask,
        )
        if not torch.isfinite(loss):
            raise SpecfairError(
                f"non-finite training loss ({float(loss)}) at step {self.trainer.global_step}: stopped; "
                "the last checkpoint holds the last good weights (lower train.optimizer.lr?)"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        target_logits, draft_logits = self._logits(batch)
        _, mask, t, d = next_token_views(
            batch["input_ids"], batch["attention_mask"], target_logits, draft_logits, self.vocab
        )
        self.val_metric.update(t, d, mask, batch["category"])

    def on_validation_epoch_end(self):
        values = self.val_metric.compute()
        self.val_metric.reset()
        self.log("val/expected_alpha", values["expected_alpha"], prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in values.items() if k != "expected_alpha"})
        if not self.trainer.sanity_checking:
            self.history.append({"step": self.trainer.global_step, **values})

    def configure_optimizers(self):
        params = [p for p in self.draft.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = int(self.cfg.max_steps)
        warmup = int(self.cfg.get("warmup_steps", 0))
        floor = float(self.cfg.get("min_lr_ratio", 0.1))

        def schedule(step):
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["specfair_history"] = self.history

    def on_load_checkpoint(self, checkpoint):
        self.history = checkpoint.get("specfair_history", [])


def make_loaders(train_ids, train_cats, val_ids, val_cats, cfg, pad_id: int, seed: int, accumulate: int = 1):
    """A resumable training stream of max_steps * accumulate * batch_size examples, and fixed validation."""
    length = int(cfg.max_steps) * accumulate * int(cfg.batch_size)
    weights = sampling_weights(
        train_cats, cfg.get("sampling", "natural"), float(cfg.get("sampling_temperature", 2.0))
    )
    stream = TrainStream(train_ids, train_cats, weights, length, int(cfg.max_length), seed)
    sampler = ResumableSampler(length)

    def pad(batch):
        return collate(batch, pad_id)

    train = DataLoader(stream, batch_size=int(cfg.batch_size), sampler=sampler, collate_fn=pad)
    val = DataLoader(FixedTexts(val_ids, val_cats), batch_size=int(cfg.batch_size), collate_fn=pad)
    return train, val, sampler
