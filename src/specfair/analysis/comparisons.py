"""Q1 and Q2 for one pair of runs: the base draft and a fine-tuned draft evaluated on the same prompts.

- Pairing: a fine-tuned run pairs with a base run of the same dataset, prompt set, model pair, decoding
  settings and seed (`PAIRING_FIELDS`). How a run was made (`mode=decode` or `mode=replay`) is not a pairing
  field: replay counts the same acceptance exactly, so a replay run pairs with a decode run on the acceptance
  metrics, and speedup is compared only where both runs were timed.
- Q1 (`compare`): per category and overall, both drafts with bootstrap CIs, the paired gain, a Wilcoxon test
  per category (Holm-adjusted), Kruskal-Wallis across categories, and the fairness of alpha before and after.
- Q2 (`q2`): the fine-tuned draft's training share per category (from `train_summary.json` beside it) against
  its alpha gain: Spearman correlation and each category's share of the total gain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specfair.analysis import sentences, stats
from specfair.decoding.spec import pairing_view
from specfair.errors import SpecfairError
from specfair.records import (
    METRICS,
    RunSummary,
    SampleRecord,
    category_value,
    find_train_summary,
    load_samples,
    load_summary,
)

PAIRING_FIELDS = ("prompt_set", "pair", "spec", "seed")
RESAMPLES = 2000  # bootstrap resamples per interval


@dataclass
class Run:
    """One finished evaluation run folder: its summary, its per-prompt records and its draft's label."""

    dir: str
    summary: RunSummary
    records: list[SampleRecord]
    label: str

    @property
    def dataset(self) -> str:
        return self.summary["dataset"]["name"]


def load_run(run: str | Path) -> Run:
    """A run folder's `summary.json` and `samples.jsonl` as typed records.

    Raises SpecfairError naming the file when `samples.jsonl` is empty, holds another number of prompts than
    the summary counts (cut short, or from another run), or when the summary has no dataset name.
    """
    summary = load_summary(run)
    records = load_samples(run)
    folder = Path(run)
    folder = folder if folder.is_dir() else folder.parent
    if not isinstance(summary.dataset.get("name"), str):
        name = summary.dataset.get("name")
        raise SpecfairError(f"{folder / 'summary.json'}: dataset.name: expected a string, got {name!r}")
    samples = folder / "samples.jsonl"
    counted = summary.dataset.get("prompts", summary.overall.get("prompts"))
    if not records:
        raise SpecfairError(f"{samples}: empty, but summary.json is a finished run (a copy cut short?)")
    if isinstance(counted, int) and not isinstance(counted, bool) and counted != len(records):
        raise SpecfairError(
            f"{samples}: {len(records)} records, but summary.json counts {counted} prompts (a file cut short, "
            "or from another run?)"
        )
    return Run(str(run), summary, records, draft_label(summary))


def draft_label(summary: Mapping) -> str:
    """The row name in tables and the matrix: `base`, `generalist`, `control/seed1`, or
    `finetuned:<trained on>/<train name>[/<variant>][@<start>][/seed<n>]` (start and seed where not base, 0)."""
    draft = summary["draft"]
    seed = f"/seed{draft['seed']}" if draft.get("seed") else ""
    if draft.get("name") == "finetuned" and draft.get("trained_on"):
        variant = f"/{draft['variant']}" if draft.get("variant") else ""
        start = f"@{draft['start']}" if draft.get("start", "base") != "base" else ""
        return f"finetuned:{draft['trained_on']}/{draft.get('train_name', 'kd')}{variant}{start}{seed}"
    if draft.get("name") == "generalist" and draft.get("recipe", "generalist") != "generalist":
        return f"{draft['recipe']}{seed}"
    return str(draft.get("name", "draft"))


def reference_label(summary: Mapping) -> str | None:
    """The label of the draft a run's draft started from: what its gain is measured against (None: base)."""
    draft = summary["draft"]
    if draft.get("name") == "finetuned":
        return str(draft.get("start") or "base")
    if draft.get("name") == "generalist":
        return "base" if draft.get("recipe", "generalist") == "generalist" else "generalist"
    return None if draft.get("name") == "base" else "base"


def _pairing_value(summary: Mapping, field: str):
    value = summary.get(field)
    if field == "spec" and isinstance(value, Mapping):
        return pairing_view(value)  # an unset option (None) equals one an older run did not record
    return value


def pairing_mismatch(a: Mapping, b: Mapping) -> str | None:
    """The first of `PAIRING_FIELDS` in which two summaries differ, or None when they pair prompt by prompt."""
    for field in PAIRING_FIELDS:
        if _pairing_value(a, field) != _pairing_value(b, field):
            return field
    return None


def holds_expectations_only(summary: Mapping) -> bool:
    """A replay at temperature > 0 reports expected_alpha along target samples, not sampled counters."""
    return summary.get("mode") == "replay" and (summary.get("spec") or {}).get("temperature", 0) > 0


def pair_runs(runs: list[Run]) -> tuple[list[tuple[Run, Run]], list[str]]:
    """(base, fine-tuned) pairs, each fine-tuned run with the first base run it matches; and why others did not.

    A base run may serve several fine-tuned runs (one sweep: one base, many drafts).
    """
    pairs, unpaired, used = [], [], set()
    expectation_only = [r for r in runs if holds_expectations_only(r.summary)]
    unpaired += [
        f"{r.dir} ({r.label}): a sampled replay holds expected_alpha only, no block counters to pair"
        for r in expectation_only
    ]
    runs = [r for r in runs if not holds_expectations_only(r.summary)]
    for tuned in [r for r in runs if reference_label(r.summary) is not None]:
        start = reference_label(tuned.summary)
        bases = [b for b in runs if b.label == start and b.dataset == tuned.dataset]
        matching = [b for b in bases if pairing_mismatch(b.summary, tuned.summary) is None]
        if not matching:
            why = (
                f"differs in {pairing_mismatch(bases[0].summary, tuned.summary)!r}"
                if bases
                else f"no {start} run"
            )
            unpaired.append(f"{tuned.dir} ({tuned.label}): {why}")
            continue
        pairs.append((matching[0], tuned))
        used |= {matching[0].dir, tuned.dir}
    unpaired += [
        f"{r.dir} ({r.label}): no fine-tuned partner"
        for r in runs
        if r.dir not in used and reference_label(r.summary) is None
    ]
    return pairs, unpaired


def by_category(records: list[Mapping]) -> dict[str, list[Mapping]]:
    groups: dict[str, list[Mapping]] = {}
    for r in records:
        groups.setdefault(r["category"], []).append(r)
    return groups


def describe(records: list[Mapping]) -> dict:
    """{metric: {value, low, high, n}} for every glossary metric: ratio of sums, prompt-level bootstrap CI."""
    return {m: stats.bootstrap_ci(records, m, resamples=RESAMPLES, seed=0) for m in METRICS}


def _scope(base_records: list[Mapping], tuned_records: list[Mapping]) -> dict:
    """Both drafts described and the paired gain (fine-tuned − base) of every metric, on one set of prompts."""
    return {
        "base": describe(base_records),
        "finetuned": describe(tuned_records),
        "gain": {
            m: stats.paired_difference_ci(base_records, tuned_records, m, resamples=RESAMPLES, seed=0)
            for m in METRICS
        },
    }


def _category_entry(
    base: Run, tuned: Run, category: str, b_rec: list, t_rec: list
) -> tuple[dict, list[float]]:
    """One category's scope plus its Wilcoxon test on per-prompt alpha; also the finite per-prompt gains."""
    entry = _scope(b_rec, t_rec)
    b_pair, t_pair = stats.pair_by_id(b_rec, t_rec)
    b_alpha, t_alpha = stats.per_prompt(b_pair, "alpha"), stats.per_prompt(t_pair, "alpha")
    entry["wilcoxon_alpha"] = stats.wilcoxon_paired(b_alpha, t_alpha)
    entry["position_acceptance"] = {
        "base": base.summary["categories"][category]["position_acceptance"],
        "finetuned": tuned.summary["categories"][category]["position_acceptance"],
    }
    return entry, [float(x) for x in t_alpha - b_alpha if np.isfinite(x)]


def compare(base: Run, tuned: Run) -> dict:
    """Q1 (and Q2 where training data is known) for one pair; the dict `report.json` lists under comparisons.

    Keys: dataset, base, finetuned (labels), trained_on, runs, categories and overall (see `_scope`; categories
    add wilcoxon_alpha with p_holm and position_acceptance), kruskal_wallis_alpha_gain, fairness, q2,
    q1_sentence, q2_sentence. Raises ValueError when the runs do not pair.
    """
    mismatch = pairing_mismatch(base.summary, tuned.summary)
    if mismatch:
        raise ValueError(f"cannot pair {base.dir} with {tuned.dir}: they differ in {mismatch!r}")
    base_groups, tuned_groups = by_category(base.records), by_category(tuned.records)
    categories = list(base.summary["categories"])
    result = {
        "dataset": base.dataset,
        "base": base.label,
        "finetuned": tuned.label,
        "trained_on": tuned.summary["draft"].get("trained_on"),
        "runs": [base.dir, tuned.dir],
        "categories": {},
        "overall": _scope(base.records, tuned.records),
    }
    p_values, gains_per_prompt = {}, {}
    for c in categories:
        entry, gains_per_prompt[c] = _category_entry(
            base, tuned, c, base_groups.get(c, []), tuned_groups.get(c, [])
        )
        p_values[c] = entry["wilcoxon_alpha"]["p_value"]
        result["categories"][c] = entry
    for c, p in stats.holm(p_values).items():
        result["categories"][c]["wilcoxon_alpha"]["p_holm"] = p
    result["kruskal_wallis_alpha_gain"] = stats.kruskal_wallis(gains_per_prompt)
    gains = {c: result["categories"][c]["gain"]["alpha"]["value"] for c in categories}
    result["fairness"] = {
        side: stats.fairness({c: result["categories"][c][side]["alpha"]["value"] for c in categories})
        for side in ("base", "finetuned")
    } | {"gain": stats.fairness(gains)}
    result["q2"] = q2(tuned.summary, categories, gains)
    result["q1_sentence"], result["q2_sentence"] = (
        sentences.q1_sentence(result),
        sentences.q2_sentence(result),
    )
    return result


def q2(tuned_summary: Mapping, categories: list[str], gains: Mapping[str, float | None]) -> dict | None:
    """Training share per category (texts and tokens, fractions summing to 1) against the alpha gain.

    None when the fine-tuned draft has no `train_summary.json`, or was trained on another dataset (a transfer
    run: its shares say nothing about these categories).
    """
    train, dataset = find_train_summary(tuned_summary["draft"].get("path")), tuned_summary["dataset"]["name"]
    if train is None or train.dataset != dataset:
        return None
    counts = train.data["train_counts"]
    rows = {c: counts.get(c, {}).get("rows", 0) for c in categories}
    tokens = {c: counts.get(c, {}).get("tokens", 0) for c in categories}
    total_rows, total_tokens = sum(rows.values()) or 1, sum(tokens.values()) or 1
    shares = {c: {"texts": rows[c] / total_rows, "tokens": tokens[c] / total_tokens} for c in categories}
    x = [shares[c]["tokens"] for c in categories]
    y = [gains[c] for c in categories]
    return {
        "shares": shares,
        "spearman_tokens_vs_gain": stats.spearman_permutation(x, y, seed=0),
        "gain_shares": stats.gain_shares(gains, {c: shares[c]["tokens"] for c in categories}),
        "train_summary": train.run_dir,
        "imbalance": train.data.get("imbalance"),
        # the training run's own per-category check (teacher-forced expected alpha on held-out texts)
        "validation_gain": {
            c: category_value(train.val_after, c) - category_value(train.val_before, c)
            for c in categories
            if category_value(train.val_after, c) is not None
            and category_value(train.val_before, c) is not None
        },
        "sampling": train.train.get("sampling"),
        "seed": train.seed,
    }
