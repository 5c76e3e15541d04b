"""The way in for code outside actors: :class:`Client` (threads) and :class:`AsyncClient` (asyncio).

A Thespian actor talks to the Replicator with messages (see :mod:`thespian_dd.messages`).  A
script, a web server or a worker thread uses a client instead::

    with Client.connect(19001) as client:              # a node running on this host
        client.update("hits", GCounter(), lambda c, node: c.increment(node, 1))
        print(client.get("hits").value)

Every call waits for *its own* reply: Thespian's ``ask`` returns whatever message reaches the
caller first (the reply to an earlier ``tell``, a subscriber's ``Changed``), so each request is
tagged and only the reply carrying the tag is taken.  Each call runs on a Thespian ``private()``
context of its own (an endpoint with its own socket, borrowed from a pool and returned after
the call), so any number of threads may share one client.  A failure reply is raised as a
:class:`ReplicatorError` that carries it; no reply in time raises :class:`NoReplyError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import Any, Self, overload

from thespian.actors import ActorSystem, InvalidActorAddress

from thespian_dd._ask import ask_until, new_token, reply_to
from thespian_dd._log import Log
from thespian_dd._typevars import D
from thespian_dd.data import ReplicaId
from thespian_dd.keys import Key
from thespian_dd.messages import (
    Changed,
    DataDeleted,
    Delete,
    Deleted,
    DeleteSuccess,
    Expired,
    Get,
    GetDataDeleted,
    GetFailure,
    GetKeys,
    GetStats,
    GetSuccess,
    Keys,
    ModifyFailure,
    NotFound,
    ReadConsistency,
    ReadLocal,
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
    WriteLocal,
)
from thespian_dd.replicator import start

__all__ = [
    "AsyncClient",
    "AsyncSubscription",
    "Change",
    "Client",
    "DeleteError",
    "GetError",
    "KeyDeletedError",
    "ModifyError",
    "NoReplyError",
    "ReplicatorError",
    "StoreError",
    "Subscription",
    "UpdateTimeoutError",
]

log = Log(__name__)

Change = Changed | Deleted | Expired
"""What a subscription delivers: a key's new value, its deletion, or its expiry."""

_POLL = 0.1  # how often a subscription's thread looks whether it was closed (s)


# -- errors -------------------------------------------------------------------------------------


class ReplicatorError(Exception):
    """A request to the Replicator failed.  ``reply`` is the failure reply (such as a
    :class:`~thespian_dd.ModifyFailure`, or Thespian's ``PoisonMessage``), ``None`` if none
    came."""

    def __init__(self, message: str, reply: Any = None) -> None:
        super().__init__(message)
        self.reply = reply


class GetError(ReplicatorError):
    """:class:`~thespian_dd.GetFailure`: the read did not hear from enough replicas in time, or
    the request was invalid (``reply.error`` says which)."""


class ModifyError(ReplicatorError):
    """:class:`~thespian_dd.ModifyFailure`: nothing was applied; the request was invalid, or
    ``modify`` raised or returned a value of the wrong type (``reply.error`` says which)."""


class StoreError(ReplicatorError):
    """:class:`~thespian_dd.StoreFailure`: the update or delete is applied in memory but was not
    written to the node's store."""


class UpdateTimeoutError(ReplicatorError, TimeoutError):
    """:class:`~thespian_dd.UpdateTimeout`: applied on this node, but not confirmed by as many
    replicas as the write consistency asked for in its time.  It still spreads."""


class DeleteError(ReplicatorError):
    """:class:`~thespian_dd.ReplicationDeleteFailure`: deleted on this node, but not confirmed by
    enough replicas in time (it still spreads), or the request was invalid."""


class KeyDeletedError(ReplicatorError):
    """The key was deleted (:class:`~thespian_dd.GetDataDeleted`,
    :class:`~thespian_dd.UpdateDataDeleted`, or :class:`~thespian_dd.DataDeleted` for a second
    delete).  A deleted key stays deleted: it cannot be written again."""


class NoReplyError(ReplicatorError, TimeoutError):
    """No reply arrived within the call's timeout (``reply`` is None): the node is down or
    overloaded.  An update may still have been applied."""


_RAISED: dict[type[Any], type[ReplicatorError]] = {
    GetFailure: GetError,
    ModifyFailure: ModifyError,
    StoreFailure: StoreError,
    UpdateTimeout: UpdateTimeoutError,
    ReplicationDeleteFailure: DeleteError,
    GetDataDeleted: KeyDeletedError,
    UpdateDataDeleted: KeyDeletedError,
    DataDeleted: KeyDeletedError,
}


def _failure(reply: Any) -> ReplicatorError:
    """The exception for a reply that is not a success."""
    error = getattr(reply, "error", "") or getattr(reply, "details", "")
    key = getattr(reply, "key", None)
    about = f" for key {key!r}" if key is not None else ""
    text = f"{type(reply).__name__}{about}" + (f": {error}" if error else "")
    return _RAISED.get(type(reply), ReplicatorError)(text, reply)


def _seconds(timeout: object, what: str = "timeout") -> float:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"{what} must be a number of seconds > 0, not {timeout!r}")
    return float(timeout)


# -- private contexts ---------------------------------------------------------------------------


class _Contexts:
    """Thespian ``private()`` contexts of one ActorSystem: a pool lent to one call at a time,
    and dedicated ones for subscriptions.  Closing closes every context, lent ones when they
    come back.

    On ``simpleSystemBase`` the actors run only inside the calls of the system itself (its
    private contexts wait forever): every call borrows the system, one at a time."""

    def __init__(self, asys: Any) -> None:
        self._asys = asys
        self._lock = threading.Lock()
        self._idle: list[tuple[Any, Any]] = []
        self.closed = False
        capabilities = getattr(asys, "capabilities", None) or {}
        self._simple = capabilities.get("Thespian ActorSystem Name") == "simpleSystem"
        self._simple_lock = threading.Lock()

    def open(self) -> tuple[Any, Any]:
        """A new context, as ``(manager, context)``; :meth:`close_one` closes it."""
        if self.closed:
            raise RuntimeError("the thespian_dd Client is closed")
        if self._simple:
            raise RuntimeError(
                "subscriptions need a multiprocess ActorSystem base such as multiprocTCPBase: "
                "on simpleSystemBase no actor runs while no call waits for a reply"
            )
        manager = self._asys.private()
        return manager, manager.__enter__()

    @staticmethod
    def close_one(item: tuple[Any, Any]) -> None:
        """Close a context from :meth:`open` (its socket)."""
        with contextlib.suppress(Exception):  # a transport already broken is closed enough
            item[0].__exit__(None, None, None)

    @contextlib.contextmanager
    def lent(self) -> Iterator[Any]:
        """A context for one call; back to the pool after it, closed if the call broke off."""
        if self._simple:
            if self.closed:
                raise RuntimeError("the thespian_dd Client is closed")
            with self._simple_lock:
                yield self._asys
            return
        with self._lock:
            item = self._idle.pop() if self._idle else None
        if item is None:
            item = self.open()
        done = False
        try:
            yield item[1]
            done = True
        finally:
            with self._lock:
                keep = done and not self.closed
                if keep:
                    self._idle.append(item)
            if not keep:
                self.close_one(item)

    def close(self) -> None:
        """Close every idle context; contexts still lent are closed when they come back."""
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for item in idle:
            self.close_one(item)


def _require_node(port: object, timeout: float) -> int:
    """``port`` if a node listens there on this host; a clear error otherwise (an ActorSystem
    made on a free port would silently start a new, empty node instead)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port must be a TCP port number (1-65535), not {port!r}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(
            f"no thespian_dd node listens on port {port} of this host ({e.strerror or e}); "
            f"start one with: python -m thespian_dd node --name NAME --port {port}"
        ) from e
    return port


JOIN_ONLY = "thespian_dd join only"
"""A capability of an ActorSystem made only to reach an admin that runs: if none answers, Thespian
must not start one (see :func:`_refuse_new_admins_for_join_only`)."""


class _NoAdmin(InvalidActorAddress):  # type: ignore[misc]
    """No admin answered where an ActorSystem was made to join one."""


_join_only_lock = threading.Lock()


def _refuse_new_admins_for_join_only() -> None:
    """Make Thespian's ``_startAdmin`` refuse a system made with :data:`JOIN_ONLY` (once per
    process): Thespian starts a new admin wherever it finds none, so a node that stops between
    the client's probe and its ``ActorSystem(...)`` would be replaced by a new, empty one.
    Patched when first needed, not at import: importing Thespian's multiprocess base early
    changes how a node's processes start."""
    from thespian.system.multiprocCommon import multiprocessCommon

    with _join_only_lock:
        start_admin = multiprocessCommon._startAdmin
        if getattr(start_admin, "join_only", False):
            return

        def start(self: Any, admin: Any, starter: Any, capabilities: Any, log_defs: Any) -> Any:
            if capabilities.get(JOIN_ONLY):
                raise _NoAdmin(admin, "no admin answers there")
            return start_admin(self, admin, starter, capabilities, log_defs)

        start.join_only = True  # type: ignore[attr-defined]
        multiprocessCommon._startAdmin = start


def connect_admin(port: int, timeout: float) -> Any:
    """An endpoint of the ActorSystem whose admin listens on ``port`` of this host (close it with
    :func:`disconnect`, never ``shutdown()``); ``ConnectionError`` if nothing listens there, or
    something that is no Thespian admin."""
    _require_node(port, timeout)
    return join_admin(port)


def join_admin(port: int) -> Any:
    """:func:`connect_admin` without first trying a connection to ``port`` of 127.0.0.1 (in a
    network namespace the admin may listen elsewhere): never starts an admin of its own."""
    _refuse_new_admins_for_join_only()
    capabilities = {"Admin Port": port, JOIN_ONLY: True}
    try:
        asys = ActorSystem("multiprocTCPBase", capabilities, transientUnique=True)
    except _NoAdmin:
        raise ConnectionError(
            f"no thespian_dd node answers on port {port} of this host (it stopped?)"
        ) from None
    except InvalidActorAddress:
        raise ConnectionError(
            f"port {port} of this host is not a Thespian ActorSystem's admin port"
        ) from None
    return asys


def disconnect(asys: Any) -> None:
    """Close this process's endpoint of an ActorSystem that others run.  ``shutdown()`` would
    stop the node itself, and Thespian has no public call for leaving it running: close its
    transport, and the connection to the admin that the transport's ``close`` leaves open."""
    with contextlib.suppress(Exception):
        transport = asys._systemBase.transport
        transport.close()
        for idle in getattr(transport, "_openSockets", {}).values():
            idle.close()


# -- the client ---------------------------------------------------------------------------------


class Client:
    """Calls the Replicator of one node from code outside actors, from any number of threads.

    ``Client(asys)`` uses an ActorSystem of this process (and starts its Replicator if it is not
    running, as :func:`thespian_dd.start` does); :meth:`connect` reaches a node already running
    on this host.  Every call takes a ``timeout`` in seconds; by default the client's
    ``timeout`` plus the consistency level's own, so that the Replicator's answer to a quorum
    that was not reached (:class:`UpdateTimeoutError`, :class:`GetError`) arrives first.

    Use it as a context manager, or call :meth:`close`: that ends its subscriptions, closes its
    contexts and, for :meth:`connect`, its connection.  The ActorSystem and the node stay as
    they were: a system you made yourself is yours to ``shutdown()``.
    """

    def __init__(self, asys: Any, *, timeout: float = 10.0) -> None:
        """Serve calls through ``asys``; waits (at most ``timeout`` s) until its Replicator
        serves, and raises ``TimeoutError`` or ``RuntimeError`` (with the reason) if it does
        not."""
        self.timeout = _seconds(timeout)
        """The default time a call waits beyond its consistency level's own timeout (s)."""
        self._contexts = _Contexts(asys)
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        self._connection: Any = None
        try:
            with self._contexts.lent() as context:
                replicator = start(context, timeout=self.timeout)
        except BaseException:
            self._contexts.close()
            raise
        self.replicator: Any = replicator
        """The address of the node's Replicator (for actors of your own)."""

    @classmethod
    def connect(cls, port: int, *, timeout: float = 10.0) -> Client:
        """A client of the node whose admin port on this host is ``port`` (the ``--port`` of
        ``python -m thespian_dd node``).  Raises ``ConnectionError`` if nothing listens there.

        Thespian's external clients reach only an admin on their own host: to use a node on
        another host, run a node here that joins its cluster, and connect to that one.
        Closing the client leaves the node running.
        """
        _seconds(timeout)
        asys = connect_admin(port, timeout)
        try:
            client = cls(asys, timeout=timeout)
        except BaseException:
            disconnect(asys)
            raise
        client._connection = asys
        return client

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End every subscription, close every context and the connection of
        :meth:`connect`.  Idempotent; calls made afterwards raise ``RuntimeError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:  # all stop listening at once, then each says goodbye
            subscription._stop.set()
        for subscription in subscriptions:
            subscription.close()
        self._contexts.close()
        connection, self._connection = self._connection, None
        if connection is not None:
            disconnect(connection)

    # -- calls --------------------------------------------------------------------------------

    def _wait(self, consistency: Any, timeout: float | None) -> float:
        if timeout is not None:
            return _seconds(timeout)
        return self.timeout + getattr(consistency, "timeout", 0.0)

    def _ask(self, make: Callable[[str], Any], wait: float) -> Any:
        """Send ``make(token)`` and return the reply that echoes ``token``."""
        token = new_token()
        message = make(token)
        with self._contexts.lent() as context:
            reply = ask_until(context, self.replicator, message, reply_to(token), wait)
        if reply is None:
            raise NoReplyError(f"no reply to {type(message).__name__} within {wait:g} s")
        return reply

    @overload
    def get(
        self,
        key: Key[D],
        consistency: ReadConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> D | None: ...

    @overload
    def get(
        self,
        key: str,
        consistency: ReadConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> Any: ...

    def get(
        self,
        key: str,
        consistency: ReadConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """The value of ``key`` (a data type such as :class:`~thespian_dd.ORSet`), or ``None``
        if there is none (:class:`~thespian_dd.NotFound`).  ``consistency`` defaults to
        :class:`~thespian_dd.ReadLocal`.  Raises :class:`GetError`, :class:`KeyDeletedError` or
        :class:`NoReplyError`."""
        consistency = ReadLocal() if consistency is None else consistency
        wait = self._wait(consistency, timeout)
        reply = self._ask(lambda token: Get(key, consistency, token), wait)
        if isinstance(reply, GetSuccess):
            return reply.data
        if isinstance(reply, NotFound):
            return None
        raise _failure(reply)

    def update(
        self,
        key: Key[D] | str,
        initial: D,
        modify: Callable[[D, ReplicaId], D],
        consistency: WriteConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Set ``key`` to ``modify(current, node)``, where ``current`` is its value or
        ``initial`` (see :class:`~thespian_dd.Update`: ``modify`` runs on the node).
        ``consistency`` defaults to :class:`~thespian_dd.WriteLocal`.  Returns once the write
        is acknowledged; raises :class:`ModifyError`, :class:`UpdateTimeoutError`,
        :class:`StoreError`, :class:`KeyDeletedError` or :class:`NoReplyError`."""
        consistency = WriteLocal() if consistency is None else consistency
        wait = self._wait(consistency, timeout)
        reply = self._ask(lambda token: Update(key, initial, modify, consistency, token), wait)
        if not isinstance(reply, UpdateSuccess):
            raise _failure(reply)

    def delete(
        self,
        key: str,
        consistency: WriteConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Delete ``key`` on every node, for good (a deleted key cannot be written again).
        ``consistency`` defaults to :class:`~thespian_dd.WriteLocal`.  Raises
        :class:`KeyDeletedError` if it already was, :class:`DeleteError`, :class:`StoreError` or
        :class:`NoReplyError`."""
        consistency = WriteLocal() if consistency is None else consistency
        wait = self._wait(consistency, timeout)
        reply = self._ask(lambda token: Delete(key, consistency, token), wait)
        if not isinstance(reply, DeleteSuccess):
            raise _failure(reply)

    def keys(self, *, timeout: float | None = None) -> frozenset[str]:
        """The keys this node holds (deleted keys aside)."""
        reply = self._ask(GetKeys, self._wait(None, timeout))
        if not isinstance(reply, Keys):
            raise _failure(reply)
        return reply.keys

    def stats(self, *, timeout: float | None = None) -> Stats:
        """This node's :class:`~thespian_dd.Stats` (keys, peers, store, rejected inputs...)."""
        reply = self._ask(GetStats, self._wait(None, timeout))
        if not isinstance(reply, Stats):
            raise _failure(reply)
        return reply

    def subscribe(self, key: str, callback: Callable[[Change], None] | None = None) -> Subscription:
        """Follow ``key`` (or every key starting with ``prefix`` for ``"prefix*"``): its current
        value first, if it has one, then each change, in order.

        Without ``callback``, iterate over the returned :class:`Subscription`; with one,
        ``callback(change)`` is called on the subscription's own thread (an exception it raises
        is logged).  Returns once the Replicator has the subscription: a later update is seen.
        Close the subscription (or the client) to end it.
        """
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty str, not {key!r}")
        subscription = Subscription(self, key, callback)
        with self._lock:
            closed = self._closed
            if not closed:
                self._subscriptions.add(subscription)
        if closed:
            subscription.close()
            raise RuntimeError("the thespian_dd Client is closed")
        return subscription

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<thespian_dd.Client {state}, replicator {self.replicator}>"


class Subscription:
    """The changes of one key (or key prefix), from :meth:`Client.subscribe`.

    ``for change in subscription`` yields :class:`~thespian_dd.Changed`,
    :class:`~thespian_dd.Deleted` and :class:`~thespian_dd.Expired` messages in the order the
    node sent them, and ends once the subscription is closed (after what had already arrived).
    The Replicator sends at most one change per key per notify interval, with the latest value;
    a value may come twice (the current value on subscribing, then a notification of the same
    change that was pending).
    """

    def __init__(self, client: Client, key: str, callback: Callable[[Change], None] | None) -> None:
        self.key = key
        """The key (or ``prefix*``) subscribed to."""
        self._client = client
        self._callback = callback
        self._changes: queue.SimpleQueue[Change | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closed = threading.Lock()
        self._context: tuple[Any, Any] | None = client._contexts.open()
        context, replicator = self._context[1], client.replicator
        try:
            context.tell(replicator, Subscribe(key))
            # Subscribe has no reply: a request after it, from the same endpoint, is answered
            # once the Replicator has it.  Changes may arrive first.
            token = new_token()
            done = ask_until(
                context, replicator, GetKeys(token), reply_to(token), client.timeout, self._keep
            )
        except BaseException:
            self._drop_context()
            raise
        if done is None:
            self._drop_context()
            raise NoReplyError(f"no answer to Subscribe({key!r}) within {client.timeout:g} s")
        self._thread = threading.Thread(
            target=self._listen, name=f"thespian_dd subscription {key}", daemon=True
        )
        self._thread.start()

    def _keep(self, message: Any) -> None:
        if isinstance(message, (Changed, Deleted, Expired)):
            self._changes.put(message)
        else:  # a late reply to an earlier call cannot come here: this endpoint made none
            log.warning("subscription %r ignored an unexpected %r", self.key, message)

    def _drop_context(self) -> None:
        # Closing the context leaves its idle outbound sockets to the garbage collector:
        # holding no reference to it lets them go at once.
        context, self._context = self._context, None
        if context is not None:
            _Contexts.close_one(context)

    def _listen(self) -> None:
        assert self._context is not None
        context = self._context[1]
        try:
            self._call_back()  # what arrived while subscribing
            while not self._stop.is_set():
                message = context.listen(_POLL)
                if message is not None:
                    self._keep(message)
                    self._call_back()
        except Exception:
            log.exception("subscription %r stopped: its endpoint failed", self.key)
        finally:
            self._changes.put(None)  # the end, for an iterator

    def _call_back(self) -> None:
        """Hand what is queued to the callback, if there is one."""
        if self._callback is None:
            return
        while True:
            try:
                change = self._changes.get_nowait()
            except queue.Empty:
                return
            assert change is not None
            try:
                self._callback(change)
            except Exception:
                log.exception("the callback of subscription %r raised", self.key)

    def receive(self, timeout: float | None = None) -> Change | None:
        """The next change; ``None`` once the subscription is closed and what had arrived was
        read.  Waits at most ``timeout`` seconds (forever if None), then raises
        ``TimeoutError``.  Not for a subscription with a callback."""
        if self._callback is not None:
            raise TypeError(f"subscription {self.key!r} delivers its changes to its callback")
        try:
            change = self._changes.get(timeout=None if timeout is None else _seconds(timeout))
        except queue.Empty:
            raise TimeoutError(f"no change of {self.key!r} within {timeout} s") from None
        if change is None:
            self._changes.put(None)  # every later receive ends too
        return change

    def __iter__(self) -> Iterator[Change]:
        return self

    def __next__(self) -> Change:
        change = self.receive()
        if change is None:
            raise StopIteration
        return change

    def close(self) -> None:
        """Unsubscribe and stop; idempotent.  Changes already received can still be read."""
        if not self._closed.acquire(blocking=False):
            return
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        try:
            with contextlib.suppress(Exception):  # a node that is gone has no subscriber left
                assert self._context is not None
                self._context[1].tell(self._client.replicator, Unsubscribe(self.key))
        finally:
            self._drop_context()
            with self._client._lock:
                self._client._subscriptions.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<thespian_dd.Subscription {self.key!r}>"


# -- asyncio ------------------------------------------------------------------------------------


class AsyncClient:
    """The asyncio face of a :class:`Client`: the same calls, awaited.

    Each call runs the client's call on a thread of the AsyncClient's own pool, so the event
    loop never blocks.  Make one with :meth:`open` or :meth:`connect`; ``async with`` (or
    :meth:`aclose`) ends its subscriptions, stops its threads and closes the client.
    """

    def __init__(self, client: Client) -> None:
        """Wrap ``client``, which the AsyncClient then owns (it closes it)."""
        self.client = client
        """The :class:`Client` underneath."""
        self._pool = ThreadPoolExecutor(thread_name_prefix="thespian_dd.AsyncClient")
        self._subscriptions: set[AsyncSubscription] = set()
        self._closed = False

    @classmethod
    async def open(cls, asys: Any, *, timeout: float = 10.0) -> AsyncClient:
        """``AsyncClient(Client(asys, timeout=timeout))``, without blocking the event loop."""
        return cls(await asyncio.to_thread(Client, asys, timeout=timeout))

    @classmethod
    async def connect(cls, port: int, *, timeout: float = 10.0) -> AsyncClient:
        """``AsyncClient(Client.connect(port, timeout=timeout))``, without blocking the event
        loop."""
        return cls(await asyncio.to_thread(Client.connect, port, timeout=timeout))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End every subscription, close the client, stop the pool's threads.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        await self._run(self.client.close)
        await asyncio.to_thread(self._pool.shutdown, wait=True)  # the loop does not wait

    async def _run(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, partial(call, *args, **kwargs)
        )

    @overload
    async def get(
        self,
        key: Key[D],
        consistency: ReadConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> D | None: ...

    @overload
    async def get(
        self,
        key: str,
        consistency: ReadConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> Any: ...

    async def get(
        self,
        key: str,
        consistency: ReadConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """As :meth:`Client.get`."""
        return await self._run(self.client.get, key, consistency, timeout=timeout)

    async def update(
        self,
        key: Key[D] | str,
        initial: D,
        modify: Callable[[D, ReplicaId], D],
        consistency: WriteConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """As :meth:`Client.update`."""
        await self._run(self.client.update, key, initial, modify, consistency, timeout=timeout)

    async def delete(
        self,
        key: str,
        consistency: WriteConsistency | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """As :meth:`Client.delete`."""
        await self._run(self.client.delete, key, consistency, timeout=timeout)

    async def keys(self, *, timeout: float | None = None) -> frozenset[str]:
        """As :meth:`Client.keys`."""
        keys: frozenset[str] = await self._run(self.client.keys, timeout=timeout)
        return keys

    async def stats(self, *, timeout: float | None = None) -> Stats:
        """As :meth:`Client.stats`."""
        stats: Stats = await self._run(self.client.stats, timeout=timeout)
        return stats

    async def subscribe(
        self, key: str, callback: Callable[[Change], None] | None = None
    ) -> AsyncSubscription:
        """As :meth:`Client.subscribe`: ``async for change in subscription``, or
        ``callback(change)`` called in the event loop's thread."""
        subscription = AsyncSubscription(self, key, callback)
        subscription._subscription = await self._run(
            self.client.subscribe, key, subscription._from_thread
        )
        self._subscriptions.add(subscription)
        return subscription

    def __repr__(self) -> str:
        return f"<thespian_dd.AsyncClient of {self.client!r}>"


class AsyncSubscription:
    """The changes of one key (or key prefix), from :meth:`AsyncClient.subscribe`:
    ``async for change in subscription`` (as :class:`Subscription`); ``async with`` or
    :meth:`aclose` ends it."""

    def __init__(
        self, client: AsyncClient, key: str, callback: Callable[[Change], None] | None
    ) -> None:
        """Made by :meth:`AsyncClient.subscribe`, in the event loop that will read it."""
        self.key = key
        """The key (or ``prefix*``) subscribed to."""
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._callback = callback
        self._changes: asyncio.Queue[Change | None] = asyncio.Queue()
        self._subscription: Subscription | None = None

    def _from_thread(self, change: Change) -> None:
        self._loop.call_soon_threadsafe(self._arrived, change)

    def _arrived(self, change: Change) -> None:
        if self._callback is None:
            self._changes.put_nowait(change)
            return
        try:
            self._callback(change)
        except Exception:
            log.exception("the callback of subscription %r raised", self.key)

    async def receive(self, timeout: float | None = None) -> Change | None:
        """The next change; ``None`` once the subscription is closed and what had arrived was
        read; ``TimeoutError`` after ``timeout`` seconds (forever if None)."""
        if self._callback is not None:
            raise TypeError(f"subscription {self.key!r} delivers its changes to its callback")
        wait = None if timeout is None else _seconds(timeout)
        try:
            change = await asyncio.wait_for(self._changes.get(), wait)
        except TimeoutError:
            raise TimeoutError(f"no change of {self.key!r} within {timeout} s") from None
        if change is None:
            self._changes.put_nowait(None)
        return change

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        change = await self.receive()
        if change is None:
            raise StopAsyncIteration
        return change

    async def aclose(self) -> None:
        """Unsubscribe and stop; idempotent."""
        if self not in self._client._subscriptions:
            return
        self._client._subscriptions.discard(self)
        assert self._subscription is not None
        await self._client._run(self._subscription.close)
        # Changes the thread handed over before it stopped are queued ahead of the end.
        self._loop.call_soon(self._changes.put_nowait, None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<thespian_dd.AsyncSubscription {self.key!r}>"
