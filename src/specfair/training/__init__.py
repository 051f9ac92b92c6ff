"""Draft fine-tuning: losses toward the frozen target, the training data, the LightningModule and the run."""
