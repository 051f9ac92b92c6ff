"""The feature head (`draft=eagle`) against the target alone, a layer draft in this engine, and transformers'
assisted generation with that layer draft: greedy, batch 1, the same prompts, one process.

  target       `autoregressive_generate`
  eagle        `speculative_generate` with the head (`--gamma`), and `eagle(auto)` (spec.gamma=auto, up to
               --gamma-max, costs timed once as evaluation does)
  layer        `speculative_generate` with the layer draft (`--layer-draft`, default the truncated target)
  hf_assisted  transformers' `generate(assistant_model=layer draft)`, `--gamma` tokens a round, no early stop

Prompts: `--prompts` evaluation texts of the bundled sample of each `--datasets` entry, spread over its
categories, cut to 32 tokens (as `bench_decoding.py`). After a warm-up, each repeat times every method on every
prompt (the order rotates); per dataset, the sum of per-prompt medians. Every output must equal the target's,
else it exits non-zero. Printed ratios: speedup over the target, eagle over hf_assisted.

Run:  make bench   (or)   HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_eagle.py --datasets imdb agnews
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from specfair import ROOT
from specfair.decoding.adaptive import measure_costs
from specfair.decoding.drafters import as_drafter
from specfair.decoding.eagle import EagleDrafter, load_head
from specfair.decoding.engine import autoregressive_generate, now, speculative_generate
from specfair.models import EMBEDDED, load_model, load_tokenizer, truncated_draft

SAMPLES = ROOT / "data" / "samples"
PROMPT_TOKENS = 32
HEAD = ROOT / "heads" / "smollm2_135m" / "eagle" / "draft"


def prompts_of(tokenizer, dataset: str, count: int) -> list[torch.Tensor]:
    """`count` evaluation texts spread evenly over the bundled sample, cut to PROMPT_TOKENS tokens, [1, L]."""
    rows = [
        json.loads(line) for line in (SAMPLES / f"{dataset}.jsonl").open(encoding="utf-8") if line.strip()
    ]
    texts = [r["text"] for r in rows if r["split"] == "eval"]
    chosen = texts[:: max(1, len(texts) // count)][:count]
    return [
        torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"][:PROMPT_TOKENS]]) for t in chosen
    ]


def methods_for(target, head, layer, args, eos: int, warm: torch.Tensor) -> dict:
    """method -> (prompt [1, L] -> new token ids); each engine method records its last DecodeStats in `stats`."""
    stats: dict = {}
    new = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos)

    def engine(name, drafter, gamma, policy=None):
        def run(ids):
            out, s = speculative_generate(target, drafter, ids, gamma=gamma, gamma_policy=policy, **new)
            if policy is not None:
                policy.update(s)
            stats.setdefault(name, []).append(s)
            return out[0].tolist()

        return run

    layer.generation_config.num_assistant_tokens = args.gamma
    layer.generation_config.num_assistant_tokens_schedule = "constant"
    layer.generation_config.assistant_confidence_threshold = 0.0
    drafter = EagleDrafter(head, target)
    policy = measure_costs(target, drafter, warm[0].tolist(), args.gamma_max)
    return stats, {
        "target": lambda ids: autoregressive_generate(target, ids, **new)[0].tolist(),
        "eagle": engine("eagle", drafter, args.gamma),
        "eagle(auto)": engine("eagle(auto)", drafter, args.gamma_max, policy),
        "layer": engine("layer", as_drafter(layer), args.gamma),
        "hf_assisted": lambda ids: target.generate(
            ids, attention_mask=torch.ones_like(ids), assistant_model=layer, do_sample=False,
            max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=eos,
        )[0, ids.shape[1] :].tolist(),
    }  # fmt: skip


def time_all(methods: dict, prompts: list[torch.Tensor], repeats: int, device) -> tuple[dict, dict]:
    """Per method: the median seconds per prompt, and the outputs."""
    names = list(methods)
    times = {m: [[] for _ in prompts] for m in names}
    outputs = {m: [None] * len(prompts) for m in names}
    with torch.inference_mode():
        for fn in methods.values():  # warm-up
            fn(prompts[0])
        for rep in range(repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for i, ids in enumerate(prompts):
                for m in order:
                    start = now(device)
                    outputs[m][i] = methods[m](ids)
                    times[m][i].append(now(device) - start)
    return {m: [statistics.median(t) for t in times[m]] for m in names}, outputs


def run(args) -> dict:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(EMBEDDED)
    target = load_model(EMBEDDED)
    head = load_head(args.head, target, "--head")
    layer = load_model(str(args.layer_draft)) if args.layer_draft else truncated_draft(target, 4)
    eos = tokenizer.eos_token_id
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "datasets": {},
    }
    for dataset in args.datasets:
        prompts = prompts_of(tokenizer, dataset, args.prompts)
        stats, methods = methods_for(target, head, layer, args, eos, prompts[0])
        seconds, outputs = time_all(methods, prompts, args.repeats, target.device)
        mismatches = sum(
            any(outputs[m][i] != outputs["target"][i] for m in methods) for i in range(len(prompts))
        )
        total = {m: sum(s) for m, s in seconds.items()}
        tokens = sum(len(o) for o in outputs["target"])
        accepted = {
            m: sum(s.accepted for s in v) / max(1, sum(s.blocks for s in v)) for m, v in stats.items()
        }
        result["datasets"][dataset] = {
            "prompts": len(prompts), "tokens": tokens, "mismatches": mismatches,
            "tokens_per_s": {m: tokens / t for m, t in total.items()},
            "speedup": {m: total["target"] / t for m, t in total.items()},
            "accepted_per_block": accepted,
            "eagle_vs_hf_assisted": total["hf_assisted"] / total["eagle"],
        }  # fmt: skip
    return result


def show(result: dict) -> None:
    s = result["settings"]
    table = Table(title=f"feature head vs layer draft, gamma={s['gamma']} (auto up to {s['gamma_max']}), "
                        f"{s['max_new_tokens']} new tokens, {s['prompts']} prompts, {s['repeats']} repeats")  # fmt: skip
    methods = ("eagle", "eagle(auto)", "layer", "hf_assisted")
    for header in (
        "dataset",
        "target tok/s",
        *methods,
        "eagle / hf_assisted",
        "eagle accepted/block",
        "identical",
    ):
        table.add_column(header, justify="right")
    for name, d in result["datasets"].items():
        table.add_row(name, f"{d['tokens_per_s']['target']:.1f}", *(f"{d['speedup'][m]:.2f}x" for m in methods),
                      f"{d['eagle_vs_hf_assisted']:.2f}x", f"{d['accepted_per_block']['eagle']:.2f}",
                      "yes" if d["mismatches"] == 0 else f"NO ({d['mismatches']})")  # fmt: skip
    Console(width=160).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head", type=Path, default=HEAD, help="a feature head's folder (eagle.save_head)")
    parser.add_argument(
        "--layer-draft", type=Path, default=None, help="an HF draft folder (default: 4 layers)"
    )
    parser.add_argument("--datasets", nargs="+", default=["imdb", "agnews"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--gamma-max", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args)
    show(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any(d["mismatches"] for d in result["datasets"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
