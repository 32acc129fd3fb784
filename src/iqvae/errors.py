"""User-facing errors.

Anything a user can cause (bad option, bad file, wrong shape) raises :class:`IQVAEError` with a message that names
the option / file / item and what was expected.  The CLI prints the message (no traceback) and exits with status 2.
"""


class IQVAEError(Exception):
    """An error caused by user input; the message is meant to be read by a person."""


class ConfigError(IQVAEError, ValueError):
    """An unknown key, a value of the wrong type, or an option outside its range."""


class DataError(IQVAEError, ValueError):
    """A dataset file is missing, unreadable or malformed; the message names the file."""


class CheckpointError(IQVAEError, ValueError):
    """A checkpoint is missing, incomplete, or of another kind / variant than expected."""


class ShapeError(IQVAEError, ValueError):
    """A tensor argument has the wrong number of dimensions or sizes that do not match each other."""


class NonFiniteError(IQVAEError, ArithmeticError):
    """A training step gave a NaN/Inf loss term or gradient; the message names the step and the term(s)."""
