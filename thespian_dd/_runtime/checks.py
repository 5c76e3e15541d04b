"""What the Replicator checks of every request before it acts, and how it counts what it refuses.

Thespian retries a message whose handler raised and then bounces it, with the actor's state as the
first attempt left it: so handlers validate first (these functions, which return the problem as a
sentence, or None) and change state last.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from thespian_dd._log import Log
from thespian_dd._runtime.protocol import PeerMessage
from thespian_dd.messages import (
    Delete,
    Get,
    GetFailure,
    InvalidRequest,
    ModifyFailure,
    ReadConsistency,
    ReplicationDeleteFailure,
    Update,
    WriteConsistency,
)

__all__ = [
    "Rejections",
    "consistency_error",
    "describe",
    "failure_reply",
    "key_error",
    "seconds",
    "timeout_of",
]


def describe(error: BaseException) -> str:
    """An exception as one line: its type and message."""
    return f"{type(error).__name__}: {error}"


def seconds(value: object) -> float | None:
    """``value`` as a number of seconds, or None if it is no number (bools are not)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def key_error(key: object) -> str | None:
    """Why ``key`` cannot name a value, or None.  Every SQL store must hold it as text."""
    if not isinstance(key, str):
        return f"key must be a str, not {type(key).__name__}: {key!r}"
    if not key:
        return "key must not be empty"
    if "\x00" in key:  # PostgreSQL's text cannot hold NUL
        return f"key must not contain NUL characters: {key!r}"
    try:
        key.encode()
    except UnicodeEncodeError:
        return f"key must be valid Unicode text (no lone surrogates): {key!r}"
    return None


def consistency_error(consistency: object, expected: type) -> str | None:
    """Why ``consistency`` is not a usable level of the ``expected`` family, or None."""
    if not isinstance(consistency, expected):
        return f"consistency must be a {expected.__name__}, not {type(consistency).__name__}"
    # A level that arrives pickled skipped its constructor's checks: run them again, and check
    # that its rule gives a number and its timeout fits a timer (inf or 1e300 do not).
    try:
        check = getattr(consistency, "__post_init__", None)
        if check is not None:
            check()
        needed = consistency.replicas_needed(3)  # type: ignore[attr-defined]
        timeout = getattr(consistency, "timeout", None)
        if timeout is not None:
            dt.timedelta(seconds=timeout)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it is the caller's
        return f"consistency {type(consistency).__name__} is invalid: {describe(e)}"
    if not isinstance(needed, (int, float)) or isinstance(needed, bool):
        return f"consistency {type(consistency).__name__} is invalid: it needs {needed!r} replicas"
    return None


def timeout_of(consistency: ReadConsistency | WriteConsistency) -> float:
    """The timeout of a non-local consistency level (local ones have none: 0)."""
    timeout: float = getattr(consistency, "timeout", 0.0)
    return timeout


def failure_reply(msg: object, error: str) -> Any:
    """The failure of ``msg``'s family of replies, saying ``error``: GetFailure, ModifyFailure,
    ReplicationDeleteFailure, else InvalidRequest; None for a peer message (peers get no
    reply to what they cannot send)."""
    key, request = str(getattr(msg, "key", "")), getattr(msg, "request", None)
    if isinstance(msg, Get):
        return GetFailure(key, request, error)
    if isinstance(msg, Update):
        return ModifyFailure(key, request, error)
    if isinstance(msg, Delete):
        return ReplicationDeleteFailure(key, request, error)
    if isinstance(msg, PeerMessage):
        return None
    return InvalidRequest(type(msg).__name__, error, request)


class Rejections:
    """Inputs refused (malformed requests, peer payloads, stored rows): counted, and each kind of
    refusal logged once per origin, so a peer that keeps sending the same bad value cannot fill
    the log."""

    def __init__(self, log: Log | logging.Logger) -> None:
        self.count = 0
        self._log = log
        self._logged: set[tuple[str, str]] = set()

    def refuse(self, n: int = 1) -> None:
        """Count ``n`` refused inputs, logging nothing."""
        self.count += n

    def warn_once(self, origin: str, reason: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` as a warning unless ``(origin, reason)`` was logged already;
        returns whether it was logged.  Counts nothing."""
        if (origin, reason) in self._logged:
            return False
        self._logged.add((origin, reason))
        self._log.warning(message, *args)
        return True

    def reset(self) -> None:
        """Forget the count (a load that failed is tried again from nothing)."""
        self.count = 0
