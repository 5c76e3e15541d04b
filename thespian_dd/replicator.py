"""The Replicator: one actor per node (ActorSystem) that owns the node's replicated data.

It answers the protocol of :mod:`thespian_dd.messages` and keeps the node's replicas in step with
its peers (the Replicators of the other nodes).  Its handlers validate and delegate to the parts
in :mod:`thespian_dd._runtime`, plain classes each with its own tests:

- ``KeyTable`` (keys): values, tombstones, pruning markers, digests and buckets, last use;
- ``PeerTable`` (peers): membership, failure detection, N and majority; the ``Introducer``;
- ``SendWindow`` (window): transmit slots per peer;
- ``DeltaQueue`` (deltas), ``Quorums`` (quorums), ``Subscriptions`` (subscriptions);
- ``Pruning`` (pruning) and anti-entropy (antientropy);
- ``Durability`` (durability): loading gate, group commit, replies after commit, the writer;
- ``Settings`` (settings), the request checks (checks), the peer protocol (protocol).

Thespian facts it relies on: an exception escaping a handler makes
Thespian retry the message and then bounce it, with the actor's state as the first attempt left
it, so handlers validate first and change state last; ``ActorAddress`` is not hashable, so
subscribers are kept in lists and compared with ``==``.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from functools import partial
from typing import Any

from thespian.actors import (
    ActorAddress,
    ActorExitRequest,
    ActorSystemMessage,
    ActorTypeDispatcher,
    ChildActorExited,
    DeadEnvelope,
    PoisonMessage,
    ThespianWatch,
    WakeupMessage,
    WatchMessage,
)
from thespian.system.transport import asyncTransportBase

from thespian_dd import codec
from thespian_dd._ask import ask_until, new_token
from thespian_dd._canonical import CodecError, Limits
from thespian_dd._runtime.antientropy import AntiEntropy
from thespian_dd._runtime.checks import (
    Rejections,
    consistency_error,
    describe,
    failure_reply,
    key_error,
    seconds,
    timeout_of,
)
from thespian_dd._runtime.deltas import DeltaQueue
from thespian_dd._runtime.durability import Durability
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import Markers
from thespian_dd._runtime.peers import Admission, Introducer, Peer, PeerTable
from thespian_dd._runtime.protocol import (
    NODE_CAPABILITY,
    PROTOCOL_VERSION,
    DecodeTick,
    DeltaPropagation,
    DeltaTick,
    DescribeProcess,
    Every,
    FlushTick,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    Heartbeat,
    Introduce,
    Introduced,
    IntroducerDone,
    NotifyTick,
    PartitionForTests,
    PeerHello,
    PeerMessage,
    PeerRead,
    PeerReadResult,
    PeerRemoved,
    PeerWrite,
    PeerWriteAck,
    ProcessInfo,
    ReplicatorStarted,
    RequestTimeout,
    StartReplicator,
    StoreRetry,
    gossip_bytes,
)
from thespian_dd._runtime.pruning import PrunedHere, Pruning, merge_payload
from thespian_dd._runtime.quorums import AskSecondaries, Pending, Quorums
from thespian_dd._runtime.settings import CAPABILITY_PREFIX, Settings, matches
from thespian_dd._runtime.store import safe_url
from thespian_dd._runtime.subscriptions import Notification, Subscriptions
from thespian_dd._runtime.updates import modified, update_error
from thespian_dd._runtime.versions import MINE, PROTOCOL_VERSIONS, Versions
from thespian_dd._runtime.window import SendWindow, poll_selectors, transmit_within
from thespian_dd._runtime.writer import (
    FORGOTTEN,
    CommitThread,
    DurableWriter,
    Entry,
    LoadChunk,
    Loaded,
    Written,
)
from thespian_dd.data import (
    RemovedNodePruning,
    ReplicaId,
    ReplicatedData,
)
from thespian_dd.lwwregister import now_ms
from thespian_dd.messages import (
    Changed,
    DataDeleted,
    Delete,
    Deleted,
    DeleteSuccess,
    Expired,
    FlushChanges,
    Get,
    GetDataDeleted,
    GetFailure,
    GetKeys,
    GetReplicaCount,
    GetStats,
    GetStatus,
    GetSuccess,
    InvalidRequest,
    Keys,
    ModifyFailure,
    NotFound,
    PeerStatus,
    ReadConsistency,
    ReplicaCount,
    ReplicationDeleteFailure,
    Stats,
    Status,
    StoreFailure,
    Subscribe,
    Unsubscribe,
    Update,
    UpdateDataDeleted,
    UpdateSuccess,
    WriteConsistency,
)

# With the messages of start() and of the node command, whose wire names are this module's.
__all__ = [
    "CAPABILITY_PREFIX",
    "REPLICATOR_NAME",
    "DescribeProcess",
    "ProcessInfo",
    "Replicator",
    "ReplicatorStarted",
    "Settings",
    "StartReplicator",
    "start",
]


REPLICATOR_NAME = "thespian_dd.replicator"
"""The globalName of every node's Replicator."""

log = logging.getLogger(__name__)

SYSTEM_NAME = "Thespian ActorSystem Name"
WATCHING_SYSTEM = "multiprocTCPBase"
"""The system base (a capability of every ActorSystem) whose actors can watch a descriptor."""

DECODE_SLICE = 0.02
DECODE_PAUSE = 0.005
"""After a load, restored values are decoded in slices of DECODE_SLICE seconds, DECODE_PAUSE
apart: the node serves at once, and no request waits long behind the decoding."""


class Replicator(ActorTypeDispatcher):  # type: ignore[misc]
    """The node's replicated data.  Create it with ``thespian_dd.start(asys, **settings)``, or
    ``asys.createActor(Replicator, globalName=REPLICATOR_NAME)`` (settings then come from the
    ActorSystem's ``thespian_dd.*`` capabilities)."""

    def __init__(
        self, capabilities: Mapping[str, Any] | None = None, *args: Any, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._capabilities = dict(capabilities or {})
        self._settings: Settings | None = None
        self._settings_error: str | None = None
        self._node: ReplicaId | None = None
        self._rejections = Rejections(log)
        self._refused = 0  # stored rows refused at load
        self._gossip_in = 0
        self._gossip_rounds = 0
        self._delta_armed = False  # a DeltaTick is due
        self._commits: CommitThread | None = None

    # -- start-up --------------------------------------------------------------------------------

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        self._dispatch_message(msg, sender)
        # Thespian watches what the last handler returned: the commit thread's answers wake us.
        return ThespianWatch([self._commits.fd]) if self._commits is not None else None

    def _dispatch_message(self, msg: Any, sender: Any) -> None:
        # Not ``_receive``: simpleSystemBase sets an attribute of that name on every actor.
        if self._settings is None and not isinstance(msg, ActorSystemMessage):
            self._configure(msg.settings if isinstance(msg, StartReplicator) else None)
        if isinstance(msg, ActorSystemMessage) and self._serving():
            super().receiveMessage(msg, sender)
            return
        try:
            if not self._serving():
                self._while_loading(msg, sender)
                return
            super().receiveMessage(msg, sender)
        except Exception as e:  # noqa: BLE001 - bad input must not escape the Replicator
            # A field missing (another version) or of a type a handler trips on.  Escaping, it
            # would make Thespian retry the message and bounce it: no reply of its family.
            self._rejections.refuse()
            reason = describe(e)
            kind = type(msg).__name__
            self._rejections.warn_once(kind, reason, "rejected a malformed %s: %s", kind, reason)
            self._refuse(msg, sender, f"malformed {kind}: {reason}")

    def _serving(self) -> bool:
        return self._settings is None or self._durability.serving

    def _while_loading(self, msg: Any, sender: Any) -> None:
        """Before serving: the load's own messages and timers go through; the rest waits for
        the load, or is refused while the store cannot be loaded."""
        error = self._durability.load_error
        if isinstance(msg, (LoadChunk, Loaded, WakeupMessage, ActorSystemMessage)):
            super().receiveMessage(msg, sender)
        elif isinstance(msg, GetReplicaCount):
            self.send(sender, ReplicaCount(0, msg.request))  # not serving yet
        elif isinstance(msg, GetStats):
            self.receiveMsg_GetStats(msg, sender)  # serving=False; store_error tells why
        elif isinstance(msg, GetStatus):
            self.receiveMsg_GetStatus(msg, sender)  # serving=False, and how far the load is
        elif error is not None:
            self._refuse(msg, sender, f"the store cannot be loaded: {error}")
        else:
            self._durability.stash(msg, sender)  # answered in order once recovered

    def _configure(self, explicit: Mapping[str, Any] | None) -> None:
        """Take the settings (capabilities, then ``explicit``), make the parts and start: at once
        in memory, or after loading every stored row of this node."""
        values = Settings.from_capabilities(self._capabilities)
        values.update(explicit or {})
        try:
            settings = Settings.from_mapping(values)
        except (TypeError, ValueError) as e:
            log.warning("thespian_dd settings refused, using the defaults: %s", e)
            self._settings_error = str(e)
            settings = Settings()
        self._settings = settings
        name = settings.node_name or (
            f"{socket.gethostname()}:{self._capabilities.get('Admin Port', 'local')}"
        )
        # A new incarnation per start: the start time in ms (with a store, above every stored one).
        self._node = ReplicaId(name, now_ms())
        self._keys = KeyTable(settings.expiry, refused=self._refused_on_decode)
        self._peers = PeerTable(
            failure_timeout=settings.failure_timeout,
            removal_timeout=settings.removal_timeout,
            pruned=self._keys.pruned,
            refused=lambda replica, address: self.send(address, self._removed(replica)),
            replaced=self._forget_incarnation,
        )
        poll_selectors()  # this process's transport: a cheaper turn of its loop
        self._transmit_fn = transmit_within(self, settings.failure_timeout)
        self._window = SendWindow(
            self._transmit_fn,
            asyncTransportBase.MAX_PENDING_TRANSMITS,
            peer_count=lambda: len(self._peers),
            dead=self._dead,
            grow=_grow_transmits,
            delivered=self._delivered,
        )
        self._random = random.Random()  # noqa: S311 - picks gossip peers and quorum primaries
        self._deltas = DeltaQueue()
        self._versions = Versions()
        self._anti_entropy = AntiEntropy(
            self._keys,
            lambda: self.node,
            self._merge_remote,
            settings.max_gossip_bytes,
            self._rejections,
            format_for=self._versions.format,
            # Deltas bring changing buckets level; without deltas, gossip is all there is.
            settle=settings.gossip_interval if settings.delta_interval else 0.0,
        )
        self._quorums = Quorums(self.wakeupAfter, self._random)
        self._subscriptions = Subscriptions(
            transmit=self._transmit_fn,
            wake=self.wakeupAfter,
            interval=settings.notify_interval,
            dropped=lambda address: log.info("dropped a subscriber that is gone: %s", address),
        )
        self._pruning = Pruning(settings, self._keys)
        # Sync commits on a thread of this process where Thespian can wake the actor for its
        # answers (multiprocTCPBase); elsewhere (simpleSystemBase: no watches) the DurableWriter
        # commits them too.  See docs/durability.md.
        if settings.store is not None and self._capabilities.get(SYSTEM_NAME) == WATCHING_SYSTEM:
            self._commits = CommitThread()
        self._durability = Durability(
            settings=settings,
            node_name=name,
            send=self.send,
            wake=self.wakeupAfter,
            create_writer=lambda: self.createActor(DurableWriter),
            entry=self._entry,
            commit=self._commits.submit if self._commits is not None else None,
        )
        if settings.store is None:
            self._serve()
        else:
            self._durability.start()

    def receiveMsg_LoadChunk(self, msg: LoadChunk, sender: Any) -> None:
        if not self._durability.chunk(msg, sender):
            return
        limits = Limits(max_bytes=self.settings.max_value_bytes)
        for key, error in self._keys.restore_rows(msg.rows, limits):
            self._refused_on_decode(key, error)
        self._refuse_rows(len(msg.skipped))

    def _refused_on_decode(self, key: str, error: CodecError) -> None:
        """A stored row refused here (its markers or, when first used, its value do not
        decode): counted and logged as the DurableWriter logs a row refused at load."""
        self._refuse_rows(1)
        log.error("skipped stored key %r of %s: %s", key, self.node.node, error)

    def _refuse_rows(self, n: int) -> None:
        self._rejections.refuse(n)
        self._refused += n

    def receiveMsg_Loaded(self, msg: Loaded, sender: Any) -> None:
        outcome = self._durability.loaded(msg, sender)
        if outcome is None:
            return  # from a DurableWriter that was replaced, or forged by another actor
        if outcome.incarnation is None:
            if outcome.first:
                for message, client in self._durability.take_stash():
                    self._refuse(message, client, f"the store cannot be loaded: {outcome.error}")
            self._forget_loaded()
            return
        self._node = ReplicaId(self.node.node, outcome.incarnation)
        log.info(
            "thespian_dd %s recovered %d keys in %.3f s (%d stored rows refused)",
            self._node,
            len(self._keys) + self._keys.tombstones(),
            self._durability.recovery_time,
            self._refused,
        )
        self._serve()
        if self._keys.undecoded():
            self.wakeupAfter(DECODE_PAUSE, DecodeTick())
        for message, client in self._durability.take_stash():
            self.receiveMessage(message, client)

    def receiveMsg_Written(self, msg: Written, sender: Any) -> None:
        self._durability.written(msg, sender)

    def receiveMsg_WatchMessage(self, msg: WatchMessage, sender: Any) -> None:
        if self._commits is not None:
            for written in self._commits.drain():
                self._durability.committed(written)

    def createActor(self, *args: Any, **kw: Any) -> Any:
        """Thespian's, with the commit thread ended first: creating a child forks this process,
        and the child must not inherit a thread's locks nor an open connection (see
        :class:`~thespian_dd._runtime.writer.CommitThread`).  An actor wanted on another node
        (an Introducer) is created by the admin, not forked here: the thread commits on."""
        if self._commits is not None and not kw.get("targetActorRequirements"):
            self._commits.pause()
        return super().createActor(*args, **kw)

    def _forget_loaded(self) -> None:
        """Drop what a failed or abandoned load restored: the next load starts from nothing."""
        self._keys.clear()
        self._rejections.reset()
        self._refused = 0

    def _serve(self) -> None:
        self.handleDeadLetters(startHandling=True)
        self.notifyOnSystemRegistrationChanges(True)
        rounds = [("_gossip_round", "gossip_interval"), ("_pruning_round", "pruning_interval")]
        for method, interval in rounds:
            self.wakeupAfter(getattr(self.settings, interval), Every(method, interval))
        log.info("thespian_dd Replicator %s ready", self._node)

    def _refuse(self, msg: Any, sender: Any, error: str) -> None:
        """Answer a request the Replicator cannot serve with the failure of its family."""
        if isinstance(msg, StartReplicator):
            self.send(sender, ReplicatorStarted(self.node, asdict(self.settings), msg.token, error))
        elif (reply := failure_reply(msg, error)) is not None:
            self.send(sender, reply)

    @property
    def node(self) -> ReplicaId:
        """This node's :class:`~thespian_dd.ReplicaId` in the current incarnation."""
        assert self._node is not None
        return self._node

    @property
    def settings(self) -> Settings:
        """The :class:`~thespian_dd.Settings` this Replicator runs with."""
        assert self._settings is not None
        return self._settings

    def receiveMsg_StartReplicator(self, msg: StartReplicator, sender: Any) -> None:
        error = self.settings.conflict(msg.settings) or self._settings_error
        started = ReplicatorStarted(self.node, asdict(self.settings), msg.token, error)
        self.send(sender, started)

    # -- local state -----------------------------------------------------------------------------

    def _store(
        self,
        key: str,
        value: ReplicatedData | None,
        raw: bytes | None = None,
        *,
        markers: Markers | None = None,
        notify: bool = True,
    ) -> None:
        """Keep ``value`` for ``key`` (None: a tombstone; ``raw``: its encoding if known;
        ``markers``: its new pruning markers, None: unchanged), tell subscribers (if
        ``notify``), and write it durably."""
        if value is None:
            self._keys.delete(key)
        else:
            self._keys.put(key, value, raw, markers)
        if notify:
            self._subscriptions.changed(key)
        self._durability.write(key, raw)

    def _entry(self, key: str, raw: bytes | None) -> Entry | None:
        """What the store gets for ``key``: its current state, encoded once per batch in this
        node's format (a row of an older format is upgraded so)."""
        value = self._keys.get(key)
        payload = None if value is None else self._keys.envelope(key, raw)
        if value is None or payload is None:
            return None if self._keys.is_deleted(key) else FORGOTTEN
        replicas = value.modified_by_nodes() if isinstance(value, RemovedNodePruning) else ()
        return Entry(codec.type_name(value), payload, " ".join(sorted(str(r) for r in replicas)))

    def _merge_remote(self, key: Any, payload: object, origin: str, used: object = None) -> bool:
        """Merge a peer's value into ``key``; returns whether anything changed.  A payload that
        is malformed, of another type than the local value, or too big after the merge is
        rejected for this key only: counted, logged once, and nothing changes.  ``used``: when
        the peer says the key was last used, if it expires after inactivity."""
        at = seconds(used)
        if isinstance(key, str) and key not in self._keys and self._keys.expired(key, at):
            return False  # it expired there; it must not come back here
        try:
            merged = merge_payload(
                self._keys,
                key,
                payload,
                me=self.node,
                max_bytes=self.settings.max_value_bytes,
                at_ms=now_ms(),
            )
        except Exception as e:  # noqa: BLE001 - peer data must never raise in the Replicator
            if isinstance(e, PrunedHere):
                self._reincarnate()
            self._rejections.refuse()
            reason = describe(e)
            self._rejections.warn_once(
                origin, reason, "rejected the value of %r from %s: %s", key, origin, reason
            )
            return False
        if merged is None:
            return False
        if merged.value is None:
            self._store(key, None, notify=merged.changed)
            return True
        self._store(key, merged.value, merged.raw, markers=merged.markers, notify=merged.changed)
        self._keys.touch(key, at)
        return True

    # -- reads and writes ------------------------------------------------------------------------

    def receiveMsg_Get(self, msg: Get, sender: Any) -> None:
        error = key_error(msg.key) or consistency_error(msg.consistency, ReadConsistency)
        if error:
            self._reject(sender, GetFailure(msg.key, msg.request, error))
            return
        if msg.key in self._keys:
            self._keys.touch(msg.key)
        needed = msg.consistency.replicas_needed(self._peers.replica_count())
        if needed <= 1 or self._keys.is_deleted(msg.key):
            self._reply_get(sender, msg.key, msg.request)
            return
        pending = Pending("get", sender, msg.key, msg.request, needed)
        self._ask_peers(pending, timeout_of(msg.consistency))

    def _reply_get(self, client: Any, key: str, request: Any) -> None:
        value = self._keys.get(key)
        if self._keys.is_deleted(key):
            self.send(client, GetDataDeleted(key, request))
        elif value is not None:
            self.send(client, GetSuccess(key, request, value))
        else:
            self.send(client, NotFound(key, request))

    def receiveMsg_Update(self, msg: Update, sender: Any) -> None:
        current = self._keys.get(msg.key) if isinstance(msg.key, str) else None
        deleted = isinstance(msg.key, str) and self._keys.is_deleted(msg.key)
        error, malformed = update_error(msg, current, deleted=deleted)
        if error is not None:
            self._rejections.refuse(int(malformed))
            self.send(sender, ModifyFailure(msg.key, msg.request, error))
            return
        if deleted:
            self.send(sender, UpdateDataDeleted(msg.key, msg.request))
            return
        try:
            new, delta = modified(msg, current, self.node)
        except BaseException as e:  # noqa: BLE001 - whatever modify raises (SystemExit too) is
            # the caller's failure: it must not end the node's Replicator
            self.send(sender, ModifyFailure(msg.key, msg.request, f"modify failed: {describe(e)}"))
            return
        self._store(msg.key, new)
        self._keys.touch(msg.key)
        self._queue_delta(msg.key, delta)
        self._replicate("update", sender, msg.key, msg.request, msg.consistency)

    def receiveMsg_Delete(self, msg: Delete, sender: Any) -> None:
        error = key_error(msg.key) or consistency_error(msg.consistency, WriteConsistency)
        if error:
            self._reject(sender, ReplicationDeleteFailure(msg.key, msg.request, error))
        elif self._keys.is_deleted(msg.key):
            self.send(sender, DataDeleted(msg.key, msg.request))
        else:
            self._store(msg.key, None)
            self._queue_delta(msg.key, None)
            self._replicate("delete", sender, msg.key, msg.request, msg.consistency)

    def _replicate(
        self, kind: str, client: Any, key: str, request: Any, consistency: WriteConsistency
    ) -> None:
        """Acknowledge a local write now, or once enough peers have it."""
        needed = consistency.replicas_needed(self._peers.replica_count())
        if needed <= 1:
            self._acknowledge(kind, client, key, request)
            return
        pending = Pending(kind, client, key, request, needed)
        self._ask_peers(pending, timeout_of(consistency))

    def _ask_peers(self, pending: Pending, timeout: float) -> None:
        """Open a quorum request and ask its primaries among the reachable peers (the
        secondaries if still short after a delay, more peers as they are met)."""
        for name, address in self._quorums.open(pending, self._peers.targets(), timeout).items():
            self._ask_peer(pending, name, address)

    def _ask_peer(self, pending: Pending, name: str, address: Any) -> None:
        if pending.kind == "get":
            message: PeerMessage = PeerRead(PROTOCOL_VERSION, self.node, pending.id_, pending.key)
        else:
            payload = self._keys.payload(pending.key, self._versions.format(name))
            if payload is None:
                return  # expired meanwhile: nothing to replicate
            message = PeerWrite(PROTOCOL_VERSION, self.node, pending.id_, pending.key, payload)
        self._peer_send(name, address, message)

    def _met(self, peer: Peer) -> None:
        """``peer`` is reachable (it joined, came back, or restarted): the open quorum requests
        ask it too."""
        name = peer.replica.node
        if name not in self._peers.blocked:
            for pending in self._quorums.meet(name, peer.address):
                self._ask_peer(pending, name, peer.address)

    def _dead(self, replica: ReplicaId) -> None:
        """The transport says ``replica``'s node is gone: unreachable without waiting for the
        failure timeout."""
        peer = self._peers.get(replica.node)
        if peer is not None and peer.reachable and peer.replica == replica:
            self._peers.unreachable(replica)
            self._lost(peer)

    def _delivered(self, replica: ReplicaId) -> None:
        """A message to ``replica`` was delivered: it is alive, and met again if it was not."""
        if (peer := self._peers.delivered(replica)) is not None:
            self._met(peer)

    def _lost(self, peer: Peer) -> None:
        """``peer`` became unreachable: the open quorum requests that asked it and have
        secondaries waiting ask one in its place."""
        for pending, name, address in self._quorums.lost(peer.replica.node):
            self._ask_peer(pending, name, address)

    def _finish(self, pending: Pending, *, timed_out: bool) -> None:
        self._quorums.close(pending)
        key, request, client = pending.key, pending.request, pending.client
        if timed_out:
            self.send(client, pending.timeout_reply())
        elif pending.kind == "get":
            for payload in pending.results:
                if payload is not None:
                    self._merge_remote(key, payload, "read repair")
            self._reply_get(client, key, request)
        else:
            self._acknowledge(pending.kind, client, key, request)

    def _acknowledge(self, kind: str, client: Any, key: str, request: Any) -> None:
        """Reply to a write once it is stored (at once if it need not be)."""
        success = (UpdateSuccess if kind == "update" else DeleteSuccess)(key, request)
        failure = partial(StoreFailure, key, request)
        self._durability.reply_when_stored(key, client, success, failure)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if sender != self.myAddress:  # a timer is only ever our own; another actor forged it
            self._rejections.refuse()
            return
        payload = msg.payload
        if isinstance(payload, Every):
            try:
                getattr(self, payload.round)()
            finally:  # a round that fails must not end the rounds
                self.wakeupAfter(getattr(self.settings, payload.interval), payload)
        elif isinstance(payload, NotifyTick):
            self._subscriptions.due()
            self._notify()
        elif isinstance(payload, (StoreRetry, FlushTick)):
            self._store_timer(payload)
        elif isinstance(payload, DeltaTick):
            self._delta_armed = False
            self._send_deltas()
        elif isinstance(payload, DecodeTick):
            if self._keys.decode_for(DECODE_SLICE):
                self.wakeupAfter(DECODE_PAUSE, payload)
        elif isinstance(payload, (RequestTimeout, AskSecondaries)):
            self._quorum_timer(payload)

    def _quorum_timer(self, payload: RequestTimeout | AskSecondaries) -> None:
        if isinstance(payload, RequestTimeout):
            pending = self._quorums.timed_out(payload.request_id)
            if pending is not None:
                self._finish(pending, timed_out=True)
            return
        due = self._quorums.secondaries_due(payload.request_id)
        if due is not None:
            pending, peers = due
            for name, address in peers.items():
                self._ask_peer(pending, name, address)

    def _store_timer(self, payload: StoreRetry | FlushTick) -> None:
        if isinstance(payload, FlushTick):
            self._durability.flush_due()
        elif self._durability.retry_due():
            self._durability.load()

    # -- pruning and expiry ----------------------------------------------------------------------

    def _pruning_round(self) -> None:
        """Expire markers; then, only while every peer is reachable, mark and prune."""
        live = self._peers.live(self.node)
        for key in self._pruning.expire_markers(live):
            self._durability.write(key, None)
        self._durability.keep_alive()
        # Which replicas the data holds is known once every restored value is decoded.
        if self._peers.all_reachable() and not self._keys.undecoded():
            for key in self._pruning.prune(self.node, live):
                self._durability.write(key, None)

    def _reincarnate(self) -> None:
        """Peers pruned this node's replica (it was removed while it still ran: unreachable
        longer than ``removal_timeout``).  Writing on under it would lose every new write, so it
        takes a new incarnation, as a restart would, and introduces itself again."""
        old = self.node
        self._node = ReplicaId(old.node, max(now_ms(), old.incarnation + 1))
        log.error(
            "thespian_dd %s was removed by its peers (unreachable longer than removal_timeout); "
            "it goes on as %s, and its writes its peers had not seen are lost",
            old,
            self._node,
        )
        hello = self._hello(reply=True)
        for peer in self._peers:
            self._peer_send(peer.replica.node, peer.address, hello)

    def receiveMsg_PeerRemoved(self, msg: PeerRemoved, sender: Any) -> None:
        if isinstance(msg, PeerMessage) and msg.removed == self._node:
            self._reincarnate()

    def _expire_keys(self) -> None:
        """Remove every key idle longer than its expiry: no tombstone, its row deleted, its
        subscribers told ``Expired``.  Used anywhere meanwhile, it comes back by gossip."""
        for key, used in self._keys.idle():
            self._keys.expire(key)
            self._deltas.drop(key)
            self._subscriptions.changed(key)
            self._durability.write(key, None)
            log.info("key %r expired after %.0f s without use", key, time.time() - used)

    # -- subscriptions ---------------------------------------------------------------------------

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: Any) -> None:
        subscriber = sender if msg.subscriber is None else msg.subscriber
        error = key_error(msg.key)
        if not error and not isinstance(subscriber, ActorAddress):
            error = f"subscriber must be an ActorAddress or None, not {type(subscriber).__name__}"
        if error:
            self._reject(sender, InvalidRequest("Subscribe", error))
            return
        self._subscriptions.subscribe(msg.key, subscriber)
        for key in sorted(self._keys.names()):
            if matches(msg.key, key) and (value := self._keys.get(key)) is not None:
                self._subscriptions.tell(subscriber, Changed(key, value))

    def receiveMsg_Unsubscribe(self, msg: Unsubscribe, sender: Any) -> None:
        subscriber = sender if msg.subscriber is None else msg.subscriber
        self._subscriptions.unsubscribe(msg.key, subscriber)

    def receiveMsg_FlushChanges(self, msg: FlushChanges, sender: Any) -> None:
        self._notify()

    def _notify(self) -> None:
        for key in self._subscriptions.take_changed():
            value = self._keys.get(key)
            message: Notification = (
                Deleted(key)
                if self._keys.is_deleted(key)
                else Expired(key)
                if value is None
                else Changed(key, value)
            )
            self._subscriptions.notify(message)

    def receiveMsg_DeadEnvelope(self, msg: DeadEnvelope, sender: Any) -> None:
        # Notifications and peer messages learn of a dead target from their send; a subscriber
        # may also be told of by the dead-letter route.
        if isinstance(msg.deadMessage, (Changed, Deleted, Expired)):
            self._subscriptions.drop(msg.deadAddress)

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        if isinstance(msg.poisonMessage, (Changed, Deleted, Expired)):
            self._subscriptions.drop(sender)

    # -- peers: sending, membership and failure detection ---------------------------------------

    def _peer_send(self, name: str, address: Any, message: PeerMessage) -> None:
        """Send ``message`` to a peer through its send window (to an address not in the peer
        table: once, outside any window)."""
        if name in self._peers.blocked:
            return
        if not self._versions.can_talk(name) and not isinstance(message, PeerHello):
            return  # never bytes a peer cannot read
        version = self._versions.protocol(name)
        if message.version != version:
            message = replace(message, version=version)
        peer = self._peers.get(name)
        replica = None if peer is None or peer.address != address else peer.replica
        self._window.send(replica, address, message)

    def _forget_incarnation(self, old: ReplicaId) -> None:
        """A peer's new incarnation replaced ``old``: its deltas were numbered per incarnation,
        and what its window held is moot."""
        self._deltas.forget(old)
        self._window.forget(old)
        self._versions.replaced(old)  # it may have restarted on another release

    def _removed(self, replica: ReplicaId) -> PeerRemoved:
        return PeerRemoved(PROTOCOL_VERSION, self.node, replica)

    def _hello(self, *, reply: bool) -> PeerHello:
        directory = self._peers.directory()
        return PeerHello(
            PROTOCOL_VERSION,
            self.node,
            self.myAddress,
            directory,
            reply,
            versions=MINE.announcement(),
        )

    def _accept(self, msg: Any, sender: Any) -> bool:
        """Whether a peer message may be handled: right version, sender not cut off.  Marks the
        sender alive."""
        verdict = self._peers.admit(msg, self.node)
        if verdict is not Admission.OK:
            if verdict in (Admission.MALFORMED, Admission.OTHER_VERSION):
                self._rejections.refuse()
            if verdict is Admission.OTHER_VERSION:
                reason = f"protocol version {msg.version!r} (this node speaks {PROTOCOL_VERSIONS})"
                kind, origin = type(msg).__name__, msg.sender
                self._rejections.warn_once(
                    origin.node, reason, "ignoring %s from %s: %s", kind, origin, reason
                )
            elif (
                verdict is Admission.REMOVED
                and isinstance(sender, ActorAddress)
                and not isinstance(msg, PeerRemoved)  # no answer to an answer
            ):
                self.send(sender, self._removed(msg.sender))
            return False
        origin = msg.sender
        if not self._heard_versions(msg):
            return False
        with contextlib.suppress(TypeError, AttributeError):  # malformed: the handler rejects it
            self._gossip_in += gossip_bytes(msg)
        peer = self._peers.get(origin.node)
        if (
            (peer is None or peer.replica < origin)
            and not isinstance(msg, PeerHello)
            and self._peers.learn(self.node, origin, sender)
        ):
            # A peer whose hello never came, or has not come yet (it restarted while this node
            # could not hear it; Thespian may deliver its next messages first): every peer
            # message but the hello (which an Introducer may carry) comes from its Replicator,
            # so that address is the one to learn.
            self._joined(origin)
            self._peer_send(origin.node, sender, self._hello(reply=False))
        elif peer is not None and peer.replica == origin and not peer.reachable:
            self._peers.heard(origin)
            self._met(peer)
        self._peers.heard(origin)
        return True

    def _heard_versions(self, msg: PeerMessage) -> bool:
        """Note the versions a hello or status announces; returns whether this node can talk
        to its sender (a peer it cannot talk to is said so once in the log, and shown in Stats
        and Status, and kept out of the peer table)."""
        node = msg.sender.node
        if isinstance(msg, (PeerHello, GossipStatus)):
            try:
                reason = self._versions.heard(node, msg.versions, msg.sender)
            except ValueError as e:
                self._rejections.refuse()
                self._rejections.warn_once(
                    node, "versions", "ignoring %s from %s: %s", type(msg).__name__, msg.sender, e
                )
                return False
            if reason is not None:
                log.error(
                    "thespian_dd cannot talk to peer %s: %s (see the upgrade procedure in the "
                    "operations guide); it is left out, this node serves on",
                    msg.sender,
                    reason,
                )
                gone = self._peers.drop(node)  # known before (from a directory): out of N
                if gone is not None:
                    self._window.forget(gone.replica)
                    self._lost(gone)
        return self._versions.can_talk(node)

    def _joined(self, replica: ReplicaId) -> None:
        log.info("peer %s joined (%d peers)", replica, len(self._peers))
        peer = self._peers.get(replica.node)
        if peer is not None:
            self._met(peer)

    def _learn_directory(self, directory: Mapping[str, tuple[ReplicaId, Any]]) -> None:
        talk = self._versions.can_talk
        directory = {name: entry for name, entry in directory.items() if talk(name)}
        for peer in self._peers.learn_all(self.node, directory):
            self._joined(peer.replica)
            self._peer_send(peer.replica.node, peer.address, self._hello(reply=True))

    def receiveMsg_ActorSystemConventionUpdate(self, msg: Any, sender: Any) -> None:
        name = (msg.remoteCapabilities or {}).get(NODE_CAPABILITY)
        if not isinstance(name, str) or name == self.node.node:
            return
        if not msg.remoteAdded:
            # The convention saw the node go (a graceful stop, or missed re-registrations).
            gone = self._peers.left(name)
            if gone is not None:
                log.info("peer %s left the convention", gone.replica)
                self._lost(gone)
            return
        introducer = self.createActor(Introducer, targetActorRequirements={NODE_CAPABILITY: name})
        self.send(introducer, Introduce(self._hello(reply=True)))

    def receiveMsg_IntroducerDone(self, msg: IntroducerDone, sender: Any) -> None:
        self.send(sender, Introduced())

    def receiveMsg_PeerHello(self, msg: PeerHello, sender: Any) -> None:
        if not self._accept(msg, sender):
            if (
                msg.reply
                and isinstance(msg, PeerHello)
                and isinstance(msg.sender, ReplicaId)
                and isinstance(msg.address, ActorAddress)
                and not self._versions.can_talk(msg.sender.node)
            ):
                # So that it learns why, and says so too (a hello carries no values).
                self._peer_send(msg.sender.node, msg.address, self._hello(reply=False))
            return
        if not isinstance(msg.address, ActorAddress):
            self._rejections.refuse()
            return
        if self._peers.learn(self.node, msg.sender, msg.address):
            self._joined(msg.sender)
        self._learn_directory(msg.peers)
        if msg.reply:
            self._peer_send(msg.sender.node, msg.address, self._hello(reply=False))
        peer = self._peers.get(msg.sender.node)
        lean = peer is None or peer.fanout
        # The keys used here go out with the round's statuses, to every peer: not to this one.
        status = self._status(msg.sender.node, lean, used={})
        self._peer_send(msg.sender.node, msg.address, status)

    def _status(self, node: str, lean: bool, used: dict[str, float] | None = None) -> GossipStatus:
        """The status for peer ``node``: digests in the pair's format; ``lean``: with the
        directory's digest only (a peer of an earlier release gets the directory too, as it
        expects)."""
        return self._anti_entropy.status(
            {} if lean else self._peers.directory(),
            self._peers.directory_digest(self.node),
            self._versions.format(node),
            used,
            MINE.announcement(),
        )

    def _gossip_round(self) -> None:
        self._gossip_rounds += 1
        self._expire_keys()
        kept, lost, removed = self._peers.sweep()
        for peer in lost:
            log.warning("peer %s is unreachable", peer.replica)
            self._lost(peer)
        for peer, silent in removed:
            # Gone for good: it no longer counts in N, and its replica will be pruned.
            self._window.forget(peer.replica)
            self._versions.forget(peer.replica.node)
            log.warning("peer %s removed: unreachable for %.0f s", peer.replica, silent)
        self._versions.forget_silent(self.settings.removal_timeout)
        self._keys.keep_formats(self._versions.formats(p.replica.node for p in kept))
        used = self._keys.take_used_here()
        # Keys used here that expire when idle: every peer must hear of it before it expires
        # them (as every peer did when every round went to all).
        statuses, heartbeats = self._peers.gossip_targets(
            self._window.quiet, self._random, everyone=bool(used)
        )
        # One status per codec format and shape the peers need (one, unless a rolling upgrade
        # is on: an earlier release reads older formats and wants the directory every round).
        made: dict[tuple[int, bool], GossipStatus] = {}
        for peer in statuses:
            node = peer.replica.node
            shape = (self._versions.format(node), peer.fanout)
            if shape not in made:
                made[shape] = self._status(node, peer.fanout, used)
            self._peer_send(node, peer.address, made[shape])
        if heartbeats:
            heartbeat = Heartbeat(PROTOCOL_VERSION, self.node)
            for peer in heartbeats:
                self._peer_send(peer.replica.node, peer.address, heartbeat)

    def receiveMsg_PartitionForTests(self, msg: PartitionForTests, sender: Any) -> None:
        if self._settings is None or not self._settings.test_partitions:
            self._rejections.warn_once(
                str(sender), "partition", "refused PartitionForTests: test_partitions is off"
            )
            self._reject(
                sender,
                InvalidRequest(
                    "PartitionForTests",
                    "this node was not started with the test-only setting test_partitions",
                ),
            )
            return
        self._peers.blocked = frozenset(msg.blocked)
        log.warning("TEST ONLY partition: ignoring peers %s", sorted(self._peers.blocked))

    # -- peers: anti-entropy and deltas ----------------------------------------------------------

    def receiveMsg_GossipStatus(self, msg: GossipStatus, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        self._learn_directory(msg.peers)
        peer = self._peers.get(msg.sender.node)
        if peer is None:
            return
        if isinstance(msg.directory, bytes):
            peer.fanout = True
            if (
                msg.directory != self._peers.directory_digest(self.node)
                and peer.directory_asked != self._gossip_rounds
            ):
                # The directories differ: ours goes with the hello, its comes back with the
                # answer (at most once a round, while they cannot agree: one side removed a
                # peer the other still has).
                peer.directory_asked = self._gossip_rounds
                self._reply(peer, self._hello(reply=True))
        if self._anti_entropy.on_status(msg, partial(self._reply, peer), force=peer.resync):
            peer.resync = False

    def receiveMsg_Heartbeat(self, msg: Heartbeat, sender: Any) -> None:
        self._accept(msg, sender)  # all it says: the sender is alive

    def receiveMsg_GossipKeys(self, msg: GossipKeys, sender: Any) -> None:
        if self._accept(msg, sender) and (peer := self._peers.get(msg.sender.node)) is not None:
            self._anti_entropy.on_keys(msg, partial(self._reply, peer))

    def receiveMsg_GossipEntries(self, msg: GossipEntries, sender: Any) -> None:
        if self._accept(msg, sender):
            peer = self._peers.get(msg.sender.node)
            self._anti_entropy.on_entries(msg, None if peer is None else partial(self._reply, peer))

    def _reply(self, peer: Peer, message: PeerMessage) -> None:
        self._peer_send(peer.replica.node, peer.address, message)

    def _queue_delta(self, key: str, delta: ReplicatedData | None) -> None:
        if self.settings.delta_interval and len(self._peers):
            if not self._delta_armed:
                # Armed by the first delta, not every interval: an idle node has no timer to
                # serve (at 32 nodes, 0.2 s timers cost about a third of a core).
                self._delta_armed = True
                self.wakeupAfter(self.settings.delta_interval, DeltaTick())
            self._deltas.add(key, delta)

    def _send_deltas(self) -> None:
        deltas = self._deltas.take()
        if not deltas:
            return
        messages: dict[int, DeltaPropagation] = {}  # one per codec format the peers use
        for peer in self._peers:
            if peer.reachable:
                version = self._versions.format(peer.replica.node)
                if version not in messages:
                    messages[version] = self._deltas.message(self.node, self._keys, deltas, version)
                self._reply(peer, messages[version])

    def receiveMsg_DeltaPropagation(self, msg: DeltaPropagation, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        want = self._deltas.on_propagation(msg, self._keys, self._merge_remote)
        peer = self._peers.get(msg.sender.node)
        if want and peer is not None:  # deltas were lost: ask for the whole values instead
            self._reply(peer, GossipEntries(PROTOCOL_VERSION, self.node, {}, frozenset(want)))

    # -- peers: quorum requests ------------------------------------------------------------------

    def receiveMsg_PeerWrite(self, msg: PeerWrite, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        self._merge_remote(msg.key, msg.payload, str(msg.sender))
        peer = self._peers.get(msg.sender.node)
        key = msg.key
        if (
            peer is not None
            and peer.replica.node not in self._peers.blocked
            and isinstance(key, str)
        ):
            # A durable key is acknowledged only once stored here.
            ack = PeerWriteAck(PROTOCOL_VERSION, self.node, msg.request_id)
            self._durability.reply_when_stored(msg.key, peer.address, ack, None)

    def receiveMsg_PeerRead(self, msg: PeerRead, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        peer = self._peers.get(msg.sender.node)
        if peer is not None and isinstance(msg.key, str):
            payload = self._keys.payload(msg.key, self._versions.format(peer.replica.node))
            self._reply(
                peer, PeerReadResult(PROTOCOL_VERSION, self.node, msg.request_id, msg.key, payload)
            )

    def receiveMsg_PeerWriteAck(self, msg: PeerWriteAck, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        pending = self._quorums.answer(msg.request_id, msg.sender.node, sender)
        if pending is not None and pending.enough():
            self._finish(pending, timed_out=False)

    def receiveMsg_PeerReadResult(self, msg: PeerReadResult, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        pending = self._quorums.answer(msg.request_id, msg.sender.node, sender)
        if pending is None:
            return
        pending.results.append(msg.payload if isinstance(msg.payload, bytes) else None)
        if pending.enough():
            self._finish(pending, timed_out=False)

    # -- information -----------------------------------------------------------------------------

    def receiveMsg_GetKeys(self, msg: GetKeys, sender: Any) -> None:
        self.send(sender, Keys(self._keys.names(), msg.request))

    def receiveMsg_GetReplicaCount(self, msg: GetReplicaCount, sender: Any) -> None:
        self.send(sender, ReplicaCount(1 + len(self._peers.targets()), msg.request))

    def receiveMsg_GetStats(self, msg: GetStats, sender: Any) -> None:
        durability = self._durability
        self.send(
            sender,
            Stats(
                node=str(self.node),
                keys=len(self._keys),
                peers=len(self._peers),
                gossip_bytes_in=self._gossip_in,
                gossip_bytes_out=self._window.bytes_out,
                store_queue_depth=durability.queue_depth(),
                last_flush=durability.last_flush,
                recovery_time=durability.recovery_time,
                rejected_inputs=self._rejections.count,
                subscribers=len(self._subscriptions),
                reachable_peers=self._peers.reachable_count(),
                gossip_rounds=self._gossip_rounds,
                store_failures=durability.store_failures,
                store_error=durability.error,
                refused_rows=self._refused,
                serving=durability.serving,
                incompatible_peers=self._incompatible(),
                request=msg.request,
            ),
        )

    def receiveMsg_GetStatus(self, msg: GetStatus, sender: Any) -> None:
        durability, settings, peers = self._durability, self.settings, self._peers
        sizes = list(self._keys.sizes())
        self.send(
            sender,
            Status(
                node=str(self.node),
                serving=durability.serving,
                loaded_rows=durability.loaded_rows,
                peers=tuple(
                    PeerStatus(
                        p.replica.node,
                        str(p.replica),
                        str(p.address),
                        p.reachable,
                        round(peers.silence(p), 3),
                        self._versions.describe(p.replica.node),
                    )
                    for p in sorted(peers, key=lambda p: p.replica.node)
                ),
                removed=tuple(sorted(str(r) for r in peers.departed)),
                keys=len(self._keys),
                tombstones=self._keys.tombstones(),
                value_bytes=sum(size for _, size in sizes),
                largest=tuple(heapq.nlargest(msg.largest, sizes, key=lambda ks: (ks[1], ks[0]))),
                store=safe_url(settings.store) if settings.store else None,
                write_mode=settings.write_mode,
                store_queue_depth=durability.queue_depth(),
                last_flush=durability.last_flush,
                store_error=durability.error,
                recovery_time=durability.recovery_time,
                incompatible_peers=self._incompatible(),
                request=msg.request,
            ),
        )

    def _incompatible(self) -> tuple[str, ...]:
        return tuple(f"{n}: {why}" for n, why in sorted(self._versions.incompatible.items()))

    def receiveMsg_DescribeProcess(self, msg: DescribeProcess, sender: Any) -> None:
        self.send(sender, ProcessInfo(os.getpid(), os.getpgid(0)))

    # -- everything else -------------------------------------------------------------------------

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self._settings is not None:
            self._durability.stop()
        if self._commits is not None:
            # Ended after committing what the stop flushed; its pipe is left open to the
            # process's exit: Thespian still watches it while this actor stops its children.
            self._commits.pause()
            self._commits = None

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if self._settings is not None and self._durability.writer_exited(msg.childAddress):
            self._forget_loaded()
            self._durability.load()

    def receiveMsg_ActorSystemMessage(self, msg: ActorSystemMessage, sender: Any) -> None:
        """Thespian's own messages that need nothing from us."""

    def receiveMsg_PeerMessage(self, msg: PeerMessage, sender: Any) -> None:
        self._rejections.refuse()  # a peer message of a kind this version does not know

    def receiveUnrecognizedMessage(self, msg: Any, sender: Any) -> None:
        self._reject(
            sender,
            InvalidRequest(
                type(msg).__name__,
                f"the Replicator does not understand a {type(msg).__qualname__}; "
                "see thespian_dd.messages for its protocol",
                getattr(msg, "request", None),
            ),
        )

    def _reject(self, sender: Any, reply: Any) -> None:
        self._rejections.refuse()
        self.send(sender, reply)


def _grow_transmits(slots: int) -> None:
    """Let this process (the Replicator's) have ``slots`` transmits in flight (see
    :mod:`thespian_dd._runtime.window`): Thespian reads the module global at every send."""
    asyncTransportBase.MAX_PENDING_TRANSMITS = slots


def start(asys: Any, *, timeout: float = 30.0, **settings: Any) -> Any:
    """Get or create this node's Replicator and return its address once it is ready to serve.

    Idempotent: a second call returns the same Replicator.  ``settings`` (see :class:`Settings`)
    apply when this call creates it; asking a running Replicator for different settings raises
    ``RuntimeError``.  Raises ``TimeoutError`` if the Replicator does not answer in ``timeout``.

    On a node that joins a cluster, a peer may create the Replicator (to introduce itself) before
    this call does: give such a node its settings as ``thespian_dd.<setting>`` capabilities of
    its ActorSystem, as ``python -m thespian_dd node`` does.
    """
    Settings.from_mapping(settings)  # a bad name or value fails here, in the caller
    address = asys.createActor(Replicator, globalName=REPLICATOR_NAME)
    token = new_token()
    reply = ask_until(
        asys,
        address,
        StartReplicator(dict(settings), token),
        lambda reply: isinstance(reply, ReplicatorStarted) and reply.token == token,
        timeout,
    )
    if reply is None:
        raise TimeoutError(f"the thespian_dd Replicator did not answer within {timeout} s")
    if reply.error:
        raise RuntimeError(f"thespian_dd could not start: {reply.error}")
    return address
