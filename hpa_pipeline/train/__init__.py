"""The training stage (rules/train.smk): folds, datasets, losses, CutMix, steps, schedule, loop, checkpoints."""
