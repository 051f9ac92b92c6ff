"""Prompt lookup: this project's engine with `LookupDrafter` against transformers' own prompt lookup, per
Spec-Bench task group, on the embedded target, greedy, batch 1.

Four methods decode the same Spec-Bench first turns (chat template) in one process:

  target      `autoregressive_generate` (the engine's baseline)
  lookup      `speculative_generate` with `LookupDrafter` (gamma tokens, n-grams max_ngram..1)
  hf_target   transformers' `generate`, greedy
  hf_lookup   transformers' `generate(prompt_lookup_num_tokens=gamma, max_matching_ngram_size=max_ngram)`

After a warm-up, each repeat times every method on every prompt (the order rotates) and the median per prompt is
summed per group; the four outputs must be token-identical on every prompt, else it exits non-zero. The ratios
printed are lookup / target (our speedup), hf_lookup / hf_target (theirs) and lookup / hf_lookup.

Run:  make bench   (or)   HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_lookup.py --per-group 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from specfair import ROOT
from specfair.analysis.leaderboard import GROUPS, LEADERBOARD, task_group
from specfair.data.prompts import chat_ids
from specfair.decoding.drafters import LookupDrafter
from specfair.decoding.engine import autoregressive_generate, now, speculative_generate
from specfair.models import EMBEDDED, load_model, load_tokenizer

METHODS = ("target", "lookup", "hf_target", "hf_lookup")
FULL = ROOT.parent / "shared" / "data" / "spec_bench_question.jsonl"
SAMPLE = ROOT / "data" / "samples" / "spec_bench.jsonl"


def questions(per_group: int, seed: int) -> list[tuple[str, str]]:
    """(task group, first turn) for `per_group` questions per group, a seeded draw from the full file."""
    path = FULL if FULL.is_file() else SAMPLE
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    picked = []
    for group in GROUPS:
        pool = [r["turns"][0] for r in rows if task_group(r["category"]) == group]
        random.Random(f"{seed}:{group}").shuffle(pool)
        picked += [(group, q) for q in pool[:per_group]]
    return picked


def generators(target, gamma: int, max_ngram: int, max_new: int, eos: int):
    """method -> (prompt ids [1, L] -> new token ids)"""
    drafter = LookupDrafter(max_ngram=max_ngram, min_ngram=1)
    hf = dict(do_sample=False, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=eos)

    def generate(ids, **extra):
        out = target.generate(ids, attention_mask=torch.ones_like(ids), **hf, **extra)
        return out[0, ids.shape[1] :].tolist()

    return {
        "target": lambda ids: autoregressive_generate(target, ids, max_new_tokens=max_new, eos_token_id=eos)[
            0
        ].tolist(),
        "lookup": lambda ids: speculative_generate(
            target, drafter, ids, gamma=gamma, max_new_tokens=max_new, eos_token_id=eos
        )[0][0].tolist(),
        "hf_target": generate,
        "hf_lookup": lambda ids: generate(
            ids, prompt_lookup_num_tokens=gamma, max_matching_ngram_size=max_ngram
        ),
    }


def run(args) -> dict:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(EMBEDDED)
    target = load_model(EMBEDDED)
    eos = tokenizer.eos_token_id
    prompts = [
        (g, torch.tensor([chat_ids(tokenizer, [{"role": "user", "content": q}])]))
        for g, q in questions(args.per_group, args.seed)
    ]
    methods = generators(target, args.gamma, args.max_ngram, args.max_new_tokens, eos)
    with torch.inference_mode():
        for fn in methods.values():  # warm-up
            fn(prompts[0][1])
        times = {m: [[] for _ in prompts] for m in METHODS}
        outputs: dict[str, list] = {m: [None] * len(prompts) for m in METHODS}
        for rep in range(args.repeats):
            order = METHODS[rep % len(METHODS) :] + METHODS[: rep % len(METHODS)]
            for i, (_, ids) in enumerate(prompts):
                for m in order:
                    start = now(target.device)
                    outputs[m][i] = methods[m](ids)
                    times[m][i].append(now(target.device) - start)
    mismatches = sum(len({tuple(outputs[m][i]) for m in METHODS}) > 1 for i in range(len(prompts)))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {"settings": settings, "mismatches": mismatches, "groups": {}}
    for group in [*GROUPS, "overall"]:
        rows = [i for i, (g, _) in enumerate(prompts) if group in (g, "overall")]
        seconds = {m: sum(statistics.median(times[m][i]) for i in rows) for m in METHODS}
        tokens = sum(len(outputs["target"][i]) for i in rows)
        result["groups"][group] = {
            "prompts": len(rows),
            "tokens": tokens,
            **{f"{m}_tokens_per_s": tokens / seconds[m] for m in METHODS},
            "speedup": seconds["target"] / seconds["lookup"],
            "hf_speedup": seconds["hf_target"] / seconds["hf_lookup"],
            "lookup_vs_hf_lookup": seconds["hf_lookup"] / seconds["lookup"],
        }
    return result


def show(result: dict) -> None:
    s = result["settings"]
    table = Table(title=f"prompt lookup, gamma={s['gamma']}, max_ngram={s['max_ngram']}, {s['max_new_tokens']} new "
                        f"tokens, {s['repeats']} repeats (medians)")  # fmt: skip
    for header in ("group", "prompts", "target tok/s", "lookup tok/s", "speedup", "hf speedup", "lookup / hf_lookup",
                   "leaderboard PLD (A100)"):  # fmt: skip
        table.add_column(header, justify="right")
    for group, g in result["groups"].items():
        published = LEADERBOARD["PLD"]["overall" if group == "overall" else "speedup"]
        published = published if group == "overall" else published[GROUPS.index(group)]
        table.add_row(group, str(g["prompts"]), f"{g['target_tokens_per_s']:.1f}", f"{g['lookup_tokens_per_s']:.1f}",
                      f"{g['speedup']:.2f}x", f"{g['hf_speedup']:.2f}x", f"{g['lookup_vs_hf_lookup']:.2f}x",
                      f"{published:.2f}x")  # fmt: skip
    Console(width=150).print(table)
    print(
        f"token-identical outputs: {'yes' if result['mismatches'] == 0 else 'NO, ' + str(result['mismatches'])}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-group", type=int, default=3)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--max-ngram", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args)
    show(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
