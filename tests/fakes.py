"""Fakes the unit tests of :mod:`thespian_dd._runtime` share: a clock the test moves by hand and a
recording ``transmit`` that delivers nothing until the test says so."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from thespian.system.transport import SendStatus

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
    calls :meth:`finish` (or :meth:`finish_to`)."""

    sent: list[Transmit] = field(default_factory=list)  # every transmit, in order

    def __call__(self, address: Any, message: Any, done: Callable[[Any], None]) -> None:
        self.sent.append(Transmit(address, message, done))

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
