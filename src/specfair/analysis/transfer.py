"""Cross-dataset transfer: drafts fine-tuned on one dataset, evaluated on every dataset.

The matrix has one row per draft (`base`, then each fine-tuned draft by the dataset it was trained on) and one
column per evaluation dataset. Its cells are read from the report's paired comparisons, so every number has
the same prompt-level bootstrap CI as the Q1 tables. A cell whose run failed or never ran is None: the table
prints "missing" and the heatmap greys it out, so a gap is never mistaken for a zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BASE = "base"


def row_label(comparison: dict) -> str:
    return comparison["finetuned"].removeprefix("finetuned:")


def applies(comparisons: list[dict]) -> bool:
    """A matrix says something once some draft was evaluated outside the dataset it was trained on."""
    return any(c.get("trained_on") and c["trained_on"] != c["dataset"] for c in comparisons)


def build(comparisons: list[dict], base_alpha: dict[str, dict], missing: list[tuple[str, str]]) -> dict:
    """The matrix of overall alpha and of its change against the base draft, with per-category changes.

    base_alpha: dataset -> {value, low, high} of the base draft where no comparison holds it (unpaired base runs).
    missing: (row, column) cells that were planned but have no completed run (failed runs).
    """
    rows, columns, trained_on = [BASE], [], {BASE: None}
    for c in comparisons:
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
        alpha[BASE][d] = _cell(c["overall"]["base"]["alpha"])
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
    matrix["sentences"] = sentences(matrix)
    return matrix


def _cell(ci: dict) -> dict:
    return {"value": ci["value"], "low": ci["low"], "high": ci["high"]}


def _f(x, digits=3, sign=False):
    return "n/a" if x is None else (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}")


def _ci(cell: dict | None, sign=False) -> str:
    if cell is None or cell["value"] is None:
        return "missing"
    return f"{_f(cell['value'], sign=sign)} [{_f(cell['low'], sign=sign)}, {_f(cell['high'], sign=sign)}]"


def _direction(cell: dict) -> int:
    """+1 / -1 when the 95% CI lies above / below 0, else 0."""
    if cell["low"] is not None and cell["low"] > 0:
        return 1
    if cell["high"] is not None and cell["high"] < 0:
        return -1
    return 0


def sentences(m: dict) -> list[str]:
    """Plain sentences from the numbers: in-domain gains, out-of-domain changes, the categories that lose most."""
    out = []
    inside = [
        (r, d)
        for r in m["rows"][1:]
        for d in m["columns"]
        if m["trained_on"].get(r) == d and m["delta"][r][d] is not None
    ]
    if inside:
        out.append(
            "In domain, alpha changed by "
            + "; ".join(
                f"{_f(m['delta'][r][d]['value'], sign=True)} on {d} ({r} draft, 95% CI "
                f"[{_f(m['delta'][r][d]['low'], sign=True)}, {_f(m['delta'][r][d]['high'], sign=True)}])"
                for r, d in inside
            )
            + "."
        )
    outside = [
        (r, d)
        for r in m["rows"][1:]
        for d in m["columns"]
        if m["trained_on"].get(r) != d and m["delta"][r][d] is not None
    ]
    if outside:
        dirs = [_direction(m["delta"][r][d]) for r, d in outside]
        mean = float(np.mean([m["delta"][r][d]["value"] for r, d in outside]))
        out.append(
            f"Out of domain ({len(outside)} draft × dataset cells), alpha rose in {dirs.count(1)}, fell in "
            f"{dirs.count(-1)} and did not move clearly (95% CI spans 0) in {dirs.count(0)}; mean change "
            f"{_f(mean, sign=True)}."
        )
        lowest = sorted(
            (
                (cell["value"], d, category, r, cell)
                for r, d in outside
                for category, per_row in m["categories"][d].items()
                if (cell := per_row.get(r)) is not None and cell["value"] is not None
            ),
            key=lambda t: t[0],
        )[:3]
        if lowest:
            listed = "; ".join(
                f"{d}/{cat} {_ci(cell, sign=True)} with the {r} draft" for _, d, cat, r, cell in lowest
            )
            if lowest[0][0] < 0:
                out.append(f"The categories that lose most out of domain: {listed}.")
            else:
                out.append(f"No category lost alpha out of domain; the smallest gains: {listed}.")
    if m["missing"]:
        out.append(
            "Missing cells (the run failed or was not made): "
            + ", ".join(f"{r} on {d}" for r, d in m["missing"])
            + "."
        )
    return out


def markdown(m: dict) -> list[str]:
    head = "| draft \\ evaluated on | " + " | ".join(m["columns"]) + " |"
    rule = "|---" * (len(m["columns"]) + 1) + "|"
    lines = (
        ["## Transfer matrix", ""] + [f"- {s}" for s in m["sentences"]] + ["", "Overall alpha [95% CI]:", ""]
    )
    lines += [head, rule] + [
        f"| {r} | " + " | ".join(_ci(m["alpha"][r][d]) for d in m["columns"]) + " |" for r in m["rows"]
    ]
    lines += ["", "Change in alpha against the base draft [95% CI]:", "", head, rule]
    lines += [
        f"| {r} | " + " | ".join(_ci(m["delta"][r][d], sign=True) for d in m["columns"]) + " |"
        for r in m["rows"][1:]
    ]
    drafts = m["rows"][1:]
    for d in m["columns"]:
        if not m["categories"][d]:
            continue
        lines += ["", f"Per-category change on {d}:", "", "| category | " + " | ".join(drafts) + " |"]
        lines += ["|---" * (len(drafts) + 1) + "|"]
        lines += [
            f"| {cat} | " + " | ".join(_ci(per_row.get(r), sign=True) for r in drafts) + " |"
            for cat, per_row in m["categories"][d].items()
        ]
    return lines + [""]


def heatmap(m: dict, out_dir: Path) -> Path:
    """Two panels: alpha per draft × dataset, and its change against base; missing cells are grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def values(table, rows):
        return np.array(
            [[np.nan if table[r][d] is None else table[r][d]["value"] for d in m["columns"]] for r in rows],
            dtype=float,
        )

    rows, drafts = m["rows"], m["rows"][1:]
    fig, axes = plt.subplots(
        1, 2, figsize=(2.2 + 1.5 * len(m["columns"]) * 2, 1.5 + 0.6 * len(rows)), squeeze=False
    )
    panels = [
        (axes[0, 0], rows, values(m["alpha"], rows), m["alpha"], "alpha", "viridis", False),
        (axes[0, 1], drafts, values(m["delta"], drafts), m["delta"], "change vs base", "RdBu", True),
    ]
    for ax, labels, data, table, title, cmap, signed in panels:
        finite = data[np.isfinite(data)]
        limit = float(np.abs(finite).max()) if finite.size else 1.0
        vmin, vmax = (-limit, limit) if signed else (0.0, max(limit, 1e-6))
        colormap = plt.get_cmap(cmap).copy()
        colormap.set_bad("lightgrey")
        image = ax.imshow(np.ma.masked_invalid(data), cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto")
        for i, r in enumerate(labels):
            for j, d in enumerate(m["columns"]):
                cell = table[r][d]
                text = "missing" if cell is None or cell["value"] is None else _f(cell["value"], 2, signed)
                if cell is not None and cell["low"] is not None:
                    text += f"\n[{_f(cell['low'], 2, signed)}, {_f(cell['high'], 2, signed)}]"
                shade = image.cmap(image.norm(data[i, j])) if np.isfinite(data[i, j]) else (1, 1, 1, 1)
                dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(len(m["columns"])), m["columns"], rotation=20, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("evaluated on")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046)
    axes[0, 0].set_ylabel("draft (fine-tuned on)")
    fig.suptitle("Transfer: overall alpha by draft and evaluation dataset (95% bootstrap CI)")
    fig.tight_layout()
    path = out_dir / "transfer_heatmap.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
