"""Markdown sections of `report.md`: one per comparison (Q1/Q2 table), per imbalance experiment, and the
transfer matrix. Each returns a list of lines; `report.markdown` puts them in order. Numbers go through
`format`, so a gain reads the same here as in the sentences.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from specfair.analysis.format import interval, num, speedups


def _image(path: str | Path) -> str:
    """A Markdown image linking a plot written beside report.md."""
    return f"![{Path(path).name}]({Path(path).name})"


def _q1_row(category: str, e: Mapping) -> str:
    g = e["gain"]["alpha"]
    p = e.get("wilcoxon_alpha", {}).get("p_holm")
    return (
        f"| {category} | {num(e['base']['alpha']['value'])} | {num(e['finetuned']['alpha']['value'])} | "
        f"{interval(g, sign=True, missing='n/a')} | {num(p)} | "
        f"{speedups(e['base']['speedup']['value'], e['finetuned']['speedup']['value'])} |"
    )


def comparison_section(r: Mapping) -> list[str]:
    """Q1/Q2 answers, the per-category table, the Kruskal-Wallis test, fairness lines and the plots."""
    lines = [
        f"## {r['dataset']}: {r['base']} → {r['finetuned']}",
        "",
        f"**Q1.** {r['q1_sentence']}",
        "",
        f"**Q2.** {r['q2_sentence']}",
        "",
        "| category | alpha base | alpha fine-tuned | gain [95% CI] | Wilcoxon p (Holm) | speedup base → fine-tuned |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_q1_row(c, e) for c, e in [*r["categories"].items(), ("overall", r["overall"])]]
    kw = r["kruskal_wallis_alpha_gain"]
    lines += [
        "",
        f"Kruskal–Wallis on per-prompt alpha gains across categories: p = {num(kw['p_value'])}.",
        "",
    ]
    for side in ("base", "finetuned", "gain"):
        f = r["fairness"][side]
        lines.append(
            f"- fairness of {side} alpha: worst {f['worst_category']} {num(f['worst'], sign=side == 'gain')}, "
            f"gap {num(f['gap'])}, min/max {num(f['min_max_ratio'])}, CV {num(f['cv'])}"
        )
    return lines + [""] + [_image(p) for p in r.get("plots", [])] + [""]


def _estimate_cells(d: Mapping) -> str:
    """`value [low, high] | MDE | over` for an estimate; the reason in place of an interval where none."""
    if d["value"] is None:
        return f"n/a ({d['why']}) | — | —"
    if d["low"] is None:
        return f"{num(d['value'], sign=True)} (no interval: {d['why']}) | — | —"
    return f"{interval(d, sign=True)} | {num(d['mde'])} | {d['over']}"


def _rank_test_cell(test: Mapping | None) -> str:
    """`p (Spearman's p)` of a condition's permutation test; the reason where none was run, — for none."""
    if not test:
        return "—"
    if not test.get("delta"):
        return f"n/a ({test.get('why', 'no test')})"
    within = "" if test.get("within") == "seeds" else ", over all runs"
    return f"{num(test['delta']['p_value'])} ({num(test['p_value'])}){within}"


def imbalance_section(result: Mapping) -> list[str]:
    """Sentences, what limits them, gain by data rank and head − rest per condition, then δ per condition
    (and pooled over ratios) with 95% CIs and minimum detectable effects, then the plot."""
    k = len(result["conditions"][0]["gain_by_rank"])
    ranks = ("head" if i == 0 else ("tail" if i == k - 1 else f"rank {i + 1}") for i in range(k))
    lines = [f"## {result['dataset']}: gain by training-data rank across imbalance ratios (Q2)", ""]
    lines += [f"- {s}" for s in result["sentences"]] + [""]
    if result.get("notes"):
        lines += ["Limits of these estimates:", ""] + [f"- {n}" for n in result["notes"]] + [""]
    lines += [
        "| arm | sampling | rho | runs | "
        + " | ".join(ranks)
        + " | head − rest [95% CI] | head − rest detectable ≥ | CI over | head − rest, training validation |",
        "|---" * (k + 8) + "|",
    ]
    for c in result["conditions"]:
        lines.append(
            f"| {c['arm']} | {c['sampling']} | {c['ratio']:g} | {c['runs']}{'*' if c['missing_heads'] else ''} | "
            + " | ".join(num(g["mean"], sign=True) for g in c["gain_by_rank"])
            + f" | {_estimate_cells(c['head_minus_rest'])} | {num(c['head_minus_rest_validation'], sign=True)} |"
        )
    if any(c["missing_heads"] for c in result["conditions"]):
        lines += ["", "\\* a head rotation is missing: head − rest over the rotations present (see above)."]
    lines += [
        "",
        "head − rest detectable ≥ (above) and δ detectable ≥ (below): the smallest |head − rest| and the "
        "smallest |δ| found 80% of the time at two-sided 5%, each from its own standard error; they are on "
        "different scales (at rho = 100 over 4 categories, head − rest ≈ 3.1·δ).",
        "",
        "δ: a category's alpha gain per unit of log share of the training tokens it had, with category and run "
        "effects removed (`analysis/exposure.py`). Rank test p: which run got which mix reassigned (within "
        "seeds where the runs' seeds are known), δ itself as the statistic; in brackets the same test on the "
        "mean per-run rank correlation ρ the sentences quote, conservative with few categories.",
        "",
        "| arm | sampling | rho | runs | δ [95% CI] | δ detectable ≥ | CI over | rank test p: δ (rank ρ) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(c, f"{c['ratio']:g}") for c in result["conditions"]]
    rows += [(p, "all") for p in result.get("pooled", [])]
    for c, rho in sorted(rows, key=lambda t: (t[0]["arm"], t[0]["sampling"] != "natural")):
        lines.append(
            f"| {c['arm']} | {c['sampling']} | {rho} | {c['runs']} | {_estimate_cells(c['delta'])} "
            f"| {_rank_test_cell(c.get('rank_test'))} |"
        )
    lines += [
        "",
        "Fairness per condition: per run, the worst category's alpha gain, the mean over categories and the "
        "gap (best − worst), averaged over seeds then rotations, with 95% CIs.",
        "",
        "| arm | sampling | rho | runs | worst [95% CI] | mean [95% CI] | gap [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["conditions"]:
        f = c["fairness"]
        lines.append(
            f"| {c['arm']} | {c['sampling']} | {c['ratio']:g} | {c['runs']} | {interval(f['worst'], sign=True)} "
            f"| {interval(f['mean'], sign=True)} | {interval(f['gap'])} |"
        )
    lines += [""]
    if result.get("plot"):
        lines += [_image(result["plot"]), ""]
    return lines


def transfer_section(m: Mapping) -> list[str]:
    """Sentences, overall alpha and its change per draft × dataset, per-category changes, then the heatmap."""
    head = "| draft \\ evaluated on | " + " | ".join(m["columns"]) + " |"
    rule = "|---" * (len(m["columns"]) + 1) + "|"
    lines = (
        ["## Transfer matrix", ""] + [f"- {s}" for s in m["sentences"]] + ["", "Overall alpha [95% CI]:", ""]
    )
    lines += [head, rule] + [
        f"| {r} | " + " | ".join(interval(m["alpha"][r][d]) for d in m["columns"]) + " |" for r in m["rows"]
    ]
    lines += ["", "Change in alpha against the base draft [95% CI]:", "", head, rule]
    lines += [
        f"| {r} | " + " | ".join(interval(m["delta"][r][d], sign=True) for d in m["columns"]) + " |"
        for r in m["rows"][1:]
    ]
    drafts = m["rows"][1:]
    for d in m["columns"]:
        if not m["categories"][d]:
            continue
        lines += ["", f"Per-category change on {d}:", "", "| category | " + " | ".join(drafts) + " |"]
        lines += ["|---" * (len(drafts) + 1) + "|"]
        lines += [
            f"| {cat} | " + " | ".join(interval(per_row.get(r), sign=True) for r in drafts) + " |"
            for cat, per_row in m["categories"][d].items()
        ]
    lines += [""]
    if m.get("plot"):
        lines += [_image(m["plot"]), ""]
    return lines


def _group_cell(c: Mapping | None, sign: bool) -> str:
    """`pooled [95% CI] (seed values)`, † where the interval is over prompts alone, — where not measured."""
    if not c:
        return "—"
    text = interval(c, sign=sign)
    per_seed = c.get("per_seed") or []
    if len(per_seed) > 1:
        text += " (" + ", ".join(num(v, sign=sign) for v in per_seed) + ")"
    return text + ("†" if c.get("over") == "prompts" else "")


def _group_table(entries: Mapping[str, Mapping], key: str, sign: bool) -> list[str]:
    """Rows: groups (seeds pooled); columns: datasets; cells: `key`'s interval and each seed's value."""
    datasets = [d for d, e in entries.items() if key in e]
    groups = list(dict.fromkeys(g for d in datasets for g in entries[d][key]))
    if not groups:
        return []
    lines = ["| draft (seeds) | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for g in groups:
        cells = [entries[d][key].get(g) for d in datasets]
        seeds = max((c["seeds"][0] for c in cells if c), default=0)
        lines.append(f"| {g} ({seeds}) | " + " | ".join(_group_cell(c, sign) for c in cells) + " |")
    return lines + [""]


def arms_section(result: Mapping) -> list[str]:
    """Alpha per draft group and dataset, gains against the generalist, the control and base, own-highest."""
    entries = {d: e for d, e in result["datasets"].items() if "error" not in e}
    lines = [
        "## Arms and seeds",
        "",
        "Each cell pools a draft's seeds (count after its name): mean over seeds of alpha on the same prompts, "
        "then each seed's own value in parentheses (a gain: that seed minus the reference's mean). 95% CI "
        "t-based over seeds (t with n − 1 df on the seeds' spread) combined with a prompt bootstrap "
        "(`analysis/arms.py`); † one seed in every group: over prompts alone, seed variance unknown.",
        "",
        "### alpha",
        "",
        *_group_table(entries, "alpha", sign=False),
    ]
    for ref, what in (
        ("generalist", "the generalist"),
        ("control", "the control"),
        ("base", "the base draft"),
    ):
        table = _group_table(entries, f"vs_{ref}", sign=True)
        if table:
            lines += [f"### alpha gain against {what}", "", *table]
    for arm, per_dataset in result.get("own_highest", {}).items():
        lines += [f"### own draft highest? ({arm})", ""]
        for dataset, test in per_dataset.items():
            diffs = ", ".join(
                f"vs {g}: {interval(d, sign=True)} (p {num(d['p_value'], 3)})"
                for g, d in test["differences"].items()
            )
            verdict = "holds" if test["holds"] else "not shown"
            lines.append(f"- {dataset}: {test['own']} − others: {diffs} → **{verdict}**")
        lines.append("")
    for d, e in result["datasets"].items():
        if "error" in e:
            lines.append(f"- {d}: left out, {e['error']}")
    return lines
