"""Is our speculative engine faster than plain decoding, and than transformers' assisted generation?

Greedy decoding of the same real prompts (bundled AG News eval texts, first 32 tokens) by three methods, in
one run and one process, so that their speeds are comparable:

  target       plain decoding with the target (`autoregressive_generate`)
  hf_assisted  transformers' assisted generation with the same draft, forced to a constant gamma
  engine       `speculative_generate`, this project's engine

After one warm-up generation per method, each repeat times every method over all prompts (the order rotates
between repeats) and the median over repeats is reported, with the engine's measured acceptance and cost
ratio and the speedup Leviathan et al. (2023) predict from them. All three outputs must be token-identical
on every prompt: greedy speculative decoding is lossless, so a difference is a bug and exits non-zero.

Run:  make bench
      HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_decoding.py --prompts 8 --max-new-tokens 64 --gamma 4
      ... --draft-path outputs/draft          (a fine-tuned draft instead of the truncated one)
      ... --device cuda --random-weights      (a GPU machine without the weights: timing only)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from rich.console import Console
from rich.table import Table
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from specfair import ROOT
from specfair.decoding.adaptive import measure_costs
from specfair.decoding.engine import DecodeStats, autoregressive_generate, now, speculative_generate
from specfair.errors import SpecfairError
from specfair.evaluation.acceptance import predicted_block_efficiency, predicted_speedup
from specfair.models import (
    EMBEDDED,
    TRUNCATED_LAYERS,
    load_model,
    load_tokenizer,
    resolve_dtype,
    resolve_source,
    truncated_draft,
)
from specfair.records import ratio as ratio_of
from specfair.vocab import frequent_ids, load_id_map, pad_ids, prune_head, quantize_int8

SAMPLES = ROOT / "data" / "samples"
PROMPT_TOKENS = 32
METHODS = ("target", "hf_assisted", "engine")
COMPILED = ("target_compiled", "engine_compiled")  # --compile: static caches, CUDA graphs on a GPU

# The embedded target's config (SmolLM2-135M-Instruct), written out so --random-weights needs no model files.
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
# The family's larger members (their published configs), for --random-weights timing at those shapes.
SHAPES = {
    "135m": SMOLLM2_135M,
    "360m": {**SMOLLM2_135M, "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
             "num_attention_heads": 15, "num_key_value_heads": 5},
    "1.7b": {**SMOLLM2_135M, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
             "num_attention_heads": 32, "num_key_value_heads": 32,
             "rope_parameters": {"rope_theta": 130000.0, "rope_type": "default"}},
}  # fmt: skip

console = Console(width=150)  # wide tables stay whole in logs and pipes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=8, help="number of bundled eval prompts")
    parser.add_argument(
        "--dataset",
        default="agnews",
        choices=["agnews", "imdb", "emotion"],
        help="bundled sample the prompts come from",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--gamma", type=int, default=4, help="tokens drafted per block (both speculative methods)"
    )
    parser.add_argument(
        "--draft-layers",
        type=int,
        help="the draft's first N layers (as draft.num_layers): of the target (default 4) or of --draft-path",
    )
    parser.add_argument(
        "--draft-path", help="local HF folder of a (fine-tuned) draft; default: truncated target"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16", "auto"],
        default="float32",
        help="float32 keeps greedy ties bit-stable, so the identity check is meaningful; "
        "auto is bfloat16 on cuda",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="target and draft with random weights from the embedded config (timing only)",
    )
    parser.add_argument(
        "--shape", choices=list(SHAPES), help="with --random-weights: the target's shape (default: embedded)"
    )
    parser.add_argument(
        "--draft-shape",
        choices=list(SHAPES),
        help="with --random-weights: a separate random draft of this shape instead of the truncated target",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time target and engine with spec.compile (static caches)"
    )
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="also time the cheaper drafts: {full, pruned head} x {fixed gamma, confidence stop} x {fp32, int8}",
    )
    parser.add_argument(
        "--draft-vocab",
        type=int,
        default=8192,
        help="--matrix: ids the pruned head keeps (dataset's train split)",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.5,
        help="--matrix: spec.confidence_threshold of the adaptive variants",
    )
    parser.add_argument(
        "--auto-gamma",
        action="store_true",
        help="also time spec.gamma=auto (gamma chosen per block from alpha and timed costs, up to --gamma-max)",
    )
    parser.add_argument(
        "--gamma-max", type=int, default=8, help="--auto-gamma: the largest gamma it may pick"
    )
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    if (args.shape or args.draft_shape) and not args.random_weights:
        parser.error("--shape/--draft-shape need --random-weights (no weights of those shapes ship here)")
    for name in ("prompts", "max_new_tokens", "gamma", "draft_layers", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    return args


# --- models and prompts ------------------------------------------------------------------------------


def try_tokenizer():
    try:
        return load_tokenizer(EMBEDDED)
    except SpecfairError as err:
        console.print(f"[yellow]no tokenizer ({err}); using random prompt token ids[/]")
        return None


def embedded_config() -> LlamaConfig:
    """The embedded target's config from its files, else the written-out copy."""
    try:
        return AutoConfig.from_pretrained(resolve_source(EMBEDDED))
    except (SpecfairError, OSError):
        return LlamaConfig(**SMOLLM2_135M)


def build_models(args, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedModel, str]:
    """Target, draft and a one-line description of the draft."""

    def random(shape: str | None) -> PreTrainedModel:
        config = LlamaConfig(**SHAPES[shape]) if shape else embedded_config()
        with torch.device(args.device):  # initialised where it runs: a 1.7B init takes long on CPU
            return LlamaForCausalLM(config).to(dtype).eval().requires_grad_(False)

    if args.random_weights:
        torch.manual_seed(0)
        target = random(args.shape)
    else:
        target = load_model(EMBEDDED, dtype)
    if args.draft_shape:
        torch.manual_seed(1)
        draft, label = random(args.draft_shape), f"random weights, {args.draft_shape} shape"
    elif args.draft_path:
        draft, label = load_model(args.draft_path, dtype, "--draft-path"), f"{args.draft_path}"
        if args.draft_layers and args.draft_layers != draft.config.num_hidden_layers:
            draft = truncated_draft(
                draft, args.draft_layers, f"--draft-path={args.draft_path}", "--draft-layers"
            )
            label += f", first {args.draft_layers} layers"
    else:
        layers = args.draft_layers or TRUNCATED_LAYERS
        draft, label = (
            truncated_draft(target, layers, option="--draft-layers"),
            f"first {layers} target layers",
        )
    return target.to(args.device), draft.to(args.device), label


def load_prompts(tokenizer, count: int, vocab: int, dataset: str = "agnews") -> list[list[int]]:
    """`count` eval texts spread evenly over the bundled file (so over its categories), cut to 32 tokens."""
    if tokenizer is None:
        generator = torch.Generator().manual_seed(0)
        return [torch.randint(3, vocab, (PROMPT_TOKENS,), generator=generator).tolist() for _ in range(count)]
    with (SAMPLES / f"{dataset}.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    texts = [r["text"] for r in rows if r["split"] == "eval"]
    if count > len(texts):
        raise SpecfairError(f"--prompts {count}: the bundled sample has only {len(texts)} eval texts")
    chosen = texts[:: len(texts) // count][:count]
    return [tokenizer(text, add_special_tokens=False)["input_ids"][:PROMPT_TOKENS] for text in chosen]


def train_token_lists(tokenizer, dataset: str) -> list[list[int]]:
    """The bundled sample's training texts, tokenized: where a pruned head's ids come from (never the prompts)."""
    with (SAMPLES / f"{dataset}.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    texts = [r["text"] for r in rows if r["split"] == "train"]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def cheaper_drafts(draft, tokenizer, args) -> dict[str, tuple[PreTrainedModel, float | None]]:
    """engine variants of --matrix: name -> (draft, confidence threshold). The pruned head keeps the first ids
    of the id map beside --draft-path (the ids it trained on, as evaluation does), else the dataset's most
    frequent training ids."""
    found = load_id_map(args.draft_path, args.draft_vocab, len(tokenizer)) if args.draft_path else None
    if found is None:
        ids = frequent_ids(
            train_token_lists(tokenizer, args.dataset), args.draft_vocab, [tokenizer.eos_token_id]
        )
        found = pad_ids(ids, args.draft_vocab, len(tokenizer)), f"bundled {args.dataset} training texts"
    print(f"pruned head: {args.draft_vocab} ids from {found[1]}")
    pruned = prune_head(copy.deepcopy(draft), found[0])
    drafts = {"": draft, f"v{args.draft_vocab}": pruned}
    drafts.update(
        {f"{k},int8" if k else "int8": quantize_int8(copy.deepcopy(d)) for k, d in list(drafts.items())}
    )
    variants = {}
    for key, model in drafts.items():
        for threshold in (None, args.confidence):
            label = ",".join(x for x in (key, f"conf{threshold}" if threshold else "") if x)
            if label:
                variants[f"engine({label})"] = (model, threshold)  # no [..]: rich reads that as markup
    return variants


def configure_assistant(draft: PreTrainedModel, gamma: int) -> None:
    """Make transformers' assisted generation draft exactly `gamma` tokens per round.

    In transformers 5.x the candidate generator reads these settings from the *assistant's* generation
    config (kwargs of `target.generate` do not reach it), fills unset ones with defaults of 20 tokens and
    a confidence threshold of 0.4, and the threshold stops a round early whenever the draft's top
    probability falls below it. A threshold of 0 disables that stop (and the sklearn-driven re-tuning).
    """
    draft.generation_config.num_assistant_tokens = gamma
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0


# --- the three methods -------------------------------------------------------------------------------

Generate = Callable[[torch.Tensor], tuple[list[int], DecodeStats | None]]


def make_methods(
    target, draft, *, gamma: int, max_new_tokens: int, eos: int | None, compiled: bool = False
) -> dict[str, Generate]:
    """Each method maps a `[1, L]` prompt to (new token ids, engine stats or None)."""

    def plain(ids, compiled=False):
        out = autoregressive_generate(
            target, ids, max_new_tokens=max_new_tokens, eos_token_id=eos, compiled=compiled
        )
        return out[0].tolist(), None

    def hf_assisted(ids):  # gamma and the schedule come from draft.generation_config: configure_assistant
        out = target.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            assistant_model=draft,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        return out[0, ids.shape[1] :].tolist(), None

    methods = {
        "target": plain,
        "hf_assisted": hf_assisted,
        "engine": engine_method(target, draft, gamma, max_new_tokens, eos),
    }
    if compiled:
        methods["target_compiled"] = lambda ids: plain(ids, compiled=True)
        methods["engine_compiled"] = engine_method(target, draft, gamma, max_new_tokens, eos, compiled=True)
    return methods


def engine_method(
    target, draft, gamma, max_new_tokens, eos, threshold=None, compiled=False, policy=None
) -> Generate:
    """This project's engine as a bench method (a draft variant, a confidence stop, static caches, γ=auto)."""

    def generate(ids):
        out, stats = speculative_generate(
            target, draft, ids, gamma=gamma, max_new_tokens=max_new_tokens, eos_token_id=eos,
            confidence_threshold=threshold, compiled=compiled, gamma_policy=policy,
        )  # fmt: skip
        if policy is not None:
            policy.update(stats)  # as in evaluation: alpha pooled over the prompts decoded so far
        return out[0].tolist(), stats

    return generate


@dataclass
class Run:
    """One method over all prompts once."""

    seconds: float
    outputs: list[list[int]]
    stats: list[DecodeStats] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(out) for out in self.outputs)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def time_method(generate: Generate, prompts: list[torch.Tensor], device: str) -> Run:
    outputs, stats = [], []
    with torch.inference_mode():
        start = now(torch.device(device))
        for ids in prompts:
            out, st = generate(ids)
            outputs.append(out)
            if st is not None:
                stats.append(st)
        seconds = now(torch.device(device)) - start
    return Run(seconds, outputs, stats)


def hf_rounds(target, draft, generate: Generate, ids: torch.Tensor) -> list[int]:
    """Draft forwards before each target forward of one assisted generation: the drafted tokens per round."""
    calls: list[str] = []
    hooks = [
        target.register_forward_pre_hook(lambda *_: calls.append("T")),
        draft.register_forward_pre_hook(lambda *_: calls.append("d")),
    ]
    try:
        with torch.inference_mode():
            generate(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return [len(run) for run in "".join(calls).split("T")[:-1]]


def benchmark(methods: dict[str, Generate], prompts, repeats: int, device: str) -> dict[str, list[Run]]:
    """Runs per method; the method order rotates each repeat so that none always runs first or last."""
    runs: dict[str, list[Run]] = {name: [] for name in methods}
    names = list(methods)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            runs[name].append(time_method(methods[name], prompts, device))
        console.print(
            f"repeat {r + 1}/{repeats}: "
            + ", ".join(f"{name} {runs[name][-1].tokens_per_s:.1f} tok/s" for name in names)
        )
    return runs


def check_identical(runs: dict[str, list[Run]], prompts: list[torch.Tensor]) -> list[str]:
    """Every method, every repeat, every prompt against the target's first run: per method that differs, its
    first difference (so one method's mismatch does not hide whether the others matched)."""
    reference = runs["target"][0].outputs
    failures = []
    for name, method_runs in runs.items():
        failure = next(
            (
                (r, i, got, want)
                for r, run in enumerate(method_runs)
                for i, (got, want) in enumerate(zip(run.outputs, reference, strict=True))
                if got != want
            ),
            None,
        )
        if failure:
            r, i, got, want = failure
            at = next(
                (k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                min(len(got), len(want)),
            )
            failures.append(
                f"FAIL: {name} (repeat {r + 1}) differs from target greedy on prompt {i} "
                f"(prompt ids {prompts[i][0, :8].tolist()}...) at new token {at}: "
                f"{got[at : at + 5]} vs {want[at : at + 5]} ({len(got)} vs {len(want)} tokens)"
            )
    return failures


# --- metrics ----------------------------------------------------------------------------------------


def summarize(runs: dict[str, list[Run]], gamma: int) -> dict:
    median_tps = {name: statistics.median(run.tokens_per_s for run in rs) for name, rs in runs.items()}

    def ratio(a: str, b: str) -> float:  # paired per repeat (same conditions), then the median
        return statistics.median(
            x.tokens_per_s / y.tokens_per_s for x, y in zip(runs[a], runs[b], strict=True)
        )

    stats = runs["engine"][0].stats  # greedy: the counters are the same every repeat
    accepted = sum(s.accepted for s in stats)
    rejections = sum(s.rejections for s in stats)
    proposed = sum(s.proposed for s in stats)
    alpha = ratio_of(accepted, accepted + rejections)
    c, v, costs = cost_ratios(runs["engine"], runs["target"])
    predicted = predicted_speedup(alpha, gamma, c)
    predicted_with_verify = predicted_speedup(alpha, gamma, c, v)
    measured = ratio("engine", "target")
    ratios = {
        "engine/target": measured,
        "hf_assisted/target": ratio("hf_assisted", "target"),
        "engine/hf_assisted": ratio("engine", "hf_assisted"),
    }
    compiled = {}
    if "engine_compiled" in runs:
        ratios.update({
            "target_compiled/target": ratio("target_compiled", "target"),
            "engine_compiled/target_compiled": ratio("engine_compiled", "target_compiled"),
            "engine_compiled/target": ratio("engine_compiled", "target"),
            "engine_compiled/hf_assisted": ratio("engine_compiled", "hf_assisted"),
        })  # fmt: skip
        cc, cv, _ = cost_ratios(runs["engine_compiled"], runs["target_compiled"])
        compiled = {
            "cost_ratio_c": cc,
            "verify_cost_ratio_v": cv,
            "predicted_speedup": predicted_speedup(alpha, gamma, cc),
            "predicted_speedup_with_verify_cost": predicted_speedup(alpha, gamma, cc, cv),
            "measured_speedup": ratios["engine_compiled/target_compiled"],
        }
    return {
        "tokens": runs["target"][0].tokens,
        "tokens_per_s": {
            name: {
                "median": median_tps[name],
                "repeats": [r.tokens_per_s for r in rs],
                "seconds": [r.seconds for r in rs],
            }
            for name, rs in runs.items()
        },
        "ratios": ratios,
        "engine_compiled": compiled,
        "variants": {name: variant_row(runs, name, gamma) for name in runs if name.startswith("engine")},
        "engine": {
            "alpha": alpha,
            "acceptance_rate": accepted / proposed if proposed else math.nan,
            "block_efficiency": sum(s.new_tokens for s in stats) / sum(1 + s.blocks for s in stats),
            "predicted_block_efficiency": predicted_block_efficiency(alpha, gamma),
            "accepted": accepted,
            "proposed": proposed,
            "rejections": rejections,
            "blocks": sum(s.blocks for s in stats),
            "cost_ratio_c": c,
            "cost_ratio_c_repeats": costs,
            "predicted_speedup": predicted,
            "measured_speedup": measured,
            "prediction_error_pct": 100 * (measured - predicted) / predicted,
            "verify_cost_ratio_v": v,
            "predicted_speedup_with_verify_cost": predicted_with_verify,
            "prediction_with_verify_cost_error_pct": 100
            * (measured - predicted_with_verify)
            / predicted_with_verify,
        },
    }


def variant_row(runs: dict[str, list[Run]], name: str, gamma: int) -> dict:
    """One engine variant: its acceptance, realised block length, cost ratio and speed against both baselines."""
    stats = runs[name][0].stats
    accepted, rejections = sum(s.accepted for s in stats), sum(s.rejections for s in stats)
    proposed, blocks = sum(s.proposed for s in stats), sum(s.blocks for s in stats)
    base = "target_compiled" if name == "engine_compiled" else "target"
    c, v, _ = cost_ratios(runs[name], runs[base])
    alpha = ratio_of(accepted, accepted + rejections)

    def paired(other: str) -> float:
        return statistics.median(
            x.tokens_per_s / y.tokens_per_s for x, y in zip(runs[name], runs[other], strict=True)
        )

    return {
        "alpha": alpha,
        "mean_gamma_b": proposed / blocks if blocks else math.nan,
        "tokens_per_call": sum(s.new_tokens for s in stats) / sum(1 + s.blocks for s in stats),
        "cost_ratio_c": c,
        "verify_cost_ratio_v": v,
        # at the realised mean block length: with a confidence stop it is well under the nominal gamma
        "predicted_speedup_with_verify_cost": predicted_speedup(
            alpha, proposed / blocks if blocks else gamma, c, v
        ),
        "tokens_per_s": statistics.median(r.tokens_per_s for r in runs[name]),
        "speedup_vs_target": paired(base),
        "speedup_vs_hf_assisted": paired("hf_assisted"),
    }


def cost_ratios(engine_runs: list[Run], target_runs: list[Run]) -> tuple[float, float, list[float]]:
    """Medians over repeats of c (draft s per drafted token) and v (verify s per block), each over the target's
    s per token in the same repeat; and c per repeat."""
    costs, verify_costs = [], []
    for engine_run, target_run in zip(engine_runs, target_runs, strict=True):
        target_step_s = target_run.seconds / target_run.tokens
        steps = sum(sum(s.proposed_lengths) for s in engine_run.stats)
        costs.append(sum(s.draft_s for s in engine_run.stats) / max(steps, 1) / target_step_s)
        blocks = sum(s.blocks for s in engine_run.stats)
        verify_costs.append(sum(s.verify_s for s in engine_run.stats) / max(blocks, 1) / target_step_s)
    return statistics.median(costs), statistics.median(verify_costs), costs


def bandwidth_floor(target: PreTrainedModel, device: str) -> dict:
    """The least time a target forward can take on this GPU: its weight bytes read once at the copy bandwidth
    measured here (bytes read + written by a 1 GiB device-to-device copy)."""
    weight_bytes = sum(p.numel() * p.element_size() for p in target.parameters())
    src = torch.empty(2**28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = now(torch.device(device))
    for _ in range(10):
        dst.copy_(src)
    seconds = now(torch.device(device)) - start
    bandwidth = 2 * src.numel() * src.element_size() * 10 / seconds
    del src, dst
    return {
        "weight_bytes": weight_bytes,
        "bandwidth_GBps": bandwidth / 1e9,
        "floor_ms": 1e3 * weight_bytes / bandwidth,
    }


# --- report -----------------------------------------------------------------------------------------


def print_report(summary: dict, repeats: int) -> None:
    speed = Table(
        title=f"Greedy decoding throughput ({summary['tokens']} new tokens per run, median of {repeats})"
    )
    speed.add_column("method")
    speed.add_column("tokens/s (median)", justify="right")
    speed.add_column("per repeat", justify="right")
    for name in summary["tokens_per_s"]:
        tps = summary["tokens_per_s"][name]
        speed.add_row(name, f"{tps['median']:.1f}", "  ".join(f"{x:.1f}" for x in tps["repeats"]))
    console.print(speed)

    ratios = Table(title="Speed ratios (median of per-repeat ratios; > 1: first is faster)")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    for name, value in summary["ratios"].items():
        ratios.add_row(name, f"{value:.3f}")
    console.print(ratios)

    if len(summary["variants"]) > 1:
        table = Table(
            title="Engine variants (median of paired repeats; speedup > 1: faster than the baseline)"
        )
        for column in ("variant", "alpha", "mean γ_b", "tokens/call", "c", "v", "pred.", "tok/s", "vs target",
                       "vs assisted"):  # fmt: skip
            table.add_column(column, justify="left" if column == "variant" else "right")
        for name, r in summary["variants"].items():
            table.add_row(
                name, f"{r['alpha']:.3f}", f"{r['mean_gamma_b']:.2f}", f"{r['tokens_per_call']:.2f}",
                f"{r['cost_ratio_c']:.3f}", f"{r['verify_cost_ratio_v']:.2f}",
                f"{r['predicted_speedup_with_verify_cost']:.2f}", f"{r['tokens_per_s']:.1f}",
                f"{r['speedup_vs_target']:.3f}", f"{r['speedup_vs_hf_assisted']:.3f}",
            )  # fmt: skip
        console.print(table)

    e = summary["engine"]
    model = Table(title="Engine acceptance and the Leviathan et al. cost model")
    model.add_column("quantity")
    model.add_column("value", justify="right")
    rows = [
        (
            "alpha = accepted / (accepted + rejections)",
            f"{e['alpha']:.3f}  ({e['accepted']}/{e['accepted'] + e['rejections']})",
        ),
        (
            "acceptance rate = accepted / proposed",
            f"{e['acceptance_rate']:.3f}  ({e['accepted']}/{e['proposed']})",
        ),
        ("block efficiency = new tokens / target calls", f"{e['block_efficiency']:.3f}"),
        ("  predicted from alpha: (1-a^(g+1))/(1-a)", f"{e['predicted_block_efficiency']:.3f}"),
        ("cost ratio c = draft s/step / target s/token", f"{e['cost_ratio_c']:.3f}"),
        ("predicted speedup (1-a^(g+1))/((1-a)(gc+1))", f"{e['predicted_speedup']:.3f}"),
        ("measured speedup engine/target", f"{e['measured_speedup']:.3f}"),
        ("measured vs predicted", f"{e['prediction_error_pct']:+.1f} %"),
        ("verify cost v = verify s/block / target s/token", f"{e['verify_cost_ratio_v']:.3f}"),
        ("predicted with v: (1-a^(g+1))/((1-a)(gc+v))", f"{e['predicted_speedup_with_verify_cost']:.3f}"),
        ("measured vs predicted with v", f"{e['prediction_with_verify_cost_error_pct']:+.1f} %"),
    ]
    for k, value in summary.get("engine_compiled", {}).items():
        rows.append((f"compiled: {k}", f"{value:.3f}"))
    floor = summary.get("bandwidth_floor")
    if floor:
        rows.append(("target weights / measured copy bandwidth", f"{floor['floor_ms']:.3f} ms "
                     f"({floor['weight_bytes'] / 1e9:.2f} GB at {floor['bandwidth_GBps']:.0f} GB/s)"))  # fmt: skip
        for name in ("target", "target_compiled"):
            if f"{name}_ms_per_token" in floor:
                rows.append((f"{name} ms per token (x floor)",
                             f"{floor[f'{name}_ms_per_token']:.3f} ({floor[f'{name}_over_floor']:.1f}x)"))  # fmt: skip
    for row in rows:
        model.add_row(*row)
    console.print(model)


def warn_if_busy(device: str) -> float:
    """CPU timings are only meaningful on an idle machine: other processes oversubscribe the cores."""
    load = os.getloadavg()[0]
    if device == "cpu" and load > 1.0:
        console.print(
            f"[yellow]warning: 1-minute load average {load:.1f} on {os.cpu_count()} cores before "
            "starting: if other processes are still running, CPU timings will be slow and noisy[/]"
        )
    return load


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = warn_if_busy(args.device)
    transformers.logging.set_verbosity_error()  # the assistant's internal generate() warns on every call
    transformers.logging.disable_progress_bar()
    dtype = resolve_dtype(args.dtype, args.device)
    try:
        tokenizer = try_tokenizer() if args.random_weights else load_tokenizer(EMBEDDED)
        target, draft, draft_label = build_models(args, dtype)
        prompts = load_prompts(tokenizer, args.prompts, target.config.vocab_size, args.dataset)
    except SpecfairError as err:
        sys.exit(f"error: {err}")
    eos = tokenizer.eos_token_id if tokenizer is not None else target.config.eos_token_id
    configure_assistant(draft, args.gamma)
    prompts = [torch.tensor([ids], device=args.device) for ids in prompts]
    methods = make_methods(
        target, draft, gamma=args.gamma, max_new_tokens=args.max_new_tokens, eos=eos, compiled=args.compile
    )
    variants = {}
    if args.matrix:
        if tokenizer is None:
            sys.exit("error: --matrix needs the tokenizer (its pruned head counts ids in the training texts)")
        variants = cheaper_drafts(draft, tokenizer, args)
        for name, (variant, threshold) in variants.items():
            methods[name] = engine_method(target, variant, args.gamma, args.max_new_tokens, eos, threshold)
    if args.auto_gamma:  # spec.gamma=auto beside each fixed-γ engine without a confidence stop
        fixed = {"": draft} | {n[len("engine(") : -1]: v for n, (v, t) in variants.items() if t is None}
        for key, variant in fixed.items():
            policy = measure_costs(target, variant, prompts[0][0].tolist(), args.gamma_max)
            methods[f"engine(auto,{key})" if key else "engine(auto)"] = engine_method(
                target, variant, args.gamma_max, args.max_new_tokens, eos, policy=policy
            )

    config = {
        "target": "random weights, embedded config" if args.random_weights else EMBEDDED,
        "target_layers": target.config.num_hidden_layers,
        "draft": draft_label,
        "draft_layers": draft.config.num_hidden_layers,
        "prompts": len(prompts),
        "prompt_tokens": PROMPT_TOKENS,
        "max_new_tokens": args.max_new_tokens,
        "gamma": args.gamma,
        "repeats": args.repeats,
        "device": args.device,
        "dtype": str(dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_avg_1m_before": round(load_before, 2),
    }
    console.print(" ".join(f"{k}={v}" for k, v in config.items()))

    for generate in methods.values():  # warm-up: one generation per method
        with torch.inference_mode():
            generate(prompts[0])
    rounds = hf_rounds(target, draft, methods["hf_assisted"], prompts[0])
    console.print(
        f"hf_assisted warm-up check: {len(rounds)} rounds, drafted tokens per round max "
        f"{max(rounds)} mean {statistics.mean(rounds):.2f} (gamma={args.gamma}; fewer only near the end)"
    )
    if max(rounds) > args.gamma:
        sys.exit(f"FAIL: hf_assisted drafted up to {max(rounds)} tokens per round, not gamma={args.gamma}")

    runs = benchmark(methods, prompts, args.repeats, args.device)
    mismatch = check_identical(runs, prompts)  # reported after the timings, which stay worth keeping
    if not mismatch:
        console.print(
            f"[green]identical[/]: all {len(methods)} methods gave the same tokens on all "
            f"{len(prompts)} prompts in all {args.repeats} repeats"
        )
    summary = summarize(runs, args.gamma)
    summary["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    if args.device == "cuda":
        floor = bandwidth_floor(target, args.device)
        for name in ("target", "target_compiled"):
            if name in summary["tokens_per_s"]:
                per_token_ms = 1e3 / summary["tokens_per_s"][name]["median"]
                floor[f"{name}_ms_per_token"] = per_token_ms
                floor[f"{name}_over_floor"] = per_token_ms / floor["floor_ms"]
        summary["bandwidth_floor"] = floor
    print_report(summary, args.repeats)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "config": config,
            "hf_rounds_warmup": rounds,
            "identical": not mismatch,
            "mismatches": mismatch,
            **summary,
        }
        args.json.write_text(json.dumps(record, indent=2))
        console.print(f"wrote {args.json}")
    if mismatch:
        sys.exit("\n".join(mismatch))


if __name__ == "__main__":
    main()
