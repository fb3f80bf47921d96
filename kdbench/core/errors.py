"""The one error type for user mistakes: the CLI prints its message, no traceback."""


class KDBenchError(Exception):
    """A mistake the user can fix: bad name, missing data, invalid config.

    The message must say what was wrong and what is valid.
    """
