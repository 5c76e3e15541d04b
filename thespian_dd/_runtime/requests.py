"""Requests that need peers, both sides: the reads and writes this node coordinates (open a
quorum request, ask its primaries, then secondaries, read repair, reply after the store), and
the peers' reads and writes it answers (``PeerRead`` / ``PeerWrite``).

The bookkeeping of the open requests is :class:`~thespian_dd._runtime.quorums.Quorums`'; this
class sends through the callables it is given, so it runs without processes in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from thespian_dd._runtime.checks import timeout_of
from thespian_dd._runtime.durability import Durability
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.membership import Membership
from thespian_dd._runtime.peers import Peer
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    PeerMessage,
    PeerRead,
    PeerReadResult,
    PeerWrite,
    PeerWriteAck,
    RequestTimeout,
)
from thespian_dd._runtime.quorums import AskSecondaries, Pending, Quorums
from thespian_dd.data import ReplicaId
from thespian_dd.messages import (
    DeleteSuccess,
    GetDataDeleted,
    GetSuccess,
    NotFound,
    ReadConsistency,
    StoreFailure,
    UpdateSuccess,
    WriteConsistency,
)

__all__ = ["Requests"]


@dataclass
class Requests:
    """Quorum reads and writes.  ``send`` is the actor's (replies to clients); peers are sent
    to through ``membership``; ``merge(key, payload, origin)`` merges a peer's value (read
    repair and ``PeerWrite``)."""

    quorums: Quorums
    keys: KeyTable
    membership: Membership
    durability: Durability
    send: Callable[[Any, Any], None]
    merge: Callable[[str, object, str], bool | None]

    # -- coordinating ----------------------------------------------------------------------------

    def read(self, client: Any, key: str, request: Any, consistency: ReadConsistency) -> None:
        """Answer a Get now, or once enough peers have answered (their values merged first)."""
        needed = consistency.replicas_needed(self.membership.peers.replica_count())
        if needed <= 1 or self.keys.is_deleted(key):
            self.reply_get(client, key, request)
        else:
            self._open(Pending("get", client, key, request, needed), timeout_of(consistency))

    def write(
        self, kind: str, client: Any, key: str, request: Any, consistency: WriteConsistency
    ) -> None:
        """Acknowledge a local write (``kind`` "update" or "delete") now, or once enough peers
        have it."""
        needed = consistency.replicas_needed(self.membership.peers.replica_count())
        if needed <= 1:
            self._acknowledge(kind, client, key, request)
        else:
            self._open(Pending(kind, client, key, request, needed), timeout_of(consistency))

    def reply_get(self, client: Any, key: str, request: Any) -> None:
        value = self.keys.get(key)
        if self.keys.is_deleted(key):
            self.send(client, GetDataDeleted(key, request))
        elif value is not None:
            self.send(client, GetSuccess(key, request, value))
        else:
            self.send(client, NotFound(key, request))

    def _open(self, pending: Pending, timeout: float) -> None:
        """Open a quorum request and ask its primaries among the reachable peers (the
        secondaries if still short after a delay, more peers as they are met)."""
        targets = self.membership.peers.targets()
        for name, address in self.quorums.open(pending, targets, timeout).items():
            self._ask(pending, name, address)

    def _ask(self, pending: Pending, name: str, address: Any) -> None:
        me = self.membership.me()
        if pending.kind == "get":
            message: PeerMessage = PeerRead(PROTOCOL_VERSION, me, pending.id_, pending.key)
        else:
            payload = self.keys.payload(pending.key, self.membership.versions.format(name))
            if payload is None:
                return  # expired meanwhile: nothing to replicate
            message = PeerWrite(PROTOCOL_VERSION, me, pending.id_, pending.key, payload)
        self.membership.send(name, address, message)

    def met(self, peer: Peer) -> None:
        """``peer`` is reachable (it joined, came back, or restarted): the open quorum requests
        ask it too."""
        name = peer.replica.node
        if name not in self.membership.peers.blocked:
            for pending in self.quorums.meet(name, peer.address):
                self._ask(pending, name, peer.address)

    def dead(self, replica: ReplicaId) -> None:
        """The transport says ``replica``'s node is gone: unreachable without waiting for the
        failure timeout."""
        peers = self.membership.peers
        peer = peers.get(replica.node)
        if peer is not None and peer.reachable and peer.replica == replica:
            peers.unreachable(replica)
            self.lost(peer)

    def lost(self, peer: Peer) -> None:
        """``peer`` became unreachable: the open quorum requests that asked it and have
        secondaries waiting ask one in its place."""
        for pending, name, address in self.quorums.lost(peer.replica.node):
            self._ask(pending, name, address)

    def timer(self, payload: RequestTimeout | AskSecondaries) -> None:
        if isinstance(payload, RequestTimeout):
            pending = self.quorums.timed_out(payload.request_id)
            if pending is not None:
                self._finish(pending, timed_out=True)
            return
        due = self.quorums.secondaries_due(payload.request_id)
        if due is not None:
            pending, peers = due
            for name, address in peers.items():
                self._ask(pending, name, address)

    def on_answer(self, msg: PeerWriteAck | PeerReadResult, sender: Any) -> None:
        """A peer's answer to a request of this node (a read's result is kept for the reply)."""
        pending = self.quorums.answer(msg.request_id, msg.sender.node, sender)
        if pending is None:
            return
        if isinstance(msg, PeerReadResult):
            pending.results.append(msg.payload if isinstance(msg.payload, bytes) else None)
        if pending.enough():
            self._finish(pending, timed_out=False)

    def _finish(self, pending: Pending, *, timed_out: bool) -> None:
        self.quorums.close(pending)
        key, request, client = pending.key, pending.request, pending.client
        if timed_out:
            self.send(client, pending.timeout_reply())
        elif pending.kind == "get":
            for payload in pending.results:
                if payload is not None:
                    self.merge(key, payload, "read repair")
            self.reply_get(client, key, request)
        else:
            self._acknowledge(pending.kind, client, key, request)

    def _acknowledge(self, kind: str, client: Any, key: str, request: Any) -> None:
        """Reply to a write once it is stored (at once if it need not be)."""
        success = (UpdateSuccess if kind == "update" else DeleteSuccess)(key, request)
        failure = partial(StoreFailure, key, request)
        self.durability.reply_when_stored(key, client, success, failure)

    # -- answering -------------------------------------------------------------------------------

    def on_write(self, msg: PeerWrite) -> None:
        """A peer's quorum write: merged, and acknowledged once stored here (a durable key).
        A value refused here is not acknowledged (as Akka's WriteNack): it is not held here."""
        if self.merge(msg.key, msg.payload, str(msg.sender)) is None:
            return
        peer = self.membership.sender(msg)
        if (
            peer is not None
            and peer.replica.node not in self.membership.peers.blocked
            and isinstance(msg.key, str)
        ):
            ack = PeerWriteAck(PROTOCOL_VERSION, self.membership.me(), msg.request_id)
            self.durability.reply_when_stored(msg.key, peer.address, ack, None)

    def on_read(self, msg: PeerRead) -> None:
        """A peer's quorum read: answered with this node's value in the pair's format."""
        peer = self.membership.sender(msg)
        if peer is not None and isinstance(msg.key, str):
            payload = self.keys.payload(msg.key, self.membership.versions.format(peer.replica.node))
            result = PeerReadResult(
                PROTOCOL_VERSION, self.membership.me(), msg.request_id, msg.key, payload
            )
            self.membership.reply(peer, result)
