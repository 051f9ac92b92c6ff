"""How much faster is a replay evaluation than a decode evaluation of the same prompts, and is it exact?

One process, one run, the embedded pair, greedy, bundled AG News eval prompts (an equal number per topic, cut to
32 tokens). Three evaluations of the same prompts:

  decode       what `evaluate.py` (mode=decode) does per prompt: the target alone, then the speculative engine
  replay cold  `mode=replay` with an empty cache: weights fingerprint, batched target generation, the draft pass
  replay warm  a second draft (another truncation depth) on the same prompts: cached continuations, draft only

Every replayed counter must equal the decoded one on every prompt (a difference exits non-zero). Prints
prompts/s and the ratios against decode; the goals are >= 10x cold and >= 30x per added draft.

Run:  make bench-eval
      HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_eval.py --per-topic 16 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from specfair import ROOT
from specfair.decoding.continuations import ContinuationCache, continuations, weights_fingerprint
from specfair.decoding.engine import autoregressive_generate, eos_set, speculative_generate
from specfair.decoding.replay import REPLAYED_COUNTERS as COUNTERS
from specfair.decoding.replay import replay_greedy
from specfair.models import EMBEDDED, load_model, load_tokenizer, truncated_draft


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-topic", type=int, default=16, help="prompts per AG News topic (4 topics)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--draft-layers", type=int, default=4)
    parser.add_argument("--second-draft-layers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    if min(args.per_topic, args.max_new_tokens, args.gamma, args.batch_size) < 1:
        parser.error("--per-topic, --max-new-tokens, --gamma and --batch-size must be >= 1")
    return args


def agnews_prompts(tokenizer, per_topic: int) -> list[list[int]]:
    rows = [json.loads(line) for line in (ROOT / "data/samples/agnews.jsonl").open()]
    by_topic: dict[str, list[str]] = {}
    for r in rows:
        if r["split"] == "eval":
            by_topic.setdefault(r["label_name"], []).append(r["text"])
    texts = [t for topic in sorted(by_topic) for t in by_topic[topic][:per_topic]]
    return [tokenizer(t, add_special_tokens=False)["input_ids"][:32] for t in texts]


def decode_all(target, draft, prompts, args, eos_id):
    """evaluate.py's decode loop: target alone and engine per prompt; returns counters and seconds."""
    start, results = time.perf_counter(), []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        alone = autoregressive_generate(target, ids, max_new_tokens=args.max_new_tokens, eos_token_id=eos_id)
        out, stats = speculative_generate(target, draft, ids, gamma=args.gamma,
                                          max_new_tokens=args.max_new_tokens, eos_token_id=eos_id)  # fmt: skip
        if out[0].tolist() != alone[0].tolist():
            sys.exit("engine output differs from the target's greedy output: not lossless")
        results.append(stats.as_dict())
    return results, time.perf_counter() - start


def replay_all(target, draft, prompts, args, eos, cache_dir, vocab):
    start = time.perf_counter()
    cache = ContinuationCache(
        cache_dir, {"target": weights_fingerprint(target), "max_new_tokens": args.max_new_tokens}
    )
    conts, made = continuations(target, prompts, range(len(prompts)), cache, batch_size=args.batch_size, seed=0,
                                max_new_tokens=args.max_new_tokens, vocab=vocab, eos=eos)  # fmt: skip
    ys = [c.tokens for c in conts]
    results = []
    for i in range(0, len(prompts), args.batch_size):
        results += replay_greedy(draft, prompts[i : i + args.batch_size], ys[i : i + args.batch_size],
                                 gamma=args.gamma, max_new_tokens=args.max_new_tokens, vocab=vocab, eos=eos)  # fmt: skip
    return results, time.perf_counter() - start, made


def check(name, replayed, decoded) -> int:
    bad = sum(
        {k: r[k] for k in COUNTERS} != {k: d[k] for k in COUNTERS}
        for r, d in zip(replayed, decoded, strict=True)
    )
    if bad:
        Console().print(
            f"[red]{name}: {bad} of {len(decoded)} prompts' replayed counters differ from decoding"
        )
    return bad


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    target = load_model(EMBEDDED)
    tokenizer = load_tokenizer(EMBEDDED)
    drafts = {n: truncated_draft(target, n) for n in (args.draft_layers, args.second_draft_layers)}
    prompts = agnews_prompts(tokenizer, args.per_topic)
    eos = eos_set(tokenizer.eos_token_id)
    vocab = target.get_output_embeddings().weight.shape[0]
    first, second = drafts[args.draft_layers], drafts[args.second_draft_layers]
    with torch.inference_mode():
        speculative_generate(
            target, first, torch.tensor([prompts[0]]), gamma=args.gamma, max_new_tokens=4
        )  # warm-up
    with tempfile.TemporaryDirectory() as cache_dir:
        decoded, t_decode = decode_all(target, first, prompts, args, tokenizer.eos_token_id)
        replayed, t_cold, made = replay_all(target, first, prompts, args, eos, cache_dir, vocab)
        cold_bad = check("replay cold", replayed, decoded)
        decoded2, t_decode2 = decode_all(target, second, prompts, args, tokenizer.eos_token_id)
        replayed2, t_warm, made2 = replay_all(target, second, prompts, args, eos, cache_dir, vocab)
        warm_bad = check("replay warm", replayed2, decoded2)
    if (made, made2) != (len(prompts), 0):
        sys.exit(f"the cache generated {made} then {made2} continuations, expected {len(prompts)} then 0")
    bad = cold_bad + warm_bad
    n = len(prompts)
    rows = [
        ("decode", f"{args.draft_layers}-layer draft", t_decode, None),
        ("replay cold", f"{args.draft_layers}-layer draft", t_cold, t_decode / t_cold),
        ("decode", f"{args.second_draft_layers}-layer draft", t_decode2, None),
        (
            "replay warm",
            f"{args.second_draft_layers}-layer draft (cached target)",
            t_warm,
            t_decode2 / t_warm,
        ),
    ]
    table = Table(title=f"{n} AG News prompts x {args.max_new_tokens} tokens, greedy, gamma={args.gamma}, "
                  f"{torch.get_num_threads()} threads")  # fmt: skip
    for column in ("evaluation", "draft", "seconds", "prompts/s", "vs decode"):
        table.add_column(column, justify="left" if column in ("evaluation", "draft") else "right")
    for name, draft_name, seconds, ratio in rows:
        table.add_row(
            name, draft_name, f"{seconds:.1f}", f"{n / seconds:.2f}", f"{ratio:.1f}x" if ratio else ""
        )
    Console().print(table)
    Console().print(f"replayed counters equal decoding on {n - cold_bad}/{n} and {n - warm_bad}/{n} prompts")
    if args.json:
        args.json.write_text(json.dumps({"prompts": n, "rows": rows, "mismatches": bad}, indent=2) + "\n")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
