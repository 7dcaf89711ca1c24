"""Which transport moves the files: ascp, HTTPS, or ascp with HTTPS to fall back on.

ImmPort serves files both through IBM Aspera (``ascp``, fast, but it needs a program
and its key, and UDP and TCP port 33001 open) and through plain HTTPS links (its GA4GH
DRS API, nothing to install). ImmPort has retired its Aspera service, so ``auto`` uses
``ascp`` only while the Aspera token endpoint answers: the first token request of a
run is the probe (:class:`AsperaTokens`), and a 404 or 410 there moves the whole run
to HTTPS with one line of information. Nothing is probed before a file needs to move.

This module is generic over :class:`~immsync.ports.Transfer`: it never imports the
concrete transports, which the command line builds and hands in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import errors, model
from .ports import Transfer

log = logging.getLogger(__name__)

MODES = ("ascp", "https", "auto")
"""What ``--transport`` and the manifest's ``transport`` accept."""

RETIRED_STATUSES = frozenset({404, 410})
"""What the Aspera token endpoint answers where ImmPort's Aspera service is gone."""

@dataclass(frozen=True, slots=True)
class Choice:
    """The transport a run uses, and why, in words for the user."""

    transfer: Transfer
    reason: str
    """E.g. ``ascp (found at /opt/aspera/bin/ascp); HTTPS for batches it cannot connect for``."""


class AsperaRetired(errors.TransportUnavailable):
    """ImmPort's Aspera token endpoint is gone (404 or 410): ``ascp`` cannot run here."""


class AsperaTokens:
    """Aspera tokens from *mint*, where the run's first request is the service's probe.

    The first request decides, once per run, whether ImmPort's Aspera service still
    answers (other threads wait for it): a 404 or 410 then means the endpoint is gone,
    and this and every later call raise :class:`AsperaRetired` without a request. The
    paths asked for come from the listing moments before, so a 404 for them on the very
    first request is taken for the endpoint, not the files. Once a token was issued, a
    404 means a path is missing, as before.
    """

    def __init__(self, mint: Callable[[Sequence[str]], str]) -> None:
        self._mint = mint
        self._lock = threading.Lock()
        self._answered = False
        self._retired: AsperaRetired | None = None

    def __call__(self, paths: Sequence[str]) -> str:
        if self._answered:
            return self._mint(paths)
        with self._lock:
            if self._retired is not None:
                raise self._retired
            if self._answered:
                return self._mint(paths)
            try:
                token = self._mint(paths)
            except errors.ApiError as exc:
                if exc.status not in RETIRED_STATUSES:
                    raise
                self._retired = AsperaRetired(
                    f"ImmPort's Aspera service does not answer ({exc.message})",
                    hint="files travel over HTTPS instead: --transport https (or auto) "
                    "uses ImmPort's DRS links",
                )
                raise self._retired from None
            self._answered = True
            return token


def is_connection_failure(error: errors.TransferError) -> bool:
    """True when a session failed because it could not reach the server at all.

    That is a network path problem (TCP or UDP blocked, the server gone), which
    another transport may not have; a file missing or a checksum mismatch is not.
    """
    return error.kind.unreachable


def choose_transport(
    mode: str,
    *,
    make_ascp: Callable[[], Transfer],
    make_https: Callable[[], Transfer],
    probe_ascp: Callable[[], str],
    origin: str = "",
    notice: Callable[[str], None] | None = None,
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
        notice: shows auto's one line when the run moves to HTTPS because ImmPort's
            Aspera service is gone (default: the log, at INFO).

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
            log.info("ascp is not available: %s", exc.message)
            choice = Choice(make_https(), "https (no ascp installed; -v says where it looked)")
        else:
            choice = Choice(
                AutoTransfer(make_ascp(), make_https(), notice=notice),
                f"ascp ({found}) while ImmPort's Aspera service answers; HTTPS otherwise "
                "and for any batch ascp cannot connect for",
            )
    log.info("transport: %s", choice.reason)
    return choice


class AutoTransfer:
    """A :class:`~immsync.ports.Transfer` that uses *primary* and falls back to *secondary*.

    A batch goes to *primary*; when that fails because it could not connect
    (:func:`is_connection_failure`), the same batch goes to *secondary* right away.
    Other failures (a missing file,
    a refused token, a full disk) are raised for the caller to handle as usual.
    When *primary* cannot run at all (TransportUnavailable), or failed to connect
    *switch_after* times in a row, the rest of the run uses *secondary* only. When the
    reason is that ImmPort's Aspera service is gone (:class:`AsperaRetired`), that is
    the expected state of today's ImmPort, not a fault: one line goes to *notice*
    instead of a warning.
    """

    name = "auto"

    def __init__(
        self,
        primary: Transfer,
        secondary: Transfer,
        *,
        switch_after: int = 3,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self._notice = notice or (lambda line: log.info("%s", line))
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
            except AsperaRetired as exc:
                if self._switch_off(exc.message, warn=False):
                    self._notice(
                        f"{exc.message}; every file goes over {self.secondary.name} "
                        "(DRS) for the rest of this run"
                    )
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
            transfer.terminate()

    def close(self) -> None:
        for transfer in (self.primary, self.secondary):
            transfer.close()

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

    def _switch_off(self, why: str, *, warn: bool = True) -> bool:
        """Use only the secondary from now on; True for the call that switched."""
        with self._lock:
            if self._primary_off is not None:
                return False
            self._primary_off = why
        if warn:
            log.warning("%s; using %s for the rest of this run", why, self.secondary.name)
        return True
