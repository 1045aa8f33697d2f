"""The one error type the CLI turns into a single clear line (never a traceback)."""


class AldmError(Exception):
    """A user-facing problem: bad input, a missing file, an impossible request.

    The message must be one line naming the file or value at fault and what is wrong.
    """
