"""Fakes the unit tests of :mod:`thespian_dd._runtime` share: a clock the test moves by hand, a
recording ``transmit`` that delivers nothing until the test says so, and :class:`FakeNode`, one
node's wired :class:`~thespian_dd._runtime.parts.Parts` acting through recorders; and the
commit thread's answers and a store's rows, read as the Replicator and a restart read them."""

from __future__ import annotations

import gc
import logging
import random
import select
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from thespian.actors import ActorAddress
from thespian.system.transport import SendStatus

from thespian_dd._runtime import keys as keys_module
from thespian_dd._runtime.checks import Rejections
from thespian_dd._runtime.commits import CommitThread
from thespian_dd._runtime.parts import Hooks, Parts
from thespian_dd._runtime.protocol import PROTOCOL_VERSION, Heartbeat, PeerHello, PeerMessage
from thespian_dd._runtime.settings import Settings
from thespian_dd._runtime.store import Store
from thespian_dd._runtime.versions import MINE
from thespian_dd._runtime.writer import Entry, Write, Written
from thespian_dd.data import ReplicaId

T = TypeVar("T", int, float)


class Clock(Generic[T]):
    """A clock (seconds or ms, wall or monotonic) that moves only when the test sets ``now``."""

    def __init__(self, now: T) -> None:
        self.now: T = now

    def __call__(self) -> T:
        return self.now


@dataclass
class Transmit:
    address: Any
    message: Any
    done: Callable[[Any], None]
    finished: bool = False


@dataclass
class Wire:
    """A recording ``transmit(address, message, done)``: nothing is delivered until the test
    calls :meth:`finish` (or :meth:`finish_to`), unless ``at_once`` (a transport that never
    makes a sender wait: each transmit is finished as it is made)."""

    sent: list[Transmit] = field(default_factory=list)  # every transmit, in order
    at_once: bool = False
    silent: set[str] = field(default_factory=set)
    """Nodes gone silent (stopped, frozen, cut off): a transmit to one is never delivered; it
    fails when finished (the window then counts no delivery, which would say it is alive)."""

    def __call__(self, address: Any, message: Any, done: Callable[[Any], None]) -> None:
        self.sent.append(transmit := Transmit(address, message, done))
        if self.at_once:
            self.finish(transmit, self.outcome(address))

    def outcome(self, address: Any) -> Any:
        """How a transmit to ``address`` ends: delivered, unless its node is silent."""
        silent = str(getattr(address, "addressDetails", address)).split("@")[0] in self.silent
        return SendStatus.Failed if silent else SendStatus.Sent

    def to(self, address: Any) -> list[Any]:
        return [t.message for t in self.sent if t.address == address]

    def pending(self, address: Any = None) -> list[Transmit]:
        """The transmits not finished yet (to ``address``, if given)."""
        return [
            t for t in self.sent if not t.finished and (address is None or t.address == address)
        ]

    def finish(self, transmit: Transmit, status: Any = SendStatus.Sent) -> None:
        transmit.finished = True
        transmit.done(status)

    def finish_to(self, address: Any, status: Any = SendStatus.Sent) -> None:
        """Complete the one transmit in flight to ``address``."""
        (transmit,) = self.pending(address)
        self.finish(transmit, status)


def replica(name: str) -> ReplicaId:
    """Node ``name``'s first incarnation."""
    return ReplicaId(name, 1)


def address(of: ReplicaId) -> ActorAddress:
    """The Replicator's address of a fake node's replica ``of``: each incarnation has its own."""
    return ActorAddress(f"{of.node}@{of.incarnation}")


def hello(
    sender: ReplicaId,
    *,
    reply: bool = True,
    peers: dict[str, tuple[ReplicaId, Any]] | None = None,
    versions: object = None,
    at: Any = None,
) -> PeerHello:
    """``sender``'s hello from ``at`` (its :func:`address` unless told), announcing ``versions``
    (what this release speaks unless told: a peer may announce anything)."""
    announced: Any = MINE.announcement() if versions is None else versions
    where = address(sender) if at is None else at
    return PeerHello(PROTOCOL_VERSION, sender, where, peers or {}, reply, versions=announced)


def restore_collector() -> Iterator[None]:
    """A load turns the cyclic collector off until it ends, and a test may leave one unfinished:
    turn it back on after the test (as a fixture)."""
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()


@dataclass
class FakeNode:
    """One node's :class:`Parts` (of ``me``: a#1 unless told), wired through :class:`Hooks` of
    recorders, on a clock the test moves and a random seeded with ``seed``: ``sent`` (the hooks'
    ``send``: client replies, store batches, answers outside any window), ``wire`` (transmits to
    peers and subscribers, finished by :meth:`out` unless ``wire.at_once``), ``woken`` (timers
    armed), ``writers`` (each store writer created, a sentinel) and ``reincarnations`` (new
    incarnations taken).  ``strict``: a writer created or an incarnation taken fails the test
    (parts that must do neither).  Its address is that of ``me`` when it was made: a new
    incarnation keeps it."""

    settings: Settings = field(default_factory=Settings)
    me: ReplicaId = field(default_factory=lambda: replica("a"))
    clock: Clock[float] = field(default_factory=lambda: Clock(1000.0))
    seed: int = 0
    log: str = "thespian_dd.replicator"
    slots: int = 20
    strict: bool = False
    wire: Wire = field(default_factory=Wire)
    sent: list[tuple[Any, Any]] = field(default_factory=list)
    woken: list[tuple[float, Any]] = field(default_factory=list)
    writers: list[object] = field(default_factory=list)
    reincarnations: int = 0
    address: ActorAddress = field(init=False)
    parts: Parts = field(init=False)

    def __post_init__(self) -> None:
        self.address = address(self.me)
        hooks = Hooks(
            send=lambda to, message: self.sent.append((to, message)),
            wake=lambda seconds, payload: self.woken.append((seconds, payload)),
            transmit=self.wire,
            address=lambda: self.address,
            me=lambda: self.me,
            reincarnate=self._reincarnate,
            create_writer=self._create_writer,
            slots=self.slots,
        )
        self.parts = Parts(
            self.settings,
            self.me.node,
            hooks,
            Rejections(logging.getLogger(self.log)),
            clock=self.clock,
            rng=random.Random(self.seed),
        )

    def _reincarnate(self) -> None:
        assert not self.strict, "no new incarnation expected here"
        self.reincarnations += 1

    def _create_writer(self) -> object:
        assert not self.strict, "no store writer expected here"
        writer = object()
        self.writers.append(writer)
        return writer

    @property
    def rejections(self) -> Rejections:
        return self.parts.rejections

    def out(self) -> list[tuple[Any, PeerMessage]]:
        """Every transmit finished (delivered, as far as the transport is concerned), with those
        it frees: what went since the last call, as (address, message)."""
        done = []
        while pending := self.wire.pending():
            for transmit in pending:
                self.wire.finish(transmit, self.wire.outcome(transmit.address))
                done.append((transmit.address, transmit.message))
        return done

    def writes(self) -> list[dict[str, Entry | None]]:
        """The entries of every batch sent to the store since last asked, each committed as it
        comes (which sends the next: one batch is in flight at a time)."""
        entries = []
        while batches := [m for _, m in self.sent if isinstance(m, Write)]:
            self.sent.clear()
            for batch in batches:
                entries.append(batch.entries)
                self.parts.durability.committed(Written(batch.seq))
        return entries

    def hello(self, sender: ReplicaId, *, reply: bool = True, versions: object = None) -> None:
        """``sender``'s :func:`hello` arrives from its address."""
        msg = hello(sender, reply=reply, versions=versions)
        self.parts.membership.on_hello(msg, address(sender))

    def hear(self, *replicas: ReplicaId) -> None:
        """A heartbeat of each replica arrives from its address, and is accepted."""
        for one in replicas:
            assert self.parts.membership.accept(Heartbeat(PROTOCOL_VERSION, one), address(one))

    def receive(self, msg: PeerMessage, sender: Any = None) -> None:
        """A peer message from ``sender`` (its sender's address unless told), handled as
        :class:`~thespian_dd.replicator.Replicator` handles it."""
        self.parts.on_peer_message(msg, address(msg.sender) if sender is None else sender)


def commit_answers(commits: CommitThread, count: int) -> list[Written]:
    """The commit thread's next ``count`` answers, each waited for as the Replicator waits: on
    its pipe (20 s in all)."""
    answers: list[Written] = []
    deadline = time.monotonic() + 20
    while len(answers) < count:
        ready, _, _ = select.select([commits.fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no answer after {answers}"
        answers += commits.drain()
    return answers


def stored_rows(url: str, node: str) -> list[tuple[str, bytes | None]]:
    """``node``'s rows in the store at ``url``, loaded as a restart loads them: (key, payload)."""
    store = Store(url)
    try:
        return [(key, payload) for key, payload, _ in store.load(node)]
    finally:
        store.close()


def counting_key_hashes(monkeypatch: Any) -> list[int]:
    """Count the calls of :func:`~thespian_dd._runtime.keys.key_hash` (the work of keeping
    bucket digests) from now on: ``calls[0]``."""
    calls = [0]
    real = keys_module.key_hash

    def counted(key: str, digest: bytes) -> int:
        calls[0] += 1
        return real(key, digest)

    monkeypatch.setattr(keys_module, "key_hash", counted)
    return calls
