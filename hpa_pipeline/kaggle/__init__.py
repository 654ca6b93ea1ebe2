"""The competition's own formats: the submission (mask encoding, CSV, validator) and the metric."""
