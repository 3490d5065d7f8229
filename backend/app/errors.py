"""Errors the ``sprig`` subcommands raise for the user (no traceback, one line, exit code 2)."""

EXIT_OK = 0
EXIT_BAD_INPUT = 2


class CommandError(Exception):
    """A user-facing error of a subcommand: printed as one line, exit code 2."""
