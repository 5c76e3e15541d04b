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
cheaply or doing at once what Thespian's loop left for its next turn (the loop also goes on in
the few cases where Thespian's would stop or spin: see :func:`run_with_expiry`); each is a plain
attribute of Thespian's, set again by each call (so calling twice changes nothing):

- the loop itself (:func:`run_with_expiry`): Thespian's, turn for turn, with the descriptors kept
  registered from turn to turn (:class:`KeptPoll`) and an idle connection given work only in a
  turn that concerns it (:func:`idle_turn`); only for the Thespian whose loop it was written
  from (4.0.1, checked by the sources of the loop and of the steps below), another keeps its
  own loop and its own steps;
- a message, and a transmit's acknowledgement, read whole in one turn (:func:`read_incoming`,
  :func:`read_acknowledgement`): Thespian reads the first 20 bytes to learn the size and the
  rest at its loop's next turn, so each message received and each acknowledgement (23 bytes)
  cost two turns;
- a transmit whose data went out whole waits for its acknowledgement at once
  (:func:`send_data`): Thespian's next step, a shutdown it no longer makes, waited a turn for
  the socket to be writable.  With these two, a peer of a quorum write takes two turns of its
  loop (the write; the acknowledgement of its answer), where it took five;
- an idle socket's expiry read from its timer without building a view of it;
- an idle connection closed after ``idle_seconds`` unused rather than 20 minutes (Thespian's own
  expiry, sooner: the next message to that address opens a new one);
- an address's hash computed once and kept on it (never pickled: another process's string
  hashes differ);
- the debug lines' descriptions formatted only if written (:class:`Described`).

Two changes mend Thespian's sends from more than one thread (a thread of the process that
logs sends its record): a thread that finds the transport held no longer takes the hold away
(:func:`run_queued`), and what waits for a slot is sent at the loop's next turn, which comes
soon while it waits (:func:`_send_queued`).

The loop also tells the Replicator when a turn's messages are all handled (:func:`at_turn_end`):
its sync writes of the turn are then committed as one batch.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import inspect
import logging
import math
import operator
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from thespian.actors import WatchMessage
from thespian.system import timing
from thespian.system.transport import (
    IPBase,
    ReceiveEnvelope,
    TCPTransport,
    Thespian__Run_Expired,
    Thespian__Run_HandlerResult,
    Thespian__Run_Terminated,
    TransmitIntent,
    TransmitOnly,
)
from thespian.system.transport.asyncTransportBase import asyncTransportBase
from thespian.system.transport.errmgmt import err_bad_fileno, err_select_retry
from thespian.system.utilis import thesplog

from thespian_dd._log import Log

__all__ = [
    "Described",
    "KeptPoll",
    "at_turn_end",
    "idle_connection_seconds",
    "idle_turn",
    "quicken_transport",
    "read_acknowledgement",
    "read_incoming",
    "run_queued",
    "run_with_expiry",
    "send_data",
]


def idle_connection_seconds(failure_timeout: float) -> float:
    """How long a connection may stay unused before this process closes it: three failure
    timeouts, at least 30 s.  The peers this node watches hear from it every third of a failure
    timeout, and so keep theirs; another peer may get nothing for longer (a status goes to two
    peers a round, at random) and then reconnects, one connect, where the open connection cost
    work at every turn of the loop meanwhile."""
    return max(30.0, 3 * failure_timeout)


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


log = Log("thespian_dd.replicator")

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


_READ_INCOMING = TCPTransport.TCPTransport._handleReadableIncoming
_READ_ACKNOWLEDGEMENT = TCPTransport.TCPTransport._next_XMIT_4
_SEND_DATA = TCPTransport.TCPTransport._next_XMIT_2
_RUN_QUEUED = asyncTransportBase._runQueued
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
_READS_A_TURN = 16
"""At most this many reads of one connection a turn (each up to Thespian's 1 MB): a sender that
keeps sending never holds the loop."""


def _more_come(sock: Any) -> bool:
    """Whether a read of ``sock`` would not wait: bytes have come, or the other end closed (or
    failed), which the read tells."""
    try:
        sock.recv(1, _PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def read_incoming(transport: Any, incoming: Any, has_exclusive_flag: bool = False) -> Any:
    """``TCPTransport._handleReadableIncoming``, again at once while the message is unfinished
    and more of it has come (what Thespian's next turn would read: no read waits, none is made
    on a socket pausing after a failed one), up to ``_READS_A_TURN`` reads."""
    result = _READ_INCOMING(transport, incoming, has_exclusive_flag=has_exclusive_flag)
    for _ in range(_READS_A_TURN - 1):
        if not (
            result is incoming
            and incoming.socket is not None
            and not incoming.backoffPause()
            and _more_come(incoming.socket)
        ):
            break
        result = _READ_INCOMING(transport, incoming, has_exclusive_flag=has_exclusive_flag)
    return result


def read_acknowledgement(transport: Any, intent: Any) -> Any:
    """``TCPTransport._next_XMIT_4`` (a transmit's wait for its acknowledgement), while the
    acknowledgement is unfinished and more of it has come, up to ``_READS_A_TURN`` reads: none
    while nothing has come.  Thespian's loop also takes this step for a transmit it is not told
    is readable (when a connection to the same target is idle), and a read that found nothing
    paused the transmit for 34 ms or more, the acknowledgement unread."""
    going = True
    for _ in range(_READS_A_TURN):
        sock = getattr(intent, "socket", None)
        if not (
            going
            and intent.stage == TCPTransport.TCPTransport._XMITStepWaitForAck
            and sock is not None
            and not intent.backoffPause()
            and _more_come(sock)
        ):
            break
        going = _READ_ACKNOWLEDGEMENT(transport, intent)
    return going


def send_data(transport: Any, intent: Any) -> Any:
    """``TCPTransport._next_XMIT_2`` (a transmit's send), then, once the data went out whole,
    its next step at once: the wait for the acknowledgement."""
    going = _SEND_DATA(transport, intent)
    if going and intent.stage == TCPTransport.TCPTransport._XMITStepShutdownWrite:
        return transport._next_XMIT_3(intent)
    return going


def run_queued(self: Any, has_exclusive_flag: bool = False) -> bool:
    """``asyncTransportBase._runQueued`` (send the first transmit that waits for a free slot,
    if this thread may enter the transport), without its defect: Thespian's, called while
    another thread holds the transport, returns having cleared that thread's hold.  A thread
    of the process that logs sends its record so (Thespian forwards it to its logger); the
    next send of that thread then ran the transport beside the actor's own thread.  In a
    DurableWriter whose read-ahead thread logged, a chunk of its load so went out on a
    connection of its own, ahead of the chunks waiting for the one in use: the Replicator
    counted the load short (``test_a_thread_that_finds_the_transport_held_leaves_the_hold``).
    ``has_exclusive_flag``: the caller holds the transport, and keeps it."""
    _, expired = self._complete_expired_intents()
    while expired:
        _, expired = self._complete_expired_intents()
    with self._aTB_lock:
        if (
            (self._aTB_processing and not has_exclusive_flag)
            or self._aTB_sending
            or not self._aTB_queuedPendingTransmits
        ):
            return False  # the holder sends it: at its loop's next turn at the latest
        self._aTB_processing = True
        self._aTB_sending = True
        intent = self._aTB_queuedPendingTransmits.popleft()
    try:
        self._submitTransmit(intent)
    finally:
        self._aTB_sending = False
        if not has_exclusive_flag:
            self._aTB_processing = False
    return True


_QUEUED_RETRY = 0.001
"""How soon the loop tries again to send what waits for a slot when another thread held the
transport."""


def _send_queued(transport: Any) -> None:
    """Send what waits for a slot, while slots are free: what a thread queued while the loop
    held the transport, and what the actor's thread queued while another held it.  Thespian
    sends such a transmit only when another transmit of the process ends, and wakes its loop
    for the first one only (a connection to itself; the flag it sets is cleared by a message
    its TCP transport does not make): the DurableWriter's Loaded, queued while its read-ahead
    thread logged, then waited for good, and its Replicator never served."""
    while transport._aTB_queuedPendingTransmits and transport._canSendNow():
        if not transport._runQueued():
            return


def _address_state(address: Any) -> Any:
    """``IPActorAddress.__getstate__`` without the kept hash."""
    state = _ADDRESS_STATE(address)
    if _HASH in state:
        state = {k: v for k, v in state.items() if k != _HASH}
    return state


def quicken_transport(idle_seconds: float) -> bool:
    """Make Thespian's TCP transport in this process cheaper to run (see the module doc), its
    connections closed once unused for ``idle_seconds``: the Replicator calls it as it starts,
    in its own process.  Returns whether the loop is ours (:func:`run_with_expiry`), which
    calls what :func:`at_turn_end` is given; another Thespian keeps its own."""
    TCPTransport.IdleSocket.expired = _idle_expired
    TCPTransport.MAX_IDLE_SOCKET_PERIOD = dt.timedelta(seconds=idle_seconds)
    IPBase.IPActorAddress.__hash__ = _address_hash
    IPBase.IPActorAddress.__getstate__ = _address_state
    TransmitIntent.identify = _identify_intent
    TransmitIntent.__str__ = _intent_str
    ReceiveEnvelope.identify = _identify_envelope
    ReceiveEnvelope.__str__ = _envelope_str
    if (
        hasattr(select, "poll")
        and _is_thespians(TCPTransport.TCPTransport._runWithExpiry, _THESPIANS_LOOP)
        and all(_is_thespians(step, digest) for step, digest in _THESPIANS_STEPS.items())
    ):
        TCPTransport.TCPTransport._runWithExpiry = run_with_expiry
        TCPTransport.TCPTransport._handleReadableIncoming = read_incoming
        TCPTransport.TCPTransport._next_XMIT_4 = read_acknowledgement
        TCPTransport.TCPTransport._next_XMIT_2 = send_data
        asyncTransportBase._runQueued = run_queued
    return TCPTransport.TCPTransport._runWithExpiry is run_with_expiry


_TURN_ENDS: list[Callable[[], None]] = []
os.register_at_fork(after_in_child=_TURN_ENDS.clear)


def at_turn_end(callback: Callable[[], None]) -> None:
    """Call ``callback()`` at each turn of the loop (:func:`run_with_expiry`) in this process,
    once every message the turn received is handled, before the loop waits again or returns for
    a due timer (Thespian runs the timer's handler between two runs of the loop: the first turn
    of the next run calls it again).  Not in a process forked from this one (the DurableWriter):
    the callback belongs to this process's actor.  What it raises is logged and the loop goes
    on."""
    _TURN_ENDS.append(callback)


def _turn_ended() -> None:
    for callback in _TURN_ENDS:
        try:
            callback()
        except Exception:  # logged; the loop and its actor go on
            log.exception("thespian_dd: the end of a turn failed")


# -- the loop --------------------------------------------------------------------------------------

_THESPIANS_LOOP = "5a6c512c48e9fd0ab13cbc2ca91db058c7322a4af4af658a930631ccdbd51f96"
"""The SHA-256 of the source of Thespian 4.0.1's ``TCPTransport._runWithExpiry``, which
:func:`run_with_expiry` does turn for turn.  Another Thespian keeps its own loop."""

_THESPIANS_STEPS = {
    _READ_INCOMING: "7e38436b43ee8783aec14cf5cf42710b413133e6b0bef0793e1f2003782a6569",
    _SEND_DATA: "67f5dc3b7dc1ff392eacf8b07c3f75538b98f99a2e7774c8e9b67b89198069e5",
    TCPTransport.TCPTransport._next_XMIT_3: (
        "5f5ff30046f7a92ed8591100a1afc048bcaebfe70d5337ef2c0903d6c856079c"
    ),
    _READ_ACKNOWLEDGEMENT: "e41dc7486dd32f0d749afe607aa90d7935624b1cf524f9fc3f4f20e6844b27d8",
    _RUN_QUEUED: "716bf22ec01c320f87e52faa2d3d3fec3ed19c09f3c98f977b6987325f33d123",
}
"""The SHA-256 of the source of each step of Thespian 4.0.1's transport that
:func:`read_incoming`, :func:`send_data` and :func:`read_acknowledgement` call or take at once,
and of the one :func:`run_queued` mends (Thespian's own, taken as this module is imported)."""

_IDLE_SCAN_SECONDS = 1.0
"""How often the loop looks for connections unused for the idle period (Thespian: at every
turn); one is closed up to this much later."""

_POLL = "_thespian_dd_poll"
_SCAN = "_thespian_dd_idle_scan"


def _is_thespians(function: Any, digest: str) -> bool:
    """Whether ``function``'s source is the one of ``digest`` (False if it cannot be read)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return hashlib.sha256(source.encode()).hexdigest() == digest


class KeptPoll:
    """The descriptors a transport's loop waits on, registered in one ``select.poll`` kept from
    turn to turn: each turn hands over those it wants and only what changed since the last is
    registered again (Thespian registers every open socket in a new selector at every turn).
    It answers as Thespian's new ``selectors.DefaultSelector`` (epoll) would: the same
    readiness (an error or a hang-up counts as both readable and writable, for the events
    asked), and OSError EBADF for a descriptor that is not open, which epoll refuses to
    register and ``poll`` reports as POLLNVAL (a closed one whose number was taken again is
    the new one's, to both).  A descriptor asked twice is asked once (a selector would raise
    KeyError, which Thespian's loop does not catch)."""

    __slots__ = ("_poll", "_registered")

    def __init__(self) -> None:
        self._poll = select.poll()
        self._registered: dict[int, int] = {}

    def select(
        self, wrecv: list[int], wsend: list[int], timeout: float | None
    ) -> tuple[list[int], list[int]]:
        """The descriptors of ``wrecv`` ready to read and of ``wsend`` ready to write, waiting
        up to ``timeout`` seconds (None: until one is; 0 or less: not at all); ValueError for a
        negative descriptor, as a selector's ``register`` raises it, and OSError EBADF for one
        not open."""
        want = dict.fromkeys(wrecv, select.POLLIN)
        for fd in wsend:
            want[fd] = want.get(fd, 0) | select.POLLOUT
        if want and min(want) < 0:
            raise ValueError(f"Invalid file descriptor: {min(want)}")
        if want != self._registered:
            self._register(want)
        # Milliseconds, rounded up as selectors does; None: no limit.
        wait = None if timeout is None else max(0, math.ceil(timeout * 1e3))
        rrecv: list[int] = []
        rsend: list[int] = []
        for fd, event in self._poll.poll(wait):
            if event & select.POLLNVAL:
                raise OSError(errno.EBADF, f"Bad file descriptor: {fd}")
            mask = want.get(fd, 0)
            if mask & select.POLLIN and event & ~select.POLLOUT:
                rrecv.append(fd)
            if mask & select.POLLOUT and event & ~select.POLLIN:
                rsend.append(fd)
        return rrecv, rsend

    def _register(self, want: dict[int, int]) -> None:
        """Register what changed: ``want`` ({descriptor: poll mask}) from now on."""
        try:
            for fd in self._registered.keys() - want.keys():
                self._poll.unregister(fd)
            for fd, mask in want.items() - self._registered.items():
                self._poll.register(fd, mask)
        except BaseException:
            self._poll, self._registered = select.poll(), {}  # start afresh next turn
            raise
        self._registered = want


def _hold(transport: Any) -> None:
    """Take the transport's processing flag, as Thespian's ``exclusive_processing`` does
    (another thread may be sending); the caller gives it back (``_not_processing``)."""
    while not transport._exclusively_processing():
        time.sleep(0.000001)


def run_with_expiry(self: Any, incomingHandler: Any) -> Any:  # noqa: C901, N803, PLR0912, PLR0915 - Thespian's loop and name
    """``TCPTransport._runWithExpiry`` of Thespian 4.0.1 (``_THESPIANS_LOOP``), turn for turn:
    deliver what was received, wait for the descriptors, receive, send, time out and deliver.
    Once the turn's messages are delivered it calls what :func:`at_turn_end` was given.  Two
    things are cheaper: the descriptors stay registered in a :class:`KeptPoll`, and an idle
    connection gets work only in a turn that concerns it (:func:`idle_turn`), where Thespian's
    loop hashes, looks up and checks every idle connection at every turn.

    Where Thespian's loop would stop or spin, this one goes on: an exception leaves the
    processing flag free (Thespian's stays taken); a descriptor asked twice is asked once
    (Thespian's selector raises KeyError); a closed descriptor is refused as EBADF even when
    epoll, taking its number for itself, would say EINVAL (which Thespian retries, turn after
    turn); an incoming socket added while the incoming sockets are looked at waits for the next
    turn (Thespian raises, the dict having changed size)."""
    tcp = TCPTransport.TCPTransport
    xmit_only = incomingHandler == TransmitOnly or isinstance(incomingHandler, TransmitOnly)
    if hasattr(self, "_aborting_run"):
        delattr(self, "_aborting_run")
    poll = self.__dict__.get(_POLL)
    if poll is None:
        poll = self.__dict__[_POLL] = KeptPoll()
    while not hasattr(self, "_aborting_run") or (
        self._aborting_run and (self._transmitIntents or self._waitingTransmits)
    ):
        ct = timing.currentTime()
        if self.run_time.view(ct).expired():
            if _TURN_ENDS and not xmit_only:  # before a due timer's handler runs
                _turn_ended()
            break
        if xmit_only:
            if not self._transmitIntents and not self._waitingTransmits:
                return 0
        else:
            stop = _deliver(self, incomingHandler)
            if stop is not None:
                return stop
            if _TURN_ENDS:  # every message received handled: before the loop waits again
                _turn_ended()
        _send_queued(self)

        _hold(self)
        try:
            # A transmit not paused waits to send, or to read its acknowledgement.
            wsend: list[int] = []
            wrecv: list[int] = []
            for intent in self._transmitIntents.values():
                if not intent.backoffPause():
                    fd = tcp._socketFile(intent)
                    if fd:
                        (wsend if tcp._waitForSendable(intent) else wrecv).append(fd)
            wrecv.extend(
                fd
                for fd, incoming in self._incomingSockets.items()
                if fd and not incoming.backoffPause()
            )
            idle = list(getattr(self, "_openSockets", {}).values())
            idle_fds = [s.socket.fileno() for s in idle]
            wrecv.extend(idle_fds)
            delays = [
                d
                for d in (
                    *(t.delay(ct) for t in self._transmitIntents.values()),
                    *(w.delay() for w in self._waitingTransmits),
                    *(i.delay(ct) for i in self._incomingSockets.values()),
                )
                if d
            ]
            # n.b. after a long pause (a laptop sleeping) a delay may be negative.
            delay = max(0, timing.timePeriodSeconds(min(delays))) if delays else None
            # The run's end (its next timer) in seconds.  Thespian takes it as a timedelta,
            # which rounds less than half a microsecond to zero, and drops it as no delay: the
            # loop then waited for the next event, not the timer (once in about 2,000 of the
            # DurableWriter's 1 ms pauses between chunks; the load stopped, for good if nothing
            # else came).
            left = self.run_time.view(ct).remainingSeconds()
            if left is not None:
                delay = left if delay is None else min(delay, left)
            if not xmit_only and self._aTB_queuedPendingTransmits and self._canSendNow():
                # Another thread held the transport: try again soon, not at the next event
                # (there may be none: the actor waits for an answer to what is queued).  Not
                # while draining (Thespian's "tx-only" run, whose caller holds the queue).
                delay = _QUEUED_RETRY if delay is None else min(delay, _QUEUED_RETRY)
            if not xmit_only:
                wrecv.append(self.socket.fileno())
            if self._watches:
                wrecv.extend(self._watches)
        finally:
            self._not_processing()

        rerr: list[Any] = []
        try:
            rrecv, rsend = poll.select(wrecv, wsend, delay)
        except (OSError, ValueError) as ex:
            rrecv, rsend = [], []
            bad = _selection_failed(self, ex, wrecv, wsend)
            if bad is None:
                continue
            rerr = bad

        _hold(self)
        try:
            for fileno in rerr:
                self._cancel_fd_ops(fileno)
            pending = len(self._transmitIntents) + len(self._waitingTransmits)
            # The idle connections now (another thread may have sent meanwhile): their
            # descriptors are those registered unless the table changed.
            now_idle = list(getattr(self, "_openSockets", {}).values())
            if now_idle != idle:
                idle, idle_fds = now_idle, [s.socket.fileno() for s in now_idle]
            for fileno in rrecv:
                if fileno == self.socket.fileno() and not xmit_only:
                    self._acceptNewIncoming()
                elif fileno in self._incomingSockets:
                    incoming = self._handlePossibleIncoming(
                        self._incomingSockets.pop(fileno), fileno, has_exclusive_flag=True
                    )
                    if incoming:
                        self._incomingSockets[incoming.socket.fileno()] = incoming
                else:
                    self._processIntents(fileno)
            idle_turn(self, idle, idle_fds, rrecv)
            # Sends after receives, which may have started some.
            for fileno in rsend:
                self._processIntents(fileno)
            # Timeouts after sends: a send completing at its deadline succeeds.
            self._processIntentTimeouts()
            for fileno, incoming in list(self._incomingSockets.items()):
                still = self._handlePossibleIncoming(incoming, -1, has_exclusive_flag=True)
                if still:
                    self._incomingSockets[fileno] = still
                else:
                    self._incomingSockets.pop(fileno, None)
            watched = [w for w in self._watches if w in rrecv]
            if watched:
                self._incomingEnvelopes.append(
                    ReceiveEnvelope(self.myAddress, WatchMessage(watched))
                )
        finally:
            self._not_processing()

        # Complete the sends done (which may start others).
        done, self._finished_intents = self._finished_intents, []
        for intent, status in done:
            intent.tx_done(status)

        if not rrecv and not rsend:
            if not rerr and self.run_time.view().expired():
                return Thespian__Run_Expired()
            continue
        if xmit_only:
            left = len(self._transmitIntents) + len(self._waitingTransmits)
            if pending > left or left == 0:
                return left
        else:
            stop = _deliver(self, incomingHandler)
            if stop is not None:
                return stop

    return Thespian__Run_Terminated() if hasattr(self, "_aborting_run") else Thespian__Run_Expired()


def _deliver(transport: Any, handler: Any) -> Any:
    """Hand what was received to ``handler``: None to go on, or what the loop returns (the
    envelope itself if there is no handler, or the handler's result that says stop)."""
    while transport._incomingEnvelopes:
        envelope = transport._incomingEnvelopes.pop(0)
        if handler is None:
            return envelope
        result = Thespian__Run_HandlerResult(handler(envelope))
        if not result:
            return result
    return None


def idle_turn(transport: Any, idle: list[Any], idle_fds: list[int], rrecv: list[int]) -> None:
    """Thespian's turn for its idle connections (``idle``, the table's values after the wait,
    and their descriptors), for the connections it concerns: one the table no longer holds (a
    newer one replaced it, or a send took it), one readable (a message, or the other end
    closing), and once every ``_IDLE_SCAN_SECONDS`` those unused for the idle period.  Thespian
    walks every idle connection at every turn; for any other, its walk does nothing."""
    table = getattr(transport, "_openSockets", {})
    concerned: dict[int, Any] = {}
    if len(table) != len(idle) or any(map(operator.is_not, table.values(), idle)):
        held = set(map(id, table.values()))
        concerned = {id(s): s for s in idle if id(s) not in held}
    if rrecv:
        readable = set(rrecv)
        concerned.update((id(s), s) for s, fd in zip(idle, idle_fds, strict=True) if fd in readable)
    now = timing.currentTime()
    scan = transport.__dict__.get(_SCAN)
    if scan is None or now >= scan:
        transport.__dict__[_SCAN] = now + _IDLE_SCAN_SECONDS
        concerned.update((id(s), s) for s in idle if s.expired())
    for connection in concerned.values():
        _idle_connection(transport, table, connection, rrecv)


def _idle_connection(transport: Any, table: dict[Any, Any], idle: Any, rrecv: list[int]) -> None:
    """What Thespian's loop does for one idle connection."""
    key = TCPTransport.opsKey(idle.rmtaddr)
    current = table.get(key)
    if current and current != idle:
        TCPTransport._safeSocketShutdown(idle)  # a newer connection to the same address
        return
    try:
        fileno = idle.socket.fileno()
    except OSError as ex:
        if not err_bad_fileno(ex.errno):
            raise
        fileno = None
    if fileno is None or fileno in rrecv:
        table.pop(key, None)
        if fileno:
            incoming = transport._handlePossibleIncoming(
                TCPTransport.TCPIncomingPersistent(idle.rmtaddr, idle.socket),
                fileno,
                has_exclusive_flag=True,
            )
            if incoming:
                transport._incomingSockets[incoming.socket.fileno()] = incoming
    elif idle.expired():
        TCPTransport._safeSocketShutdown(idle)
        table.pop(key, None)


def _selection_failed(
    transport: Any, ex: Exception, wrecv: list[int], wsend: list[int]
) -> list[Any] | None:
    """Thespian's answer to a wait that failed: None to turn again (interrupted, or a watched
    descriptor was bad and is no longer watched), else the descriptors found bad, to cancel;
    raises what it cannot handle."""
    thesplog("selector exception: %s", ex, level=logging.DEBUG)
    errnum = errno.EBADF if isinstance(ex, ValueError) else getattr(ex, "errno", ex.args[0])
    if err_select_retry(errnum):
        thesplog("select retry on %s", ex, level=logging.DEBUG)
        transport._check_indicators()
        return None
    if not err_bad_fileno(errnum):
        raise ex
    bad_watches = [w for w in transport._watches if not _fd_ok(w)]
    if bad_watches:
        transport._watches = [w for w in transport._watches if w not in bad_watches]
        return None
    thesplog("bad internal file descriptor!")
    # As Thespian: a bad listening socket is named by its method, not its number, so that
    # ``_cancel_fd_ops`` does not take it for the listening socket and abort.
    bad: list[Any] = [] if _fd_ok(transport.socket.fileno()) else [transport.socket.fileno]
    bad.extend(fd for fd in [*wrecv, *wsend] if not _fd_ok(fd))
    return bad


def _fd_ok(fd: int) -> bool:
    try:
        TCPTransport.TCPTransport._check_fd(fd)
    except Exception:  # noqa: BLE001 - any failure: a bad descriptor
        return False
    return True
