"""One exception family, so the CLI can turn every bad input into one clear message and exit code 2."""


class OsktError(Exception):
    """Base class for user-facing errors (bad config, bad data, bad spec, bad checkpoint)."""


class ConfigError(OsktError, ValueError):
    """A configuration key, type or value is not allowed."""


class DataError(OsktError):
    """A data set is missing, malformed or inconsistent."""


class SpecError(OsktError, ValueError):
    """A model / student specification is impossible (width out of range, bad head count, ...)."""


class CheckpointError(OsktError):
    """A checkpoint is missing, unreadable or does not carry what is needed to rebuild its model."""
