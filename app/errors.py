"""Errors a user can act on. The CLI prints their message (no stack trace) and exits non-zero."""


class MucodeError(RuntimeError):
    """Base class: the message names the problem and, where possible, the fix."""


class ConfigError(MucodeError):
    """A setting or a config file is invalid."""


class DataError(MucodeError):
    """A dataset file is missing or malformed."""


class NotFound(MucodeError):
    """A named thing (problem, model, experiment...) does not exist."""
