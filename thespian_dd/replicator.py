"""The Replicator: one actor per node (ActorSystem) that owns the node's replicated data.

It answers the protocol of :mod:`thespian_dd.messages`.  This version serves one node: every
consistency level is met by the node's own replica (its replica count is 1).  Peers, gossip and
quorums build on it.

Thespian facts it relies on (see the project notes): an exception escaping a handler makes
Thespian retry the message and then bounce it, with the actor's state as the first attempt left
it, so handlers validate first and change state last; ``ActorAddress`` is not hashable, so
subscribers are kept in lists and compared with ``==``.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from thespian.actors import (
    ActorSystemMessage,
    ActorTypeDispatcher,
    DeadEnvelope,
    PoisonMessage,
    WakeupMessage,
)

from thespian_dd.data import DeltaReplicatedData, ReplicaId, ReplicatedData
from thespian_dd.messages import (
    Changed,
    DataDeleted,
    Delete,
    Deleted,
    DeleteSuccess,
    FlushChanges,
    Get,
    GetDataDeleted,
    GetFailure,
    GetKeys,
    GetReplicaCount,
    GetStats,
    GetSuccess,
    InvalidRequest,
    Keys,
    ModifyFailure,
    NotFound,
    ReadConsistency,
    ReplicaCount,
    ReplicationDeleteFailure,
    Stats,
    Subscribe,
    Unsubscribe,
    Update,
    UpdateDataDeleted,
    UpdateSuccess,
    WriteConsistency,
)

__all__ = ["REPLICATOR_NAME", "Replicator", "Settings", "start"]

REPLICATOR_NAME = "thespian_dd.replicator"
"""The globalName of every node's Replicator."""

CAPABILITY_PREFIX = "thespian_dd."
"""Settings can be given as ActorSystem capabilities named ``thespian_dd.<setting>``."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """The Replicator's settings (the README has the table).

    - ``node_name``: this node's name in every ReplicaId it writes; default ``host:admin-port``.
    - ``notify_interval``: seconds between notifications of changes to subscribers.
    """

    node_name: str | None = None
    notify_interval: float = 0.5

    def __post_init__(self) -> None:
        if self.node_name is not None and (
            not isinstance(self.node_name, str) or not self.node_name
        ):
            raise ValueError(f"node_name must be a non-empty str, not {self.node_name!r}")
        if (
            not isinstance(self.notify_interval, (int, float))
            or isinstance(self.notify_interval, bool)
            or not self.notify_interval > 0
        ):
            raise ValueError(f"notify_interval must be seconds > 0, not {self.notify_interval!r}")

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from keyword arguments; an unknown name is an error listing the known ones."""
        unknown = set(values) - cls.names()
        if unknown:
            raise TypeError(
                f"unknown thespian_dd setting(s) {sorted(unknown)}; known: {sorted(cls.names())}"
            )
        return cls(**values)

    @classmethod
    def from_capabilities(cls, capabilities: Mapping[str, Any]) -> dict[str, Any]:
        """The settings given as ``thespian_dd.<name>`` capabilities of the ActorSystem."""
        return {
            name[len(CAPABILITY_PREFIX) :]: value
            for name, value in capabilities.items()
            if isinstance(name, str) and name.startswith(CAPABILITY_PREFIX)
        }


@dataclass(frozen=True)
class StartReplicator:
    """Sent by :func:`thespian_dd.start`: start with these settings (if not running yet) and reply
    :class:`ReplicatorStarted` once ready to serve."""

    settings: dict[str, Any]
    token: str


@dataclass(frozen=True)
class ReplicatorStarted:
    node: ReplicaId
    settings: dict[str, Any]
    token: str
    error: str | None = None


@dataclass(frozen=True)
class _NotifyTick:
    """Wakeup payload: time to send pending changes to subscribers."""


def _key_error(key: object) -> str | None:
    if not isinstance(key, str):
        return f"key must be a str, not {type(key).__name__}: {key!r}"
    if not key:
        return "key must not be empty"
    return None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


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
        self._explicit: dict[str, Any] = {}
        self._node: ReplicaId | None = None
        self._data: dict[str, ReplicatedData] = {}
        self._deleted: set[str] = set()
        self._subscriptions: list[tuple[str, Any]] = []
        self._pending: set[str] = set()
        self._tick_scheduled = False
        self._rejected = 0
        self._started_at = 0.0

    # -- start-up --------------------------------------------------------------------------------

    def _ensure_started(self, explicit: Mapping[str, Any] | None = None) -> str | None:
        """Start on the first message; returns an error if ``explicit`` conflicts or is invalid."""
        if self._settings is not None:
            if explicit:
                running = asdict(self._settings)
                clash = {k: v for k, v in explicit.items() if running.get(k) != v}
                if clash:
                    return (
                        f"the Replicator is already running with other settings: asked {clash}, "
                        f"running { ({k: running.get(k) for k in clash}) }"
                    )
            return None
        values = Settings.from_capabilities(self._capabilities)
        values.update(explicit or {})
        settings_error: str | None = None
        try:
            settings = Settings.from_mapping(values)
        except (TypeError, ValueError) as e:
            log.warning("thespian_dd settings refused, using the defaults: %s", e)
            settings_error = str(e)
            settings = Settings()
        self._settings = settings
        self._explicit = dict(explicit or {})
        name = settings.node_name or (
            f"{socket.gethostname()}:{self._capabilities.get('Admin Port', 'local')}"
        )
        # In memory, a new incarnation per start: the start time in milliseconds.
        self._node = ReplicaId(name, time.time_ns() // 1_000_000)
        self._started_at = time.time()
        self.handleDeadLetters(startHandling=True)
        log.info("thespian_dd Replicator %s ready", self._node)
        return settings_error

    @property
    def node(self) -> ReplicaId:
        assert self._node is not None
        return self._node

    @property
    def settings(self) -> Settings:
        assert self._settings is not None
        return self._settings

    def receiveMsg_StartReplicator(self, msg: StartReplicator, sender: Any) -> None:
        try:
            error = self._ensure_started(msg.settings)
        except Exception as e:  # noqa: BLE001 - a bad start request must not kill the Replicator
            error = _describe(e)
        self.send(
            sender,
            ReplicatorStarted(self.node, asdict(self.settings), msg.token, error),
        )

    # -- reads and writes ------------------------------------------------------------------------

    def receiveMsg_Get(self, msg: Get, sender: Any) -> None:
        self._ensure_started()
        error = _key_error(msg.key) or (
            None
            if isinstance(msg.consistency, ReadConsistency)
            else f"consistency must be a ReadConsistency, not {type(msg.consistency).__name__}"
        )
        if error:
            self._reject(sender, GetFailure(msg.key, msg.request, error))
        elif msg.key in self._deleted:
            self.send(sender, GetDataDeleted(msg.key, msg.request))
        elif msg.key in self._data:
            self.send(sender, GetSuccess(msg.key, msg.request, self._data[msg.key]))
        else:
            self.send(sender, NotFound(msg.key, msg.request))

    def receiveMsg_Update(self, msg: Update, sender: Any) -> None:
        self._ensure_started()
        error = self._update_error(msg)
        if error is not None:
            self.send(sender, ModifyFailure(msg.key, msg.request, error))
            return
        if msg.key in self._deleted:
            self.send(sender, UpdateDataDeleted(msg.key, msg.request))
            return
        try:
            new = self._modified(msg)
        except Exception as e:  # noqa: BLE001 - whatever modify raises is the caller's failure
            self.send(sender, ModifyFailure(msg.key, msg.request, f"modify failed: {_describe(e)}"))
            return
        self._data[msg.key] = new
        self._changed(msg.key)
        self.send(sender, UpdateSuccess(msg.key, msg.request))

    def _update_error(self, msg: Update) -> str | None:
        error = _key_error(msg.key)
        if error:
            self._rejected += 1
            return error
        if not isinstance(msg.initial, ReplicatedData):
            self._rejected += 1
            return f"initial must be a CRDT (ReplicatedData), not {type(msg.initial).__name__}"
        if not isinstance(msg.consistency, WriteConsistency):
            self._rejected += 1
            return f"consistency must be a WriteConsistency, not {type(msg.consistency).__name__}"
        current = self._data.get(msg.key)
        if current is not None and type(current) is not type(msg.initial):
            return (
                f"key {msg.key!r} holds a {type(current).__name__}; initial is a "
                f"{type(msg.initial).__name__}"
            )
        return None

    def _modified(self, msg: Update) -> ReplicatedData:
        try:
            modify = msg.modify
        except Exception as e:  # noqa: BLE001 - the dill bytes are the caller's
            raise ValueError(f"modify could not be loaded: {_describe(e)}") from None
        if not callable(modify):
            raise TypeError(f"modify must be callable, not {type(modify).__name__}")
        current = self._data.get(msg.key, msg.initial)
        if isinstance(current, DeltaReplicatedData):
            current = current.reset_delta()
        new = modify(current, self.node)
        if type(new) is not type(current):
            raise TypeError(
                f"modify must return a {type(current).__name__}, not {type(new).__name__}"
            )
        if isinstance(new, DeltaReplicatedData):
            new = new.reset_delta()
        result: ReplicatedData = new
        return result

    def receiveMsg_Delete(self, msg: Delete, sender: Any) -> None:
        self._ensure_started()
        error = _key_error(msg.key) or (
            None
            if isinstance(msg.consistency, WriteConsistency)
            else f"consistency must be a WriteConsistency, not {type(msg.consistency).__name__}"
        )
        if error:
            self._reject(sender, ReplicationDeleteFailure(msg.key, msg.request, error))
        elif msg.key in self._deleted:
            self.send(sender, DataDeleted(msg.key, msg.request))
        else:
            self._data.pop(msg.key, None)
            self._deleted.add(msg.key)
            self._changed(msg.key)
            self.send(sender, DeleteSuccess(msg.key, msg.request))

    # -- subscriptions ---------------------------------------------------------------------------

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: Any) -> None:
        self._ensure_started()
        error = _key_error(msg.key)
        if error:
            self._reject(sender, InvalidRequest("Subscribe", error))
            return
        subscriber = sender if msg.subscriber is None else msg.subscriber
        if (msg.key, subscriber) not in self._subscriptions:
            self._subscriptions.append((msg.key, subscriber))
        for key in sorted(self._data):
            if _matches(msg.key, key):
                self.send(subscriber, Changed(key, self._data[key]))

    def receiveMsg_Unsubscribe(self, msg: Unsubscribe, sender: Any) -> None:
        self._ensure_started()
        subscriber = sender if msg.subscriber is None else msg.subscriber
        self._subscriptions = [
            (k, s) for k, s in self._subscriptions if not (k == msg.key and s == subscriber)
        ]

    def receiveMsg_FlushChanges(self, msg: FlushChanges, sender: Any) -> None:
        self._ensure_started()
        self._notify()

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if isinstance(msg.payload, _NotifyTick):
            self._tick_scheduled = False
            self._notify()

    def _changed(self, key: str) -> None:
        self._pending.add(key)
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self.wakeupAfter(self.settings.notify_interval, _NotifyTick())

    def _notify(self) -> None:
        pending, self._pending = self._pending, set()
        for key in sorted(pending):
            message: Changed | Deleted = (
                Deleted(key) if key in self._deleted else Changed(key, self._data[key])
            )
            for pattern, subscriber in self._subscriptions:
                if _matches(pattern, key):
                    self.send(subscriber, message)

    def receiveMsg_DeadEnvelope(self, msg: DeadEnvelope, sender: Any) -> None:
        # A subscriber that died: stop writing to it.
        if isinstance(msg.deadMessage, (Changed, Deleted)):
            self._drop_subscriber(msg.deadAddress)

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        if isinstance(msg.poisonMessage, (Changed, Deleted)):
            self._drop_subscriber(sender)

    def _drop_subscriber(self, address: Any) -> None:
        before = len(self._subscriptions)
        self._subscriptions = [(k, s) for k, s in self._subscriptions if s != address]
        if len(self._subscriptions) < before:
            log.info("dropped a subscriber that is gone: %s", address)

    # -- information -----------------------------------------------------------------------------

    def receiveMsg_GetKeys(self, msg: GetKeys, sender: Any) -> None:
        self._ensure_started()
        self.send(sender, Keys(frozenset(self._data), msg.request))

    def receiveMsg_GetReplicaCount(self, msg: GetReplicaCount, sender: Any) -> None:
        self._ensure_started()
        self.send(sender, ReplicaCount(1, msg.request))

    def receiveMsg_GetStats(self, msg: GetStats, sender: Any) -> None:
        self._ensure_started()
        self.send(
            sender,
            Stats(
                node=str(self.node),
                keys=len(self._data),
                peers=0,
                gossip_bytes_in=0,
                gossip_bytes_out=0,
                store_queue_depth=0,
                last_flush=None,
                recovery_time=None,
                rejected_inputs=self._rejected,
                subscribers=len(self._subscriptions),
                request=msg.request,
            ),
        )

    # -- everything else -------------------------------------------------------------------------

    def receiveMsg_ActorSystemMessage(self, msg: ActorSystemMessage, sender: Any) -> None:
        """Thespian's own messages that need nothing from us (exit requests, child exits)."""

    def receiveUnrecognizedMessage(self, msg: Any, sender: Any) -> None:
        self._ensure_started()
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
        self._rejected += 1
        self.send(sender, reply)


def _matches(pattern: str, key: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


def start(asys: Any, *, timeout: float = 30.0, **settings: Any) -> Any:
    """Get or create this node's Replicator and return its address once it is ready to serve.

    Idempotent: a second call returns the same Replicator.  ``settings`` (see :class:`Settings`)
    apply when this call creates it; asking a running Replicator for different settings raises
    ``RuntimeError``.  Raises ``TimeoutError`` if the Replicator does not answer in ``timeout``.
    """
    Settings.from_mapping(settings)  # a bad name or value fails here, in the caller
    address = asys.createActor(Replicator, globalName=REPLICATOR_NAME)
    token = secrets.token_hex(16)
    deadline = time.monotonic() + timeout
    reply = asys.ask(address, StartReplicator(dict(settings), token), timeout)
    # ask() returns the first message that reaches this endpoint: skip replies to older requests.
    while not (isinstance(reply, ReplicatorStarted) and reply.token == token):
        remaining = deadline - time.monotonic()
        if reply is None or remaining <= 0:
            raise TimeoutError(f"the thespian_dd Replicator did not answer within {timeout} s")
        reply = asys.listen(remaining)
    if reply.error:
        raise RuntimeError(f"thespian_dd could not start: {reply.error}")
    return address
