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
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from decoding_report import Run, console, print_report, summarize  # beside this file: on sys.path when run
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from specfair import ROOT
from specfair.decoding.adaptive import measure_costs
from specfair.decoding.engine import DecodeStats, autoregressive_generate, now, speculative_generate
from specfair.errors import SpecfairError
from specfair.models import (
    EMBEDDED,
    TRUNCATED_LAYERS,
    load_model,
    load_tokenizer,
    resolve_dtype,
    resolve_source,
    truncated_draft,
)
from specfair.vocab import prune_head, pruned_head_ids, quantize_int8

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_decode_options(parser)
    add_model_options(parser)
    add_variant_options(parser)
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def add_decode_options(parser: argparse.ArgumentParser) -> None:
    """What is decoded: prompts, new tokens, gamma."""
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


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Which draft, how often, and where and in what dtype the models run."""
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


def add_variant_options(parser: argparse.ArgumentParser) -> None:
    """The engine variants timed beside the three methods, and where the results go."""
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


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.shape or args.draft_shape) and not args.random_weights:
        parser.error("--shape/--draft-shape need --random-weights (no weights of those shapes ship here)")
    for name in ("prompts", "max_new_tokens", "gamma", "draft_layers", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")


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
    texts = sample_texts(dataset, "eval")
    if count > len(texts):
        raise SpecfairError(f"--prompts {count}: the bundled sample has only {len(texts)} eval texts")
    chosen = texts[:: len(texts) // count][:count]
    return [tokenizer(text, add_special_tokens=False)["input_ids"][:PROMPT_TOKENS] for text in chosen]


def sample_texts(dataset: str, split: str) -> list[str]:
    """The texts of one split of the bundled sample: prompts come from "eval", a pruned head's ids from "train"."""
    with (SAMPLES / f"{dataset}.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["text"] for r in rows if r["split"] == split]


def cheaper_drafts(draft, tokenizer, args) -> dict[str, tuple[PreTrainedModel, float | None]]:
    """engine variants of --matrix: name -> (draft, confidence threshold). The pruned head keeps the first ids
    of the id map beside --draft-path (the ids it trained on, as evaluation does), else the dataset's most
    frequent training ids."""
    ids, source = pruned_head_ids(
        args.draft_vocab,
        len(tokenizer),
        args.draft_path,
        tokenizer,
        lambda: sample_texts(args.dataset, "train"),
        f"bundled {args.dataset} training texts",
    )
    print(f"pruned head: {args.draft_vocab} ids from {source}")
    pruned = prune_head(copy.deepcopy(draft), ids)
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


# --- timing and checks -------------------------------------------------------------------------------


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


def warn_if_busy(device: str) -> float:
    """CPU timings are only meaningful on an idle machine: other processes oversubscribe the cores."""
    load = os.getloadavg()[0]
    if device == "cpu" and load > 1.0:
        console.print(
            f"[yellow]warning: 1-minute load average {load:.1f} on {os.cpu_count()} cores before "
            "starting: if other processes are still running, CPU timings will be slow and noisy[/]"
        )
    return load


# --- the run -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = warn_if_busy(args.device)
    transformers.logging.set_verbosity_error()  # the assistant's internal generate() warns on every call
    transformers.logging.disable_progress_bar()
    dtype = resolve_dtype(args.dtype, args.device)
    tokenizer, target, draft, draft_label, prompts = load_inputs(args, dtype)
    eos = tokenizer.eos_token_id if tokenizer is not None else target.config.eos_token_id
    configure_assistant(draft, args.gamma)
    prompts = [torch.tensor([ids], device=args.device) for ids in prompts]
    methods = all_methods(args, target, draft, tokenizer, prompts, eos)
    config = run_config(args, target, draft, draft_label, len(prompts), dtype, load_before)
    console.print(" ".join(f"{k}={v}" for k, v in config.items()))
    rounds = warm_up(methods, target, draft, prompts[0], args.gamma)

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
        summary["bandwidth_floor"] = per_token_floor(bandwidth_floor(target, args.device), summary)
    print_report(summary, args.repeats)
    if args.json:
        record = {
            "config": config,
            "hf_rounds_warmup": rounds,
            "identical": not mismatch,
            "mismatches": mismatch,
            **summary,
        }
        write_json(args.json, record)
    if mismatch:
        sys.exit("\n".join(mismatch))


def load_inputs(args, dtype: torch.dtype) -> tuple:
    """Tokenizer (None: --random-weights without one), target, draft, the draft's label and the prompts' ids;
    a missing file or weight exits with its one-line error."""
    try:
        tokenizer = try_tokenizer() if args.random_weights else load_tokenizer(EMBEDDED)
        target, draft, draft_label = build_models(args, dtype)
        prompts = load_prompts(tokenizer, args.prompts, target.config.vocab_size, args.dataset)
    except SpecfairError as err:
        sys.exit(f"error: {err}")
    return tokenizer, target, draft, draft_label, prompts


def all_methods(args, target, draft, tokenizer, prompts, eos) -> dict[str, Generate]:
    """The three methods, then those of --compile, --matrix and --auto-gamma, in that order."""
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
    if args.auto_gamma:
        methods.update(auto_gamma_methods(args, target, draft, variants, prompts[0], eos))
    return methods


def auto_gamma_methods(args, target, draft, variants, prompt, eos) -> dict[str, Generate]:
    """spec.gamma=auto beside each fixed-γ engine without a confidence stop, its costs timed on `prompt`."""
    fixed = {"": draft} | {n[len("engine(") : -1]: v for n, (v, t) in variants.items() if t is None}
    methods = {}
    for key, variant in fixed.items():
        policy = measure_costs(target, variant, prompt[0].tolist(), args.gamma_max)
        methods[f"engine(auto,{key})" if key else "engine(auto)"] = engine_method(
            target, variant, args.gamma_max, args.max_new_tokens, eos, policy=policy
        )
    return methods


def run_config(args, target, draft, draft_label: str, prompts: int, dtype, load_before: float) -> dict:
    """What was run, on what: printed first and written to the JSON."""
    return {
        "target": "random weights, embedded config" if args.random_weights else EMBEDDED,
        "target_layers": target.config.num_hidden_layers,
        "draft": draft_label,
        "draft_layers": draft.config.num_hidden_layers,
        "prompts": prompts,
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


def warm_up(methods: dict[str, Generate], target, draft, prompt: torch.Tensor, gamma: int) -> list[int]:
    """One generation per method, then hf_assisted's drafted tokens per round, which must not exceed gamma
    (else it would not be the constant-gamma baseline it is reported as)."""
    for generate in methods.values():
        with torch.inference_mode():
            generate(prompt)
    rounds = hf_rounds(target, draft, methods["hf_assisted"], prompt)
    console.print(
        f"hf_assisted warm-up check: {len(rounds)} rounds, drafted tokens per round max "
        f"{max(rounds)} mean {statistics.mean(rounds):.2f} (gamma={gamma}; fewer only near the end)"
    )
    if max(rounds) > gamma:
        sys.exit(f"FAIL: hf_assisted drafted up to {max(rounds)} tokens per round, not gamma={gamma}")
    return rounds


def per_token_floor(floor: dict, summary: dict) -> dict:
    """The bandwidth floor beside the target's measured ms per token (plain and compiled)."""
    for name in ("target", "target_compiled"):
        if name in summary["tokens_per_s"]:
            per_token_ms = 1e3 / summary["tokens_per_s"][name]["median"]
            floor[f"{name}_ms_per_token"] = per_token_ms
            floor[f"{name}_over_floor"] = per_token_ms / floor["floor_ms"]
    return floor


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
