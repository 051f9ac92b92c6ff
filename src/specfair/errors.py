"""One exception type for bad input: entry points print its message as a single line and exit."""


class SpecfairError(Exception):
    """A user-facing error whose message names the file, field or option and what was expected."""
