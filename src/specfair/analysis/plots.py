"""Every PNG of the report (matplotlib, Agg backend: no display needed), drawn from the computed results.

Per comparison: alpha and speedup bars per category with 95% CIs, acceptance by draft position, and gain
against training share (Q2). Across imbalance ratios: gain by data rank against rho. Transfer: a heatmap of
alpha and its change per draft × dataset. matplotlib is imported on first use, not with the module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from specfair.analysis.format import num
from specfair.analysis.sentences import estimate
from specfair.records import category_value

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Rendered in memory and written atomically: a killed report never leaves half a PNG."""
    import io

    from specfair.records import write_atomic

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format=Path(path).suffix.lstrip(".") or "png")
    _pyplot().close(fig)
    write_atomic(path, buffer.getvalue())
    return Path(path)


def _nan(x: float | None) -> float:
    return np.nan if x is None else x


# --- one comparison ---------------------------------------------------------------------------------------


def _bars(result: Mapping, metric: str, path: Path) -> Path:
    """Base and fine-tuned side by side per category; error bars are the 95% bootstrap CI."""
    plt = _pyplot()
    cats = list(result["categories"])
    x = np.arange(len(cats))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(cats) + 2), 3.8))
    for offset, side in ((-0.2, "base"), (0.2, "finetuned")):
        vals = [result["categories"][c][side][metric] for c in cats]
        v = np.array([_nan(d["value"]) for d in vals])
        lo = np.array([d["value"] - d["low"] if d["low"] is not None else 0 for d in vals])
        hi = np.array([d["high"] - d["value"] if d["high"] is not None else 0 for d in vals])
        ax.bar(x + offset, v, 0.4, yerr=[lo, hi], capsize=3, label=result[side])
    ax.set_xticks(x, cats, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{result['dataset']}: {metric} per category (95% bootstrap CI)", fontsize=10)
    ax.legend()
    return _save(fig, path)


def _position_curves(result: Mapping, path: Path) -> Path:
    """P(first i drafts accepted) against i, per category; dashed base, solid fine-tuned."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    length = 0
    for c, entry in result["categories"].items():
        for side, style in (("base", "--"), ("finetuned", "-")):
            curve = entry["position_acceptance"][side]
            length = len(curve)
            ax.plot(range(1, length + 1), [_nan(v) for v in curve], style, marker="o", label=f"{c} ({side})")
    ax.set_xticks(range(1, length + 1))
    ax.set_xlabel("draft position i")
    ax.set_ylabel("P(first i drafts accepted)")
    ax.set_title(f"{result['dataset']}: acceptance by draft position")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _gain_vs_share(result: Mapping, path: Path) -> Path:
    """Q2 at a glance: each category's alpha gain against its share of training tokens, with a linear fit."""
    plt = _pyplot()
    cats = list(result["categories"])
    shares = [result["q2"]["shares"][c]["tokens"] for c in cats]
    gains = [result["categories"][c]["gain"]["alpha"]["value"] for c in cats]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(shares, gains)
    for s, g, c in zip(shares, gains, cats, strict=True):
        ax.annotate(c, (s, g), fontsize=8)
    if len(set(shares)) > 1:
        slope, intercept = np.polyfit(shares, gains, 1)
        xs = np.linspace(min(shares), max(shares), 10)
        ax.plot(xs, slope * xs + intercept, "--", label=f"fit: slope {slope:.2f}")
        ax.legend()
    ax.set_xlabel("share of training tokens")
    ax.set_ylabel("alpha gain (fine-tuned − base)")
    ax.set_title(f"{result['dataset']}: gain vs training share")
    return _save(fig, path)


def comparison_plots(result: Mapping, out_dir: Path, prefix: str | None = None) -> list[Path]:
    """`<prefix>_{alpha,speedup}_bars.png`, `_position_acceptance.png` and (with Q2 data) `_gain_vs_share.png`.

    Speedup bars only where both runs were timed (not baseline=false, not mode=replay).
    """
    prefix = prefix or result["dataset"]
    files = []
    for metric in ("alpha", "speedup"):
        overall = result["overall"]
        if overall["base"][metric]["value"] is None or overall["finetuned"][metric]["value"] is None:
            continue
        files.append(_bars(result, metric, out_dir / f"{prefix}_{metric}_bars.png"))
    files.append(_position_curves(result, out_dir / f"{prefix}_position_acceptance.png"))
    if result.get("q2"):
        files.append(_gain_vs_share(result, out_dir / f"{prefix}_gain_vs_share.png"))
    return files


# --- Q2 across imbalance ratios ------------------------------------------------------------------------------


def imbalance_plot(result: Mapping, out_dir: Path) -> Path:
    """Per arm, mean alpha gain per data rank (head → tail) against rho; bars span the runs; the other
    samplers hollow, one shape each. The panel title carries δ pooled over ratios (natural sampling) with its CI."""
    plt = _pyplot()
    arms = list(dict.fromkeys(c["arm"] for c in result["conditions"]))
    fig, axes = plt.subplots(2, len(arms), figsize=(6.4 * len(arms), 8.4), squeeze=False)
    for ax, low, arm in zip(axes[0], axes[1], arms, strict=True):
        conditions = [c for c in result["conditions"] if c["arm"] == arm]
        pooled = next(
            (p for p in result.get("pooled", []) if (p["arm"], p["sampling"]) == (arm, "natural")), None
        )
        _imbalance_panel(plt, ax, conditions)
        delta = f"\nnatural, all ratios: {estimate(pooled['delta'])}" if pooled else ""
        ax.set_title(f"{result['dataset']}, {arm}: alpha gain by data rank{delta}", fontsize=9)
        runs = [r for r in result["runs"] if r["arm"] == arm and r["sampling"] == "natural"]
        _share_panel(plt, low, runs, len(conditions[0]["gain_by_rank"]))
        low.set_title(f"{result['dataset']}, {arm}, natural sampling: each run's categories", fontsize=9)
    return _save(fig, out_dir / f"{result['dataset']}_gain_vs_ratio.png")


def _share_panel(plt, ax, runs: list[Mapping], k: int) -> None:
    """Alpha gain against the category's share of the training data, one point per run × category, coloured
    by its data rank (head → tail); large markers: the mean per rank and ratio."""
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(k, 1)))
    names = {0: "head (most data)", k - 1: "tail (least data)"}
    for rank in range(k):
        cells = [
            (r["exposure"][c], r["gain"][c], r["ratio"])
            for r in runs
            for c in r["rank"]
            if r["rank"][c] == rank
        ]
        cells = [t for t in cells if t[0] > 0 and t[1] is not None]
        if not cells:
            continue
        share, gain, ratio = (np.array(v, dtype=float) for v in zip(*cells, strict=True))
        ax.scatter(
            share, gain, s=10, alpha=0.45, color=colors[rank], label=names.get(rank, f"rank {rank + 1}")
        )
        for rho in np.unique(ratio):
            on = ratio == rho
            ax.plot(share[on].mean(), gain[on].mean(), marker="D", ms=8, mec="black", color=colors[rank])
    ax.set_xscale("log")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(
        f"category's share of the training data ({runs[0]['exposure_basis'] if runs else 'tokens'})"
    )
    ax.set_ylabel("alpha gain (diamonds: mean per rank and rho)")
    ax.legend(fontsize=8)


SAMPLER_MARKERS = ("s", "^", "v", "P", "X")  # hollow, one per fair sampler beside the natural lines


def _imbalance_panel(plt, ax, conditions: list[Mapping]) -> None:
    natural = [c for c in conditions if c["sampling"] == "natural"]
    others = [c for c in conditions if c["sampling"] != "natural"]
    names_in_order = dict.fromkeys(c["sampling"] for c in others)
    samplers = {  # each its own hollow marker, placed right of its ratio
        s: (SAMPLER_MARKERS[j % len(SAMPLER_MARKERS)], 1.25 ** (j + 1)) for j, s in enumerate(names_in_order)
    }
    k = len(conditions[0]["gain_by_rank"])
    names = {0: "head (most data)", k - 1: "tail (least data)"}
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(k, 1)))
    for rank in range(k):
        if natural:
            xs = np.array([c["ratio"] for c in natural]) * (1 + 0.04 * (rank - (k - 1) / 2))
            points = [c["gain_by_rank"][rank] for c in natural]
            mean = np.array([p["mean"] for p in points])
            err = [mean - [p["min"] for p in points], np.array([p["max"] for p in points]) - mean]
            label = names.get(rank, f"rank {rank + 1}")
            ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, color=colors[rank], label=label)
        for c in others:
            marker, offset = samplers[c["sampling"]]
            mean = c["gain_by_rank"][rank]["mean"]
            ax.plot(c["ratio"] * offset, mean, marker=marker, mfc="none", color=colors[rank], ls="none")
    for sampling, (marker, _) in samplers.items():
        ax.plot([], [], marker=marker, mfc="none", color="grey", ls="none", label=f"{sampling} sampler")
    ax.set_xscale("log")
    ax.set_xlabel("imbalance ratio rho = n_head / n_tail (training data)")
    ax.set_ylabel("alpha gain (mean over rotations, bars: range)")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.35 * (high - low))  # headroom: the legend sits above the data, never on it
    ax.legend(fontsize=7, ncol=2, loc="upper center")


# --- transfer matrix ---------------------------------------------------------------------------------------


def _heatmap_panel(fig, ax, m: Mapping, table: Mapping, labels: list[str], title: str, signed: bool) -> None:
    """One panel: colour by value (diverging around 0 when `signed`), each cell labelled value [CI]."""
    plt = _pyplot()
    data = np.array(
        [[_nan((table[r][d] or {}).get("value")) for d in m["columns"]] for r in labels], dtype=float
    )
    finite = data[np.isfinite(data)]
    limit = float(np.abs(finite).max()) if finite.size else 1.0
    vmin, vmax = (-limit, limit) if signed else (0.0, max(limit, 1e-6))
    colormap = plt.get_cmap("RdBu" if signed else "viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto")
    for i, r in enumerate(labels):
        for j, d in enumerate(m["columns"]):
            cell = table[r][d]
            text = "missing" if cell is None or cell["value"] is None else num(cell["value"], 2, signed)
            if cell is not None and cell["low"] is not None:
                text += f"\n[{num(cell['low'], 2, signed)}, {num(cell['high'], 2, signed)}]"
            shade = image.cmap(image.norm(data[i, j])) if np.isfinite(data[i, j]) else (1, 1, 1, 1)
            dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(m["columns"])), m["columns"], rotation=20, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("evaluated on")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)


def transfer_heatmap(m: Mapping, out_dir: Path) -> Path:
    """`transfer_heatmap.png`: alpha per draft × dataset, and its change against base; missing cells grey."""
    plt = _pyplot()
    rows = m["rows"]
    fig, axes = plt.subplots(
        1, 2, figsize=(2.2 + 1.5 * len(m["columns"]) * 2, 1.5 + 0.6 * len(rows)), squeeze=False
    )
    _heatmap_panel(fig, axes[0, 0], m, m["alpha"], rows, "alpha", signed=False)
    _heatmap_panel(fig, axes[0, 1], m, m["delta"], rows[1:], "change vs base", signed=True)
    axes[0, 0].set_ylabel("draft (fine-tuned on)")
    fig.suptitle("Transfer: overall alpha by draft and evaluation dataset (95% bootstrap CI)")
    return _save(fig, out_dir / "transfer_heatmap.png")


# --- training ----------------------------------------------------------------------------------------------


def training_curve(summary: Mapping, path: Path) -> Path | None:
    """Validation expected alpha and greedy agreement against optimizer steps, overall and per category, from
    a train_summary.json's history (one point per validation); None with fewer than two validations."""
    history = summary.get("history") or []
    if len(history) < 2:
        return None
    plt = _pyplot()
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, metric in zip(axes, ("expected_alpha", "greedy_agreement"), strict=True):
        for c in summary["data"]["categories"]:
            ax.plot(steps, [_nan(category_value(h, c, metric)) for h in history], marker=".", lw=1, label=c)
        ax.plot(steps, [_nan(h.get(metric)) for h in history], color="black", lw=2.2, label="overall")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{summary['dataset']} · {summary['train'].get('name')} from {summary.get('start', 'base')}: "
        "validation on the target's own tokens",
        fontsize=10,
    )
    return _save(fig, Path(path))


# --- Spec-Bench leaderboard --------------------------------------------------------------------------------


def leaderboard_plot(result: Mapping, path: Path) -> Path:
    """Grouped bars per task group, one bar per drafter, error bars the 95% bootstrap CI: speedup where the
    rows were decoded (τ beside it), τ alone for replayed rows."""
    plt = _pyplot()
    groups, rows = [*result["groups"], "overall"], result["rows"]
    metrics = [m for m in ("speedup", "block_efficiency") if any(m in r["overall"] for r in rows)]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 1.3 * len(groups) + 2), 3.4 * len(metrics)))
    axes = np.atleast_1d(axes)
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(groups))
    for ax, metric in zip(axes, metrics, strict=True):
        for i, row in enumerate(rows):
            cells = [
                (row["overall"] if g == "overall" else row["groups"].get(g, {})).get(metric) for g in groups
            ]
            v = np.array([_nan(c["value"]) if c else np.nan for c in cells])
            lo = np.array([c["value"] - c["low"] if c and c.get("low") is not None else 0 for c in cells])
            hi = np.array([c["high"] - c["value"] if c and c.get("high") is not None else 0 for c in cells])
            ax.bar(
                x + (i - (len(rows) - 1) / 2) * width, v, width, yerr=[lo, hi], capsize=2, label=row["label"]
            )
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, groups, rotation=15, ha="right")
        ax.set_ylabel("speedup (×)" if metric == "speedup" else "τ (tokens per target call)")
        ax.legend(fontsize=8, ncol=min(4, len(rows)))
    axes[0].set_title("Spec-Bench task groups (95% bootstrap CI over prompts)", fontsize=10)
    return _save(fig, path)
