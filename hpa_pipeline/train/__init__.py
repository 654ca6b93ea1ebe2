"""Training: folds, datasets, models, losses, CutMix, schedules, devices and the training loop."""
