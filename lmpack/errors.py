"""The one exception type lmpack raises for bad input.

Everything a user can get wrong (a truncated file, a missing config field, an unsupported
architecture, a malicious pickle) surfaces as `LmpackError` with a one-line message that names
the file, the tensor and what was wrong; the CLI prints that line and exits non-zero.
"""


class LmpackError(Exception):
    """Bad input or an unsupported request, explained in one line."""


class LmpackWarning(UserWarning):
    """Input lmpack accepts but that is probably not what its author meant; the CLI prints it as
    one `warning:` line on stderr."""


class UnsafePickleError(LmpackError):
    """A pickle asked for a global that a tensor state dict never needs."""


def brief(value: object, limit: int = 80) -> str:
    """A repr of untrusted data for an error message, bounded in time and length whatever the
    value holds (deep or shared nesting, huge strings, integers of any size)."""
    import reprlib

    class _Brief(reprlib.Repr):
        def repr_int(self, x, level):
            return repr(x) if x.bit_length() < 200 else f"<{x.bit_length()}-bit integer>"

    r = _Brief()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, limit, limit, limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 4
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not turn into an internal error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."
