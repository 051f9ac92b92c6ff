"""Rebuild data/samples/*.jsonl from ../shared/data (real rows; see data/samples/PROVENANCE.md).

Deterministic: a seeded shuffle per category, then `eval` rows and disjoint `train` rows.
Run: python scripts/make_samples.py [SHARED_DATA_DIR]
"""

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

SHARED = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "../shared/data")
OUT = Path(__file__).resolve().parents[1] / "data" / "samples"

# name: (eval file, train file or None, eval rows per category, train rows per category)
PLAN = {
    "agnews": ("agnews_test.jsonl", "agnews_train_partial.jsonl", 100, 200),
    "imdb": ("imdb_sample.jsonl", None, 100, 200),
    "emotion": ("emotion_sample.jsonl", None, 40, 160),
    "sst2": ("sst2_sample.jsonl", None, 100, 200),
}


def by_label(path):
    groups = defaultdict(list)
    seen = set()
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        if row["text"] in seen:  # drop duplicate texts so eval and train cannot overlap
            continue
        seen.add(row["text"])
        groups[row["label"]].append(row)
    return groups


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (eval_file, train_file, n_eval, n_train) in PLAN.items():
        eval_groups = by_label(SHARED / eval_file)
        train_groups = by_label(SHARED / train_file) if train_file else eval_groups
        out = []
        for label in sorted(eval_groups):
            rng = random.Random(f"sample:{name}:{label}")
            pool = list(eval_groups[label])
            rng.shuffle(pool)
            evals = pool[:n_eval]
            eval_texts = {r["text"] for r in evals}
            rest = list(train_groups[label]) if train_file else pool[n_eval:]
            if train_file:
                rng.shuffle(rest)
            trains = [r for r in rest if r["text"] not in eval_texts][:n_train]
            out += [{**r, "split": "eval"} for r in evals] + [{**r, "split": "train"} for r in trains]
        if name == "sst2":  # the hub's field name, so one config serves both sources
            out = [{"sentence": r.pop("text"), **r} for r in out]
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in out:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(name, len(out), "rows")


def cnn_dm(n_eval=16, n_train=40):
    """Test rows for eval, validation rows for train; HF schema only (id, article, highlights), so the
    categories come from the same id -> URL -> section join as on the hub, via the URL lines saved beside."""
    from omegaconf import OmegaConf

    from specfair.data import cnndm

    groups = OmegaConf.to_container(
        OmegaConf.load(OUT.parents[1] / "conf/dataset/cnn_dm.yaml").section_groups
    )
    urls = {}
    for name in ("cnndm_url_list_all_test.txt", "cnndm_url_list_all_val.txt"):
        lines = (SHARED / "raw" / name).read_text(encoding="utf-8").split()
        urls |= {cnndm.url_hash(u): u for u in lines}
    with open(SHARED / "cnndm_sample.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    by = defaultdict(list)
    for r in rows:
        if r["id"] in urls:
            by[(r["split"], cnndm.group_of(cnndm.section_of(urls[r["id"]]), groups))].append(r)
    out = []
    for (split, group), members in sorted(by.items()):
        random.Random(f"sample:cnn_dm:{split}:{group}").shuffle(members)
        role, n = ("eval", n_eval) if split == "test" else ("train", n_train)
        out += [
            {"id": r["id"], "article": r["article"], "highlights": r["highlights"], "split": role}
            for r in members[:n]
        ]
    with open(OUT / "cnn_dm.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    with open(OUT / "cnn_dm_urls.txt", "w", encoding="utf-8") as f:
        f.writelines(urls[r["id"]] + "\n" for r in out)
    print("cnn_dm", len(out), "rows")


def spec_bench(n=3):
    """Spec-Bench questions (evaluation only: no split field), `n` per category by a seeded draw, copied
    unchanged and kept in the file's order (hemingkx/Spec-Bench data/spec_bench/question.jsonl, Apache-2.0)."""
    with open(SHARED / "spec_bench_question.jsonl", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    by = defaultdict(list)
    for index, line in enumerate(lines):
        by[json.loads(line)["category"]].append(index)
    keep = set()
    for category, indices in by.items():
        keep |= set(random.Random(f"sample:spec_bench:{category}").sample(indices, n))
    with open(OUT / "spec_bench.jsonl", "w", encoding="utf-8") as f:
        f.writelines(lines[i] if lines[i].endswith("\n") else lines[i] + "\n" for i in sorted(keep))
    print("spec_bench", len(keep), "rows")


if __name__ == "__main__":
    main()
    cnn_dm()
    spec_bench()
