"""The submission stage (rules/submit.smk): making, validating and evaluating the submission."""
