"""Errors the user can act on: each names the file, key or item at fault."""


class PipelineError(Exception):
    """Base class of every error the pipeline reports to its user."""


class InputDataError(PipelineError):
    """An input file is missing, unreadable or inconsistent with its siblings."""


class ConfigError(PipelineError):
    """The configuration names something that does not exist or contradicts itself."""
