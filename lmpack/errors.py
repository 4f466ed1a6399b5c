"""The one exception type lmpack raises for bad input.

Everything a user can get wrong (a truncated file, a missing config field, an unsupported
architecture, a malicious pickle) surfaces as `LmpackError` with a one-line message that names
the file, the tensor and what was wrong; the CLI prints that line and exits non-zero.
"""


class LmpackError(Exception):
    """Bad input or an unsupported request, explained in one line."""


class UnsafePickleError(LmpackError):
    """A pickle asked for a global that a tensor state dict never needs."""
