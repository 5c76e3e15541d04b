"""Helpers for testing applications that use thespian_dd, and thespian_dd itself.

Use it as a pytest plugin: ``pytest_plugins = ["thespian_dd.testing"]`` in a ``conftest.py``.

- :func:`eventually`: poll a condition until it holds or a deadline passes (never a bare sleep).
- :func:`free_port`: a free loopback TCP port for a new ActorSystem (never Thespian's 1900).
- :class:`Probe`: an actor that records what it receives, and sends on request, so a test can
  subscribe an actor and look at what the Replicator sent it.
- fixture ``thespian_node``: a real ``multiprocTCPBase`` ActorSystem on a fresh port, with its
  Replicator started; shut down after the test.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from thespian.actors import ActorSystem, ActorSystemMessage, ActorTypeDispatcher

from thespian_dd.replicator import start

__all__ = [
    "Node",
    "Probe",
    "ProbeSend",
    "ProbeTake",
    "Received",
    "eventually",
    "free_port",
    "start_node",
    "thespian_node",
]

T = TypeVar("T")


def eventually(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``condition`` until it returns something true, and return that; ``AssertionError``
    (with the last value or exception) if it has not by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = condition()
        except AssertionError as e:
            last = e
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"not true after {timeout} s{': ' + what if what else ''} (last: {last!r})"
            )
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class ProbeSend:
    """Ask a :class:`Probe` to send ``message`` to ``target`` (so the probe is the sender)."""

    target: Any
    message: Any


@dataclass(frozen=True)
class ProbeTake:
    """Ask a :class:`Probe` for what it has received so far; it replies :class:`Received`."""

    clear: bool = False


@dataclass(frozen=True)
class Received:
    messages: list[Any] = field(default_factory=list)


class Probe(ActorTypeDispatcher):  # type: ignore[misc]
    """Records every message it receives (Thespian's own messages aside)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.received: list[Any] = []

    def receiveMsg_ProbeSend(self, msg: ProbeSend, sender: Any) -> None:
        self.send(msg.target, msg.message)

    def receiveMsg_ProbeTake(self, msg: ProbeTake, sender: Any) -> None:
        self.send(sender, Received(list(self.received)))
        if msg.clear:
            self.received.clear()

    def receiveMsg_ActorSystemMessage(self, msg: ActorSystemMessage, sender: Any) -> None:
        """Exit requests and the like are not what a test looks for."""

    def receiveUnrecognizedMessage(self, msg: Any, sender: Any) -> None:
        self.received.append(msg)


@dataclass
class Node:
    """A running ActorSystem with its Replicator, as the ``thespian_node`` fixture gives it."""

    asys: Any
    port: int
    replicator: Any

    def ask(self, message: Any, timeout: float = 10.0) -> Any:
        """Send ``message`` to the Replicator and return the reply (``None`` on timeout)."""
        return self.asys.ask(self.replicator, message, timeout)

    def probe(self) -> Any:
        """A new :class:`Probe` actor on this node."""
        return self.asys.createActor(Probe)

    def received(self, probe: Any, clear: bool = False) -> list[Any]:
        reply = self.asys.ask(probe, ProbeTake(clear), 10)
        assert isinstance(reply, Received), f"the probe answered {reply!r}"
        return reply.messages


def _thespian_environment(log_dir: str) -> None:
    # Thespian's own log goes to a per-run file, and only warnings; see the project notes.
    os.environ.setdefault("THESPLOG_FILE", str(Path(log_dir) / "thespian.log"))
    os.environ.setdefault("THESPLOG_FILE_MAXSIZE", str(1024 * 1024))
    os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")


def start_node(port: int | None = None, **settings: Any) -> Node:
    """Start an ActorSystem (``multiprocTCPBase``) on ``port`` with its Replicator."""
    _thespian_environment(tempfile.gettempdir())
    port = port or free_port()
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True, logDefs=None)
    try:
        replicator = start(asys, **settings)
    except BaseException:
        asys.shutdown()
        raise
    return Node(asys, port, replicator)


@pytest.fixture
def thespian_node() -> Iterator[Node]:
    """A real ``multiprocTCPBase`` node (its own admin and actor processes) with a Replicator."""
    node = start_node(notify_interval=0.05)
    try:
        yield node
    finally:
        node.asys.shutdown()
