"""The Replicator: one actor per node (ActorSystem) that owns the node's replicated data.

It answers the protocol of :mod:`thespian_dd.messages` and keeps the node's replicas in step with
its peers (the Replicators of the other nodes).  Its handlers validate and delegate to the parts
in :mod:`thespian_dd._runtime`, plain classes each with its own tests, made and wired together by
``Parts`` (parts) once the settings are known:

- ``KeyTable`` (keys): values, tombstones, pruning markers, digests and buckets, last use;
  ``LocalData`` (local): every change to a key (write, merge, expiry, load) goes through it;
- ``PeerTable`` (peers): failure detection, N and majority; the ``Introducer``;
  ``Membership`` (membership): admitting peer messages, hellos, directory, versions, rounds;
- ``SendWindow`` (window): transmit slots per peer;
- ``DeltaQueue`` (deltas); ``Requests`` (requests) over ``Quorums`` (quorums): reads and writes
  that need peers, both sides; ``Subscriptions`` (subscriptions);
- ``Pruning`` (pruning) and anti-entropy (antientropy);
- ``Durability`` (durability): loading gate, group commit, replies after commit, the writer;
- ``Settings`` (settings), the request checks (checks), the peer protocol (protocol), what the
  node says of itself (report).

Thespian facts it relies on: an exception escaping a handler makes
Thespian retry the message and then bounce it, with the actor's state as the first attempt left
it, so handlers validate first and change state last; ``ActorAddress`` is not hashable, so
subscribers are kept in lists and compared with ``==``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict
from datetime import timedelta
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

from thespian_dd._ask import ask_until, new_token
from thespian_dd._log import Log
from thespian_dd._runtime.checks import (
    Rejections,
    consistency_error,
    describe,
    failure_reply,
    key_error,
)
from thespian_dd._runtime.commits import CommitThread
from thespian_dd._runtime.durability import LoadOutcome
from thespian_dd._runtime.parts import Hooks, Parts
from thespian_dd._runtime.peers import Introducer
from thespian_dd._runtime.protocol import (
    NODE_CAPABILITY,
    DescribeProcess,
    Introduce,
    Introduced,
    IntroducerDone,
    PartitionForTests,
    PeerMessage,
    ProcessInfo,
    ReplicatorStarted,
    StartReplicator,
)
from thespian_dd._runtime.settings import CAPABILITY_PREFIX, Settings
from thespian_dd._runtime.transport import (
    at_turn_end,
    idle_connection_seconds,
    quicken_transport,
)
from thespian_dd._runtime.updates import modified, update_error
from thespian_dd._runtime.window import transmit_within
from thespian_dd._runtime.writer import (
    DurableWriter,
    LoadChunk,
    Loaded,
    Written,
)
from thespian_dd.data import (
    ReplicaId,
)
from thespian_dd.lwwregister import now_ms
from thespian_dd.messages import (
    Changed,
    DataDeleted,
    Delete,
    Deleted,
    Expired,
    FlushChanges,
    Get,
    GetFailure,
    GetKeys,
    GetReplicaCount,
    GetStats,
    GetStatus,
    InvalidRequest,
    Keys,
    ModifyFailure,
    ReadConsistency,
    ReplicaCount,
    ReplicationDeleteFailure,
    Subscribe,
    Unsubscribe,
    Update,
    UpdateDataDeleted,
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

log = Log(__name__)

SYSTEM_NAME = "Thespian ActorSystem Name"
WATCHING_SYSTEM = "multiprocTCPBase"
"""The system base (a capability of every ActorSystem) whose actors can watch a descriptor."""


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
        self._commits: CommitThread | None = None

    # -- start-up --------------------------------------------------------------------------------

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        self._dispatch_message(msg, sender)
        if self._commits is None:
            return None
        # Thespian watches what the last handler returned: the commit thread's answers wake us.
        return ThespianWatch([self._commits.fd])

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
        return self._settings is None or self._parts.durability.serving

    def _while_loading(self, msg: Any, sender: Any) -> None:
        """Before serving: the load's own messages and timers go through; the rest waits for
        the load, or is refused while the store cannot be loaded."""
        error = self._parts.durability.load_error
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
            self._parts.durability.stash(msg, sender)  # answered in order once recovered

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
        # Sync commits on a thread of this process where Thespian can wake the actor for its
        # answers (multiprocTCPBase); elsewhere (simpleSystemBase: no watches) the DurableWriter
        # commits them too.  See docs/durability.md.
        multiprocess = self._capabilities.get(SYSTEM_NAME) == WATCHING_SYSTEM
        if settings.store is not None and multiprocess:
            self._commits = CommitThread()
        # Its own process (and its DurableWriter's, forked from it): a cheaper turn of the
        # transport's loop.  Elsewhere the process is the caller's, and stays as it is.
        ours = multiprocess and quicken_transport(idle_connection_seconds(settings.failure_timeout))
        commit_here = None
        if ours and self._commits is not None:
            # The loop is ours: each turn's sync writes are one batch, committed at its end on
            # this thread where the commit thread allows (see durability.py).
            commit_here = self._commits.commit_here
        hooks = Hooks(
            send=self.send,
            wake=self.wakeupAfter,
            transmit=transmit_within(self, settings.failure_timeout),
            address=lambda: self.myAddress,
            me=lambda: self.node,
            reincarnate=self._reincarnate,
            create_writer=lambda: self.createActor(DurableWriter),
            commit=self._commits.submit if self._commits is not None else None,
            commit_here=commit_here,
            slots=asyncTransportBase.MAX_PENDING_TRANSMITS,
            grow=_grow_transmits,
        )
        self._parts = Parts(settings, name, hooks, self._rejections)
        if commit_here is not None:
            at_turn_end(self._parts.durability.end_of_turn)
        if ours:
            # The loop running now is still Thespian's: entered before quicken_transport, it
            # runs until a timer ends its run (Thespian then runs the loop anew: ours).  A node
            # with its timers far off ran it for good, and never reached its turn ends (see
            # test_a_sync_write_to_a_node_with_no_timer_due_is_committed_and_acknowledged).  A
            # timer due now ends it; on_timer ignores its empty payload.
            self.wakeupAfter(timedelta(0))
        if settings.store is None:
            self._serve()
        else:
            self._parts.durability.start()

    def receiveMsg_LoadChunk(self, msg: LoadChunk, sender: Any) -> None:
        if self._parts.durability.chunk(msg, sender):
            self._parts.local.restore(msg.rows, len(msg.skipped))
            self._load_ended(self._parts.durability.ended())

    def receiveMsg_Loaded(self, msg: Loaded, sender: Any) -> None:
        self._load_ended(self._parts.durability.loaded(msg, sender))

    def _load_ended(self, outcome: LoadOutcome | None) -> None:
        if outcome is None:
            return  # the load goes on; or from a replaced DurableWriter, or forged
        if outcome.incarnation is None:
            if outcome.first:
                for message, client in self._parts.durability.take_stash():
                    self._refuse(message, client, f"the store cannot be loaded: {outcome.error}")
            self._parts.local.forget()
            return
        self._node = ReplicaId(self.node.node, outcome.incarnation)
        log.info(
            "thespian_dd %s recovered %d keys in %.3f s (%d stored rows refused)",
            self._node,
            len(self._parts.keys) + self._parts.keys.tombstones(),
            self._parts.durability.recovery_time,
            self._parts.local.refused_rows,
        )
        self._serve()
        self._parts.decode_restored()
        for message, client in self._parts.durability.take_stash():
            self.receiveMessage(message, client)

    def receiveMsg_Written(self, msg: Written, sender: Any) -> None:
        self._parts.durability.written(msg, sender)

    def receiveMsg_WatchMessage(self, msg: WatchMessage, sender: Any) -> None:
        if self._commits is not None:
            for written in self._commits.drain():
                self._parts.durability.committed(written)

    def createActor(self, *args: Any, **kw: Any) -> Any:
        """Thespian's, with the commit thread ended first: creating a child forks this process,
        and the child must not inherit a thread's locks nor an open connection (see
        :class:`~thespian_dd._runtime.commits.CommitThread`).  An actor wanted on another node
        (an Introducer) is created by the admin, not forked here: the thread commits on."""
        if self._commits is not None and not kw.get("targetActorRequirements"):
            self._commits.pause()
        return super().createActor(*args, **kw)

    def _serve(self) -> None:
        self.handleDeadLetters(startHandling=True)
        self.notifyOnSystemRegistrationChanges(True)
        self._parts.start_rounds()
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

    # -- reads and writes ------------------------------------------------------------------------

    def receiveMsg_Get(self, msg: Get, sender: Any) -> None:
        error = key_error(msg.key) or consistency_error(msg.consistency, ReadConsistency)
        if error:
            self._reject(sender, GetFailure(msg.key, msg.request, error))
            return
        if msg.key in self._parts.keys:
            self._parts.keys.touch(msg.key)
        self._parts.requests.read(sender, msg.key, msg.request, msg.consistency)

    def receiveMsg_Update(self, msg: Update, sender: Any) -> None:
        current = self._parts.keys.get(msg.key) if isinstance(msg.key, str) else None
        deleted = isinstance(msg.key, str) and self._parts.keys.is_deleted(msg.key)
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
        self._parts.local.store(msg.key, new)
        self._parts.keys.touch(msg.key)
        self._parts.queue_delta(msg.key, delta)
        self._parts.requests.write("update", sender, msg.key, msg.request, msg.consistency)

    def receiveMsg_Delete(self, msg: Delete, sender: Any) -> None:
        error = key_error(msg.key) or consistency_error(msg.consistency, WriteConsistency)
        if error:
            self._reject(sender, ReplicationDeleteFailure(msg.key, msg.request, error))
        elif self._parts.keys.is_deleted(msg.key):
            self.send(sender, DataDeleted(msg.key, msg.request))
        else:
            self._parts.local.store(msg.key, None)
            self._parts.queue_delta(msg.key, None)
            self._parts.requests.write("delete", sender, msg.key, msg.request, msg.consistency)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if sender != self.myAddress:  # a timer is only ever our own; another actor forged it
            self._rejections.refuse()
        else:
            self._load_ended(self._parts.on_timer(msg.payload))

    # -- pruning -------------------------------------------------------------------------------

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
        self._parts.membership.introduce_again()

    # -- subscriptions ---------------------------------------------------------------------------

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: Any) -> None:
        subscriber = sender if msg.subscriber is None else msg.subscriber
        error = key_error(msg.key)
        if not error and not isinstance(subscriber, ActorAddress):
            error = f"subscriber must be an ActorAddress or None, not {type(subscriber).__name__}"
        if error:
            self._reject(sender, InvalidRequest("Subscribe", error))
            return
        self._parts.subscribe(msg.key, subscriber)

    def receiveMsg_Unsubscribe(self, msg: Unsubscribe, sender: Any) -> None:
        subscriber = sender if msg.subscriber is None else msg.subscriber
        self._parts.subscriptions.unsubscribe(msg.key, subscriber)

    def receiveMsg_FlushChanges(self, msg: FlushChanges, sender: Any) -> None:
        self._parts.local.notify()

    def receiveMsg_DeadEnvelope(self, msg: DeadEnvelope, sender: Any) -> None:
        # Notifications and peer messages learn of a dead target from their send; a subscriber
        # may also be told of by the dead-letter route.
        if isinstance(msg.deadMessage, (Changed, Deleted, Expired)):
            self._parts.subscriptions.drop(msg.deadAddress)

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        if isinstance(msg.poisonMessage, (Changed, Deleted, Expired)):
            self._parts.subscriptions.drop(sender)

    # -- peers: membership -----------------------------------------------------------------------

    def receiveMsg_ActorSystemConventionUpdate(self, msg: Any, sender: Any) -> None:
        name = (msg.remoteCapabilities or {}).get(NODE_CAPABILITY)
        if not isinstance(name, str) or name == self.node.node:
            return
        if not msg.remoteAdded:
            # The convention saw the node go (a graceful stop, or missed re-registrations).
            gone = self._parts.membership.left(name)
            if gone is not None:
                log.info("peer %s left the convention", gone.replica)
            return
        introducer = self.createActor(Introducer, targetActorRequirements={NODE_CAPABILITY: name})
        self.send(introducer, Introduce(self._parts.membership.hello(reply=True)))

    def receiveMsg_IntroducerDone(self, msg: IntroducerDone, sender: Any) -> None:
        self.send(sender, Introduced())

    def receiveMsg_PartitionForTests(self, msg: PartitionForTests, sender: Any) -> None:
        if self._settings is not None and self._settings.test_partitions:
            self._parts.peers.blocked = frozenset(msg.blocked)
            log.warning("TEST ONLY partition: ignoring peers %s", sorted(self._parts.peers.blocked))
            return
        message = "refused PartitionForTests: test_partitions is off"
        self._rejections.warn_once(str(sender), "partition", message)
        error = "this node was not started with the test-only setting test_partitions"
        self._reject(sender, InvalidRequest("PartitionForTests", error))

    # -- information -----------------------------------------------------------------------------

    def receiveMsg_GetKeys(self, msg: GetKeys, sender: Any) -> None:
        self.send(sender, Keys(self._parts.keys.names(), msg.request))

    def receiveMsg_GetReplicaCount(self, msg: GetReplicaCount, sender: Any) -> None:
        self.send(sender, ReplicaCount(1 + len(self._parts.peers.targets()), msg.request))

    def receiveMsg_GetStats(self, msg: GetStats, sender: Any) -> None:
        self.send(
            sender, self._parts.report.stats(self.node, self._parts.local.refused_rows, msg.request)
        )

    def receiveMsg_GetStatus(self, msg: GetStatus, sender: Any) -> None:
        self.send(sender, self._parts.report.status(self.node, msg.largest, msg.request))

    def receiveMsg_DescribeProcess(self, msg: DescribeProcess, sender: Any) -> None:
        self.send(sender, ProcessInfo(os.getpid(), os.getpgid(0)))

    # -- everything else -------------------------------------------------------------------------

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self._settings is not None:
            self._parts.durability.stop()
        if self._commits is not None:
            # Ended after committing what the stop flushed, whose clients are answered now (no
            # watch wakes this actor again); its pipe is left open to the process's exit:
            # Thespian still watches it while this actor stops its children.
            self._commits.pause()
            for written in self._commits.drain():
                self._parts.durability.committed(written)
            self._commits = None

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if self._settings is not None and self._parts.durability.writer_exited(msg.childAddress):
            self._parts.local.forget()
            self._parts.durability.load()

    def receiveMsg_ActorSystemMessage(self, msg: ActorSystemMessage, sender: Any) -> None:
        """Thespian's own messages that need nothing from us."""

    def receiveMsg_PeerMessage(self, msg: PeerMessage, sender: Any) -> None:
        self._parts.on_peer_message(msg, sender)

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
