"""Statistics over finished runs (no torch): bootstrap CIs, paired tests, fairness, Q2 imbalance, transfer."""
