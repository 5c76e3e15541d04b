"""Quorum requests: writes, deletes and reads that wait for enough peers.

No actor per request (on multiprocess bases that would be a process): each request is a
:class:`Pending` record with the peers asked.  An answer counts only from the peer it was asked
of, once; the request finishes when the answers and this node make ``needed``, or when its timer
fires.  A request that the reachable peers cannot satisfy yet waits for more: every peer met
while it is open (one that joins, comes back, or restarts) is asked too (:meth:`Quorums.meet`),
so a node still meeting its peers after a start does not fail requests it could serve a moment
later.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thespian_dd._runtime.protocol import RequestTimeout
from thespian_dd.messages import GetFailure, ReplicationDeleteFailure, UpdateTimeout

__all__ = ["Pending", "Quorums"]


@dataclass
class Pending:
    """A quorum request waiting for peers: an Update, Delete or Get."""

    kind: str  # "update" | "delete" | "get"
    client: Any
    key: str
    request: Any
    needed: int
    asked: dict[str, Any]  # node name -> the address asked
    answered: set[str] = field(default_factory=set)
    results: list[bytes | None] = field(default_factory=list)
    id_: str = field(default_factory=lambda: secrets.token_hex(16))

    def timeout_reply(self) -> Any:
        """The reply when not enough peers answered in time."""
        if self.kind == "update":
            return UpdateTimeout(self.key, self.request)
        if self.kind == "delete":
            return ReplicationDeleteFailure(
                self.key, self.request, "not confirmed by enough replicas in time"
            )
        return GetFailure(self.key, self.request, "not enough replicas answered in time")

    def enough(self) -> bool:
        """Whether the answers and this node make ``needed``."""
        return len(self.answered) + 1 >= self.needed


class Quorums:
    """The open requests.  ``wake(seconds, payload)`` arms a timer whose payload comes back to
    :meth:`timed_out`."""

    def __init__(self, wake: Callable[[float, Any], None]) -> None:
        self._wake = wake
        self._open: dict[str, Pending] = {}

    def open(self, pending: Pending, timeout: float) -> None:
        """Register ``pending`` with its timer (it waits for answers, and for more peers if the
        ones asked cannot make ``needed``)."""
        self._open[pending.id_] = pending
        self._wake(timeout, RequestTimeout(pending.id_))

    def meet(self, name: str, address: Any) -> list[Pending]:
        """Peer ``name`` is reachable at ``address`` (new, back, or a new incarnation): the open
        requests that have not asked it there, now marked as asking it; the caller sends them.
        One it answered already (at another address) keeps that answer."""
        met = []
        for pending in self._open.values():
            if name not in pending.answered and pending.asked.get(name) != address:
                pending.asked[name] = address
                met.append(pending)
        return met

    def answer(self, request_id: object, name: str, address: Any) -> Pending | None:
        """Count the answer of peer ``name`` at ``address`` to ``request_id``; returns the
        request if it counts (it was asked of that peer there, and not answered yet)."""
        pending = self._open.get(request_id) if isinstance(request_id, str) else None
        if pending is None or name in pending.answered or pending.asked.get(name) != address:
            return None
        pending.answered.add(name)
        return pending

    def close(self, pending: Pending) -> None:
        self._open.pop(pending.id_, None)

    def timed_out(self, request_id: str) -> Pending | None:
        """The request whose timer fired, if it is still open (closed by this call)."""
        return self._open.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._open)
