"""One exception family, so the command line can turn any of them into a one-line message."""


class LthError(Exception):
    """Base class: the message is a complete, one-line instruction for the user."""


class ConfigError(LthError, ValueError):
    """An invalid configuration value or an unknown recipe name."""


class DataError(LthError):
    """A dataset file is missing, truncated or of the wrong shape."""


class DivergenceError(LthError):
    """Training produced a non-finite loss."""


class CacheError(LthError):
    """A cache entry is corrupt or was written by an incompatible configuration."""
