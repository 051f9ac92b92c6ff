"""specfair: fairness of speculative-decoding speedups across data categories."""
