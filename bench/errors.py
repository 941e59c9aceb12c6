"""User-facing errors.

Anything raised as a :class:`BenchError` is a problem with the user's input
(a file, a flag, a record) and is printed by the CLI as one sentence with no
traceback. Every other exception is a bug in region-bench or an adapter.
"""


class BenchError(Exception):
    """A problem the user can fix; the message says what and how."""


class DataError(BenchError):
    """A dataset file is missing or malformed (the message names file and record)."""


class RegionError(BenchError):
    """A region is not usable on its image (non-finite, outside, or empty)."""


class ConfigError(BenchError):
    """A bad command-line value: unknown model or task, malformed ``--model-args``."""
