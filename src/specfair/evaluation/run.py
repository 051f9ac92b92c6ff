"""Per-category speculative-decoding evaluation as a Lightning predict loop.

Each prompt runs the target alone and the speculative engine (paired timing, same cache code). Prompts are
sharded `rank::world_size` without padding, so with N processes every prompt is evaluated exactly once;
the metric's summed states are reduced across ranks and rank 0 writes `samples.jsonl` and `summary.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from specfair.data.rows import Prompt, build_splits, tokenize_prompts, train_text
from specfair.decoding.engine import autoregressive_generate, check_generation_args, now, speculative_generate
from specfair.evaluation.acceptance import CategoryAcceptance
from specfair.models import Pair, load_pair
from specfair.tracking import log_evaluation

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def _single(batch):
    return batch[0]


class EvalModule(pl.LightningModule):
    def __init__(
        self,
        pair: Pair,
        prompts: list[Prompt],
        categories: list[str],
        spec: dict,
        seed: int,
        out_dir: str | Path,
        meta: dict,
        baseline: bool = True,
    ):
        super().__init__()
        self.target, self.draft = pair.target, pair.draft
        self.eos_token_id = pair.tokenizer.eos_token_id
        self.prompts = prompts
        self.spec = dict(spec)
        self.seed = seed
        self.out_dir = Path(out_dir)
        self.meta = meta
        self.baseline = baseline
        self.metric = CategoryAcceptance(categories, self.spec["gamma"])
        self.records: list[dict] = []

    def predict_dataloader(self):
        shard = list(range(len(self.prompts)))[self.global_rank :: self.trainer.world_size]
        return DataLoader(shard, batch_size=1, collate_fn=_single)

    def _generate(self, ids: torch.Tensor, index: int, speculative: bool, max_new_tokens: int):
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + index)
        sampling = {k: self.spec.get(k) for k in ("temperature", "top_k", "top_p")}
        kwargs = dict(
            max_new_tokens=max_new_tokens, eos_token_id=self.eos_token_id, generator=generator, **sampling
        )
        start = now(self.device)
        if speculative:
            out, stats = speculative_generate(
                self.target, self.draft, ids, gamma=self.spec["gamma"], **kwargs
            )
        else:
            out, stats = autoregressive_generate(self.target, ids, **kwargs), None
        return out[0].tolist(), stats, now(self.device) - start

    def on_predict_start(self):
        if self.device.type == "cpu" and self.trainer.world_size > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.trainer.num_devices))
        warm = torch.tensor([self.prompts[0].input_ids], device=self.device)
        for speculative in (False, True):  # one-time allocations are not billed to the first prompt
            self._generate(warm, 0, speculative, min(4, self.spec["max_new_tokens"]))
        self.partial = self.out_dir / f"samples.rank{self.global_rank}.partial.jsonl"
        self.partial.unlink(missing_ok=True)

    def predict_step(self, index: int, batch_idx: int):
        prompt = self.prompts[index]
        ids = torch.tensor([prompt.input_ids], device=self.device)
        budget = self.spec["max_new_tokens"]
        order = (False, True) if index % 2 == 0 else (True, False)  # alternate to cancel drift
        if not self.baseline:  # acceptance only: no target-alone run, so no speedup and no lossless check
            order = (True,)
        runs = {spec: self._generate(ids, index, spec, budget) for spec in order}
        output, stats, wall_s = runs[True]
        baseline, _, baseline_wall_s = runs.get(False, (None, None, None))
        record = {
            "index": index,
            "id": prompt.id,
            "category": prompt.category,
            "prompt_ids": prompt.input_ids,
            "output_ids": output,
            "baseline_output_ids": baseline,
            "matches_baseline": output == baseline if baseline is not None else None,
            "new_tokens": stats.new_tokens,
            "baseline_new_tokens": len(baseline) if baseline is not None else 0,
            "proposed": stats.proposed,
            "accepted": stats.accepted,
            "blocks": stats.blocks,
            "rejections": stats.rejections,
            "target_calls": stats.target_calls,
            "accept_lengths": stats.accept_lengths,
            "proposed_lengths": stats.proposed_lengths,
            "wall_s": wall_s,
            "baseline_wall_s": baseline_wall_s,
            "draft_s": stats.draft_s,
            "verify_s": stats.verify_s,
            "prefill_s": stats.prefill_s,
        }
        self.metric.update(record)
        self.records.append(record)
        with self.partial.open("a", encoding="utf-8") as f:  # survives a crash; never mistaken for complete
            f.write(json.dumps(record) + "\n")
        return index

    def on_predict_epoch_end(self):
        result = self.metric.compute()
        records = self.records
        if self.trainer.world_size > 1:
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        if self.trainer.is_global_zero:
            records.sort(key=lambda r: r["index"])
            if len(records) != len(self.prompts) or len({r["index"] for r in records}) != len(records):
                raise RuntimeError(f"evaluated {len(records)} records for {len(self.prompts)} prompts")
            write_outputs(
                self.out_dir,
                records,
                {
                    **self.meta,
                    **result,
                    "lossless_mismatches": sum(not r["matches_baseline"] for r in records)
                    if self.spec["temperature"] == 0 and self.baseline
                    else None,
                },
            )
        self.trainer.strategy.barrier()
        self.partial.unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_outputs(out_dir: Path, records: list[dict], summary: dict) -> None:
    """samples.jsonl first, summary.json last: a folder with a summary is a complete run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    _write_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def device_hint(trainer_cfg: DictConfig) -> str:
    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def prompt_set_hash(prompts: list[Prompt]) -> str:
    """Two runs pair prompt by prompt only if they evaluated the same prompts in the same order."""
    joined = "\n".join(f"{p.id}:{p.category}:{len(p.input_ids)}" for p in prompts)
    return hashlib.sha1(joined.encode()).hexdigest()[:16]


def draft_training(draft_cfg: DictConfig) -> dict | None:
    """What a fine-tuned draft was trained on and how (train_summary.json beside it), for pairing runs."""
    path = draft_cfg.get("path")
    summary = Path(path).parent / "train_summary.json" if path else None
    if summary is None or not summary.is_file():
        return None
    train = json.loads(summary.read_text())
    t = train.get("train", {})
    return {
        "dataset": train.get("dataset"),
        "train_name": t.get("name"),
        "objective": t.get("objective"),
        "divergence": t.get("divergence") if t.get("objective") == "kd" else None,
        "steps": train.get("steps"),
        "seed": train.get("seed"),
        "imbalance": train.get("data", {}).get("imbalance"),
    }


def evaluate(cfg: DictConfig) -> dict | None:
    """Load data and pair, run the predict loop, return the summary (on rank 0; None elsewhere)."""
    spec = OmegaConf.to_container(cfg.spec, resolve=True)
    check_generation_args(**spec)
    out_dir = Path(cfg.paths.output_dir)
    pair = load_pair(cfg.pair, cfg.draft, device_hint(cfg.trainer))
    tokenizer = pair.tokenizer

    def count_tokens(row):
        return len(tokenizer(train_text(row, cfg.dataset), add_special_tokens=False)["input_ids"])

    splits = build_splits(cfg.dataset, int(cfg.seed), count_tokens)
    log.info(
        "dataset %s (%s): %d prompts over %d categories; %d disjoint training texts",
        cfg.dataset.name,
        splits.source,
        len(splits.eval),
        len(splits.categories),
        len(splits.train),
    )
    if splits.train_counts:
        log.info(
            "training texts per category (rows/tokens): %s",
            ", ".join(f"{c} {v['rows']}/{v['tokens']}" for c, v in splits.train_counts.items()),
        )
    context = getattr(pair.target.config, "max_position_embeddings", None) or 1 << 30
    max_prompt = context - spec["max_new_tokens"] - spec["gamma"] - 1
    prompts = tokenize_prompts(splits.eval, tokenizer, cfg.dataset, max_prompt)
    categories = splits.categories

    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    meta = {
        "dataset": {
            "name": cfg.dataset.name,
            "source": splits.source,
            "categories": categories,
            "per_category": int(cfg.dataset.per_category),
            "prompt_tokens": int(cfg.dataset.prompt_tokens),
            "prompts": len(prompts),
            "train_counts": splits.train_counts,
        },
        "pair": {"name": cfg.pair.name, "target": cfg.pair.target, "draft": cfg.pair.get("draft")},
        "draft": OmegaConf.to_container(cfg.draft, resolve=True),
        "draft_training": draft_training(cfg.draft),
        "spec": spec,
        "seed": int(cfg.seed),
        "baseline": bool(cfg.get("baseline", True)),
        "prompt_set": prompt_set_hash(prompts),
        "device": device_hint(cfg.trainer),
        "dtype": str(pair.target.dtype).removeprefix("torch."),
        "world_size": trainer.world_size,
        "target_layers": pair.target.config.num_hidden_layers,
        "draft_layers": pair.draft.config.num_hidden_layers,
    }
    module = EvalModule(
        pair, prompts, categories, spec, int(cfg.seed), out_dir, meta, baseline=meta["baseline"]
    )
    trainer.predict(module, return_predictions=False)
    if not trainer.is_global_zero:
        return None
    summary = json.loads((out_dir / "summary.json").read_text())
    if summary.get("lossless_mismatches"):
        log.error("%d prompts differ from the target's greedy output", summary["lossless_mismatches"])
    if cfg.logger.get("enabled"):
        with (out_dir / "samples.jsonl").open() as f:
            records = [json.loads(line) for line in f]
        name = f"{cfg.dataset.name}-{cfg.draft.name}-g{cfg.spec.gamma}"
        log_evaluation(summary, records, tokenizer.decode, cfg.logger, out_dir, name)
    return summary


TABLE_COLUMNS = [
    ("prompts", "prompts", "{:d}"),
    ("new_tokens", "tokens", "{:d}"),
    ("alpha", "alpha", "{:.3f}"),
    ("acceptance_rate", "accept rate", "{:.3f}"),
    ("block_efficiency", "tokens/call", "{:.2f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("tokens_per_s", "tok/s", "{:.1f}"),
    ("baseline_tokens_per_s", "target tok/s", "{:.1f}"),
]


def summary_table(summary: dict):
    """A rich table: one row per category, then the overall row."""
    from rich.table import Table

    spec = summary["spec"]
    title = (
        f"{summary['dataset']['name']} · {summary['pair']['name']} · draft={summary['draft']['name']} · "
        f"gamma={spec['gamma']} · T={spec['temperature']}"
    )
    table = Table(title=title)
    table.add_column("category")
    for _, header, _ in TABLE_COLUMNS:
        table.add_column(header, justify="right")

    def cells(group):
        return [
            fmt.format(group[key]) if group.get(key) is not None else "n/a" for key, _, fmt in TABLE_COLUMNS
        ]

    for name, group in summary["categories"].items():
        table.add_row(name, *cells(group))
    table.add_section()
    table.add_row("overall", *cells(summary["overall"]), style="bold")
    return table
