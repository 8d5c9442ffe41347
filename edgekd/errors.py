"""Exceptions raised by edgekd.

Every error that comes from bad user input is an :class:`EdgekdValueError`, which is also a
built-in :class:`ValueError`, so ``except ValueError`` keeps working for callers that do not
know about edgekd.
"""


class EdgekdError(Exception):
    """Base class of all edgekd errors."""


class EdgekdValueError(EdgekdError, ValueError):
    """An argument or an input file is invalid; the message names the problem."""


class BundleError(EdgekdValueError):
    """A model bundle is corrupt, tampered with, or unsafe to load."""


class EdgekdDeprecationWarning(FutureWarning):
    """An old spelling (a flat config key, a keyword, a flag) that still works for one release.

    A :class:`FutureWarning`, so Python shows it by default; the ``edgekd`` command prints it as
    one ``edgekd: warning:`` line."""
