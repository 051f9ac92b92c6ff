"""The evaluation loops as Lightning predict modules: `DecodeModule` (real decoding, timed) and `ReplayModule`
(exact counters from cached target continuations, untimed).

Prompts are sharded `rank::world_size` without padding, so with N processes every prompt is evaluated exactly
once; the metric's summed states are reduced across ranks and rank 0 writes `samples.jsonl` and `summary.json`.
Each rank also appends its records to a `.partial.jsonl` as it goes: a crash leaves them, never a summary,
and rerunning the command continues from them (`specfair.evaluation.resume`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from specfair.data.rows import Prompt
from specfair.decoding.adaptive import GammaPolicy, measure_costs
from specfair.decoding.continuations import ContinuationCache, continuations, prompt_generator
from specfair.decoding.drafters import build_drafter
from specfair.decoding.engine import DecodeStats, autoregressive_generate, eos_set, now, speculative_generate
from specfair.decoding.replay import REPLAYED_COUNTERS, expected_acceptance, replay_greedy
from specfair.decoding.spec import DecodingSpec
from specfair.evaluation.acceptance import CategoryAcceptance
from specfair.evaluation.resume import STATE, partial_files, read_partials
from specfair.models import Pair
from specfair.records import RunSummary, SampleRecord, save_run, write_atomic

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def _as_list(batch):
    return list(batch)


class EvalModule(pl.LightningModule):
    """Sharding, the metric, crash-safe partial records and the rank-0 write; subclasses evaluate a batch."""

    batch_size = 1

    def __init__(self, pair: Pair, prompts: list[Prompt], categories: list[str], spec: DecodingSpec, seed: int,
                 out_dir: str | Path, meta: dict):  # fmt: skip
        super().__init__()
        self.target, self.draft = pair.target, pair.draft  # registered, so Lightning moves the draft too
        self.drafter = build_drafter(pair.draft, meta["draft"], pair.target)
        self.vocab = pair.vocab_size
        self.eos = eos_set(pair.tokenizer.eos_token_id)
        self.eos_token_id = pair.tokenizer.eos_token_id
        self.prompts = prompts
        self.spec = spec
        self.seed = seed
        self.out_dir = Path(out_dir)
        self.meta = meta
        self.metric = CategoryAcceptance(categories, spec.gamma)
        self.records: list[SampleRecord] = []

    def setup(self, stage: str) -> None:
        """Take over the records a killed run left (every rank reads them; rank 0 keeps them) and shard the rest.

        Every rank needs at least one prompt (an empty shard would leave the others waiting), so when fewer
        remain than there are processes, the last finished ones are evaluated again.
        """
        done = read_partials(self.out_dir, self.prompts)
        self.trainer.strategy.barrier()  # all have read before rank 0 rewrites
        world = self.trainer.world_size
        finished = {r.index for r in done}
        remaining = [i for i in range(len(self.prompts)) if i not in finished]
        if len(remaining) < world:
            redo = set(sorted(finished)[len(remaining) - world :])
            done = [r for r in done if r.index not in redo]
            remaining = sorted([*remaining, *redo])
        self.shard = remaining[self.global_rank :: world]
        self.partial = self.out_dir / f"samples.rank{self.global_rank}.partial.jsonl"
        if self.trainer.is_global_zero:
            for record in done:
                self.metric.update(record)
            self.records = list(done)
            write_atomic(self.partial, "".join(json.dumps(r.to_dict()) + "\n" for r in done))
            for path in partial_files(self.out_dir):
                if path != self.partial:
                    path.unlink(missing_ok=True)
            if done:
                log.info("resuming: %d of %d prompts already evaluated in %s", len(done), len(self.prompts),
                         self.out_dir)  # fmt: skip
        self.trainer.strategy.barrier()

    def predict_dataloader(self):
        return DataLoader(self.shard, batch_size=self.batch_size, collate_fn=_as_list)

    def on_predict_start(self):
        if self.device.type == "cpu" and self.trainer.world_size > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.trainer.num_devices))

    def keep(self, record: SampleRecord) -> None:
        self.metric.update(record)
        self.records.append(record)
        with self.partial.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record.to_dict()) + "\n")

    def base_record(self, index: int) -> dict:
        prompt = self.prompts[index]
        return {"index": index, "id": prompt.id, "category": prompt.category, "prompt_ids": prompt.input_ids}

    def summary_fields(self, records: list[SampleRecord]) -> dict:
        """Run-level fields beside the metric's result (called on every rank with every record)."""
        return {}

    def on_predict_epoch_end(self):
        result = self.metric.compute()
        records = self.records
        if self.trainer.world_size > 1:
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        records.sort(key=lambda r: r.index)
        fields = self.summary_fields(records)  # on every rank: it may reduce across them
        if self.trainer.is_global_zero:
            if len(records) != len(self.prompts) or len({r.index for r in records}) != len(records):
                raise RuntimeError(f"evaluated {len(records)} records for {len(self.prompts)} prompts")
            summary = RunSummary.from_dict({**self.meta, **result, **fields})
            save_run(self.out_dir, records, summary)
        self.trainer.strategy.barrier()
        self.partial.unlink(missing_ok=True)
        if self.trainer.is_global_zero:
            (self.out_dir / STATE).unlink(missing_ok=True)


class DecodeModule(EvalModule):
    """Each prompt decoded by the target alone and by the engine, in alternating order, on the same cache code:
    paired wall times for `speedup`, and the lossless check at temperature 0."""

    def __init__(self, *args, baseline: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.baseline = baseline
        self.gamma_policy: GammaPolicy | None = None  # spec.gamma=auto: built from costs timed after warm-up

    def _generate(self, ids: torch.Tensor, index: int, speculative: bool, max_new_tokens: int):
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=self.eos_token_id, vocab=self.vocab,
                      generator=prompt_generator(self.seed, index, self.device), compiled=self.spec.compile,
                      **self.spec.sampling)  # fmt: skip
        start = now(self.device)
        if speculative:
            out, stats = speculative_generate(
                self.target, self.drafter, ids, gamma=self.spec.gamma,
                confidence_threshold=self.spec.confidence_threshold, gamma_policy=self.gamma_policy,
                **kwargs,
            )  # fmt: skip
            if self.gamma_policy is not None:
                self.gamma_policy.update(stats)
        else:
            stats = DecodeStats()  # the baseline's prefill time and token count only
            out = autoregressive_generate(self.target, ids, stats=stats, **kwargs)
        return out[0].tolist(), stats, now(self.device) - start

    def on_predict_start(self):
        super().on_predict_start()
        if self.baseline and self.spec.greedy and not self.lossless_checked():
            log.warning("pair.dtype=%s: the lossless check needs float32 and is skipped (lossless_mismatches "
                        "null)", str(self.target.dtype).removeprefix("torch."))  # fmt: skip
        warm = torch.tensor([self.prompts[0].input_ids], device=self.device)
        warm_tokens = min(2 * self.spec.gamma + 2, self.spec.max_new_tokens)  # full-γ verify shapes too
        for speculative in (False, True):  # one-time allocations are not billed to the first prompt
            self._generate(warm, 0, speculative, warm_tokens)
        if self.spec.auto:
            self.gamma_policy = measure_costs(
                self.target, self.drafter, self.prompts[0].input_ids, self.spec.gamma
            )
            log.info("spec.gamma=auto: c = %.3f, v(k) = %s for k = 1..%d", self.gamma_policy.c,
                     " ".join(f"{v:.2f}" for v in self.gamma_policy.verify), self.spec.gamma + 1)  # fmt: skip

    def predict_step(self, batch: list[int], batch_idx: int):
        (index,) = batch
        ids = torch.tensor([self.prompts[index].input_ids], device=self.device)
        # alternate per rank (its own batch count): on the global index, each of an even number of ranks would
        # always run the same method first
        order = (False, True) if batch_idx % 2 == 0 else (True, False)
        if not self.baseline:  # acceptance only: no target-alone run, so no speedup and no lossless check
            order = (True,)
        runs = {
            speculative: self._generate(ids, index, speculative, self.spec.max_new_tokens)
            for speculative in order
        }
        output, stats, wall_s = runs[True]
        baseline, baseline_stats, baseline_wall_s = runs.get(False, (None, None, None))
        counters = {k: v for k, v in stats.as_dict().items() if k not in ("draft_steps", "wall_s")}
        record = SampleRecord.from_dict({
            **self.base_record(index), **counters, "output_ids": output, "baseline_output_ids": baseline,
            "matches_baseline": output == baseline if baseline is not None else None,
            "baseline_new_tokens": len(baseline) if baseline is not None else 0,
            "wall_s": wall_s, "baseline_wall_s": baseline_wall_s,
            "baseline_prefill_s": baseline_stats.prefill_s if baseline_stats else None,
        })  # fmt: skip
        self.keep(record)
        return index

    def lossless_checked(self) -> bool:
        """Greedy, with the baseline, in float32: reduced precision breaks near-ties differently in a verify
        pass than in a single step, so a mismatch there would not mean the engine is lossy."""
        return self.spec.greedy and self.baseline and self.target.dtype == torch.float32

    def summary_fields(self, records):
        checked = self.lossless_checked()
        fields = {"lossless_mismatches": sum(not r.matches_baseline for r in records) if checked else None}
        if self.gamma_policy is not None:  # this rank's timed costs and the alpha its choices ended on
            fields["gamma_auto"] = self.gamma_policy.as_dict()
        return fields


class ReplayModule(EvalModule):
    """Batches of prompts: the target's continuations (cache, else batched generation), then one teacher-forced
    draft pass per batch. Greedy: the engine's exact counters. Sampling: the expected acceptance along target
    samples (no sampled counters). No timing: wall times are None."""

    def __init__(self, *args, cache: ContinuationCache | None, reference: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache = cache
        self.batch_size = self.spec.batch_size
        self.reference = reference  # prompt id -> SampleRecord of a decode run, for replay_mismatches
        self.generated = 0

    def predict_step(self, batch: list[int], batch_idx: int):
        prompts = [self.prompts[i].input_ids for i in batch]
        spec = self.spec
        conts, made = continuations(
            self.target, prompts, batch, self.cache, batch_size=self.batch_size, seed=self.seed,
            max_new_tokens=spec.max_new_tokens, vocab=self.vocab, eos=self.eos, **spec.sampling,
        )  # fmt: skip
        self.generated += made
        ys = [c.tokens for c in conts]
        if spec.greedy:
            results = replay_greedy(self.drafter, prompts, ys, gamma=spec.gamma, vocab=self.vocab,
                                    max_new_tokens=spec.max_new_tokens, eos=self.eos)  # fmt: skip
        else:
            expected = expected_acceptance(self.draft, prompts, conts, vocab=self.vocab, **spec.sampling)
            empty = dict(
                proposed=0, accepted=0, blocks=0, rejections=0, accept_lengths=[], proposed_lengths=[]
            )
            results = [{**empty, "new_tokens": len(y), **e} for y, e in zip(ys, expected, strict=True)]
        for index, y, counters in zip(batch, ys, results, strict=True):
            self.keep(SampleRecord.from_dict({**self.base_record(index), **counters, "output_ids": y}))
        return batch

    def summary_fields(self, records):
        fields = {"continuations_generated": self._total_generated()}
        tails = [r.get("expected_tail_mass") for r in records if r.get("expected_tail_mass") is not None]
        if tails:  # slack of E[alpha] when the warped target distribution had more than TOP_PROBS entries
            positions = sum(r.expected_positions or 0 for r in records)
            fields["expected_tail_mass"] = sum(tails) / positions if positions else None
        if self.reference is not None:
            fields["replay_mismatches"] = replay_mismatches(records, self.reference)
        return fields

    def _total_generated(self) -> int:
        total = torch.tensor(self.generated, device=self.device)
        if self.trainer.world_size > 1:
            torch.distributed.all_reduce(total)
        return int(total)


REPLAYED = ("output_ids", *REPLAYED_COUNTERS)


def replay_mismatches(records: list[SampleRecord], reference: dict) -> int:
    """Prompts whose replayed counters differ from a decode run's (a prompt missing there counts as one)."""
    bad = 0
    for r in records:
        other = reference.get(r.id)
        bad += other is None or any(r[k] != other[k] for k in REPLAYED)
    return bad
