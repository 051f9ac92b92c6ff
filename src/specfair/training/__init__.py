"""Draft fine-tuning toward the frozen target, one module per concern:

- `losses`: divergences and the training objective (`DistillationLoss`): where the loss is.
- `datamodule`: tokenized texts, the resumable weighted training stream, validation texts (`DraftDataModule`).
- `validation`: `ExpectedAlpha`, the per-category teacher-forced acceptance metric.
- `module`: `DraftModule`, the LightningModule (training step, on-policy batches, optimizer and schedule).
- `run`: `train.py`'s orchestration: build from the Hydra config, fit, export the draft and train_summary.json.
"""
