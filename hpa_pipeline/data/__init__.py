"""The data stage (rules/data.smk): the demo dataset, the image index, and configs for a user's data."""
