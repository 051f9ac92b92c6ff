"""Stage 4 of the data flow: answers from finished runs. Reads run records (`specfair.records`), never a model,
and imports no torch.

- `stats`: bootstrap CIs over prompts, paired differences, Wilcoxon / Kruskal-Wallis / Spearman, Holm, fairness.
- `comparisons`: pairing runs; Q1 (base vs fine-tuned per category) and Q2 training shares for one pair.
- `imbalance`: Q2 across imbalance ratios (gain by training-data rank, head minus rest, per arm and sampler).
- `exposure`: δ (gain per unit of log training share) and head − rest with cluster-bootstrap CIs and the MDE.
- `transfer`: the draft × dataset matrix of alpha and its change.
- `sentences`, `tables`, `plots`: the report's prose, Markdown sections and PNGs, from computed results.
- `format`: the one number / interval formatter they share.
"""
