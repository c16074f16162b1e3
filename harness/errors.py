"""The one exception type the harness raises for bad input: its message is the one line a user
sees (the CLI prints it without a traceback and exits 2)."""


class HarnessError(Exception):
    """A problem with the user's input or files, reported as one line."""
