"""The preprocessing stage (rules/preprocess.smk): resize, segment, mask resize with the cell table, cell crops."""
