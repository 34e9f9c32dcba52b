"""User-facing errors: one line, exit status 2, no traceback."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input from the user (a file, a flag, a task). The CLI prints it as one line, exit 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """A profile or space file that does not validate."""


class SetupFailed(UserError):
    """Setting up a study failed at a named step (exporting the teacher, its first measurement): the
    user's model or environment, reported as one line. Exit 2 for the model, 1 for the environment."""

    def __init__(self, task: str, step: str, reason: str, exit_code: int = 2) -> None:
        super().__init__(f"task {task!r}: {step} failed: {reason}")
        self.exit_code = exit_code


class TrialFailure(Exception):
    """A trial stage failed in a way the study records as FAIL with this reason. `kind` says what failed
    where it matters to a caller (the measurement's "load" and "input" are the model file's fault)."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


def redact_url(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}" if sep and at and ":" in creds else url


class RunStopped(Exception):
    """The run stopped on purpose (results disk full, too many failed trials in a row). Every finished
    trial is kept; the CLI prints this as one line, exit status 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


_DISK_FULL_TEXT = ("no space left on device", "database or disk is full", "disk quota exceeded")


def disk_full(exc: BaseException) -> str | None:
    """A one-line description when `exc` (or an exception in its cause chain) is a full disk, else None.
    Wrapped errors (an export failure caused by ENOSPC, SQLite's own error text) count too."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {e.filename}" if e.filename else ""
            return f"no space left on the device{where}"
        text = str(e).lower()
        if any(t in text for t in _DISK_FULL_TEXT):
            return "no space left on the device (" + " ".join(str(e).split())[:200] + ")"
        e = e.__cause__ or e.__context__
    return None
