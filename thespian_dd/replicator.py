"""The Replicator: one actor per node (ActorSystem) that owns the node's replicated data.

It answers the protocol of :mod:`thespian_dd.messages` and keeps the node's replicas in step with
its peers (the Replicators of the other nodes):

- Membership: the Thespian convention tells the leader about every member and each member about
  the leader only; Replicators therefore introduce themselves (through an Introducer actor placed
  on the peer's node) and spread their peer directories in every gossip message.  Peers are keyed
  by node name; a new incarnation of a name replaces the old one.
- Failure detection: every gossip tick is a heartbeat to every peer; a peer not heard from for
  ``failure_timeout`` is unreachable until it is heard again.  Unreachable peers get no quorum
  requests and cannot acknowledge, but still count in N (so ``WriteAll`` with a node down fails).
- Deltas: local changes are sent to reachable peers every ``delta_interval``, numbered per
  origin; a gap makes the receiver ask for the full state of causally-delivered keys.
- Anti-entropy: every ``gossip_interval`` each peer gets the digests of 64 hashed key buckets;
  only differing buckets are compared key by key, and only differing keys travel.
- Quorums: ``Write*``/``Read*`` levels other than local are aggregated here (no actor per
  request: on multiproc bases that would be a process); acks count only from the peer asked.

Thespian facts it relies on (see the project notes): an exception escaping a handler makes
Thespian retry the message and then bounce it, with the actor's state as the first attempt left
it, so handlers validate first and change state last; ``ActorAddress`` is not hashable, so
subscribers are kept in lists and compared with ``==``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
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
    WakeupMessage,
)
from thespian.system.transport import SendStatus, TransmitIntent, asyncTransportBase

from thespian_dd import codec
from thespian_dd._canonical import CodecError, Limits
from thespian_dd._peers import (
    NODE_CAPABILITY,
    PROTOCOL_VERSION,
    TOMBSTONE,
    DeltaPropagation,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    Introduce,
    Introduced,
    Introducer,
    IntroducerDone,
    PartitionForTests,
    PeerHello,
    PeerMessage,
    PeerRead,
    PeerReadResult,
    PeerRemoved,
    PeerWrite,
    PeerWriteAck,
    bucket_digests,
    bucket_of,
    gossip_bytes,
)
from thespian_dd._pruning import (
    Initialized,
    Marker,
    Markers,
    Performed,
    envelope_digest,
    join_envelope,
    merge_markers,
    only_performed,
    split_envelope,
)
from thespian_dd.data import (
    DeltaReplicatedData,
    RemovedNodePruning,
    ReplicaId,
    ReplicatedData,
    RequiresCausalDelivery,
)
from thespian_dd.durable import (
    FORGOTTEN,
    DurableWriter,
    Entry,
    Load,
    LoadChunk,
    Loaded,
    Write,
    Written,
)
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
    GetSuccess,
    InvalidRequest,
    Keys,
    ModifyFailure,
    NotFound,
    ReadConsistency,
    ReplicaCount,
    ReplicationDeleteFailure,
    Stats,
    StoreFailure,
    Subscribe,
    Unsubscribe,
    Update,
    UpdateDataDeleted,
    UpdateSuccess,
    UpdateTimeout,
    WriteConsistency,
)

__all__ = ["REPLICATOR_NAME", "Replicator", "Settings", "start"]

REPLICATOR_NAME = "thespian_dd.replicator"
"""The globalName of every node's Replicator."""

CAPABILITY_PREFIX = "thespian_dd."
"""Settings can be given as ActorSystem capabilities named ``thespian_dd.<setting>``."""

WRITE_MODES = ("sync", "write-behind")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """The Replicator's settings (the README has the table).

    - ``node_name``: this node's name in every ReplicaId it writes; default ``host:admin-port``.
    - ``notify_interval``: seconds between notifications of changes to subscribers.
    - ``gossip_interval``: seconds between gossip rounds (also the heartbeat).
    - ``delta_interval``: seconds between delta propagations; 0 turns deltas off (gossip only).
    - ``failure_timeout``: seconds without a word from a peer before it counts as unreachable.
    - ``max_value_bytes``: the largest encoded value accepted from a peer or kept after a merge.
    - ``max_gossip_bytes``: the budget of values in one gossip message.
    - ``store``: an SQLAlchemy URL (``sqlite:///path``); ``None`` keeps the data in memory only.
    - ``signing_key_file``: with a store, a file holding a secret key: every stored row is then
      signed (HMAC-SHA256) and a row that does not verify is refused at load.  A path, not the
      key: settings travel to other nodes as capabilities; the DurableWriter reads the file.
    - ``durable_keys``: with a store, the keys that persist: exact keys or ``prefix*`` patterns.
    - ``write_mode``: ``"sync"`` (acknowledge after commit) or ``"write-behind"`` (acknowledge at
      once, commit every ``write_behind_interval`` seconds and on a graceful stop).
    - ``removal_timeout``: seconds a peer may stay unreachable before it is removed for good (it
      no longer counts in N, and its replicas are pruned).
    - ``pruning_interval``: seconds between pruning rounds.
    - ``max_pruning_dissemination``: seconds a replica must have been seen removed before pruning
      of it starts.
    - ``pruning_marker_ttl`` / ``durable_pruning_marker_ttl``: seconds a performed-pruning marker
      is kept (keys in memory / durable keys); a node offline longer than the durable one must
      have its store wiped before it rejoins.
    - ``expire_keys_after_inactivity``: ``{key or 'prefix*': seconds}``; such a key is removed
      (no tombstone; subscribers get ``Expired``) once nobody has updated or read it for that
      long on any node.
    """

    node_name: str | None = None
    notify_interval: float = 0.5
    gossip_interval: float = 2.0
    delta_interval: float = 0.2
    failure_timeout: float = 10.0
    max_value_bytes: int = 16 * 1024 * 1024
    max_gossip_bytes: int = 512 * 1024
    store: str | None = None
    signing_key_file: str | None = None
    durable_keys: tuple[str, ...] = ("*",)
    write_mode: str = "sync"
    write_behind_interval: float = 1.0
    removal_timeout: float = 300.0
    pruning_interval: float = 120.0
    max_pruning_dissemination: float = 300.0
    pruning_marker_ttl: float = 6 * 3600.0
    durable_pruning_marker_ttl: float = 10 * 86400.0
    expire_keys_after_inactivity: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.node_name is not None and (
            not isinstance(self.node_name, str) or not self.node_name
        ):
            raise ValueError(f"node_name must be a non-empty str, not {self.node_name!r}")
        for name in (
            "notify_interval",
            "gossip_interval",
            "failure_timeout",
            "write_behind_interval",
            "removal_timeout",
            "pruning_interval",
            "max_pruning_dissemination",
            "pruning_marker_ttl",
            "durable_pruning_marker_ttl",
        ):
            _check_positive(name, getattr(self, name))
        if self.delta_interval != 0:
            _check_positive("delta_interval", self.delta_interval)
        if self.store is not None and (not isinstance(self.store, str) or not self.store):
            raise ValueError(f"store must be an SQLAlchemy URL or None, not {self.store!r}")
        if self.signing_key_file is not None and (
            not isinstance(self.signing_key_file, str) or not self.signing_key_file
        ):
            raise ValueError(
                f"signing_key_file must be a file's path or None, not {self.signing_key_file!r}"
            )
        # From a capability or a caller: a list becomes a tuple, any mapping a dict.
        object.__setattr__(self, "durable_keys", _patterns(self.durable_keys))
        object.__setattr__(
            self, "expire_keys_after_inactivity", _expiries(self.expire_keys_after_inactivity)
        )
        if self.write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be one of {WRITE_MODES}, not {self.write_mode!r}")
        for name in ("max_value_bytes", "max_gossip_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, not {value!r}")

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


def _patterns(patterns: object) -> tuple[str, ...]:
    if isinstance(patterns, (list, tuple)) and all(isinstance(p, str) and p for p in patterns):
        return tuple(patterns)
    raise ValueError(f"durable_keys must be a list of keys or 'prefix*' patterns, not {patterns!r}")


def _expiries(rules: object) -> dict[str, float]:
    if isinstance(rules, Mapping) and all(
        isinstance(k, str) and k and (_seconds(v) or 0) > 0 for k, v in rules.items()
    ):
        return dict(rules)
    raise ValueError(
        f"expire_keys_after_inactivity must map keys or 'prefix*' patterns to seconds > 0, "
        f"not {rules!r}"
    )


def _seconds(value: object) -> float | None:
    """``value`` as a number of seconds, or None if it is no number (bools are not)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be seconds > 0, not {value!r}")


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
class DescribeProcess:
    """Ask a Replicator for its process (the node CLI reports it, so a node can be killed)."""


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    pgid: int


@dataclass(frozen=True)
class _NotifyTick:
    """Wakeup payload: time to send pending changes to subscribers."""


@dataclass(frozen=True)
class _Every:
    """Wakeup payload of a periodic round: call the method ``round``, then wake up again after
    the setting ``interval``."""

    round: str  # "_gossip_round" | "_send_deltas" | "_pruning_round"
    interval: str  # the Settings field


@dataclass(frozen=True)
class _StoreRetry:
    """Wakeup payload: try the store again (loading, or a failed batch)."""


@dataclass(frozen=True)
class _FlushTick:
    """Wakeup payload: write-behind mode's interval is over; commit what is unwritten."""


@dataclass(frozen=True)
class _RequestTimeout:
    """Wakeup payload: a quorum request ran out of time."""

    request_id: str


@dataclass
class _Peer:
    replica: ReplicaId
    address: Any
    last_seen: float
    reachable: bool = True
    in_flight: int = 0  # messages handed to Thespian and not yet delivered or failed
    held: deque[PeerMessage] = field(default_factory=deque)  # waiting for the window


HELD_PER_PEER = 256
"""Messages kept for a peer whose window is full; beyond it the oldest is dropped (anti-entropy
repairs what a dropped delta or status carried; a dropped quorum request times out)."""

RESERVED_TRANSMITS = 6
"""Thespian's transmit slots kept for clients, subscribers and the store (see _window)."""


@dataclass
class _Outbox:
    """Notifications for one subscriber: at most one in flight, the rest held, the latest per
    key (a subscriber on a cut-off node must not take the Replicator's transmit slots)."""

    address: Any
    in_flight: bool = False
    held: dict[str, Changed | Deleted | Expired] = field(default_factory=dict)


@dataclass
class _Pending:
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


TOMBSTONE_DIGEST = b"thespian_dd:deleted"[:16]


def _key_error(key: object) -> str | None:
    if not isinstance(key, str):
        return f"key must be a str, not {type(key).__name__}: {key!r}"
    if not key:
        return "key must not be empty"
    # Every SQL store must hold the key as text: no NUL (PostgreSQL), valid Unicode.
    if "\x00" in key:
        return f"key must not contain NUL characters: {key!r}"
    try:
        key.encode()
    except UnicodeEncodeError:
        return f"key must be valid Unicode text (no lone surrogates): {key!r}"
    return None


def _consistency_error(consistency: object, expected: type) -> str | None:
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
        return f"consistency {type(consistency).__name__} is invalid: {_describe(e)}"
    if not isinstance(needed, (int, float)) or isinstance(needed, bool):
        return f"consistency {type(consistency).__name__} is invalid: it needs {needed!r} replicas"
    return None


def _timeout(consistency: ReadConsistency | WriteConsistency) -> float:
    """The timeout of a non-local consistency level (local ones have none)."""
    timeout: float = getattr(consistency, "timeout", 0.0)
    return timeout


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Replicator(ActorTypeDispatcher):  # type: ignore[misc]
    """The node's replicated data.  Create it with ``thespian_dd.start(asys, **settings)``, or
    ``asys.createActor(Replicator, globalName=REPLICATOR_NAME)`` (settings then come from the
    ActorSystem's ``thespian_dd.*`` capabilities)."""

    def __init__(  # noqa: PLR0915 - a line per piece of the node's state
        self, capabilities: Mapping[str, Any] | None = None, *args: Any, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._capabilities = dict(capabilities or {})
        self._settings: Settings | None = None
        self._node: ReplicaId | None = None
        self._data: dict[str, ReplicatedData] = {}
        self._deleted: set[str] = set()
        self._markers: dict[str, dict[ReplicaId, Marker]] = {}  # key -> removed -> marker
        self._removed_since: dict[ReplicaId, float] = {}
        self._last_used: dict[str, float] = {}  # keys that expire -> last update or read
        self._used_here: set[str] = set()  # of those, used here since the last gossip round
        self._departed: set[ReplicaId] = set()
        self._pruned_ids: set[ReplicaId] = set()  # replicas pruned here: never peers again
        self._digests: dict[str, bytes] = {}
        self._stale_digests: set[str] = set()
        self._bucket_keys: dict[int, set[str]] = {}
        self._bucket_cache: dict[int, bytes] = {}
        self._dirty_buckets: set[int] = set()
        self._subscriptions: list[tuple[str, Any]] = []
        self._pending_notify: set[str] = set()
        # Per subscriber, by str(address): ActorAddress is unhashable, and its str is stable
        # within this process.
        self._outboxes: dict[str, _Outbox] = {}
        self._tick_scheduled = False
        self._peers: dict[str, _Peer] = {}
        self._blocked: frozenset[str] = frozenset()
        self._outbox: dict[str, ReplicatedData | None] = {}  # key -> delta, None: tombstone
        self._delta_seq = 0
        self._seq_seen: dict[ReplicaId, int] = {}
        self._requests: dict[str, _Pending] = {}
        self._rejected = 0
        self._refused = 0  # stored rows refused at load
        self._gossip_in = 0
        self._gossip_out = 0
        self._gossip_rounds = 0
        self._logged_rejections: set[tuple[str, str]] = set()
        self._settings_error: str | None = None
        # Durability (with a store): recovery before serving, then group-committed writes.
        self._writer: Any = None
        self._loading = False
        self._load_started = 0.0
        self._gc_was_enabled = False
        self._loaded_rows = 0
        self._load_error: str | None = None
        self._stash: list[tuple[Any, Any]] = []
        self._unwritten: dict[str, bytes | None] = {}  # key -> its encoding, if known
        self._in_flight: set[str] | None = None
        self._batch = 0
        self._after_commit: list[tuple[int, Any, Any, Any]] = []
        self._flush_timer = False
        self._flush_due = False
        self._retry_delay = 0.0
        self._retry_pending = False
        self._store_failure: str | None = None
        self._store_failures = 0
        self._recovery_time: float | None = None
        self._last_flush: float | None = None
        self._exiting = False

    # -- start-up --------------------------------------------------------------------------------

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        if self._settings is None and not isinstance(msg, ActorSystemMessage):
            self._configure(msg.settings if isinstance(msg, StartReplicator) else None)
        if self._loading or self._load_error is not None:
            if isinstance(msg, (LoadChunk, Loaded, WakeupMessage, ActorSystemMessage)):
                return super().receiveMessage(msg, sender)
            if isinstance(msg, GetReplicaCount):
                self.send(sender, ReplicaCount(0, msg.request))  # not serving yet
            elif isinstance(msg, GetStats) and self._load_error is not None:
                self.receiveMsg_GetStats(msg, sender)  # store_error tells why it does not serve
            elif self._load_error is not None:
                self._refuse(msg, sender, f"the store cannot be loaded: {self._load_error}")
            else:
                self._stash.append((msg, sender))  # answered in order once recovered
            return None
        if isinstance(msg, ActorSystemMessage):
            return super().receiveMessage(msg, sender)
        try:
            return super().receiveMessage(msg, sender)
        except Exception as e:  # noqa: BLE001 - bad input must not escape the Replicator
            # A field missing (another version) or of a type a handler trips on.  Escaping, it
            # would make Thespian retry the message and bounce it: no reply of its family.
            self._rejected += 1
            reason = _describe(e)
            if (type(msg).__name__, reason) not in self._logged_rejections:
                self._logged_rejections.add((type(msg).__name__, reason))
                log.warning("rejected a malformed %s: %s", type(msg).__name__, reason)
            self._refuse(msg, sender, f"malformed {type(msg).__name__}: {reason}")
            return None

    def _configure(self, explicit: Mapping[str, Any] | None) -> None:
        """Take the settings (capabilities, then ``explicit``) and start: at once in memory, or
        after loading every stored row of this node."""
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
        self._node = ReplicaId(name, time.time_ns() // 1_000_000)
        if settings.store is None:
            self._serve()
            return
        self._writer = self.createActor(DurableWriter)
        self._load()

    def _load(self) -> None:
        """Ask the DurableWriter for every stored row of this node (again, after a failure)."""
        if not self._loading:
            # A load makes many long-lived objects; with the cyclic collector on, its full
            # collections rescan all restored so far (100,000 keys: 6.5 s instead of 5.8 s).
            # Reference counting still frees what is dropped.
            self._gc_was_enabled = gc.isenabled()
            gc.disable()
        self._loading = True
        self._load_started = time.perf_counter()
        self.send(
            self._writer,
            Load(
                self.settings.store or "",
                self.node.node,
                self.settings.durable_pruning_marker_ttl,
                self.settings.signing_key_file,
            ),
        )

    def receiveMsg_LoadChunk(self, msg: LoadChunk, sender: Any) -> None:
        if sender != self._writer:
            return  # from a replaced DurableWriter, or forged by another actor
        for key, payload in msg.rows:
            self._restore(key, payload)
        self._rejected += len(msg.skipped)
        self._refused += len(msg.skipped)
        self._loaded_rows += len(msg.rows) + len(msg.skipped)

    def receiveMsg_Loaded(self, msg: Loaded, sender: Any) -> None:
        if not self._loading or sender != self._writer:
            return  # from a DurableWriter that was replaced, or forged by another actor
        if self._gc_was_enabled:
            gc.enable()
        error = msg.error
        if error is None and msg.rows != self._loaded_rows:
            error = f"{msg.rows} rows were read but {self._loaded_rows} arrived"
        if error is not None:
            if self._load_error is None:
                log.error("thespian_dd cannot load its store: %s (retrying)", error)
                stashed, self._stash = self._stash, []
                for message, client in stashed:
                    self._refuse(message, client, f"the store cannot be loaded: {error}")
            self._load_error = error
            self._loading = False
            self._forget_loaded()
            self._retry_later()
            return
        self._node = ReplicaId(self.node.node, msg.incarnation)
        # From asking to serving: reading, decoding and restoring every row.
        self._recovery_time = time.perf_counter() - self._load_started
        self._loading = False
        self._load_error = None
        self._retry_delay = 0.0
        log.info(
            "thespian_dd %s recovered %d keys in %.3f s (%d stored rows refused)",
            self._node,
            len(self._data) + len(self._deleted),
            self._recovery_time,
            self._refused,
        )
        self._serve()
        stashed, self._stash = self._stash, []
        for message, client in stashed:
            self.receiveMessage(message, client)

    def _forget_loaded(self) -> None:
        """Drop what a failed or abandoned load restored: the next load starts from nothing."""
        self._data.clear()
        self._deleted.clear()
        self._markers.clear()
        self._digests.clear()
        self._bucket_keys.clear()
        self._bucket_cache.clear()
        self._dirty_buckets.clear()
        self._rejected = self._refused = self._loaded_rows = 0

    def _restore(self, key: str, payload: bytes | None) -> None:
        """Put a stored row back in memory (no write, no notification: nobody is served yet)."""
        bucket = bucket_of(key)
        self._bucket_keys.setdefault(bucket, set()).add(key)
        self._dirty_buckets.add(bucket)
        if payload is None:
            self._deleted.add(key)
            self._digests[key] = TOMBSTONE_DIGEST
            return
        try:
            limits = Limits(max_bytes=self.settings.max_value_bytes)
            markers, raw = split_envelope(payload, limits)
            self._data[key] = codec.decode(raw, limits)
        except CodecError as e:
            self._rejected += 1
            self._refused += 1
            log.warning("skipped stored key %r: %s", key, e)
            return
        self._set_markers(key, markers)
        self._digests[key] = self._digest(key, raw[-16:])
        self._touch(key)  # its last use before the restart is not stored: a full period again

    def _serve(self) -> None:
        self.handleDeadLetters(startHandling=True)
        self.notifyOnSystemRegistrationChanges(True)
        rounds = [("_gossip_round", "gossip_interval"), ("_pruning_round", "pruning_interval")]
        if self.settings.delta_interval:
            rounds.append(("_send_deltas", "delta_interval"))
        for method, interval in rounds:
            self.wakeupAfter(getattr(self.settings, interval), _Every(method, interval))
        log.info("thespian_dd Replicator %s ready", self._node)

    def _refuse(self, msg: Any, sender: Any, error: str) -> None:
        """Answer a request the Replicator cannot serve (its store does not load)."""
        key, request = str(getattr(msg, "key", "")), getattr(msg, "request", None)
        if isinstance(msg, Get):
            self.send(sender, GetFailure(key, request, error))
        elif isinstance(msg, Update):
            self.send(sender, ModifyFailure(key, request, error))
        elif isinstance(msg, Delete):
            self.send(sender, ReplicationDeleteFailure(key, request, error))
        elif isinstance(msg, StartReplicator):
            self.send(sender, ReplicatorStarted(self.node, asdict(self.settings), msg.token, error))
        elif not isinstance(msg, PeerMessage):
            self.send(sender, InvalidRequest(type(msg).__name__, error, request))

    # -- durable writes --------------------------------------------------------------------------

    def _write_durably(self, key: str, raw: bytes | None) -> None:
        """Queue ``key``'s current state (``raw``: its encoding, if the caller has it) for the
        store: at once in sync mode (group commit), within the interval in write-behind mode."""
        if self._writer is None or not any(_matches(p, key) for p in self.settings.durable_keys):
            return
        self._unwritten[key] = raw
        if self.settings.write_mode == "sync":
            self._flush()
        elif not self._flush_timer:
            # Armed by the first write after a flush and never pushed back by later ones, so
            # steady writes cannot postpone the commit.
            self._flush_timer = True
            self.wakeupAfter(self.settings.write_behind_interval, _FlushTick())

    def _flush(self, *, stopping: bool = False) -> None:
        """Send what is unwritten as one batch, unless a batch is being committed (group commit:
        what arrives meanwhile goes in the next one) or the store is failing (a retry is due).
        ``stopping``: a graceful stop sends it anyway (the DurableWriter commits its batches in
        order, before it handles its own exit request)."""
        busy = self._in_flight is not None or self._retry_pending
        if not self._unwritten or (busy and not stopping):
            return
        keys, self._unwritten = self._unwritten, {}
        self._commit(keys)

    def _commit(self, keys: Mapping[str, bytes | None]) -> None:
        """Send ``keys`` (their encodings, where known) as the next batch."""
        self._in_flight = set(keys)
        self._batch += 1
        self._send_batch(self._batch, keys)

    def _send_batch(self, seq: int, keys: Mapping[str, bytes | None]) -> None:
        entries = {key: self._entry(key, raw) for key, raw in keys.items()}
        store, key_file = self.settings.store or "", self.settings.signing_key_file
        self.send(self._writer, Write(store, self.node.node, seq, entries, key_file))

    def _entry(self, key: str, raw: bytes | None) -> Entry | None:
        """What the store gets for ``key``: its current state, encoded once per batch."""
        value = self._data.get(key)
        if value is None:
            return None if key in self._deleted else FORGOTTEN
        replicas = value.modified_by_nodes() if isinstance(value, RemovedNodePruning) else ()
        return Entry(
            codec.type_name(value),
            join_envelope(raw or codec.encode(value), self._markers.get(key, {})),
            " ".join(sorted(str(r) for r in replicas)),
        )

    def _reply_when_stored(self, key: str, client: Any, reply: Any, failure: Any) -> None:
        """Send ``reply`` once ``key``'s latest write is committed (``failure`` if it fails); at
        once in memory, in write-behind mode, or when nothing of it is left to write."""
        if (
            self._writer is None
            or self.settings.write_mode == "write-behind"
            or (key not in self._unwritten and key not in (self._in_flight or ()))
        ):
            self.send(client, reply)  # not durable, or already committed
            return
        batch = self._batch + (1 if key in self._unwritten else 0)
        self._after_commit.append((batch, client, reply, failure))

    def receiveMsg_Written(self, msg: Written, sender: Any) -> None:
        if msg.seq != self._batch or self._in_flight is None or sender != self._writer:
            return  # from a DurableWriter that was replaced (its batch was sent again), or forged
        committed, self._in_flight = self._in_flight, None
        done = [w for w in self._after_commit if w[0] <= msg.seq]
        self._after_commit = [w for w in self._after_commit if w[0] > msg.seq]
        if msg.error is None:
            self._last_flush = time.time()
            self._store_failure = None
            self._retry_delay = 0.0
            for _, client, reply, _ in done:
                self.send(client, reply)
            if self.settings.write_mode == "sync" or self._flush_due:
                self._flush_due = False
                self._flush()
            return
        # Keep the keys (their state now is at least what failed) and try again with backoff.
        for key in committed:
            self._unwritten.setdefault(key, None)
        self._store_failures += 1
        if self._store_failure is None:
            log.error("thespian_dd store write failed: %s (retrying)", msg.error)
        self._store_failure = msg.error
        for _, client, _, failure in done:
            if failure is not None:
                self.send(client, failure(msg.error))
        self._retry_later()

    def _retry_later(self) -> None:
        """Try the store again after a backoff: 0.5 s, doubling up to 30 s while it fails."""
        self._retry_delay = min(max(2 * self._retry_delay, 0.5), 30.0)
        self._retry_pending = True
        self.wakeupAfter(self._retry_delay, _StoreRetry())

    def _writer_exited(self) -> None:
        """The DurableWriter died (killed, crashed): start another and send it again what the
        dead one had not confirmed."""
        log.error("thespian_dd DurableWriter exited; starting a new one")
        self._writer = self.createActor(DurableWriter)
        if self._loading:
            self._forget_loaded()
            self._load()
        elif self._in_flight is not None:
            self._send_batch(self._batch, dict.fromkeys(self._in_flight))

    @property
    def node(self) -> ReplicaId:
        assert self._node is not None
        return self._node

    @property
    def settings(self) -> Settings:
        assert self._settings is not None
        return self._settings

    def receiveMsg_StartReplicator(self, msg: StartReplicator, sender: Any) -> None:
        error = self._settings_error
        running = asdict(self.settings)
        clash = {
            k: v
            for k, v in msg.settings.items()
            if running.get(k, v) != (tuple(v) if isinstance(v, list) else v)
        }
        if clash:
            error = (
                f"the Replicator is already running with other settings: asked {clash}, "
                f"running { ({k: running.get(k) for k in clash}) }"
            )
        unknown = set(msg.settings) - Settings.names()
        if unknown:
            error = f"unknown thespian_dd setting(s) {sorted(unknown)}"
        self.send(sender, ReplicatorStarted(self.node, running, msg.token, error))

    # -- local state -----------------------------------------------------------------------------

    def _store(
        self,
        key: str,
        value: ReplicatedData | None,
        raw: bytes | None = None,
        *,
        notify: bool = True,
    ) -> None:
        """Keep ``value`` (None: a tombstone) for ``key``, tell subscribers (if ``notify``), and
        write it (with its pruning markers) to the store if there is one.  ``raw`` is its
        encoding when the caller has it already."""
        digest = None if raw is None else self._digest(key, raw[-16:])
        if value is None:
            self._data.pop(key, None)
            self._markers.pop(key, None)
            self._deleted.add(key)
            self._digests[key] = TOMBSTONE_DIGEST
            self._stale_digests.discard(key)
        else:
            self._data[key] = value
            if digest is None:
                # Computed when gossip next needs it, not on the path of every update.
                self._digests.pop(key, None)
                self._stale_digests.add(key)
            else:
                self._digests[key] = digest
                self._stale_digests.discard(key)
        bucket = bucket_of(key)
        self._bucket_keys.setdefault(bucket, set()).add(key)
        self._dirty_buckets.add(bucket)
        if notify:
            self._changed(key)
        self._write_durably(key, raw)

    def _payload(self, key: str) -> bytes | None:
        """What a peer gets for ``key``: the value's codec bytes with its pruning markers (an
        envelope), TOMBSTONE, or None if unknown here."""
        if key in self._deleted:
            return TOMBSTONE
        value = self._data.get(key)
        if value is None:
            return None
        return join_envelope(codec.encode(value), self._markers.get(key, {}))

    def _digest(self, key: str, value_digest: bytes) -> bytes:
        markers = self._markers.get(key)
        return envelope_digest(value_digest, markers) if markers else value_digest

    def _fresh_digests(self) -> dict[str, bytes]:
        """Every key's digest, computing those that changed since they were last needed."""
        for key in self._stale_digests:
            self._digests[key] = self._digest(key, codec.digest(self._data[key]))
        self._stale_digests.clear()
        return self._digests

    def _buckets(self) -> dict[int, bytes]:
        """The digest of every non-empty bucket (a bucket whose last key left has none)."""
        digests = self._fresh_digests()
        for bucket in self._dirty_buckets:
            keys = self._bucket_keys.get(bucket)
            if keys:
                self._bucket_cache.update(bucket_digests(digests, keys))
            else:
                self._bucket_keys.pop(bucket, None)
                self._bucket_cache.pop(bucket, None)
        self._dirty_buckets.clear()
        return self._bucket_cache

    def _merge_remote(self, key: object, payload: object, origin: str, used: object = None) -> bool:
        """Merge a peer's value into ``key``; returns whether anything changed.  A payload that
        is malformed, of another type than the local value, or too big after the merge is
        rejected for this key only: counted, logged once, and nothing changes.  ``used``: when
        the peer says the key was last used, if it expires after inactivity."""
        at = _seconds(used)
        if isinstance(key, str) and key not in self._data and self._expired(key, at):
            return False  # it expired there; it must not come back here
        try:
            merged = self._merged(key, payload)
        except Exception as e:  # noqa: BLE001 - peer data must never raise in the Replicator
            self._rejected += 1
            reason = _describe(e)
            if (origin, reason) not in self._logged_rejections:
                self._logged_rejections.add((origin, reason))
                log.warning("rejected the value of %r from %s: %s", key, origin, reason)
            return False
        if merged is None:
            return False
        assert isinstance(key, str)
        value, raw, markers, changed = merged
        if value is not None:
            self._set_markers(key, markers)
        self._store(key, value, raw if value is not None else None, notify=changed)
        if value is not None:
            self._touch(key, at)
        return True

    def _set_markers(self, key: str, markers: Markers) -> None:
        if markers:
            self._markers[key] = dict(markers)
            self._pruned_ids.update(r for r, m in markers.items() if isinstance(m, Performed))
        else:
            self._markers.pop(key, None)

    def receiveMsg_PeerRemoved(self, msg: PeerRemoved, sender: Any) -> None:
        if isinstance(msg, PeerMessage) and msg.removed == self._node:
            self._reincarnate()

    def _seen_here(self, markers: Markers, now_ms: int) -> dict[ReplicaId, Marker]:
        """``markers`` with this node added to every Initialized one's ``seen`` (it is merging
        the value that came with them) and expired Performed ones dropped."""
        return {
            removed: Initialized(m.owner, m.seen | {self.node.node})
            if isinstance(m, Initialized)
            else m
            for removed, m in markers.items()
            if isinstance(m, Initialized) or m.expires_ms > now_ms
        }

    def _merged(
        self, key: object, payload: object
    ) -> tuple[ReplicatedData | None, bytes, Markers, bool] | None:
        """The new value of ``key`` and its pruning markers with ``payload`` (an envelope) merged
        in, and whether the value changed (None: nothing changes).  Slots of pruned replicas are
        cleaned from both sides first, so they cannot come back or count twice."""
        error = _key_error(key)
        if error or not isinstance(key, str):
            raise ValueError(error)
        if key in self._deleted:
            return None
        if payload == TOMBSTONE:
            return (None, TOMBSTONE, {}, True)
        if not isinstance(payload, bytes):
            raise TypeError(f"payload is a {type(payload).__name__}, not bytes")
        now_ms = time.time_ns() // 10**6
        limits = Limits(max_bytes=self.settings.max_value_bytes, now_ms=now_ms)
        markers_in, raw_in = split_envelope(payload, limits)
        if self.node in markers_in:
            self._reincarnate()
            raise ValueError(f"the peer pruned this node's replica {markers_in[self.node]}")
        incoming = codec.decode(raw_in, limits)
        original = current = self._data.get(key)
        if current is not None and type(current) is not type(incoming):
            raise TypeError(
                f"a {type(incoming).__name__} for a key holding a {type(current).__name__}"
            )
        mine = self._markers.get(key, {})
        markers = self._seen_here(merge_markers(mine, markers_in), now_ms)
        incoming = _cleaned(incoming, markers)
        merged = incoming if current is None else _cleaned(current, markers).merge(incoming)
        if merged == original and markers == mine:
            return None
        raw = codec.encode(merged)
        if len(raw) > self.settings.max_value_bytes:
            raise ValueError(
                f"merged value of {len(raw)} bytes exceeds max_value_bytes="
                f"{self.settings.max_value_bytes}"
            )
        return (merged, raw, markers, merged != original)

    # -- reads and writes ------------------------------------------------------------------------

    def receiveMsg_Get(self, msg: Get, sender: Any) -> None:
        error = _key_error(msg.key) or _consistency_error(msg.consistency, ReadConsistency)
        if error:
            self._reject(sender, GetFailure(msg.key, msg.request, error))
            return
        if msg.key in self._data:
            self._touch(msg.key)
        needed = msg.consistency.replicas_needed(self._replica_count())
        if needed <= 1 or msg.key in self._deleted:
            self._reply_get(sender, msg.key, msg.request)
            return
        pending = _Pending("get", sender, msg.key, msg.request, needed, self._targets())
        if self._ask_peers(pending, _timeout(msg.consistency)):
            for name, address in pending.asked.items():
                self._peer_send(
                    name, address, PeerRead(PROTOCOL_VERSION, self.node, pending.id_, msg.key)
                )

    def _reply_get(self, client: Any, key: str, request: Any) -> None:
        if key in self._deleted:
            self.send(client, GetDataDeleted(key, request))
        elif key in self._data:
            self.send(client, GetSuccess(key, request, self._data[key]))
        else:
            self.send(client, NotFound(key, request))

    def receiveMsg_Update(self, msg: Update, sender: Any) -> None:
        error = self._update_error(msg)
        if error is not None:
            self.send(sender, ModifyFailure(msg.key, msg.request, error))
            return
        if msg.key in self._deleted:
            self.send(sender, UpdateDataDeleted(msg.key, msg.request))
            return
        try:
            new, delta = self._modified(msg)
        except BaseException as e:  # noqa: BLE001 - whatever modify raises (SystemExit too) is
            # the caller's failure: it must not end the node's Replicator
            self.send(sender, ModifyFailure(msg.key, msg.request, f"modify failed: {_describe(e)}"))
            return
        self._store(msg.key, new)
        self._touch(msg.key)
        self._queue_delta(msg.key, delta)
        self._replicate("update", sender, msg.key, msg.request, msg.consistency)

    def _update_error(self, msg: Update) -> str | None:
        error = _key_error(msg.key)
        if error:
            self._rejected += 1
            return error
        if not isinstance(msg.initial, ReplicatedData):
            self._rejected += 1
            return f"initial must be a CRDT (ReplicatedData), not {type(msg.initial).__name__}"
        error = _consistency_error(msg.consistency, WriteConsistency)
        if error:
            self._rejected += 1
            return error
        current = self._data.get(msg.key)
        if current is not None and type(current) is not type(msg.initial):
            return (
                f"key {msg.key!r} holds a {type(current).__name__}; initial is a "
                f"{type(msg.initial).__name__}"
            )
        if current is None and msg.key not in self._deleted:
            # A new key starts from initial: a state the codec cannot encode (broken internals,
            # a type it does not know) would make every later gossip round raise.
            try:
                codec.decode(codec.encode(msg.initial))
            except Exception as e:  # noqa: BLE001 - whatever is wrong with it is the caller's
                self._rejected += 1
                return f"initial is not a valid {type(msg.initial).__name__}: {_describe(e)}"
        return None

    def _modified(self, msg: Update) -> tuple[ReplicatedData, ReplicatedData]:
        """The new value and what to ship as its delta (the whole value for types without)."""
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
        if not new.is_inflation_of(current):
            raise ValueError(
                f"what modify returned for key {msg.key!r} is not an inflation of the current "
                f"{type(current).__name__}: merged with a replica that holds the current value, "
                "it would lose writes (build the new value from the one modify is given, with "
                "its methods; an LWW write must be later than the current one)"
            )
        if not isinstance(new, DeltaReplicatedData):
            return new, new
        delta = new.delta
        new = new.reset_delta()
        # A key new here ships whole: a delta alone could be a partial state for a peer.
        return new, new if delta is None or msg.key not in self._data else delta

    def receiveMsg_Delete(self, msg: Delete, sender: Any) -> None:
        error = _key_error(msg.key) or _consistency_error(msg.consistency, WriteConsistency)
        if error:
            self._reject(sender, ReplicationDeleteFailure(msg.key, msg.request, error))
        elif msg.key in self._deleted:
            self.send(sender, DataDeleted(msg.key, msg.request))
        else:
            self._store(msg.key, None)
            self._queue_delta(msg.key, None)
            self._replicate("delete", sender, msg.key, msg.request, msg.consistency)

    def _replicate(
        self, kind: str, client: Any, key: str, request: Any, consistency: WriteConsistency
    ) -> None:
        """Acknowledge a local write now, or once enough peers have it."""
        needed = consistency.replicas_needed(self._replica_count())
        if needed > 1:
            pending = _Pending(kind, client, key, request, needed, self._targets())
            if not self._ask_peers(pending, _timeout(consistency)):
                return
            payload = self._payload(key)
            assert payload is not None
            for name, address in pending.asked.items():
                self._peer_send(
                    name, address, PeerWrite(PROTOCOL_VERSION, self.node, pending.id_, key, payload)
                )
            return
        self._reply_when_stored(
            key,
            client,
            (UpdateSuccess if kind == "update" else DeleteSuccess)(key, request),
            partial(StoreFailure, key, request),
        )

    def _targets(self) -> dict[str, Any]:
        """The peers a quorum request goes to: the reachable ones."""
        return {
            name: peer.address
            for name, peer in self._peers.items()
            if peer.reachable and name not in self._blocked
        }

    def _ask_peers(self, pending: _Pending, timeout: float) -> bool:
        """Register a quorum request; if it cannot succeed, answer it now and return False."""
        if len(pending.asked) + 1 < pending.needed:
            self._finish(pending, timed_out=True)
            return False
        self._requests[pending.id_] = pending
        self.wakeupAfter(timeout, _RequestTimeout(pending.id_))
        return True

    def _finish(self, pending: _Pending, *, timed_out: bool) -> None:
        self._requests.pop(pending.id_, None)
        key, request, client = pending.key, pending.request, pending.client
        if pending.kind in ("update", "delete") and not timed_out:
            success = UpdateSuccess if pending.kind == "update" else DeleteSuccess
            self._reply_when_stored(
                key, client, success(key, request), partial(StoreFailure, key, request)
            )
            return
        if pending.kind == "update":
            reply: Any = UpdateTimeout(key, request)
        elif pending.kind == "delete":
            reply = ReplicationDeleteFailure(
                key, request, "not confirmed by enough replicas in time"
            )
        elif timed_out:
            reply = GetFailure(key, request, "not enough replicas answered in time")
        else:
            for payload in pending.results:
                if payload is not None:
                    self._merge_remote(key, payload, "read repair")
            self._reply_get(client, key, request)
            return
        self.send(client, reply)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if sender != self.myAddress:  # a timer is only ever our own; another actor forged it
            self._rejected += 1
            return
        payload = msg.payload
        if isinstance(payload, _NotifyTick):
            self._tick_scheduled = False
            self._notify()
        elif isinstance(payload, _Every):
            try:
                getattr(self, payload.round)()
            finally:  # a round that fails must not end the rounds
                self.wakeupAfter(getattr(self.settings, payload.interval), payload)
        elif isinstance(payload, _StoreRetry):
            self._retry_pending = False
            if self._load_error is not None and not self._loading:
                self._load()
            else:
                self._flush()
        elif isinstance(payload, _FlushTick):
            self._flush_timer = False
            if self._in_flight is None:
                self._flush()
            else:
                self._flush_due = True  # right after the batch being committed
        elif isinstance(payload, _RequestTimeout):
            pending = self._requests.get(payload.request_id)
            if pending is not None:
                self._finish(pending, timed_out=True)

    # -- pruning ---------------------------------------------------------------------------------

    def _in_majority(self) -> bool:
        """Whether this node and the peers it reaches are more than half the cluster: only such
        a side may remove a peer (on both sides of a partition, each would remove the other and
        prune what the other counted)."""
        reached = 1 + sum(1 for p in self._peers.values() if p.reachable)
        return reached > (1 + len(self._peers)) / 2

    def _live(self) -> dict[str, ReplicaId]:
        """The current replica of this node and of every peer, by node name."""
        return {self.node.node: self.node, **{n: p.replica for n, p in self._peers.items()}}

    def _removed(self, replica: ReplicaId, live: Mapping[str, ReplicaId]) -> bool:
        """Whether ``replica`` writes no more: an earlier start of a live node, or a node that is
        no member (it left, was removed, or never came back after a restart).  A node that is
        merely new counts too, which is why pruning waits ``max_pruning_dissemination``."""
        current = live.get(replica.node)
        return current is None or replica.incarnation < current.incarnation

    def _pruning_round(self) -> None:
        """Expire markers; then, only while every peer is reachable: the leader marks keys that
        hold state of removed replicas, and the owner of a marker every live node has seen
        prunes."""
        live = self._live()
        self._expire_markers(live)
        self._keep_alive()
        if not all(p.reachable for p in self._peers.values()):
            return
        self._note_removed(live)
        now = time.monotonic()
        to_mark: set[ReplicaId] = set()
        if min(live) == self.node.node:  # the leader
            to_mark = {
                r
                for r, since in self._removed_since.items()
                if now - since >= self.settings.max_pruning_dissemination
            }
        for key, value in list(self._data.items()):
            if isinstance(value, RemovedNodePruning):
                self._prune_key(key, value, to_mark, live)

    def _expire_markers(self, live: Mapping[str, ReplicaId]) -> None:
        """Drop expired Performed markers, and Initialized ones whose owner is gone (the leader
        marks the key again)."""
        now_ms = time.time_ns() // 10**6
        for key, markers in list(self._markers.items()):
            kept = {
                r: m
                for r, m in markers.items()
                if (isinstance(m, Performed) and m.expires_ms > now_ms)
                or (isinstance(m, Initialized) and live.get(m.owner.node) == m.owner)
            }
            if kept != markers:
                self._set_markers(key, kept)
                self._store(key, self._data[key], notify=False)

    def _prune_key(
        self,
        key: str,
        value: RemovedNodePruning,
        to_mark: set[ReplicaId],
        live: Mapping[str, ReplicaId],
    ) -> None:
        markers = self._markers.get(key, {})
        updated = dict(markers)
        for removed in to_mark:
            if removed not in markers and value.needs_pruning_from(removed):
                updated[removed] = Initialized(self.node, frozenset({self.node.node}))
        pruned = value
        for removed, marker in updated.items():
            if (
                isinstance(marker, Initialized)
                and marker.owner == self.node
                and marker.seen >= live.keys()
            ):
                pruned = pruned.prune(removed, self.node)
                ttl_ms = int(self._marker_ttl(key) * 1000)
                updated[removed] = Performed(time.time_ns() // 10**6 + ttl_ms)
                log.info("pruned %s from %r", removed, key)
        if updated != markers or pruned is not value:
            self._set_markers(key, updated)
            assert isinstance(pruned, ReplicatedData)
            self._store(key, pruned, notify=False)

    def _note_removed(self, live: Mapping[str, ReplicaId]) -> None:
        """Track since when each replica in the data has been removed."""
        present: set[ReplicaId] = set()
        for value in self._data.values():
            if isinstance(value, RemovedNodePruning):
                present |= value.modified_by_nodes()
        removed = {r for r in present if self._removed(r, live)}
        now = time.monotonic()
        self._removed_since = {r: self._removed_since.get(r, now) for r in removed}

    def _keep_alive(self) -> None:
        """An idle durable node commits an empty batch now and then, so its store tells how long
        it has really been offline (see ``durable_pruning_marker_ttl``)."""
        period = min(self.settings.durable_pruning_marker_ttl / 10, 3600.0)
        idle = time.time() - (self._last_flush or 0.0)
        ready = self._writer is not None and self._in_flight is None and not self._retry_pending
        if ready and idle > period:
            self._commit({})

    def _marker_ttl(self, key: str) -> float:
        durable = self._writer is not None and any(
            _matches(p, key) for p in self.settings.durable_keys
        )
        return (
            self.settings.durable_pruning_marker_ttl
            if durable
            else self.settings.pruning_marker_ttl
        )

    def _reincarnate(self) -> None:
        """Peers pruned this node's replica (it was removed while it still ran: unreachable
        longer than ``removal_timeout``).  Writing on under it would lose every new write, so it
        takes a new incarnation, as a restart would, and introduces itself again."""
        old = self.node
        self._node = ReplicaId(old.node, max(time.time_ns() // 10**6, old.incarnation + 1))
        log.error(
            "thespian_dd %s was removed by its peers (unreachable longer than removal_timeout); "
            "it goes on as %s, and its writes its peers had not seen are lost",
            old,
            self._node,
        )
        hello = self._hello(reply=True)
        for name, peer in self._peers.items():
            self._peer_send(name, peer.address, hello)

    # -- expiry of idle keys ---------------------------------------------------------------------

    def _expiry(self, key: str) -> float | None:
        """Seconds of inactivity after which ``key`` expires (an exact key before the longest
        matching prefix), or None."""
        rules = self.settings.expire_keys_after_inactivity
        if key in rules:
            return rules[key]
        matching = [p for p in rules if p.endswith("*") and key.startswith(p[:-1])]
        return rules[max(matching, key=len)] if matching else None

    def _expired(self, key: str, used: float | None) -> bool:
        expiry = self._expiry(key)
        return expiry is not None and used is not None and time.time() - used > expiry

    def _touch(self, key: str, at: float | None = None) -> None:
        """``key`` was used (updated or read) at ``at`` (default: now), here or on a peer."""
        if self._expiry(key) is not None:
            if at is None:
                at = time.time()
                self._used_here.add(key)  # peers hear of it in the next gossip round
            self._last_used[key] = max(self._last_used.get(key, at), at)

    def _expire_keys(self) -> None:
        """Remove every key idle longer than its expiry: no tombstone, its row deleted, its
        subscribers told ``Expired``.  Used anywhere meanwhile, it comes back by gossip."""
        for key, used in list(self._last_used.items()):
            if key in self._data and self._expired(key, used):
                del self._data[key]
                del self._last_used[key]
                self._markers.pop(key, None)
                self._digests.pop(key, None)
                self._stale_digests.discard(key)
                self._outbox.pop(key, None)
                bucket = bucket_of(key)
                self._bucket_keys.get(bucket, set()).discard(key)
                self._dirty_buckets.add(bucket)
                self._changed(key)
                self._write_durably(key, None)
                log.info("key %r expired after %.0f s without use", key, time.time() - used)

    def _used(self, keys: Iterable[str]) -> dict[str, float]:
        return {k: self._last_used[k] for k in keys if k in self._last_used}

    # -- subscriptions ---------------------------------------------------------------------------

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: Any) -> None:
        error = _key_error(msg.key)
        if error:
            self._reject(sender, InvalidRequest("Subscribe", error))
            return
        subscriber = sender if msg.subscriber is None else msg.subscriber
        if not isinstance(subscriber, ActorAddress):
            error = f"subscriber must be an ActorAddress or None, not {type(subscriber).__name__}"
            self._reject(sender, InvalidRequest("Subscribe", error))
            return
        if (msg.key, subscriber) not in self._subscriptions:
            self._subscriptions.append((msg.key, subscriber))
        for key in sorted(self._data):
            if _matches(msg.key, key):
                self._tell_subscriber(subscriber, Changed(key, self._data[key]))

    def receiveMsg_Unsubscribe(self, msg: Unsubscribe, sender: Any) -> None:
        subscriber = sender if msg.subscriber is None else msg.subscriber
        self._subscriptions = [
            (k, s) for k, s in self._subscriptions if not (k == msg.key and s == subscriber)
        ]
        if all(s != subscriber for _, s in self._subscriptions):
            self._outboxes.pop(str(subscriber), None)

    def receiveMsg_FlushChanges(self, msg: FlushChanges, sender: Any) -> None:
        self._notify()

    def _changed(self, key: str) -> None:
        self._pending_notify.add(key)
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self.wakeupAfter(self.settings.notify_interval, _NotifyTick())

    def _notify(self) -> None:
        pending, self._pending_notify = self._pending_notify, set()
        for key in sorted(pending):
            message: Changed | Deleted | Expired = (
                Deleted(key)
                if key in self._deleted
                else Changed(key, self._data[key])
                if key in self._data
                else Expired(key)
            )
            for pattern, subscriber in self._subscriptions:
                if _matches(pattern, key):
                    self._tell_subscriber(subscriber, message)

    def _tell_subscriber(self, subscriber: Any, message: Changed | Deleted | Expired) -> None:
        box = self._outboxes.setdefault(str(subscriber), _Outbox(subscriber))
        if box.in_flight:
            box.held[message.key] = message  # a later value of a key replaces an older one
            return
        box.in_flight = True
        self._send_within_timeout(subscriber, message, partial(self._told, box))

    def _told(self, box: _Outbox, status: Any) -> None:
        """A notification was delivered, or failed: send the next held one."""
        box.in_flight = False
        if self._outboxes.get(str(box.address)) is not box:
            return  # unsubscribed or dropped meanwhile
        if status == SendStatus.DeadTarget:
            self._drop_subscriber(box.address)
        elif box.held:
            key = next(iter(box.held))
            self._tell_subscriber(box.address, box.held.pop(key))

    def receiveMsg_DeadEnvelope(self, msg: DeadEnvelope, sender: Any) -> None:
        # Notifications and peer messages learn of a dead target from their send (_told,
        # _transmitted); a subscriber may also be told of by the dead-letter route.
        if isinstance(msg.deadMessage, (Changed, Deleted, Expired)):
            self._drop_subscriber(msg.deadAddress)

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        if isinstance(msg.poisonMessage, (Changed, Deleted, Expired)):
            self._drop_subscriber(sender)

    def _drop_subscriber(self, address: Any) -> None:
        self._outboxes.pop(str(address), None)
        before = len(self._subscriptions)
        self._subscriptions = [(k, s) for k, s in self._subscriptions if s != address]
        if len(self._subscriptions) < before:
            log.info("dropped a subscriber that is gone: %s", address)

    # -- peers: membership and failure detection -------------------------------------------------

    def _replica_count(self) -> int:
        """N: this replica and every known peer, reachable or not."""
        return 1 + len(self._peers)

    def _directory(self) -> dict[str, tuple[ReplicaId, Any]]:
        return {name: (p.replica, p.address) for name, p in self._peers.items()}

    def _hello(self, *, reply: bool) -> PeerHello:
        return PeerHello(PROTOCOL_VERSION, self.node, self.myAddress, self._directory(), reply)

    def _peer_send(self, name: str, address: Any, message: PeerMessage) -> None:
        """Send ``message`` to a peer, at most a window of messages in flight per peer.

        Thespian lets an actor have 20 transmits in flight, for all targets together, and keeps a
        transmit to a silent host (a real partition) in flight for minutes: a few gossip rounds
        to a cut-off peer would stall every other send of the Replicator, its replies to clients
        too.  So each peer gets a share of the slots; what exceeds it waits (bounded, newest
        kept), and a transmit that is not delivered within ``failure_timeout`` fails and frees
        its slot."""
        if name in self._blocked:
            return
        peer = self._peers.get(name)
        if peer is None or peer.address != address:
            self._transmit(None, address, message)  # a hello to a peer not met yet: once
        elif peer.in_flight >= self._window():
            if isinstance(message, GossipStatus):  # only the latest status matters
                peer.held = deque(m for m in peer.held if not isinstance(m, GossipStatus))
            peer.held.append(message)
            while len(peer.held) > HELD_PER_PEER:
                peer.held.popleft()
        else:
            self._transmit(peer, address, message)

    def _window(self) -> int:
        """How many messages each peer may have in flight: Thespian's slots, less a reserve,
        shared among the peers (at least one each; raise THESPIAN_MAX_PENDING_TRANSMITS for
        clusters of more than about a dozen nodes)."""
        slots: int = asyncTransportBase.MAX_PENDING_TRANSMITS - RESERVED_TRANSMITS
        return max(1, slots // max(1, len(self._peers)))

    def _transmit(self, peer: _Peer | None, address: Any, message: PeerMessage) -> None:
        self._gossip_out += gossip_bytes(message)
        if peer is not None:
            peer.in_flight += 1
        self._send_within_timeout(address, message, partial(self._transmitted, peer))

    def _send_within_timeout(self, address: Any, message: Any, done: Callable[[Any], None]) -> None:
        """Send ``message``; ``done(status)`` once it is delivered, or has failed: at the latest
        after ``failure_timeout`` (Thespian's own limit is minutes)."""
        send_intent = getattr(self._myRef, "_send_intent", None)
        if send_intent is None:  # a base without transmit intents (simpleSystemBase)
            self.send(address, message)
            done(SendStatus.Sent)
            return

        def finished(status: Any, _intent: Any) -> None:
            done(status)

        limit = dt.timedelta(seconds=self.settings.failure_timeout)
        send_intent(
            TransmitIntent(address, message, onSuccess=finished, onError=finished, maxPeriod=limit)
        )

    def _transmitted(self, peer: _Peer | None, status: Any) -> None:
        """A peer message was delivered, or failed: its slot is free for the next held one."""
        if peer is None:
            return
        peer.in_flight -= 1
        if self._peers.get(peer.replica.node) is not peer:
            return  # removed, or a new incarnation: what it held is moot
        if status == SendStatus.DeadTarget:
            peer.reachable = False  # its node is gone: no need to wait for the timeout
        while peer.held and peer.in_flight < self._window():
            self._transmit(peer, peer.address, peer.held.popleft())

    def _accept(self, msg: Any, sender: Any) -> bool:
        """Whether a peer message may be handled: right version, sender not cut off.  Marks the
        sender alive."""
        if not isinstance(msg, PeerMessage) or not isinstance(msg.sender, ReplicaId):
            self._rejected += 1
            return False
        if msg.sender.node in self._blocked or msg.sender == self._node:
            return False
        if msg.sender in self._departed or msg.sender in self._pruned_ids:
            # Removed for good, or pruned: it must not write on under that replica.
            if isinstance(sender, ActorAddress) and not isinstance(msg, PeerRemoved):
                self.send(sender, PeerRemoved(PROTOCOL_VERSION, self.node, msg.sender))
            return False
        if msg.version != PROTOCOL_VERSION:
            self._rejected += 1
            reason = f"protocol version {msg.version!r} (this node speaks {PROTOCOL_VERSION})"
            if (msg.sender.node, reason) not in self._logged_rejections:
                self._logged_rejections.add((msg.sender.node, reason))
                log.warning("ignoring %s from %s: %s", type(msg).__name__, msg.sender, reason)
            return False
        with contextlib.suppress(TypeError, AttributeError):  # malformed: the handler rejects it
            self._gossip_in += gossip_bytes(msg)
        peer = self._peers.get(msg.sender.node)
        if (
            (peer is None or peer.replica < msg.sender)
            and isinstance(msg, GossipStatus)
            and self._learn(msg.sender, sender)
        ):
            # A peer whose hello never came (it restarted while this node could not hear it):
            # its status comes from its Replicator, so that address is the one to learn.
            self._peer_send(msg.sender.node, sender, self._hello(reply=False))
            peer = self._peers.get(msg.sender.node)
        if peer is not None and peer.replica == msg.sender:
            peer.last_seen = time.monotonic()
            peer.reachable = True
        return True

    def _learn(self, replica: ReplicaId, address: Any) -> bool:
        """Add or refresh a peer; returns whether it is new (or a new incarnation)."""
        if not isinstance(address, ActorAddress):
            return False  # every gossip round would fail sending to it
        if replica.node == self.node.node or replica in self._departed:
            return False
        if replica in self._pruned_ids:
            self.send(address, PeerRemoved(PROTOCOL_VERSION, self.node, replica))
            return False
        known = self._peers.get(replica.node)
        if known is not None and known.replica >= replica:
            return False
        self._peers[replica.node] = _Peer(replica, address, time.monotonic())
        if known is not None:
            self._seq_seen.pop(known.replica, None)  # its deltas were numbered per incarnation
        log.info("peer %s joined (%d peers)", replica, len(self._peers))
        return True

    def _learn_directory(self, peers: Mapping[str, tuple[ReplicaId, Any]]) -> None:
        for replica, address in peers.values():
            if isinstance(replica, ReplicaId) and self._learn(replica, address):
                self._peer_send(replica.node, address, self._hello(reply=True))

    def receiveMsg_ActorSystemConventionUpdate(self, msg: Any, sender: Any) -> None:
        name = (msg.remoteCapabilities or {}).get(NODE_CAPABILITY)
        if not isinstance(name, str) or name == self.node.node:
            return
        if not msg.remoteAdded:
            # The convention saw the node go (a graceful stop, or missed re-registrations).  It
            # is unreachable until heard again; it still counts in N until it is removed for
            # good (a departed node's removal comes with pruning).
            gone = self._peers.get(name)
            if gone is not None and gone.reachable:
                gone.reachable = False
                log.info("peer %s left the convention", gone.replica)
            return
        introducer = self.createActor(Introducer, targetActorRequirements={NODE_CAPABILITY: name})
        self.send(introducer, Introduce(self._hello(reply=True)))

    def receiveMsg_IntroducerDone(self, msg: IntroducerDone, sender: Any) -> None:
        self.send(sender, Introduced())

    def receiveMsg_PeerHello(self, msg: PeerHello, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        if not isinstance(msg.address, ActorAddress):
            self._rejected += 1
            return
        self._learn(msg.sender, msg.address)
        self._learn_directory(msg.peers)
        if msg.reply:
            self._peer_send(msg.sender.node, msg.address, self._hello(reply=False))
        self._peer_send(msg.sender.node, msg.address, self._status())

    def _status(self) -> GossipStatus:
        used, self._used_here = self._used(self._used_here), set()
        return GossipStatus(
            PROTOCOL_VERSION, self.node, dict(self._buckets()), self._directory(), used
        )

    def _gossip_round(self) -> None:
        self._gossip_rounds += 1
        self._expire_keys()
        now = time.monotonic()
        status = self._status()
        for name, peer in list(self._peers.items()):
            if peer.reachable and now - peer.last_seen > self.settings.failure_timeout:
                peer.reachable = False
                log.warning("peer %s is unreachable", peer.replica)
            if (
                not peer.reachable
                and now - peer.last_seen > self.settings.removal_timeout
                and self._in_majority()
            ):
                # Gone for good: it no longer counts in N, and its replica will be pruned.
                del self._peers[name]
                self._departed.add(peer.replica)
                log.warning(
                    "peer %s removed: unreachable for %.0f s", peer.replica, now - peer.last_seen
                )
                continue
            self._peer_send(name, peer.address, status)

    def receiveMsg_PartitionForTests(self, msg: PartitionForTests, sender: Any) -> None:
        self._blocked = frozenset(msg.blocked)
        log.warning("TEST ONLY partition: ignoring peers %s", sorted(self._blocked))

    # -- peers: anti-entropy ---------------------------------------------------------------------

    def receiveMsg_GossipStatus(self, msg: GossipStatus, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        self._learn_directory(msg.peers)
        peer = self._peers.get(msg.sender.node)
        if peer is None or not isinstance(msg.buckets, dict):
            return
        if isinstance(msg.used, dict):
            for key, at in msg.used.items():
                if key in self._data and (seconds := _seconds(at)) is not None:
                    self._touch(key, seconds)
        mine = self._buckets()
        differ = frozenset(
            b for b in set(mine) | set(msg.buckets) if mine.get(b) != msg.buckets.get(b)
        )
        if differ:
            known = self._fresh_digests()
            digests = {key: known[key] for b in differ for key in self._bucket_keys.get(b, ())}
            self._peer_send(
                peer.replica.node,
                peer.address,
                GossipKeys(PROTOCOL_VERSION, self.node, digests, differ),
            )

    def receiveMsg_GossipKeys(self, msg: GossipKeys, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        peer = self._peers.get(msg.sender.node)
        if peer is None or not isinstance(msg.digests, dict):
            return
        known = self._fresh_digests()
        mine = {
            key: known[key]
            for b in msg.buckets
            if isinstance(b, int)
            for key in self._bucket_keys.get(b, ())
        }
        send = [k for k, d in mine.items() if msg.digests.get(k) != d]
        want = frozenset(
            k for k, d in msg.digests.items() if isinstance(k, str) and mine.get(k) != d
        )
        self._send_entries(peer, send, want)

    def _send_entries(self, peer: _Peer, keys: list[str], want: frozenset[str]) -> None:
        """Send the values of ``keys`` within the gossip budget; what does not fit goes in the
        next round (smallest first, so one big value cannot hold back the others)."""
        payloads = [(k, p) for k in keys if (p := self._payload(k)) is not None]
        payloads.sort(key=lambda kp: len(kp[1]))
        entries: dict[str, bytes] = {}
        size = 0
        for key, payload in payloads:
            if entries and size + len(payload) > self.settings.max_gossip_bytes:
                break
            if len(payload) > self.settings.max_gossip_bytes and (
                ("budget", key) not in self._logged_rejections
            ):
                self._logged_rejections.add(("budget", key))
                log.warning(
                    "value of %r (%d bytes) exceeds max_gossip_bytes: sent alone", key, len(payload)
                )
            entries[key] = payload
            size += len(payload)
        if entries or want:
            self._peer_send(
                peer.replica.node,
                peer.address,
                GossipEntries(PROTOCOL_VERSION, self.node, entries, want, self._used(entries)),
            )

    def receiveMsg_GossipEntries(self, msg: GossipEntries, sender: Any) -> None:
        if not self._accept(msg, sender) or not isinstance(msg.entries, dict):
            return
        used = msg.used if isinstance(msg.used, dict) else {}
        for key, payload in msg.entries.items():
            self._merge_remote(key, payload, str(msg.sender), used.get(key))
        peer = self._peers.get(msg.sender.node)
        if msg.want and peer is not None:
            wanted = [k for k in msg.want if isinstance(k, str) and k in self._digests]
            self._send_entries(peer, wanted, frozenset())

    # -- peers: deltas ---------------------------------------------------------------------------

    def _queue_delta(self, key: str, delta: ReplicatedData | None) -> None:
        if not self.settings.delta_interval or not self._peers:
            return
        queued = self._outbox.get(key)
        if delta is None or key not in self._outbox or queued is None:
            self._outbox[key] = delta
        else:
            self._outbox[key] = queued.merge(delta)

    def _send_deltas(self) -> None:
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, {}
        entries = {
            key: TOMBSTONE
            if delta is None
            else join_envelope(codec.encode(delta), only_performed(self._markers.get(key, {})))
            for key, delta in outbox.items()
        }
        self._delta_seq += 1
        message = DeltaPropagation(
            PROTOCOL_VERSION, self.node, self._delta_seq, entries, self._used(entries)
        )
        for name, peer in self._peers.items():
            if peer.reachable:
                self._peer_send(name, peer.address, message)

    def receiveMsg_DeltaPropagation(self, msg: DeltaPropagation, sender: Any) -> None:
        if not self._accept(msg, sender) or not isinstance(msg.entries, dict):
            return
        used = msg.used if isinstance(msg.used, dict) else {}
        last = self._seq_seen.get(msg.sender)
        self._seq_seen[msg.sender] = msg.seq
        gap = last is not None and msg.seq != last + 1
        want: list[str] = []
        for key, payload in msg.entries.items():
            current = self._data.get(key) if isinstance(key, str) else None
            if gap and isinstance(current, RequiresCausalDelivery):
                want.append(key)  # deltas were lost: ask for the whole value instead
            else:
                self._merge_remote(key, payload, str(msg.sender), used.get(key))
        peer = self._peers.get(msg.sender.node)
        if want and peer is not None:
            self._peer_send(
                peer.replica.node,
                peer.address,
                GossipEntries(PROTOCOL_VERSION, self.node, {}, frozenset(want)),
            )

    # -- peers: quorum requests ------------------------------------------------------------------

    def receiveMsg_PeerWrite(self, msg: PeerWrite, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        self._merge_remote(msg.key, msg.payload, str(msg.sender))
        peer = self._peers.get(msg.sender.node)
        if peer is not None and peer.replica.node not in self._blocked and isinstance(msg.key, str):
            # A durable key is acknowledged only once stored here.
            ack = PeerWriteAck(PROTOCOL_VERSION, self.node, msg.request_id)
            self._reply_when_stored(msg.key, peer.address, ack, None)

    def receiveMsg_PeerRead(self, msg: PeerRead, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        peer = self._peers.get(msg.sender.node)
        if peer is not None and isinstance(msg.key, str):
            self._peer_send(
                peer.replica.node,
                peer.address,
                PeerReadResult(
                    PROTOCOL_VERSION, self.node, msg.request_id, msg.key, self._payload(msg.key)
                ),
            )

    def _answered(self, msg: PeerWriteAck | PeerReadResult, sender: Any) -> _Pending | None:
        """The pending request an answer belongs to, if it comes from the peer that was asked."""
        pending = self._requests.get(msg.request_id) if isinstance(msg.request_id, str) else None
        name = msg.sender.node
        if pending is None or name in pending.answered or pending.asked.get(name) != sender:
            return None
        pending.answered.add(name)
        return pending

    def receiveMsg_PeerWriteAck(self, msg: PeerWriteAck, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        pending = self._answered(msg, sender)
        if pending is not None and len(pending.answered) + 1 >= pending.needed:
            self._finish(pending, timed_out=False)

    def receiveMsg_PeerReadResult(self, msg: PeerReadResult, sender: Any) -> None:
        if not self._accept(msg, sender):
            return
        pending = self._answered(msg, sender)
        if pending is None:
            return
        pending.results.append(msg.payload if isinstance(msg.payload, bytes) else None)
        if len(pending.answered) + 1 >= pending.needed:
            self._finish(pending, timed_out=False)

    # -- information -----------------------------------------------------------------------------

    def receiveMsg_GetKeys(self, msg: GetKeys, sender: Any) -> None:
        self.send(sender, Keys(frozenset(self._data), msg.request))

    def receiveMsg_GetReplicaCount(self, msg: GetReplicaCount, sender: Any) -> None:
        reachable = sum(
            1 for name, p in self._peers.items() if p.reachable and name not in self._blocked
        )
        self.send(sender, ReplicaCount(1 + reachable, msg.request))

    def receiveMsg_GetStats(self, msg: GetStats, sender: Any) -> None:
        self.send(
            sender,
            Stats(
                node=str(self.node),
                keys=len(self._data),
                peers=len(self._peers),
                gossip_bytes_in=self._gossip_in,
                gossip_bytes_out=self._gossip_out,
                store_queue_depth=len(self._unwritten) + len(self._in_flight or ()),
                last_flush=self._last_flush,
                recovery_time=self._recovery_time,
                rejected_inputs=self._rejected,
                subscribers=len(self._subscriptions),
                reachable_peers=sum(1 for p in self._peers.values() if p.reachable),
                gossip_rounds=self._gossip_rounds,
                store_failures=self._store_failures,
                store_error=(
                    self._store_failure
                    if self._load_error is None
                    else f"the store cannot be loaded: {self._load_error}"
                ),
                refused_rows=self._refused,
                request=msg.request,
            ),
        )

    def receiveMsg_DescribeProcess(self, msg: DescribeProcess, sender: Any) -> None:
        self.send(sender, ProcessInfo(os.getpid(), os.getpgid(0)))

    # -- everything else -------------------------------------------------------------------------

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._exiting = True
        self._flush(stopping=True)

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if msg.childAddress == self._writer and not self._exiting:
            self._writer_exited()

    def receiveMsg_ActorSystemMessage(self, msg: ActorSystemMessage, sender: Any) -> None:
        """Thespian's own messages that need nothing from us."""

    def receiveMsg_PeerMessage(self, msg: PeerMessage, sender: Any) -> None:
        self._rejected += 1  # a peer message of a kind this version does not know

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
        self._rejected += 1
        self.send(sender, reply)


def _cleaned(value: ReplicatedData, markers: Markers) -> ReplicatedData:
    """``value`` without the slots of every replica whose pruning is performed."""
    if not isinstance(value, RemovedNodePruning):
        return value
    for removed, marker in markers.items():
        if isinstance(marker, Performed) and value.needs_pruning_from(removed):
            value = value.pruning_cleanup(removed)
    return value


def _matches(pattern: str, key: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


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
