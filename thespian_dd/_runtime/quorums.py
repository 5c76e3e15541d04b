"""Quorum requests: writes, deletes and reads that wait for enough peers.

No actor per request (on multiprocess bases that would be a process): each request is a
:class:`Pending` record with the peers asked.  An answer counts only from the peer it was asked
of, once; the request finishes when the answers and this node make ``needed``, or when its timer
fires.

Primaries first (as Akka's Replicator does): a request asks at once only the peers it needs plus
:data:`EXTRA_PRIMARIES`, chosen at random among the reachable ones; the other reachable peers
(the secondaries) are asked only if it is still short after :func:`secondary_delay`.  So a
``WriteMajority`` at 32 nodes sends, and has answered, 18 messages rather than 31, while one or
two slow peers do not hold it up, and a peer that fails meanwhile costs it the delay, not its
timeout.  A primary found unreachable before the delay is replaced at once by a secondary.  A
level that needs every peer (``WriteAll``, ``ReadAll``, or more peers than are reachable) asks
them all at once, as before.

Unreachable peers are never asked.  A request that the reachable peers cannot satisfy yet waits
for more: every peer met while it is open (one that joins, comes back, or restarts) is asked too
(:meth:`Quorums.meet`) -- at once, unless the request still has secondaries to ask, which the
peer then joins -- so a node still meeting its peers after a start does not fail requests it
could serve a moment later.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from thespian_dd._runtime.protocol import RequestTimeout
from thespian_dd.messages import GetFailure, ReplicationDeleteFailure, UpdateTimeout

__all__ = [
    "EXTRA_PRIMARIES",
    "SECONDARY_DELAY_MAX",
    "AskSecondaries",
    "Pending",
    "Quorums",
    "secondary_delay",
]

EXTRA_PRIMARIES = 2
"""Peers a quorum request asks at once beyond the ones it needs, so that a slow peer or two
(a busy process, a collection pause) does not make it wait for the secondaries."""

SECONDARY_DELAY_MAX = 0.5
"""The longest a request waits for its primaries before it asks the secondaries (seconds)."""


def secondary_delay(timeout: float) -> float:
    """Seconds a request with timeout ``timeout`` gives its primaries: a fifth of its timeout
    (Akka's choice: time left for the secondaries to answer), at most
    :data:`SECONDARY_DELAY_MAX`."""
    return min(timeout / 5, SECONDARY_DELAY_MAX)


@dataclass(frozen=True)
class AskSecondaries:
    """Wakeup payload: a quorum request's primaries had their time."""

    request_id: str


@dataclass
class Pending:
    """A quorum request waiting for peers: an Update, Delete or Get."""

    kind: str  # "update" | "delete" | "get"
    client: Any
    key: str
    request: Any
    needed: int
    asked: dict[str, Any] = field(default_factory=dict)  # node name -> the address asked
    # The secondaries, by node name, not asked yet: asked after the delay if still short.
    secondaries: dict[str, Any] = field(default_factory=dict)
    # Whether a peer met is asked at once (no secondaries are waiting for the delay).
    widened: bool = False
    answered: set[str] = field(default_factory=set)
    results: list[bytes | None] = field(default_factory=list)
    id_: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def primaries(self) -> int:
        """How many peers it asks at once: the ``needed - 1`` it needs besides this node, and
        :data:`EXTRA_PRIMARIES` more."""
        return self.needed - 1 + EXTRA_PRIMARIES

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
    """The open requests.  ``wake(seconds, payload)`` arms a timer whose payload comes back:
    a :class:`~thespian_dd._runtime.protocol.RequestTimeout` to :meth:`timed_out`, an
    :class:`AskSecondaries` to :meth:`secondaries_due`.  ``rng`` orders the peers."""

    def __init__(self, wake: Callable[[float, Any], None], rng: random.Random) -> None:
        self._wake = wake
        self._random = rng
        self._open: dict[str, Pending] = {}

    def open(self, pending: Pending, peers: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Register ``pending`` with its timer, ``peers`` (name -> address) being the reachable
        peers; returns the primaries, which the caller asks now.  The rest wait as secondaries,
        with their own timer.  (It waits for answers, and for more peers if these cannot make
        ``needed``.)"""
        names = list(peers)
        self._random.shuffle(names)
        count = pending.primaries
        pending.asked = {name: peers[name] for name in names[:count]}
        pending.secondaries = {name: peers[name] for name in names[count:]}
        pending.widened = not pending.secondaries
        self._open[pending.id_] = pending
        self._wake(timeout, RequestTimeout(pending.id_))
        if pending.secondaries:
            self._wake(secondary_delay(timeout), AskSecondaries(pending.id_))
        return dict(pending.asked)

    def secondaries_due(self, request_id: str) -> tuple[Pending, dict[str, Any]] | None:
        """The request whose primaries had their time, if it is still open and short, and its
        secondaries, now marked as asked; the caller asks them.  From now on a peer met is
        asked at once."""
        pending = self._open.get(request_id)
        if pending is None or pending.widened or pending.enough():
            return None
        due, pending.secondaries, pending.widened = pending.secondaries, {}, True
        pending.asked.update(due)
        return pending, due

    def meet(self, name: str, address: Any) -> list[Pending]:
        """Peer ``name`` is reachable at ``address`` (new, back, or a new incarnation): the open
        requests that have not asked it there and ask it now, marked as asking it; the caller
        sends them.  One it answered already (at another address) keeps that answer.  A request
        that has its primaries and still waits to ask its secondaries keeps it as one."""
        met = []
        for pending in self._open.values():
            if name in pending.answered or pending.asked.get(name) == address:
                continue
            if name in pending.asked or pending.widened or len(pending.asked) < pending.primaries:
                pending.secondaries.pop(name, None)
                pending.asked[name] = address
                met.append(pending)
            else:
                pending.secondaries[name] = address
        return met

    def lost(self, name: str) -> list[tuple[Pending, str, Any]]:
        """Peer ``name`` is unreachable: it is no longer a secondary of any request, and each
        open request that asked it and has secondaries waiting asks one of them in its place
        at once: (request, name, address) for the caller to send."""
        replacements = []
        for pending in self._open.values():
            if pending.widened:
                continue
            pending.secondaries.pop(name, None)
            if name in pending.asked and name not in pending.answered and pending.secondaries:
                other = next(iter(pending.secondaries))  # they are in random order
                address = pending.secondaries.pop(other)
                pending.asked[other] = address
                replacements.append((pending, other, address))
            # No secondaries left to wait for: a peer met is asked at once.
            pending.widened = not pending.secondaries
        return replacements

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
