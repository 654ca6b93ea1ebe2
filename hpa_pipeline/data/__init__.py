"""The data stage (rules/data.smk): the demo dataset and the image index."""
