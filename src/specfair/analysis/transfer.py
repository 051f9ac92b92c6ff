"""Cross-dataset transfer: drafts fine-tuned on one dataset, evaluated on every dataset.

The matrix has one row per draft (`base`, then each fine-tuned draft by the dataset it was trained on) and one
column per evaluation dataset. Its cells are read from the report's paired comparisons, so every number has
the same prompt-level bootstrap CI as the Q1 tables. A cell whose run failed or never ran is None: the table
prints "missing" and the heatmap greys it out, so a gap is never mistaken for a zero.

Computation only: the sentences are in `sentences`, the tables in `tables`, the heatmap in `plots`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from specfair.analysis import sentences, stats
from specfair.analysis.comparisons import RESAMPLES, Run

BASE = "base"


def row_label(comparison: dict) -> str:
    """The matrix row of a comparison's fine-tuned draft: "agnews/kd" for "finetuned:agnews/kd"."""
    return comparison["finetuned"].removeprefix("finetuned:")


def planned_cells(
    expected: Iterable[tuple[str, str]], failed: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """(row, dataset) cells an experiment planned or a failed run intended, with draft labels as matrix rows."""
    return [(row.removeprefix("finetuned:"), dataset) for row, dataset in [*expected, *failed]]


def applies(comparisons: list[dict], cells: Iterable[tuple[str, str]] = ()) -> bool:
    """A matrix says something once some draft was (or was meant to be) evaluated outside its own dataset."""
    return any(c.get("trained_on") and c["trained_on"] != c["dataset"] for c in comparisons) or any(
        row.split("/")[0] not in (BASE, dataset) for row, dataset in cells
    )


def unpaired_base_alpha(runs: list[Run], comparisons: list[dict]) -> dict[str, dict]:
    """dataset -> {value, low, high, n} of overall alpha for base runs no comparison holds (one per dataset).

    A paired dataset's base alpha is in its comparison already; only the others are bootstrapped here.
    """
    paired = {c["dataset"] for c in comparisons}
    base_alpha = {}
    for r in runs:
        if r.label == BASE and r.dataset not in paired and r.dataset not in base_alpha:
            base_alpha[r.dataset] = stats.bootstrap_ci(r.records, "alpha", resamples=RESAMPLES, seed=0)
    return base_alpha


def build(comparisons: list[dict], base_alpha: dict[str, dict], missing: list[tuple[str, str]]) -> dict:
    """The matrix of overall alpha and of its change against the base draft, with per-category changes.

    base_alpha: dataset -> {value, low, high} of the base draft where no comparison holds it (unpaired base runs).
    missing: (row, column) cells that were planned but have no completed run (failed runs).
    """
    rows, columns, trained_on = [BASE], [], {BASE: None}
    for c in comparisons:
        rows += [c["base"]] if c["base"] not in rows else []  # the draft it started from: base, generalist
        trained_on.setdefault(c["base"], None)
        rows += [row_label(c)] if row_label(c) not in rows else []
        columns += [c["dataset"]] if c["dataset"] not in columns else []
        trained_on[row_label(c)] = c.get("trained_on")
    for row, column in missing:
        rows += [row] if row not in rows else []
        columns += [column] if column not in columns else []
        trained_on.setdefault(row, row.split("/")[0] if row != BASE else None)
    columns += [d for d in base_alpha if d not in columns]
    alpha = {r: {d: None for d in columns} for r in rows}
    delta = {r: {d: None for d in columns} for r in rows}
    categories: dict[str, dict[str, dict]] = {d: {} for d in columns}
    for d, value in base_alpha.items():
        alpha[BASE][d] = _cell(value)
    for c in comparisons:
        r, d = row_label(c), c["dataset"]
        alpha[r][d] = _cell(c["overall"]["finetuned"]["alpha"])
        delta[r][d] = _cell(c["overall"]["gain"]["alpha"])
        alpha[c["base"]][d] = _cell(c["overall"]["base"]["alpha"])
        for category, entry in c["categories"].items():
            categories[d].setdefault(category, {})[r] = _cell(entry["gain"]["alpha"])
    matrix = {
        "rows": rows,
        "columns": columns,
        "trained_on": trained_on,
        "alpha": alpha,
        "delta": delta,
        "categories": categories,
        "missing": [[r, d] for r in rows[1:] for d in columns if alpha[r][d] is None],
    }
    matrix["sentences"] = sentences.transfer_sentences(matrix)
    return matrix


def _cell(ci: Mapping) -> dict:
    return {"value": ci["value"], "low": ci["low"], "high": ci["high"]}
