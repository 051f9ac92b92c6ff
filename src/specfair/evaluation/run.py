"""`evaluate.py`: check everything that needs no weights, load the pair, run the decode or replay loop, log and
return the summary.

The order is the user's time: `check_before_loading` refuses a bad setting, data file, split or prompt in one
line within seconds (it reads only the target's config.json and the tokenizer); the target and draft weights
load after it, and only what needs them (Spec-Bench's second turns, `draft.vocab_size` against the heads, the
draft's layers) is checked after they load.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from specfair.analysis.comparisons import pairing_mismatch
from specfair.data import spec_bench
from specfair.data.prompts import tokenize_prompts, train_text
from specfair.data.rows import Prompt, Splits
from specfair.data.splits import build_splits, held_out_settings
from specfair.decoding.continuations import ContinuationCache, weights_fingerprint
from specfair.decoding.drafters import build_drafter
from specfair.decoding.engine import eos_set
from specfair.decoding.spec import DecodingSpec
from specfair.errors import SpecfairError
from specfair.evaluation import resume
from specfair.evaluation.module import DecodeModule, ReplayModule
from specfair.models import (
    MODEL_FREE_DRAFTS,
    NO_DRAFT_MODEL,
    TARGET_FED_DRAFTS,
    Pair,
    context_length,
    load_config,
    load_pair,
    load_tokenizer,
)
from specfair.records import find_train_summary, load_samples, load_summary
from specfair.tracking import log_evaluation
from specfair.training.run import load_train_ids
from specfair.vocab import check_size, head_rows, prune_head, pruned_head_ids, quantize_int8

log = logging.getLogger(__name__)
MODES = ("decode", "replay")


def device_hint(trainer_cfg: DictConfig) -> str:
    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def prompt_set_hash(prompts: list[Prompt]) -> str:
    """Two runs pair prompt by prompt, and a killed run resumes, only if they evaluated the same prompts in the
    same order: the same rows, categories and token ids (so another dataset.prompt_template, dataset.chat,
    dataset.prompt_tokens or tokenizer is another prompt set). Fingerprints start with `t:`; a summary written
    before they covered token ids (16 hex digits of ids, categories and lengths) still loads, and pairs with
    none of these."""
    digest = hashlib.sha1()
    for p in prompts:
        digest.update(f"{p.id}:{p.category}:{','.join(map(str, p.input_ids))}\n".encode())
    return resume.PROMPT_SET_PREFIX + digest.hexdigest()[:16]


def draft_training(draft_cfg: DictConfig) -> dict | None:
    """What a fine-tuned draft was trained on and how (train_summary.json beside it), for pairing runs."""
    train = find_train_summary(draft_cfg.get("path"))
    if train is None:
        return None
    t = train.train
    return {
        "dataset": train.dataset,
        "train_name": t.get("name"),
        "start": train.start,
        "objective": t.get("objective"),
        "divergence": t.get("divergence") if t.get("objective") == "kd" else None,
        "steps": train.steps,
        "seed": train.seed,
        "imbalance": train.data.get("imbalance"),
    }


def check_mode(cfg: DictConfig, spec: DecodingSpec) -> str:
    """`mode` and the options it cannot honour, each refused in one line."""
    mode = str(cfg.get("mode", "decode"))
    if mode not in MODES:
        raise SpecfairError(f"mode={mode}: expected one of {', '.join(MODES)}")
    if mode == "replay" and spec.auto:
        raise SpecfairError(
            "spec.gamma=auto: replay has no wall-clock costs to choose γ from; use mode=decode"
        )
    if mode == "replay" and spec.confidence_threshold is not None:
        raise SpecfairError(
            "spec.confidence_threshold: replay does not model early-ended blocks; use mode=decode for it"
        )
    if mode == "replay" and not spec.greedy and cfg.draft.get("name") in NO_DRAFT_MODEL:
        raise SpecfairError(
            f"draft={cfg.draft.name}: sampled replay needs a draft model's teacher-forced distribution along the "
            "target's samples, which this drafter does not have; use mode=decode or spec.temperature=0"
        )
    if spec.compile and cfg.draft.get("name") in TARGET_FED_DRAFTS:
        raise SpecfairError(
            f"spec.compile=true: draft={cfg.draft.name} reads the target's hidden states, which the static "
            "CUDA-graph caches do not return; use spec.compile=false"
        )
    if cfg.get("compare_to") and (mode != "replay" or not spec.greedy):
        raise SpecfairError(
            f"compare_to={cfg.compare_to}: only a greedy replay (mode=replay spec.temperature=0) has counters "
            "to compare with a decode run"
        )
    return mode


def prompt_room(spec: DecodingSpec, context: int) -> int:
    """The most tokens a prompt may keep: the context less the new tokens, a block's γ and the bonus token."""
    room = context - spec.max_new_tokens - spec.gamma - 1
    if room < 1:  # config_check refuses this from the config too; here for a run from Python
        raise SpecfairError(
            f"spec.max_new_tokens={spec.max_new_tokens} + {spec.gamma_option}={spec.gamma} leaves no room for a "
            f"prompt in the target's {context}-token context; lower them"
        )
    return room


def load_prompts(cfg: DictConfig, tokenizer, max_prompt: int) -> tuple[Splits, list[Prompt]]:
    """The run's splits and its tokenized evaluation prompts (first turns), cut to `max_prompt` tokens."""

    def count_tokens(row):
        return len(tokenizer(train_text(row, cfg.dataset), add_special_tokens=False)["input_ids"])

    splits = build_splits(cfg.dataset, int(cfg.seed), count_tokens)
    check_not_trained_on(cfg.draft.get("path"), splits.eval)
    log.info("dataset %s (%s): %d prompts over %d categories; %d disjoint training texts", cfg.dataset.name,
             splits.source, len(splits.eval), len(splits.categories), len(splits.train))  # fmt: skip
    if splits.train_counts:
        counts = ", ".join(f"{c} {v['rows']}/{v['tokens']}" for c, v in splits.train_counts.items())
        log.info("training texts per category (rows/tokens): %s", counts)
    prompts = tokenize_prompts(splits.eval, tokenizer, cfg.dataset, max_prompt)
    return splits, prompts


@dataclass
class Prepared:
    """What `check_before_loading` found: the settings, the data and the first-turn prompts."""

    spec: DecodingSpec
    mode: str
    tokenizer: object
    max_prompt: int
    splits: Splits
    prompts: list[Prompt]


def check_before_loading(cfg: DictConfig) -> Prepared:
    """Every check that needs no model weights, in the order a run meets them: the decoding settings and mode,
    a model-free drafter's settings, the target (its config.json: context length and layers), the tokenizer,
    the data files, splits and prompts. A bad input is refused here in seconds, before either model loads."""
    spec = DecodingSpec.from_config(OmegaConf.to_container(cfg.spec, resolve=True))
    mode = check_mode(cfg, spec)
    if cfg.draft.get("name") in MODEL_FREE_DRAFTS:
        build_drafter(None, cfg.draft)  # its settings are checked before any model loads
    if cfg.draft.get("name") in NO_DRAFT_MODEL:
        # a feature head prunes its own scoring rows (draft.vocab_size, eagle.eagle_drafter); nothing quantizes yet
        for option in ("quantize",) if cfg.draft.name == "eagle" else ("vocab_size", "quantize"):
            if cfg.draft.get(option):
                raise SpecfairError(
                    f"draft.{option}: draft={cfg.draft.name} has no model to prune or quantize; leave it null"
                )
    config = load_config(cfg.pair.target)
    layers = cfg.draft.get("num_layers")
    from_target = not (
        cfg.draft.get("path") or cfg.pair.get("draft") or cfg.draft.get("name") in NO_DRAFT_MODEL
    )
    if layers is not None and from_target:  # the draft is cut from the target: its layers are known now
        total = getattr(config, "num_hidden_layers", None)
        if total and not 1 <= int(layers) <= total:
            raise SpecfairError(
                f"draft.num_layers={layers} must be between 1 and the target's {total} layers"
            )
    max_prompt = prompt_room(spec, context_length(config))
    tokenizer = load_tokenizer(cfg.pair.get("tokenizer") or cfg.pair.target)
    size = cfg.draft.get("vocab_size")
    if size and cfg.draft.get("name") not in NO_DRAFT_MODEL:  # the heads may score fewer: checked again
        check_size(int(size), len(tokenizer))
    splits, prompts = load_prompts(cfg, tokenizer, max_prompt)
    return Prepared(spec, mode, tokenizer, max_prompt, splits, prompts)


def second_turns(cfg: DictConfig, pair: Pair, prepared: Prepared) -> list[Prompt]:
    """dataset.turns=2 (Spec-Bench): each question's second turn after the target's own greedy first answer;
    the one prompt step that needs the target's weights."""
    if int(cfg.dataset.get("turns") or 1) != 2:
        return prepared.prompts
    spec = prepared.spec
    answer = spec_bench.greedy_answer(pair.target, pair.tokenizer, pair.vocab_size, spec.max_new_tokens)
    return spec_bench.with_turns(prepared.prompts, cfg.dataset, pair.tokenizer, answer, prepared.max_prompt)


def check_not_trained_on(draft_path, eval_rows) -> None:
    """A fine-tuned draft whose train_ids.txt holds one of these prompts would be scored on its own training
    text (another dataset.split_seed or held_out than at training): refused."""
    trained = load_train_ids(Path(draft_path).parent) if draft_path else None
    hit = {r.id for r in eval_rows} & trained if trained else set()
    if hit:
        raise SpecfairError(
            f"draft.path={draft_path} was trained on {len(hit)} of these evaluation prompts (e.g. {min(hit)}): "
            "evaluate with the dataset.split_seed and dataset.held_out it was trained with"
        )


def draft_options(cfg: DictConfig, pair: Pair, splits) -> dict | None:
    """draft.vocab_size (the id map beside the draft, else the N ids most frequent in this dataset's training
    texts, which never overlap the prompts) and draft.quantize, applied to the loaded draft."""
    size, quantize = cfg.draft.get("vocab_size"), cfg.draft.get("quantize")
    if not size and not quantize:
        return None
    if cfg.draft.name == "eagle":  # a feature head prunes its own scoring rows (eagle.eagle_drafter)
        return {"vocab_size": size, "quantize": quantize}
    if pair.draft is None:
        option = "draft.vocab_size" if size else "draft.quantize"
        raise SpecfairError(
            f"{option}: draft={cfg.draft.name} has no model to prune or quantize; leave it null"
        )
    options: dict = {"vocab_size": size, "quantize": quantize}
    if size:
        tokens = pair.vocab_size
        check_size(int(size), tokens)
        ids, source = pruned_head_ids(
            int(size),
            tokens,
            cfg.draft.get("path") or cfg.pair.get("draft"),
            pair.tokenizer,
            lambda: [train_text(row, cfg.dataset) for row in splits.train],
            f"{cfg.dataset.name} training texts ({len(splits.train)})",
        )
        options["vocab_source"] = source
        prune_head(pair.draft, ids)
        log.info("draft head cut to %d of %d ids (from %s)", len(ids), head_rows(pair.target), source)
    if quantize:
        pair.draft = quantize_int8(pair.draft, device_hint(cfg.trainer))
    return options


def run_meta(cfg, mode, splits, prompts, pair, spec, world_size) -> dict:
    """Everything summary.json records beside the metric's result: enough to pair and to reproduce runs."""
    return {
        "mode": mode,
        "dataset": {
            "name": cfg.dataset.name,
            "source": splits.source,
            "categories": splits.categories,
            "per_category": int(cfg.dataset.per_category),
            "prompt_tokens": int(cfg.dataset.prompt_tokens),
            "turns": int(cfg.dataset.get("turns") or 1),
            **held_out_settings(cfg.dataset),
            "group_by": cfg.dataset.get("group_by"),
            "prompts": len(prompts),
            "train_counts": splits.train_counts,
        },  # fmt: skip
        "pair": {"name": cfg.pair.name, "target": cfg.pair.target, "draft": cfg.pair.get("draft")},
        "draft": OmegaConf.to_container(cfg.draft, resolve=True),
        "draft_training": draft_training(cfg.draft),
        "spec": spec.record(mode),
        "seed": int(cfg.seed),
        "baseline": bool(cfg.get("baseline", True)) and mode == "decode",
        "prompt_set": prompt_set_hash(prompts),
        "device": device_hint(cfg.trainer),
        "dtype": str(pair.target.dtype).removeprefix("torch."),
        "world_size": world_size,
        "target_layers": pair.target.config.num_hidden_layers,
        "draft_layers": pair.draft.config.num_hidden_layers if pair.draft is not None else 0,
    }


def continuation_cache(cfg: DictConfig, pair: Pair, spec: DecodingSpec) -> ContinuationCache | None:
    """The target-continuation cache for these weights and settings (None with paths.cache_dir=null)."""
    root = cfg.paths.get("cache_dir")
    if not root:
        return None
    config = pair.target.config.to_json_string(use_diff=False)
    settings = {
        "target": weights_fingerprint(pair.target),
        "config": hashlib.sha1(config.encode()).hexdigest()[:20],  # rope scaling, norms: not in the weights
        "device": pair.target.device.type,  # kernels differ: near-ties may break differently on GPU and CPU
        "dtype": str(pair.target.dtype),
        "vocab": pair.vocab_size,
        "eos": sorted(eos_set(pair.tokenizer.eos_token_id)),
        "max_new_tokens": spec.max_new_tokens,
        **spec.sampling,
        "seed": None if spec.greedy else int(cfg.seed),
    }  # fmt: skip
    return ContinuationCache(root, settings)


def reference_records(path, meta: dict) -> dict | None:
    """A decode run's records by prompt id, to count replay_mismatches against; it must be the same
    evaluation (prompts, pair, draft, decoding settings, seed) or every prompt would count as a mismatch."""
    if not path:
        return None
    summary = load_summary(path)
    if summary.mode != "decode":
        raise SpecfairError(f"compare_to={path}: a {summary.mode} run, expected a decode run")
    differs = pairing_mismatch(summary, meta) or ("draft" if summary.draft != meta["draft"] else None)
    if differs:
        old = differs == "prompt_set" and not str(summary.prompt_set or "").startswith(
            resume.PROMPT_SET_PREFIX
        )
        why = " (its prompt fingerprint predates token ids: rerun it to compare)" if old else ""
        raise SpecfairError(f"compare_to={path}: that run differs from this one in {differs!r}{why}")
    return {r.id: r for r in load_samples(path)}


def build_module(cfg, mode, pair, prompts, splits, spec, trainer, options: dict | None = None):
    if len(prompts) < trainer.world_size:  # an empty shard would leave the other ranks waiting forever
        raise SpecfairError(
            f"{len(prompts)} prompts for {trainer.world_size} processes: raise dataset.per_category "
            "or lower trainer.devices"
        )
    meta = run_meta(cfg, mode, splits, prompts, pair, spec, trainer.world_size)
    if options:
        meta["draft_options"] = options
    resume.prepare(Path(cfg.paths.output_dir), meta, cfg.get("resume", "auto"))
    common = (pair, prompts, splits.categories, spec, int(cfg.seed), Path(cfg.paths.output_dir), meta)
    if mode == "replay":
        cache = continuation_cache(cfg, pair, spec)
        return ReplayModule(*common, cache=cache, reference=reference_records(cfg.get("compare_to"), meta))
    return DecodeModule(*common, baseline=meta["baseline"])


def evaluate(cfg: DictConfig) -> dict | None:
    """Check what needs no weights, load the pair, run the predict loop, return the summary (on rank 0; None
    elsewhere)."""
    prepared = check_before_loading(cfg)
    spec, mode, splits = prepared.spec, prepared.mode, prepared.splits
    out_dir = Path(cfg.paths.output_dir)
    pair = load_pair(cfg.pair, cfg.draft, device_hint(cfg.trainer))
    prompts = second_turns(cfg, pair, prepared)
    options = draft_options(cfg, pair, splits)
    # precision 32-true: the weights are in pair.dtype already; trainer=gpu's bf16-mixed autocast would decode
    # in bf16 behind the lossless check's back
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, precision="32-true",
                                      use_distributed_sampler=False, enable_model_summary=False)  # fmt: skip
    module = build_module(cfg, mode, pair, prompts, splits, spec, trainer, options)
    trainer.predict(module, return_predictions=False)
    if not trainer.is_global_zero:
        return None
    summary = load_summary(out_dir)
    if summary.lossless_mismatches:
        log.error("%d prompts differ from the target's greedy output", summary.lossless_mismatches)
    if summary.replay_mismatches:
        log.error("%d prompts' replayed counters differ from %s", summary.replay_mismatches, cfg.compare_to)
    if cfg.logger.get("enabled"):
        name = f"{cfg.dataset.name}-{cfg.draft.name}-g{cfg.spec.gamma}"
        records = [r.to_dict() for r in load_samples(out_dir)]
        log_evaluation(summary.to_dict(), records, pair.tokenizer.decode, cfg.logger, out_dir, name)
    return summary.to_dict()


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
# replay at temperature > 0 has expectations instead of counters, and no timing
EXPECTED_COLUMNS = [
    ("prompts", "prompts", "{:d}"),
    ("new_tokens", "tokens", "{:d}"),
    ("expected_alpha", "E[alpha]", "{:.3f}"),
    ("expected_block_efficiency", "E[tokens/call]", "{:.2f}"),
]


def summary_table(summary: dict):
    """A rich table: one row per category, then the overall row (untimed columns dropped in replay)."""
    from rich.table import Table

    spec, mode = summary["spec"], summary.get("mode", "decode")
    title = (
        f"{summary['dataset']['name']} · {summary['pair']['name']} · draft={summary['draft']['name']} · "
        f"gamma={spec['gamma']} · T={spec['temperature']} · {mode}"
    )
    columns = TABLE_COLUMNS
    if mode == "replay":
        columns = EXPECTED_COLUMNS if spec["temperature"] > 0 else TABLE_COLUMNS[:5]
    table = Table(title=title)
    table.add_column("category")
    for _, header, _ in columns:
        table.add_column(header, justify="right")

    def cells(group):
        return [fmt.format(group[key]) if group.get(key) is not None else "n/a" for key, _, fmt in columns]

    for name, group in summary["categories"].items():
        table.add_row(name, *cells(group))
    table.add_section()
    table.add_row("overall", *cells(summary["overall"]), style="bold")
    return table
