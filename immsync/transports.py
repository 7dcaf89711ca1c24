"""Which transport moves the files: ascp, HTTPS, or ascp with HTTPS to fall back on.

ImmPort serves files both through IBM Aspera (``ascp``, fast, but it needs a program
and its key, and UDP and TCP port 33001 open) and through plain HTTPS links (its GA4GH
DRS API, nothing to install). ImmPort announced the retirement of its Aspera service,
so ``auto`` must keep working when ``ascp`` cannot connect at all.

This module is generic over :class:`~immsync.model.Transfer`: it never imports the
concrete transports, which the command line builds and hands in.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import errors, model

log = logging.getLogger(__name__)

MODES = ("ascp", "https", "auto")
"""What ``--transport`` and the manifest's ``transport`` accept."""

_CONNECT_FAILURE = re.compile(
    r"Failed to open TCP connection|Client unable to connect|failed to open connection"
    r"|Connection refused",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Choice:
    """The transport a run uses, and why, in words for the user."""

    transfer: model.Transfer
    reason: str
    """E.g. ``ascp (found at /opt/aspera/bin/ascp); HTTPS for batches it cannot connect for``."""


def is_connection_failure(error: errors.TransferError) -> bool:
    """True when a session failed because it could not reach the server at all.

    That is a network path problem (TCP or UDP blocked, the server gone), which
    another transport may not have; a file missing or a checksum mismatch is not.
    """
    if error.kind != "transient":
        return False
    return bool(_CONNECT_FAILURE.search(error.reason) or _CONNECT_FAILURE.search(error.message))


def choose_transport(
    mode: str,
    *,
    make_ascp: Callable[[], model.Transfer],
    make_https: Callable[[], model.Transfer],
    probe_ascp: Callable[[], str],
    origin: str = "",
) -> Choice:
    """Build the transport for *mode* and say why it was chosen.

    Args:
        mode: ``"ascp"``, ``"https"`` or ``"auto"``.
        make_ascp: builds the ascp transport (it may find ``ascp`` lazily).
        make_https: builds the HTTPS transport.
        probe_ascp: finds ``ascp`` and its key, returning a description such as its
            path; raises TransportUnavailable when they are not there. Used by auto only.
        origin: where *mode* came from, for the reason (``"--transport"``, ``"the
            manifest"``); empty for the default.

    Raises:
        UsageError: *mode* is not one of :data:`MODES`.
    """
    if mode not in MODES:
        raise errors.UsageError(
            f"unknown transport {mode!r}: use {', '.join(MODES[:-1])} or {MODES[-1]}"
        )
    given = f" ({origin})" if origin else ""
    if mode == "ascp":
        choice = Choice(make_ascp(), f"ascp{given}")
    elif mode == "https":
        choice = Choice(make_https(), f"https{given}")
    else:
        try:
            found = probe_ascp()
        except errors.TransportUnavailable as exc:
            choice = Choice(make_https(), f"https (ascp is not available: {exc.message})")
        else:
            choice = Choice(
                AutoTransfer(make_ascp(), make_https()),
                f"ascp ({found}); HTTPS for any batch ascp cannot connect for",
            )
    log.info("transport: %s", choice.reason)
    return choice


class AutoTransfer:
    """A :class:`~immsync.model.Transfer` that uses *primary* and falls back to *secondary*.

    A batch goes to *primary*; when that fails because it could not connect
    (:func:`is_connection_failure`), the same batch goes to *secondary* right away.
    Other failures (a missing file,
    a refused token, a full disk) are raised for the caller to handle as usual.
    When *primary* cannot run at all (TransportUnavailable), or failed to connect
    *switch_after* times in a row, the rest of the run uses *secondary* only.
    """

    name = "auto"

    def __init__(
        self, primary: model.Transfer, secondary: model.Transfer, *, switch_after: int = 3
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self._switch_after = max(1, switch_after)
        self._lock = threading.Lock()
        self._primary_off: str | None = None
        self._failures_in_a_row = 0
        self.batches: dict[str, int] = {primary.name: 0, secondary.name: 0}
        """Batches each transport completed, for reports and tests."""

    def fetch(self, batch: model.TransferBatch, on_progress: model.ProgressCallback) -> None:
        """Move *batch* with the primary transport, or the secondary as described above.

        Raises:
            TransferError, TransportUnavailable: from the transport that handled it last.
        """
        with self._lock:
            primary_off = self._primary_off
        if primary_off is None:
            try:
                self.primary.fetch(batch, on_progress)
            except errors.TransportUnavailable as exc:
                self._switch_off(f"{self.primary.name} cannot run: {exc.message}")
            except errors.TransferError as exc:
                if not is_connection_failure(exc):
                    raise
                self._connect_failed(batch, exc)
            else:
                with self._lock:
                    self._failures_in_a_row = 0
                    self.batches[self.primary.name] += 1
                return
        self.secondary.fetch(batch, on_progress)
        with self._lock:
            self.batches[self.secondary.name] += 1

    def terminate(self) -> None:
        """Stop both transports (safe from any thread or a signal handler)."""
        for transfer in (self.primary, self.secondary):
            stop = getattr(transfer, "terminate", None)
            if stop is not None:
                stop()

    def close(self) -> None:
        for transfer in (self.primary, self.secondary):
            close = getattr(transfer, "close", None)
            if close is not None:
                close()

    def _connect_failed(self, batch: model.TransferBatch, error: errors.TransferError) -> None:
        with self._lock:
            self._failures_in_a_row += 1
            switch = self._failures_in_a_row >= self._switch_after
        log.warning(
            "%s: %s could not connect (%s); moving this batch over %s",
            batch.label or "a batch",
            self.primary.name,
            error.reason or error.message,
            self.secondary.name,
        )
        if switch:
            self._switch_off(
                f"{self.primary.name} failed to connect {self._switch_after} times in a row"
            )

    def _switch_off(self, why: str) -> None:
        with self._lock:
            if self._primary_off is not None:
                return
            self._primary_off = why
        log.warning("%s; using %s for the rest of this run", why, self.secondary.name)
