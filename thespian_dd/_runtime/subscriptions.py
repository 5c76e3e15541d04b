"""Subscriptions and the notifications they get.

Changes are collected and sent every ``notify_interval`` (or at once on FlushChanges), in key
order, the latest state of each key.  Each subscriber has an outbox: at most one notification in
flight, the rest held, the latest per key, so a subscriber on a cut-off node cannot take the
Replicator's transmit slots.  A subscriber whose actor is gone is dropped.

``ActorAddress`` is not hashable: subscriptions are kept in a list and outboxes by ``str(address)``,
which is stable within a process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from thespian.system.transport import SendStatus

from thespian_dd._runtime.protocol import NotifyTick
from thespian_dd._runtime.settings import matches
from thespian_dd._runtime.window import Transmit
from thespian_dd.messages import Changed, Deleted, Expired

__all__ = ["Notification", "Subscriptions"]

Notification = Changed | Deleted | Expired


@dataclass
class _Outbox:
    address: Any
    in_flight: bool = False
    held: dict[str, Notification] = field(default_factory=dict)


class Subscriptions:
    """``transmit`` sends a notification (see :data:`Transmit`); ``wake(seconds, payload)`` arms
    the notification timer, which must call :meth:`due`."""

    def __init__(
        self,
        *,
        transmit: Transmit,
        wake: Callable[[float, Any], None],
        interval: float,
        dropped: Callable[[Any], None] = lambda _address: None,
    ) -> None:
        self._transmit = transmit
        self._wake = wake
        self._interval = interval
        self._dropped = dropped
        self._subscriptions: list[tuple[str, Any]] = []
        self._outboxes: dict[str, _Outbox] = {}
        self._changed: set[str] = set()
        self._armed = False

    def __len__(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, pattern: str, subscriber: Any) -> None:
        if (pattern, subscriber) not in self._subscriptions:
            self._subscriptions.append((pattern, subscriber))

    def unsubscribe(self, pattern: str, subscriber: Any) -> None:
        self._subscriptions = [
            (k, s) for k, s in self._subscriptions if not (k == pattern and s == subscriber)
        ]
        if all(s != subscriber for _, s in self._subscriptions):
            self._outboxes.pop(str(subscriber), None)

    def drop(self, address: Any) -> None:
        """``address`` is gone: forget its subscriptions and what it was to be told."""
        self._outboxes.pop(str(address), None)
        before = len(self._subscriptions)
        self._subscriptions = [(k, s) for k, s in self._subscriptions if s != address]
        if len(self._subscriptions) < before:
            self._dropped(address)

    def changed(self, key: str) -> None:
        """``key`` changed: its subscribers hear of it at the next notification time.  With no
        subscriber there is no one to tell, and no timer is armed (a subscriber is told the
        value of each key it matches when it subscribes): on a node without subscribers, as
        peers mostly are, a write or a peer's value merged costs no notification wakeup."""
        if not self._subscriptions:
            return
        self._changed.add(key)
        if not self._armed:
            self._armed = True
            self._wake(self._interval, NotifyTick())

    def due(self) -> None:
        """The notification timer fired."""
        self._armed = False

    def take_changed(self) -> list[str]:
        """The keys changed since last taken, in order."""
        changed, self._changed = self._changed, set()
        return sorted(changed)

    def notify(self, message: Notification) -> None:
        """Tell every subscriber of ``message.key`` (through its outbox)."""
        for pattern, subscriber in self._subscriptions:
            if matches(pattern, message.key):
                self.tell(subscriber, message)

    def tell(self, subscriber: Any, message: Notification) -> None:
        """Send ``message`` to ``subscriber``, or hold it while one is in flight to it (a later
        state of a key replaces the one held)."""
        box = self._outboxes.setdefault(str(subscriber), _Outbox(subscriber))
        if box.in_flight:
            box.held[message.key] = message
            return
        box.in_flight = True
        self._transmit(subscriber, message, partial(self._told, box))

    def held(self, subscriber: Any) -> list[Notification]:
        box = self._outboxes.get(str(subscriber))
        return [] if box is None else list(box.held.values())

    def _told(self, box: _Outbox, status: Any) -> None:
        """A notification was delivered, or failed: send the next held one."""
        box.in_flight = False
        if self._outboxes.get(str(box.address)) is not box:
            return  # unsubscribed or dropped meanwhile
        if status == SendStatus.DeadTarget:
            self.drop(box.address)
        elif box.held:
            key = next(iter(box.held))
            self.tell(box.address, box.held.pop(key))
