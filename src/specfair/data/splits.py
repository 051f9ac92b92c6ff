"""Balanced evaluation prompts and disjoint training texts, imbalanced on request (the Q2 lever).

Selections are seeded shuffles per category, so the same seed gives the same prompt ids on any machine.

A dataset given as one pool (a single local file without a split field, or a hub dataset whose training and
evaluation splits are one) is cut once, per category, into a held-out part and training candidates by
`dataset.split_seed` and `dataset.held_out` alone. Neither the run's seed nor `dataset.per_category` enters
that cut: were they to, a draft trained with seed 1 (or fewer prompts) would train on prompts an evaluation
with seed 0 (or more prompts) uses. Evaluation takes the first `per_category` rows of the held-out part.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter

from omegaconf import DictConfig

from specfair.data.cnndm import fold_small
from specfair.data.rows import Row, Splits, categories_of, to_rows
from specfair.data.sources import load_pools, origin_of
from specfair.errors import SpecfairError

log = logging.getLogger(__name__)

SPLIT_SEED = 0  # dataset.split_seed where a config does not set it
HELD_OUT = 50  # dataset.held_out where a config does not set it: rows per category (emotion_full: 50 prompts)


def _shuffled(rows: list[Row], category: str, seed: int, salt: str) -> list[Row]:
    unique = list({r.id: r for r in rows if r.category == category}.values())
    random.Random(f"{seed}:{salt}:{category}").shuffle(unique)
    return unique


def select_prompts(rows: list[Row], categories: list[str], per_category: int, seed: int) -> list[Row]:
    """`per_category` distinct texts per category by a seeded shuffle; fewer (with a warning) if short."""
    if per_category < 1:
        raise SpecfairError(f"dataset.per_category={per_category}: must be >= 1")
    chosen = []
    for category in categories:
        chosen.extend(_first(_shuffled(rows, category, seed, "eval"), category, per_category))
    return chosen


def _first(rows: list[Row], category: str, per_category: int) -> list[Row]:
    """The first per_category rows; all of them, with a warning, when the category has fewer."""
    if len(rows) < per_category:
        log.warning(
            "category %r has %d rows, fewer than dataset.per_category=%d: using all of them",
            category,
            len(rows),
            per_category,
        )
    return rows[:per_category]


def imbalance_counts(categories: list[str], n_max: int, imbalance: DictConfig | dict) -> dict[str, int]:
    """Rows per category: the head gets n_max, the others fall to n_max/ratio (exponentially or in one step).

    exponential: n_k = n_max * ratio^(-k/(K-1)); step: the first ceil(K/2) get n_max, the rest n_max/ratio.
    `head` names the category (or index) ranked first; `head=rotate` ranks from categories[rotation].
    """
    ratio = float(imbalance.get("ratio", 1))
    profile = imbalance.get("profile", "exponential")
    if ratio < 1:
        raise SpecfairError(f"dataset.imbalance.ratio={ratio}: must be >= 1 (n_max / n_min)")
    if profile not in ("exponential", "step"):
        raise SpecfairError(f"dataset.imbalance.profile={profile!r}: expected exponential or step")
    k = len(categories)
    start = head_index(categories, imbalance)
    order = categories[start:] + categories[:start]
    counts = {}
    for rank, category in enumerate(order):
        if profile == "step":
            share = 1.0 if rank < (k + 1) // 2 else 1.0 / ratio
        else:
            share = ratio ** (-rank / (k - 1)) if k > 1 else 1.0
        counts[category] = int(round(n_max * share))
    if min(counts.values()) < 1:
        smallest = min(counts, key=counts.get)
        raise SpecfairError(
            f"dataset.imbalance.ratio={ratio:g} with {n_max} rows for the head leaves {smallest!r} with 0 rows; "
            "raise dataset.train_per_category or lower the ratio"
        )
    return {c: counts[c] for c in categories}


def head_index(categories: list[str], imbalance: DictConfig | dict) -> int:
    """The index of the head category: `head` as an index or a name, or `rotation` with head=rotate."""
    head = imbalance.get("head", 0)
    if head == "rotate":
        return _index(imbalance.get("rotation", 0), categories, "dataset.imbalance.rotation")
    if isinstance(head, int) or str(head).isdigit():
        return _index(head, categories, "dataset.imbalance.head")
    if head in categories:
        return categories.index(head)
    raise SpecfairError(f"dataset.imbalance.head={head!r}: expected rotate, an index or one of {categories}")


def _index(value, categories: list[str], option: str) -> int:
    """A category index, within range: an index past the last category is refused, never taken modulo (that
    would silently make another category the head)."""
    index = int(value)
    if not 0 <= index < len(categories):
        raise SpecfairError(
            f"{option}={value}: an index of the {len(categories)} categories is 0 to {len(categories) - 1} "
            f"({', '.join(f'{i} {c}' for i, c in enumerate(categories))}); or name one"
        )
    return index


def select_training(
    rows, categories, cfg: DictConfig, seed: int, count_tokens=None
) -> tuple[list[Row], dict]:
    """Training rows per the imbalance config; with a token `budget` the mix changes, not the total."""
    imbalance = cfg.get("imbalance") or {}
    head_index(categories, imbalance)  # a head past the categories is refused even where the ratio is 1
    available = {c: _shuffled(rows, c, seed, "train") for c in categories}
    n_max = cfg.get("train_per_category")
    if n_max is None and float(imbalance.get("ratio", 1)) == 1 and not imbalance.get("budget"):
        wanted = {c: len(available[c]) for c in categories}  # natural: every training row
    else:
        wanted = imbalance_counts(
            categories, int(n_max or min(len(v) for v in available.values())), imbalance
        )
    budget = imbalance.get("budget")
    chosen, counts = [], {}
    total_wanted = sum(wanted.values())
    for c in categories:
        if budget:
            allot = float(budget) * wanted[c] / total_wanted
            picked, tokens = [], 0
            for row in available[c]:
                if tokens >= allot:
                    break
                picked.append(row)
                tokens += count_tokens(row) if count_tokens else len(row.text.split())
            if tokens < allot:
                raise SpecfairError(
                    f"dataset.imbalance.budget={budget}: category {c!r} has {tokens} training tokens, needs {allot:.0f}"
                )
        else:
            if wanted[c] > len(available[c]):
                raise SpecfairError(
                    f"category {c!r} has {len(available[c])} training rows, fewer than the {wanted[c]} asked "
                    "(lower dataset.train_per_category or the imbalance ratio)"
                )
            picked = available[c][: wanted[c]]
            tokens = sum(count_tokens(r) if count_tokens else len(r.text.split()) for r in picked)
        chosen += picked
        counts[c] = {"rows": len(picked), "tokens": tokens}
    return chosen, counts


def check_disjoint(eval_rows: list[Row], train_rows: list[Row]) -> None:
    overlap = {r.id for r in eval_rows} & {r.id for r in train_rows}
    if overlap:
        raise SpecfairError(
            f"{len(overlap)} evaluation texts also appear in the training texts (e.g. {min(overlap)})"
        )


def build_splits(cfg: DictConfig, seed: int, count_tokens=None) -> Splits:
    """Balanced evaluation rows and disjoint training rows (imbalanced on request) from one dataset config."""
    eval_records, train_records, source = load_pools(cfg)
    origin = origin_of(cfg, source)
    eval_pool = to_rows(eval_records, cfg, origin, source)
    train_origin = str(cfg.get("train_path") or origin)
    # None: one pool to hold prompts out of; [] (a split file or field with no training rows, e.g. Debian's
    # evaluation-only sample): every row is an evaluation candidate, there is nothing to train on
    train_pool = to_rows(train_records, cfg, train_origin, source) if train_records else None
    if train_records is not None and not train_records:
        train_pool = []
    if cfg.get("category_from") == "url" and cfg.get("group_by", "section") != "source":
        eval_pool, train_pool = _fold_small_groups(
            eval_pool, train_pool, int(cfg.get("min_category_rows", 0))
        )
    categories = categories_of(eval_pool, cfg)
    if train_pool is None:
        eval_rows, candidates = _one_pool(eval_pool, categories, cfg)
    else:
        eval_rows = select_prompts(eval_pool, categories, int(cfg.per_category), seed)
        held_out = {r.id for r in eval_pool}
        candidates = [r for r in train_pool if r.id not in held_out]
        if len(train_pool) - len(candidates):
            log.info(
                "dropped %d training texts that also occur among the evaluation texts",
                len(train_pool) - len(candidates),
            )
    eval_rows = _evaluated_once(eval_rows)
    train_rows, counts = [], {}
    if candidates:
        train_rows, counts = select_training(candidates, categories, cfg, seed, count_tokens)
    check_disjoint(eval_rows, train_rows)
    return Splits(source, categories, eval_rows, train_rows, counts)


def _evaluated_once(rows: list[Row]) -> list[Row]:
    """A text filed under two categories and drawn as a prompt in both is evaluated once, under the first
    (`rows.to_rows` logs such texts); no shipped dataset draws one twice, so their prompts are unchanged."""
    seen: set[str] = set()
    kept = [r for r in rows if not (r.id in seen or seen.add(r.id))]
    if len(kept) < len(rows):
        log.warning(
            "%d prompt(s) drawn under two categories (the same text filed under both) are evaluated once, "
            "under the first",
            len(rows) - len(kept),
        )
    return kept


def held_out_settings(cfg: DictConfig) -> dict:
    """{split_seed, held_out} as a single-pool dataset's cut uses them, for the summaries to record: a draft
    and an evaluation agree on which rows are held out only when these agree."""
    return {
        "split_seed": int(cfg.get("split_seed", SPLIT_SEED)),
        "held_out": cfg.get("held_out", HELD_OUT),
    }


def held_out_count(held_out, rows: int) -> int:
    """Rows of a category of `rows` held out: an integer is a count, a float in (0, 1) a fraction (rounded
    up); never more than the category has."""
    if isinstance(held_out, bool) or not isinstance(held_out, int | float) or held_out <= 0:
        raise SpecfairError(
            f"dataset.held_out={held_out!r}: expected rows per category (an integer >= 1) or a fraction in (0, 1)"
        )
    if isinstance(held_out, float) and held_out < 1:
        return min(rows, math.ceil(held_out * rows))
    if held_out != int(held_out):
        raise SpecfairError(f"dataset.held_out={held_out!r}: a count must be a whole number")
    return min(rows, int(held_out))


def hold_out(
    pool: list[Row], categories: list[str], cfg: DictConfig
) -> tuple[dict[str, list[Row]], list[Row]]:
    """({category: held-out rows, in shuffle order}, training candidates) of a single pool.

    The shuffle is keyed by `dataset.split_seed` and the salt "eval" only, so split_seed 0 holds out exactly
    the rows the seed-0 evaluation drew before the cut existed (earlier seed-0 runs keep their prompts).
    """
    settings = held_out_settings(cfg)
    held = {}
    for category in categories:
        rows = _shuffled(pool, category, settings["split_seed"], "eval")
        held[category] = rows[: held_out_count(settings["held_out"], len(rows))]
    taken = {r.id for rows in held.values() for r in rows}  # a text filed under two labels stays out of both
    candidates = [
        r for r in pool if r.id not in taken
    ]  # in file order, which the training shuffle starts from
    for category in categories:
        if not any(r.category == category for r in candidates):
            log.info("category %r: every row held out for evaluation, none left for training", category)
    return held, candidates


def _one_pool(pool: list[Row], categories: list[str], cfg: DictConfig) -> tuple[list[Row], list[Row]]:
    """(evaluation rows, training candidates) of a single pool: the first per_category held-out rows.

    A per_category beyond what dataset.held_out holds out is refused: taking prompts from the training
    candidates would put rows some draft trained on into the evaluation. A category too small to fill
    per_category at all warns and uses every row, as `select_prompts` does.
    """
    per_category = int(cfg.per_category)
    if per_category < 1:
        raise SpecfairError(f"dataset.per_category={per_category}: must be >= 1")
    held, candidates = hold_out(pool, categories, cfg)
    left = Counter(r.category for r in candidates)
    eval_rows = []
    for category, rows in held.items():
        if len(rows) < per_category and left[category]:
            raise SpecfairError(
                f"dataset.per_category={per_category} exceeds the {len(rows)} rows dataset.held_out="
                f"{held_out_settings(cfg)['held_out']} holds out of category {category!r}: lower "
                "dataset.per_category, or raise dataset.held_out and retrain the drafts"
            )
        eval_rows += _first(rows, category, per_category)
    return eval_rows, candidates


def _fold_small_groups(eval_pool, train_pool, min_rows):
    every = eval_pool + (train_pool or [])
    folded = dict(zip([r.id for r in every], fold_small([r.category for r in every], min_rows), strict=True))

    def refold(rows):
        return None if rows is None else [Row(r.text, folded[r.id], r.target) for r in rows]

    return refold(eval_pool), refold(train_pool)
