"""User-facing errors: one line, exit status 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a flag, a task). The CLI prints it as one line, exit 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """A profile or space file that does not validate."""


class TrialFailure(Exception):
    """A trial stage failed in a way the study records as FAIL with this reason."""
