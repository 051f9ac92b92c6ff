"""Stage 1 of the data flow: rows (text, category) from the hub, local files or the bundled samples, split into
balanced evaluation prompts and disjoint (optionally imbalanced) training texts."""
