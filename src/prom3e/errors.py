"""The one exception type users see: a clear, one-line reason."""


class Prom3eError(Exception):
    """A user-facing error (bad input, bad checkpoint). The CLI prints it as one line."""
