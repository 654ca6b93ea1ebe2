"""hpa-pipeline: per-cell protein localisation on Human Protein Atlas immunofluorescence images."""

__version__ = "0.4.0"
