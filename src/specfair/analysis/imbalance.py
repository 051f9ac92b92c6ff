"""Q2 across imbalance ratios: does a category's alpha gain follow its share of the training data?

Each fine-tuned run of the imbalance experiment trained on one mix: ratio rho = n_head / n_tail, the head
category rotated over all categories, the same token budget. Ranking every category by its planned share
(0 = head, K-1 = tail) and averaging over rotations separates "this category has more data" from "this
category is easier", which a single run cannot. The balanced-sampler runs show whether a fair sampler closes
the gap at the same data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specfair.analysis import stats
from specfair.data.rows import imbalance_counts


def run_entry(comparison: dict) -> dict | None:
    q = comparison.get("q2")
    if not q or not q.get("imbalance"):
        return None
    categories = list(comparison["categories"])
    planned = imbalance_counts(categories, 10**6, q["imbalance"])
    order = sorted(categories, key=lambda c: (-planned[c], categories.index(c)))
    return {
        "label": comparison["finetuned"],
        "ratio": float(q["imbalance"].get("ratio", 1)),
        "sampling": q.get("sampling", "natural"),
        "seed": q.get("seed"),
        "head": order[0],
        "rank": {c: order.index(c) for c in categories},
        "gain": {c: comparison["categories"][c]["gain"]["alpha"]["value"] for c in categories},
        "share": {c: q["shares"][c]["tokens"] for c in categories},
        "validation_gain": q.get("validation_gain") or {},
    }


def head_minus_rest(run: dict, key: str = "gain") -> float | None:
    """The head's gain minus the others' mean; key=validation_gain uses the training run's own check."""
    gains = run[key]
    if set(gains) != set(run["rank"]):
        return None  # not recorded for every category (an older train_summary.json)
    return gains[run["head"]] - float(np.mean([g for c, g in gains.items() if c != run["head"]]))


def analyze(comparisons: list[dict]) -> dict[str, dict]:
    """Per dataset with at least two imbalance ratios: gains by rank and ratio, head − rest, pooled Spearman."""
    out = {}
    for dataset in dict.fromkeys(c["dataset"] for c in comparisons):
        runs = [e for c in comparisons if c["dataset"] == dataset and (e := run_entry(c))]
        if len({r["ratio"] for r in runs}) < 2:
            continue
        conditions = []
        for ratio, sampling in sorted(
            {(r["ratio"], r["sampling"]) for r in runs}, key=lambda t: (t[1] != "natural", t[0])
        ):
            group = [r for r in runs if r["ratio"] == ratio and r["sampling"] == sampling]
            k = len(group[0]["gain"])
            by_rank = []
            for rank in range(k):
                g = [r["gain"][c] for r in group for c in r["gain"] if r["rank"][c] == rank]
                by_rank.append(
                    {"mean": float(np.mean(g)), "min": float(min(g)), "max": float(max(g)), "n": len(g)}
                )
            hmr = [head_minus_rest(r) for r in group]
            validation = [head_minus_rest(r, "validation_gain") for r in group]
            shares = [r["share"][c] for r in group for c in r["gain"]]
            gains = [r["gain"][c] for r in group for c in r["gain"]]
            conditions.append(
                {
                    "ratio": ratio,
                    "sampling": sampling,
                    "runs": len(group),
                    "heads": sorted({r["head"] for r in group}),
                    "gain_by_rank": by_rank,
                    "head_minus_rest": {
                        "mean": float(np.mean(hmr)),
                        "min": float(min(hmr)),
                        "max": float(max(hmr)),
                    },
                    "head_minus_rest_validation": None if None in validation else float(np.mean(validation)),
                    "spearman_share_vs_gain": stats.spearman_permutation(shares, gains, seed=0)
                    if ratio > 1  # at rho = 1 the shares are equal by design: any order among them is noise
                    else {"rho": None, "p_value": None},
                }
            )
        result = {"dataset": dataset, "runs": runs, "conditions": conditions}
        result["sentences"] = sentences(result)
        out[dataset] = result
    return out


def _f(x, sign=True):
    return "n/a" if x is None else (f"{x:+.3f}" if sign else f"{x:.3f}")


def sentences(result: dict) -> list[str]:
    natural = [c for c in result["conditions"] if c["sampling"] == "natural"]
    text = [
        f"{result['dataset']}, natural sampling: the head category's alpha gain minus the mean gain of the others was "
        + "; ".join(
            f"{_f(c['head_minus_rest']['mean'])} at rho={c['ratio']:g} (range over {c['runs']} run(s) "
            f"[{_f(c['head_minus_rest']['min'])}, {_f(c['head_minus_rest']['max'])}]"
            + (
                f", Spearman(token share, gain) {c['spearman_share_vs_gain']['rho']:+.2f}, "
                f"p = {c['spearman_share_vs_gain']['p_value']:.2f})"
                if c["spearman_share_vs_gain"]["rho"] is not None
                else ")"
            )
            for c in natural
        )
        + "."
    ]
    for c in result["conditions"]:
        if c["sampling"] == "natural":
            continue
        same = next((n for n in natural if n["ratio"] == c["ratio"]), None)
        text.append(
            f"With {c['sampling']} sampling at rho={c['ratio']:g}, head minus rest was "
            f"{_f(c['head_minus_rest']['mean'])}"
            + (f" (natural sampling: {_f(same['head_minus_rest']['mean'])})" if same else "")
            + f"; tail-category gain {_f(c['gain_by_rank'][-1]['mean'], sign=False)}"
            + (f" vs {_f(same['gain_by_rank'][-1]['mean'], sign=False)}" if same else "")
            + "."
        )
    return text


def plot(result: dict, out_dir: Path) -> Path:
    """Mean alpha gain per data rank (head → tail) against rho; bars span the runs; hollow: other samplers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    natural = [c for c in result["conditions"] if c["sampling"] == "natural"]
    others = [c for c in result["conditions"] if c["sampling"] != "natural"]
    k = len(natural[0]["gain_by_rank"]) if natural else 0
    names = {0: "head (most data)", k - 1: "tail (least data)"}
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(k, 1)))
    for rank in range(k):
        xs = np.array([c["ratio"] for c in natural]) * (1 + 0.04 * (rank - (k - 1) / 2))
        points = [c["gain_by_rank"][rank] for c in natural]
        mean = np.array([p["mean"] for p in points])
        err = [mean - [p["min"] for p in points], np.array([p["max"] for p in points]) - mean]
        ax.errorbar(
            xs,
            mean,
            yerr=err,
            marker="o",
            capsize=3,
            color=colors[rank],
            label=names.get(rank, f"rank {rank + 1}"),
        )
        for c in others:
            p = c["gain_by_rank"][rank]
            ax.plot(c["ratio"] * 1.25, p["mean"], marker="s", mfc="none", color=colors[rank], ls="none")
    if others:
        ax.plot(
            [], [], marker="s", mfc="none", color="grey", ls="none", label=f"{others[0]['sampling']} sampler"
        )
    ax.set_xscale("log")
    ax.set_xlabel("imbalance ratio rho = n_head / n_tail (training data)")
    ax.set_ylabel("alpha gain over the base draft")
    ax.set_title(
        f"{result['dataset']}: alpha gain by data rank (mean over head rotations, bars: range)", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{result['dataset']}_gain_vs_ratio.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(result: dict) -> list[str]:
    k = len(result["conditions"][0]["gain_by_rank"])
    lines = [f"## {result['dataset']}: gain by training-data rank across imbalance ratios (Q2)", ""]
    lines += [f"- {s}" for s in result["sentences"]] + [""]
    lines += [
        "| sampling | rho | runs | "
        + " | ".join("head" if i == 0 else ("tail" if i == k - 1 else f"rank {i + 1}") for i in range(k))
        + " | head − rest [range] | Spearman share vs gain (p) | head − rest, training validation |",
        "|---" * (k + 6) + "|",
    ]
    for c in result["conditions"]:
        s = c["spearman_share_vs_gain"]
        lines.append(
            f"| {c['sampling']} | {c['ratio']:g} | {c['runs']} | "
            + " | ".join(_f(g["mean"], sign=False) for g in c["gain_by_rank"])
            + f" | {_f(c['head_minus_rest']['mean'])} [{_f(c['head_minus_rest']['min'])}, "
            f"{_f(c['head_minus_rest']['max'])}] | "
            + (f"{s['rho']:+.2f} ({s['p_value']:.2f})" if s["rho"] is not None else "n/a")
            + f" | {_f(c['head_minus_rest_validation'])} |"
        )
    return lines + [""]
