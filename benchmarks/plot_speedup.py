"""Measured speedup of each engine variant against α, with Leviathan's prediction (verify cost v included) as
curves: what `bench_decoding.py --matrix --json FILE` measured, drawn where the cost model says it should lie.

Run:  .venv/bin/python benchmarks/plot_speedup.py docs/bench/cpu_matrix_imdb_kd_g3.json docs/bench/speedup_vs_alpha.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from specfair.evaluation.acceptance import predicted_speedup  # noqa: E402


def main(source: str, out: str) -> None:
    bench = json.loads(Path(source).read_text(encoding="utf-8"))
    variants = bench["variants"]
    alphas = np.linspace(0.05, 0.95, 91)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, r) in enumerate(variants.items()):
        adaptive, color = "conf" in name, f"C{i}"
        gamma = r["mean_gamma_b"]  # the realised block length (well under γ with the confidence stop)
        curve = [predicted_speedup(a, gamma, r["cost_ratio_c"], r["verify_cost_ratio_v"]) for a in alphas]
        ax.plot(alphas, curve, lw=0.8, alpha=0.5, ls="--" if adaptive else "-", color=color)
        ax.scatter(r["alpha"], r["speedup_vs_target"], marker="o" if adaptive else "s", zorder=3, color=color)
        label = name.removeprefix("engine").strip("[]()") or "full head"
        ax.annotate(
            label, (r["alpha"], r["speedup_vs_target"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("α (measured)")
    ax.set_ylabel("speedup over the target alone")
    config = bench["config"]
    ax.set_title(f"{config['draft'].split('/')[-3] if '/' in config['draft'] else config['draft']}, γ = "
                 f"{config['gamma']}, {config['device']} ({config['torch_threads']} threads): measured (dots) and "
                 "predicted (lines, with each variant's c and v)", fontsize=8)  # fmt: skip
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
