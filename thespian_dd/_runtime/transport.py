"""Thespian's TCP transport, made cheaper in the Replicator's process (:func:`quicken_transport`).

The transport's loop does, at every turn, work for every open socket: it registers each in a new
selector, looks each idle one up in a dict keyed by its remote address (hashing the address) and
asks each whether it has been idle too long; and it formats, for a debug line it drops unless
Thespian's own log is at debug level, every message it receives and every transmit it starts.  At
32 nodes a ``WriteMajority`` write takes about a hundred turns of the cluster's loops, each over
the 35 connections of a Replicator, or 65 for one that introduced itself to every node: the
answers of the remote admins that created its Introducers came on connections Thespian keeps
open, idle, for 20 minutes.

Each change but the idle period keeps what the transport does, computing the same values more
cheaply; each is a plain attribute of Thespian's, set again by each call (so calling twice changes
nothing):

- :class:`OneTurnPoll` as the selector (``poll``, registering in user space);
- an idle socket's expiry read from its timer without building a view of it;
- an idle connection closed after ``idle_seconds`` unused rather than 20 minutes (Thespian's own
  expiry, sooner: the next message to that address opens a new one);
- an address's hash computed once and kept on it (never pickled: another process's string
  hashes differ);
- the debug lines' descriptions formatted only if written (:class:`Described`).
"""

from __future__ import annotations

import datetime as dt
import math
import select
import selectors
import types
from typing import Any, Self

from thespian.system import timing
from thespian.system.transport import IPBase, ReceiveEnvelope, TCPTransport, TransmitIntent

__all__ = ["Described", "OneTurnPoll", "idle_connection_seconds", "quicken_transport"]


def idle_connection_seconds(failure_timeout: float) -> float:
    """How long a connection may stay unused before this process closes it: three failure
    timeouts, at least 30 s.  The peers this node watches hear from it every third of a failure
    timeout, and so keep theirs; another peer may get nothing for longer (a status goes to two
    peers a round, at random) and then reconnects, one connect, where the open connection cost
    work at every turn of the loop meanwhile."""
    return max(30.0, 3 * failure_timeout)


class OneTurnPoll:
    """A selector for one turn of Thespian's TCP transport loop, which makes a new selector
    every turn, registers every open socket in it (about 40 a Replicator at 32 nodes, 60 or
    more in the busiest), selects once and closes it.  ``selectors.PollSelector`` builds a
    key and checks it in three tables at each registration, 2.5 µs a socket: at 32 nodes a
    hundred turns of the cluster's loops per WriteMajority write spent about 10 ms of CPU
    registering.  This one hands the descriptor to ``select.poll`` and keeps what
    registration gave, making the key only for a descriptor that is ready: a turn of 40
    sockets takes 9 µs rather than 100.  The events reported are computed as
    ``PollSelector`` computes them (an error or hang-up shows as readable and writable)."""

    __slots__ = ("_poll", "_registered")

    def __init__(self) -> None:
        self._poll = select.poll()
        self._registered: dict[int, tuple[Any, int, Any]] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> None:
        """Watch ``fileobj`` (a descriptor or an object with ``fileno``) for ``events``
        (``selectors.EVENT_READ`` and/or ``EVENT_WRITE``); KeyError if it is registered
        already, ValueError for an invalid descriptor or no events (as a selector)."""
        fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        if fd in self._registered:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        mask = (select.POLLIN if events & selectors.EVENT_READ else 0) | (
            select.POLLOUT if events & selectors.EVENT_WRITE else 0
        )
        self._poll.register(fd, mask)
        self._registered[fd] = (fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """The registered descriptors ready within ``timeout`` seconds (None or negative: wait
        until one is; 0: do not wait), each as (its key, its ready events)."""
        # Milliseconds, rounded up as selectors does; None: no limit.
        wait = None if timeout is None or timeout < 0 else math.ceil(timeout * 1e3)
        ready = []
        for fd, event in self._poll.poll(wait):
            entry = self._registered.get(fd)
            if entry is None:
                continue
            fileobj, events, data = entry
            got = (selectors.EVENT_WRITE if event & ~select.POLLIN else 0) | (
                selectors.EVENT_READ if event & ~select.POLLOUT else 0
            )
            ready.append((selectors.SelectorKey(fileobj, fd, events, data), got & events))
        return ready

    def close(self) -> None:
        self._registered.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Described:
    """What ``identify()`` returns once quickened: the description of a transmit or a received
    message, formatted only when it is (``str``, ``%s``).  Thespian logs it at debug level at
    every send and receipt; formatting it (the message's ``str``, the target, the timers) took
    about 50 µs a message.  Its only use is as such an argument."""

    __slots__ = ("_describe", "_of")

    def __init__(self, of: Any, describe: Any) -> None:
        self._of = of
        self._describe = describe

    def __str__(self) -> str:
        return str(self._describe(self._of))


_IDENTIFY_INTENT = TransmitIntent.identify
_IDENTIFY_ENVELOPE = ReceiveEnvelope.identify
_ADDRESS_HASH = IPBase.IPActorAddress.__hash__
_ADDRESS_STATE = IPBase.IPActorAddress.__getstate__
_HASH = "_thespian_dd_hash"


def _identify_intent(intent: Any) -> Described:
    return Described(intent, _IDENTIFY_INTENT)


def _intent_str(intent: Any) -> str:
    return f"************* {_IDENTIFY_INTENT(intent)}"  # as TransmitIntent.__str__


def _identify_envelope(envelope: Any) -> Described:
    return Described(envelope, _IDENTIFY_ENVELOPE)


def _envelope_str(envelope: Any) -> str:
    return str(_IDENTIFY_ENVELOPE(envelope))  # as ReceiveEnvelope.__str__


def _idle_expired(idle: Any) -> bool:
    """``IdleSocket.expired``: its timer's view, built and asked at every turn for every idle
    socket, reduced to the comparison the view makes."""
    quit_at = idle.validity._time_to_quit
    return quit_at is not None and timing.currentTime() >= quit_at


def _address_hash(address: Any) -> int:
    """``IPActorAddress.__hash__``, the same value, kept on the address after the first call."""
    kept: int | None = address.__dict__.get(_HASH)
    if kept is None:
        kept = address.__dict__[_HASH] = _ADDRESS_HASH(address)
    return kept


def _address_state(address: Any) -> Any:
    """``IPActorAddress.__getstate__`` without the kept hash."""
    state = _ADDRESS_STATE(address)
    if _HASH in state:
        state = {k: v for k, v in state.items() if k != _HASH}
    return state


def quicken_transport(idle_seconds: float) -> None:
    """Make Thespian's TCP transport in this process cheaper to run (see the module doc), its
    connections closed once unused for ``idle_seconds``: the Replicator calls it as it starts,
    in its own process."""
    if hasattr(select, "poll"):  # else (Windows) the default selector stays
        shim = types.SimpleNamespace(**vars(selectors))
        shim.DefaultSelector = OneTurnPoll
        TCPTransport.selectors = shim
    TCPTransport.IdleSocket.expired = _idle_expired
    TCPTransport.MAX_IDLE_SOCKET_PERIOD = dt.timedelta(seconds=idle_seconds)
    IPBase.IPActorAddress.__hash__ = _address_hash
    IPBase.IPActorAddress.__getstate__ = _address_state
    TransmitIntent.identify = _identify_intent
    TransmitIntent.__str__ = _intent_str
    ReceiveEnvelope.identify = _identify_envelope
    ReceiveEnvelope.__str__ = _envelope_str
