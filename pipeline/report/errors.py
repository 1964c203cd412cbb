"""The review page's one error."""

from pipeline.errors import ConfigError


class ReportError(ConfigError):
    """The output table cannot be read or the page cannot be written; exit code 2."""
