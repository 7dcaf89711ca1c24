"""Every failure immsync reports to a user, with its exit code.

This module imports nothing from immsync, so every other module can raise these.
Each message says what happened and where; ``hint`` says what to do about it.
The exit codes are part of the command-line interface and documented in README.md.
"""

from __future__ import annotations

import errno
from enum import IntEnum, StrEnum

DISK_UNUSABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""``OSError.errno`` values meaning the destination's disk takes no more writes:
full, over quota or read-only. Every other file would fail alike."""


class ExitCode(IntEnum):
    """Process exit statuses of the ``immsync`` command."""

    OK = 0
    INTERNAL = 1
    """A bug in immsync: the message asks for a report."""
    USAGE = 2
    """Invalid manifest or command-line usage."""
    AUTH = 3
    """ImmPort refused the credentials or the token."""
    REMOTE = 4
    """The ImmPort API failed, or a selected remote path does not exist."""
    TRANSFER = 5
    """At least one file could not be transferred (others were kept)."""
    INTEGRITY = 6
    """A file failed verification: checksum or size mismatch, or missing."""
    LOCAL = 7
    """Local filesystem or state problem: corrupt state, disk full, permissions."""
    SETUP = 8
    """``ascp`` or its key file could not be found or started."""
    LOCKED = 9
    """Another immsync run holds the destination."""
    CHANGES_PENDING = 10
    """``plan --detailed-exitcode`` only: the plan has changes (not an error)."""
    INTERRUPTED = 130
    """Stopped by SIGINT (Ctrl-C)."""
    BROKEN_PIPE = 141
    """Standard output was closed early (piped into ``head``): stopped quietly."""
    TERMINATED = 143
    """Stopped by SIGTERM."""


class ImmsyncError(Exception):
    """Base of every expected failure; carries a user-facing message and a hint."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(
        self, message: str, *, hint: str | None = None, details: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details
        """One line per finding (manifest problems, files that failed, drift), if any."""

    def __str__(self) -> str:
        lines = [self.message, *(f"  {d}" for d in self.details)]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class ManifestError(ImmsyncError):
    """The manifest is unreadable or invalid; ``problems`` lists every finding."""

    exit_code = ExitCode.USAGE

    def __init__(
        self, message: str, *, problems: tuple[str, ...] = (), hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint, details=problems)

    @property
    def problems(self) -> tuple[str, ...]:
        return self.details


class UsageError(ImmsyncError):
    """A command-line option or combination of options is invalid."""

    exit_code = ExitCode.USAGE


class AuthError(ImmsyncError):
    """ImmPort refused the username/password or the bearer token."""

    exit_code = ExitCode.AUTH


class ApiError(ImmsyncError):
    """The ImmPort API answered with an error, an unusable reply, or not at all."""

    exit_code = ExitCode.REMOTE

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.transient = transient
        """True when trying again later may succeed (5xx, 429, timeouts, resets)."""
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After``), if it said."""


class RemoteNotFound(ApiError):
    """A path the manifest selects does not exist on ImmPort."""


class Failure(StrEnum):
    """Why a transfer failed, set by the transport where it knows the cause.

    The caller asks a failure how to react (``retryable``, ``stops_run``,
    ``unreachable``); nothing compares kinds as strings or reads a transport's wording.
    """

    TRANSIENT = "transient"
    """The transfer broke off (stalled, reset, timed out): trying again may work."""
    UNREACHABLE = "unreachable"
    """The server could not be reached at all (TCP or UDP blocked, nothing listening):
    worth a retry, and another transport may have a path where this one has none."""
    TOKEN = "token"  # noqa: S105 - a kind of failure, not a secret
    """The transfer token was refused or expired: a new one is asked for on retry."""
    AUTH = "auth"
    """The server refused our credentials; with several sessions starting at once this
    is how a rate limit shows, so fewer sessions may succeed."""
    NOT_FOUND = "not_found"
    DISK = "disk"
    """The local disk is full or read-only: every other file would fail alike."""
    PERMANENT = "permanent"
    INTERRUPTED = "interrupted"

    @property
    def retryable(self) -> bool:
        return self in (Failure.TRANSIENT, Failure.UNREACHABLE, Failure.TOKEN)

    @property
    def stops_run(self) -> bool:
        return self is Failure.DISK

    @property
    def unreachable(self) -> bool:
        return self is Failure.UNREACHABLE


class TransferError(ImmsyncError):
    """A transfer session failed; ``reason`` is the transport's own words."""

    exit_code = ExitCode.TRANSFER

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        kind: Failure | str = Failure.PERMANENT,
        output_tail: tuple[str, ...] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.kind = Failure(kind)
        """How the caller should react (see ``Failure``)."""
        self.output_tail = output_tail


class TransportUnavailable(ImmsyncError):
    """The transfer program or its key cannot be found or started."""

    exit_code = ExitCode.SETUP


class ChecksumMismatch(ImmsyncError):
    """A file's content does not match what was expected of it."""

    exit_code = ExitCode.INTEGRITY


class StateError(ImmsyncError):
    """The local state database is unreadable, corrupt or from a newer immsync."""

    exit_code = ExitCode.LOCAL


class LocalIOError(ImmsyncError):
    """A local filesystem operation failed (no space, permission, read-only)."""

    exit_code = ExitCode.LOCAL


class UnsafePath(ImmsyncError):
    """A path from the manifest or the server would land outside the destination."""

    exit_code = ExitCode.REMOTE


class LockedError(ImmsyncError):
    """Another immsync process holds the destination's lock."""

    exit_code = ExitCode.LOCKED


class LockDrift(ImmsyncError):
    """``apply --frozen``: upstream or the manifest no longer matches the lock file.

    ``drift`` names each file and what differs, one line each.
    """

    exit_code = ExitCode.USAGE

    def __init__(
        self, message: str, *, drift: tuple[str, ...] = (), hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint, details=drift)

    @property
    def drift(self) -> tuple[str, ...]:
        return self.details


class SyncFailed(ImmsyncError):
    """A run finished but some files failed; the others were kept and recorded."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: ExitCode,
        failures: tuple[str, ...] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, details=failures)
        self.exit_code = exit_code

    @property
    def failures(self) -> tuple[str, ...]:
        return self.details
