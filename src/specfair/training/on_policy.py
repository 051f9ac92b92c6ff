"""On-policy batches (GKD / DistillSpec): the second half of each text rewritten by the draft itself, so that the
draft is also taught on the prefixes it will itself produce at decoding time."""

from __future__ import annotations

import random

import torch

from specfair.decoding.continuations import left_pad


def is_on_policy(seed: int, step: int, fraction: float) -> bool:
    """Whether batch `step` is on-policy: a fixed draw per (seed, step), so a resumed run redraws the same."""
    return fraction > 0 and random.Random(f"{seed}:{step}").random() < fraction


def draft_written(draft, batch: dict, seed: int, step: int) -> tuple[dict, torch.Tensor]:
    """The batch with the second half of each row sampled from `draft` (T = 1, full vocabulary), and a loss mask
    [B, T] of the sampled tokens only. Rows keep their length and their right padding."""
    ids, attention = batch["input_ids"], batch["attention_mask"]
    lengths = attention.sum(1).tolist()
    keeps = [max(1, n // 2) for n in lengths]
    width = ids.shape[1] - min(keeps)  # every row ends up at most ids.shape[1] long
    pad = int(ids[0, 0])
    prompt, prompt_mask = left_pad([ids[i, :k].tolist() for i, k in enumerate(keeps)], pad, ids.device)
    torch.manual_seed(seed * 7919 + step)
    was_training = draft.training
    draft.eval()
    with torch.no_grad():
        out = draft.generate(prompt, attention_mask=prompt_mask, do_sample=True, top_k=0, temperature=1.0,
                             max_new_tokens=width, min_new_tokens=width, pad_token_id=pad)  # fmt: skip
    draft.train(was_training)
    new_ids, new_attention, loss_mask = (torch.zeros_like(t) for t in (ids, attention, attention))
    for i, (k, n) in enumerate(zip(keeps, lengths, strict=True)):
        new_ids[i, :n] = torch.cat([ids[i, :k], out[i, prompt.shape[1] : prompt.shape[1] + n - k]])
        new_attention[i, :n] = 1
        loss_mask[i, k:n] = 1  # sampled tokens only: the first is predicted from the last prompt position
    return {"input_ids": new_ids, "attention_mask": new_attention, "category": batch["category"]}, loss_mask
