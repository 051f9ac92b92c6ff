"""Training the EAGLE-style feature head (`draft=eagle`) with the draft's Lightning module and losses.

As EAGLE-1 (Li et al. 2024) and EAGLE-3 / HASS: at every position, the chosen divergence toward the target's
next-token distribution (`DistillationLoss`, as for the layer drafts) plus `train.eagle.feature_weight` times a
smooth-L1 regression of the target's next final state, summed over `train.eagle.unroll` draft steps on the
head's own predicted features (the training-time test: step k computes what the k-th proposal of a block does,
`EagleHead.unrolled`), step k weighted `step_decay`^(k-1). The teacher's distribution is the target's frozen
head over its final state, so every position has one (not only the stored top-k).

The target's features come from the batch when the datamodule holds them (the generalist's target-written
corpus: one target pass over it, cached on disk by `corpus_features`), else from a live target pass over the
batch (a dataset's text). Heavy matrix products run under `train.eagle.autocast` (bfloat16: AMX on CPUs that
have it, ~4x float32); the losses are computed in float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from specfair.decoding.continuations import keyed_folder, weights_fingerprint
from specfair.decoding.eagle import EagleHead
from specfair.errors import SpecfairError
from specfair.training.losses import OUTSIDE, forward_kl, masked_mean, next_token_views
from specfair.training.module import DraftModule

log = logging.getLogger(__name__)

FEATURES_VERSION = 1
PART = 64  # texts per cached feature file


@dataclass(frozen=True)
class EagleTraining:
    """`train.eagle`: the head-specific part of a recipe."""

    unroll: int = 3  # draft steps per position on the head's own features (>= 1)
    feature_weight: float = 0.1  # weight of the feature regression beside the divergence (EAGLE-1: 1 : 0.1)
    step_decay: float = 0.8  # step k's weight: step_decay^(k-1) (SpecForge's 0.8)
    autocast: str | None = "bfloat16"  # dtype of the head's and the target's matrix products; null: float32
    from_scratch: bool = False  # true: a new head (train=eagle); false: fine-tune the head at draft.path

    def __post_init__(self):
        if not isinstance(self.unroll, int) or isinstance(self.unroll, bool) or self.unroll < 1:
            raise SpecfairError(
                f"train.eagle.unroll={self.unroll}: expected an integer >= 1 (1: no training-time unrolling)"
            )
        if self.autocast not in (None, "bfloat16"):
            raise SpecfairError(f"train.eagle.autocast={self.autocast!r}: expected bfloat16 or null")


def stored_layers(head: EagleHead, num_layers: int) -> tuple[int, ...]:
    """The target states a batch carries: the head's inputs and the final state (its regression target)."""
    return tuple(sorted(set(head.config.hidden_layers) | {num_layers}))


def corpus_features(
    target, sequences: list[list[int]], layers: tuple[int, ...], cache_dir, batch_size: int = 16
):
    """The target's states at `layers` for every sequence, float16 [len, len(layers), H]: one target pass,
    written in parts under `<cache_dir>/features/<key>/` (resumable; the key covers the target's weights,
    the layers and every sequence's ids), so every run on the same corpus reads it again."""
    import hashlib
    import json

    from specfair.decoding.eagle import target_states

    ids_hash = hashlib.sha1(json.dumps(sequences).encode()).hexdigest()[:20]
    settings = {"features_version": FEATURES_VERSION, "target": weights_fingerprint(target),
                "layers": list(layers), "sequences": ids_hash, "count": len(sequences)}  # fmt: skip
    folder = keyed_folder(cache_dir, "features", settings, "the target's features")
    out: list[torch.Tensor] = []
    starts = range(0, len(sequences), PART)
    for start in tqdm(starts, desc="target features (parts)", disable=None):
        path = folder / f"part-{start:06d}.pt"
        part = None
        if path.is_file():
            with contextlib.suppress(Exception):  # cut short by a kill: recompute it
                part = torch.load(path, weights_only=True)
        if part is None:
            chunk = sequences[start : start + PART]
            part = []
            for b in range(0, len(chunk), batch_size):
                part += [
                    s.to(torch.float16) for s in target_states(target, chunk[b : b + batch_size], layers)
                ]
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(part, tmp)
            tmp.replace(path)
        out += part
    log.info("target features: %d texts at layers %s (%s)", len(out), list(layers), folder)
    return out


class EagleModule(DraftModule):
    """`DraftModule` for an `EagleHead`: the same optimizer, schedule, loss, validation metric, history and
    checkpoints; the step feeds the head the target's features and unrolls it."""

    def __init__(self, draft: EagleHead, target, categories, vocab, eagle: EagleTraining | dict | None = None,
                 **kwargs):  # fmt: skip
        settings = eagle if isinstance(eagle, EagleTraining) else EagleTraining(**(eagle or {}))
        if kwargs.get("on_policy_fraction"):
            raise SpecfairError("train.on_policy_fraction: not supported for draft=eagle (set it to 0)")
        if kwargs.get("sampling") == "group_dro":
            raise SpecfairError("train.sampling=group_dro: not supported for draft=eagle yet")
        if kwargs.get("freeze_embeddings"):
            raise SpecfairError("train.freeze_embeddings: draft=eagle never trains the target's embeddings")
        kept_ids = kwargs.pop("kept_ids", None)
        super().__init__(draft, target, categories, vocab, **kwargs)
        self.eagle = settings
        loss = self.loss_fn  # plain forward KL toward the target: the three-pass form (losses.forward_kl)
        self.fast_kl = (getattr(loss, "objective", None) == "kd" and getattr(loss, "divergence", None) == "fkl"
                        and float(getattr(loss, "kd_weight", 0)) == 1.0 and float(getattr(loss, "temperature", 0)) == 1.0)  # fmt: skip
        self.layers = stored_layers(draft, target.config.num_hidden_layers)
        # draft.vocab_size=N (EAGLE-3's reduced draft vocabulary): the head and the teacher scored on those N ids
        # only, both renormalised over them; 49152 -> 8192 rows makes a CPU step ~6x cheaper
        index = None if kept_ids is None else torch.tensor(kept_ids, dtype=torch.long)
        self.register_buffer("kept_index", index, persistent=False)

    @property
    def head(self) -> EagleHead:
        return self.draft

    def _sync_target(self):
        super()._sync_target()
        if self.head.lm_head.weight.device != self.device:
            self.head.shared = (self.target.get_input_embeddings(), self.target.get_output_embeddings())

    def _autocast(self):
        if self.eagle.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def rows(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target head's logits over the kept ids only (all ids without draft.vocab_size)."""
        weight = self.target.get_output_embeddings().weight
        if self.kept_index is None:
            return F.linear(hidden, weight[: self.vocab])
        return F.linear(hidden, weight[self.kept_index])

    def states(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the head's input features [B, T, n, H], the final state [B, T, H], the target's logits [B, T, V])
        from the batch's cached features or a live target pass; no gradients."""
        index = [self.layers.index(i) for i in self.head.config.hidden_layers]
        with torch.no_grad(), self._autocast():
            if "features" in batch:
                stored = batch["features"].float()
                final = stored[:, :, -1]
                logits = self.rows(final)
            else:
                out = self.target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  output_hidden_states=True)  # fmt: skip
                stored = torch.stack([out.hidden_states[i] for i in self.layers], dim=2).float()
                final = stored[:, :, -1]
                logits = out.logits[..., : self.vocab] if self.kept_index is None else self.rows(final)
        return stored[:, :, index], final, logits.float()

    def step_losses(self, batch: dict):
        """[(step loss, parts)] for draft steps 1..unroll, and the first step's logits [B, T-1, V]."""
        ids, attention = batch["input_ids"], batch["attention_mask"]
        features, final, target_logits = self.states(batch)
        base = batch.get("taught", attention).bool()
        positions = torch.arange(ids.shape[1], device=ids.device)
        shared = self.head.shared
        self.head.shared = (shared[0], self.rows)  # the unrolled steps score the kept rows only
        try:
            with self._autocast():
                steps = self.head.unrolled(features[:, :-1], ids[:, 1:], self.eagle.unroll)
        finally:
            self.head.shared = shared
        fast = self.fast_kl
        losses = []
        for k, (predicted, logits) in enumerate(steps, start=1):
            if fast:  # the step's output at p (for token p + 2) against the target's own prediction at p + 1
                where = (
                    attention[:, 1:-1].bool()
                    & attention[:, 2:].bool()
                    & base[:, 2:]
                    & (positions[:-2] >= k - 1)
                )
                kd = masked_mean(forward_kl(target_logits[:, 1:-1], logits[:, :-1]), where)
                loss, parts = kd, {"kd": kd}
            else:  # any divergence or cross-entropy mix: DistillationLoss on shifted views
                if self.kept_index is not None:
                    raise SpecfairError(
                        "draft.vocab_size with draft=eagle: only train.divergence=fkl, kd_weight=1"
                    )
                view = torch.cat([logits[:, :1].detach() * 0, logits], dim=1).float()
                loss_mask = base & (positions >= k + 1)
                loss, parts = self.objective(batch["category"], ids, attention, target_logits, view, self.vocab,
                                             loss_mask=loss_mask)  # fmt: skip
            if self.eagle.feature_weight and self.needs_target:  # lm: the text's tokens only
                where = attention[:, 1:].bool() & (positions[:-1] >= k - 1)
                feature = F.smooth_l1_loss(predicted.float(), final[:, 1:], reduction="none").mean(-1)
                parts = {**parts, "feature": masked_mean(feature, where)}
                loss = loss + self.eagle.feature_weight * parts["feature"]
            losses.append((loss, parts))
        return losses, steps[0][1]

    def training_step(self, batch, batch_idx):
        losses = self.step_losses(batch)[0]
        weights = [self.eagle.step_decay**k for k in range(len(losses))]
        loss = sum(w * step for w, (step, _) in zip(weights, losses, strict=True)) / sum(weights)
        parts = {f"{name}/step{k}" if k > 1 else name: value
                 for k, (_, step_parts) in enumerate(losses, start=1) for name, value in step_parts.items()}  # fmt: skip
        return self.log_step(loss, parts)

    def validation_step(self, batch, batch_idx):
        """Expected alpha of the first proposal of a block (real features), as the layer drafts' is measured."""
        features, final, _ = self.states(batch)
        ids = batch["input_ids"]
        with torch.no_grad(), self._autocast():
            target_logits = F.linear(final, self.target.get_output_embeddings().weight[: self.vocab]).float()
            predicted, _ = self.head(features[:, :-1], ids[:, 1:], logits_to_keep=1)
            logits = self.rows(predicted).float()
        if (
            self.kept_index is not None
        ):  # q over the kept ids, 0 elsewhere: what the pruned drafter proposes from
            full = logits.new_full((*logits.shape[:-1], self.vocab), OUTSIDE)
            logits = full.index_copy_(-1, self.kept_index, logits)
        view = torch.cat([logits[:, :1] * 0, logits], dim=1)
        _, mask, t, d = next_token_views(ids, batch["attention_mask"], target_logits, view, self.vocab)
        mask = mask.clone()
        mask[:, 0] = False  # position 0 has no head output (it needs the state before it)
        if "taught" in batch:
            mask = mask & batch["taught"][:, 1:]
        self.val_metric.update(t, d, mask, batch["category"])


def eagle_head(cfg, target) -> EagleHead:
    """The head a `draft=eagle` run trains: a new one (`train.eagle.from_scratch`, shaped by `draft.eagle`) or
    the trained head at `draft.path`, fine-tuned."""
    from specfair.decoding.eagle import EagleConfig, load_head

    if EagleTraining(**cfg.train.eagle).from_scratch:
        shape = cfg.draft.get("eagle") or {}
        config = EagleConfig(int(shape.get("layers", 1)), shape.get("fusion", "top"),
                             tuple(shape.get("hidden_layers") or ()))  # fmt: skip
        return EagleHead(target, config)
    if not cfg.draft.get("path"):
        raise SpecfairError(
            "draft=eagle: draft.path is null; fine-tuning needs a trained head (train=eagle builds one)"
        )
    return load_head(cfg.draft.path, target)
