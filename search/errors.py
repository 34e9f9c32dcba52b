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


def redact_url(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}" if sep and at and ":" in creds else url
