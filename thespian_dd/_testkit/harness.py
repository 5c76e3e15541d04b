"""Real nodes for tests and benchmarks; :mod:`thespian_dd.testing` is the pytest plugin on top.

- :func:`eventually`, :func:`free_port`, the :class:`Probe` actor;
- :func:`start_node`: an ActorSystem in this process with its Replicator (its actors are
  processes of their own);
- :class:`Cluster`: N nodes, each a ``python -m thespian_dd node`` process group, on loopback or
  (``network=True``) each in a Linux network namespace of its own, for real partitions;
- :func:`scratch_database`: a new, empty database on a PostgreSQL or MariaDB/MySQL server.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from thespian.actors import ActorSystem, ActorSystemMessage, ActorTypeDispatcher

from thespian_dd._ask import ask
from thespian_dd._peers import PartitionForTests
from thespian_dd._procs import port_holders, port_in_use, running_in_group
from thespian_dd._testkit.netns import Network, unavailable
from thespian_dd.client import disconnect, join_admin
from thespian_dd.replicator import DescribeProcess, ProcessInfo, start

__all__ = [
    "Cluster",
    "Node",
    "Probe",
    "ProbeSend",
    "ProbeSendAll",
    "ProbeTake",
    "Received",
    "StoreOutage",
    "eventually",
    "free_port",
    "scratch_database",
    "start_node",
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


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new database on the server of ``admin_url`` (a user who may create databases), as a
    URL; dropped afterwards."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    mysql = engine.dialect.name in ("mysql", "mariadb")
    name = f"tdd_{secrets.token_hex(6)}"
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}" + (" CHARACTER SET utf8mb4" * mysql)))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name}" + ("" if mysql else " WITH (FORCE)")))
        engine.dispose()


_handed_out: set[int] = set()
"""Every port :func:`free_port` returned in this process."""

_LOWEST_PORT = 10_000


def _worker_share(low: int, high: int) -> tuple[int, int]:
    """The part of ports ``low`` to ``high`` (excluded) that this pytest-xdist worker draws
    from (``PYTEST_XDIST_WORKER`` gwN of ``PYTEST_XDIST_WORKER_COUNT``); all of them outside
    xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return low, high
    index, workers = int(worker[2:]), int(count)
    if not 0 <= index < workers or high - low < workers:
        return low, high
    size = (high - low) // workers
    return low + index * size, low + (index + 1) * size


def _ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections (and ``bind(0)``)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, that this process was never
    given before, and that is below the kernel's ephemeral range; under pytest-xdist, from a
    share of that range that no other worker draws from.  Handed out twice, two nodes asked
    for before either started got the same port and the second silently joined the first's
    ActorSystem; taken from the ephemeral range (as ``bind(0)`` does), a port chosen for a node
    was now and then taken by an outgoing connection of the nodes started before it; drawn from
    the range that another worker drew from, a port given to a node not started yet, or to one
    killed for a restart, was now and then taken by a node of the other worker's test."""
    ephemeral = _ephemeral_ports()
    low, high = _worker_share(_LOWEST_PORT, max(_LOWEST_PORT + 1000, ephemeral.start))
    rng = random.SystemRandom()
    for _ in range(10_000):
        port = rng.randrange(low, high)
        if port in _handed_out or port in ephemeral:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("free_port: no free port found below the ephemeral range")


@dataclass(frozen=True)
class ProbeSend:
    """Ask a :class:`Probe` to send ``message`` to ``target`` (so the probe is the sender)."""

    target: Any
    message: Any


@dataclass(frozen=True)
class ProbeSendAll:
    """Ask a :class:`Probe` to send each of ``messages`` to ``target``, in order (a burst from
    an actor is much faster than one external send per message)."""

    target: Any
    messages: list[Any]


@dataclass(frozen=True)
class ProbeTake:
    """Ask a :class:`Probe` for what it has received so far; it replies :class:`Received`."""

    clear: bool = False


@dataclass(frozen=True)
class Received:
    """What a :class:`Probe` received, in order, with the time (``time.time()``) of each."""

    messages: list[Any] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


class Probe(ActorTypeDispatcher):  # type: ignore[misc]
    """Records every message it receives (Thespian's own messages aside)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.received: list[Any] = []
        self.times: list[float] = []

    def receiveMsg_ProbeSend(self, msg: ProbeSend, sender: Any) -> None:
        self.send(msg.target, msg.message)

    def receiveMsg_ProbeSendAll(self, msg: ProbeSendAll, sender: Any) -> None:
        for message in msg.messages:
            self.send(msg.target, message)

    def receiveMsg_ProbeTake(self, msg: ProbeTake, sender: Any) -> None:
        self.send(sender, Received(list(self.received), list(self.times)))
        if msg.clear:
            self.received.clear()
            self.times.clear()

    def receiveMsg_ActorSystemMessage(self, msg: ActorSystemMessage, sender: Any) -> None:
        """Exit requests and the like are not what a test looks for."""

    def receiveUnrecognizedMessage(self, msg: Any, sender: Any) -> None:
        self.received.append(msg)
        self.times.append(time.time())


@dataclass
class Node:
    """A running ActorSystem with its Replicator, as the ``thespian_node`` fixture gives it."""

    asys: Any
    port: int
    replicator: Any

    def ask(self, message: Any, timeout: float = 10.0) -> Any:
        """Send ``message`` to the Replicator and return its own reply (``None`` on timeout).

        Thespian's ``ask`` returns whatever reaches this endpoint first, such as the reply to an
        earlier ``tell``: the request is tagged, and only the reply that echoes the tag counts
        (as in :class:`thespian_dd.Client`).
        """
        return ask(self.asys, self.replicator, message, timeout)

    def probe(self) -> Any:
        """A new :class:`Probe` actor on this node."""
        return self.asys.createActor(Probe)

    def received(self, probe: Any, clear: bool = False) -> list[Any]:
        """What ``probe`` has received so far, oldest first; ``clear=True`` forgets it
        afterwards."""
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


FAST = {
    "gossip_interval": 0.2,
    "delta_interval": 0.1,
    "notify_interval": 0.05,
    "failure_timeout": 1.5,
}
"""Intervals short enough for tests: a killed node is unreachable within about 2 seconds."""


def _option(value: Any, name: str) -> str:
    """A setting as the node command's option takes it; a str may name the node
    (``store="sqlite:///{dir}/{name}.db"``)."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(value)
    return value.format(name=name) if isinstance(value, str) else str(value)


def _free(port: int) -> bool:
    """True if a node may listen on ``port`` now (the node command's own check); else
    AssertionError saying why, and what holds it."""
    problem = port_in_use(port)
    if problem:
        holders = "; ".join(port_holders(port)) or "nothing this user can see"
        raise AssertionError(f"port {port} is in use ({problem}), held by {holders}")
    return True


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


class StoreOutage:
    """A store that refuses writes while this holds its lock (see :meth:`Cluster.store_outage`).

    Open it only after the nodes have started: an SQLite connection open in a process that then
    forks a Thespian ActorSystem breaks SQLite's locking for the forked actors."""

    def __init__(self, url: str) -> None:
        self._sqlite: sqlite3.Connection | None = None
        self._conn: sa.Connection | None = None
        parsed = sa.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            self._sqlite = sqlite3.connect(str(parsed.database), isolation_level=None)
            self._sqlite.execute("BEGIN EXCLUSIVE")
            return
        self._engine = sa.create_engine(url)
        self._conn = self._engine.connect()
        self._conn.begin()
        if self._engine.dialect.name == "postgresql":
            self._conn.execute(sa.text("LOCK TABLE thespian_dd_entries IN ACCESS EXCLUSIVE MODE"))
        else:
            self._conn.execute(sa.text("LOCK TABLES thespian_dd_entries WRITE"))

    def end(self) -> None:
        """The store is back."""
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
            self._sqlite = None
        if self._conn is not None:
            if self._engine.dialect.name != "postgresql":
                self._conn.execute(sa.text("UNLOCK TABLES"))
            self._conn.rollback()
            self._conn.close()
            self._engine.dispose()
            self._conn = None


class _InsideHost:
    """An ActorSystem of this process whose every method runs inside host ``host`` of ``net``:
    its sockets were made there and reach only that host's namespace.  Other attributes are the
    ActorSystem's own."""

    def __init__(self, asys: Any, net: Network, host: int) -> None:
        self._asys = asys
        self._net = net
        self._host = host

    def __getattr__(self, name: str) -> Any:
        if name in ("_asys", "_net", "_host"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        value = getattr(self._asys, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def inside(*args: Any, **kwargs: Any) -> Any:
            with self._net.inside(self._host):
                return value(*args, **kwargs)

        return inside

    def __repr__(self) -> str:
        return f"<{self._asys!r} inside {self._net.hosts[self._host]}>"


@dataclass
class _Process:
    name: str
    port: int
    popen: subprocess.Popen[bytes] | None = None
    actors_pgid: int | None = None
    client: Any = None
    replicator: Any = None
    starts: int = 0
    python_path: str | None = None


class Cluster:
    """Real nodes, each its own OS process group; node 0 leads the convention.

    ``Cluster(tmp_path, 3)`` starts nothing until :meth:`start`; use it as a context manager or
    through the ``cluster_factory`` fixture so every process is stopped after the test.

    By default the nodes share loopback, and :meth:`split` is a TEST-ONLY switch in their
    Replicators.  With ``network=True`` node ``i`` runs in host ``i`` of a
    :class:`~thespian_dd._testkit.netns.Network` (a Linux network namespace of its own; needs
    root, see :func:`~thespian_dd._testkit.netns.unavailable`) and :meth:`split` drops the
    packets between hosts: a real partition.  Each node's ``client`` is then a proxy that runs
    every call of its ActorSystem inside the node's host.  The hosts reach only each other: a
    store must be a file (SQLite), not a server.
    """

    def __init__(self, workdir: Path, n: int, network: bool = False, **settings: Any) -> None:
        """``settings`` are the node command's options (``gossip_interval=0.5`` and so on).
        ``network=True`` raises ``RuntimeError`` (with the reason) on a machine that cannot
        run network namespaces, and ``ValueError`` for a server store."""
        self.settings: dict[str, Any] = {**FAST, **settings}
        self.net: Network | None = None
        """The hosts' network with ``network=True`` (closed by :meth:`stop`), else None."""
        if network:
            reason = unavailable()
            if reason:
                raise RuntimeError(f"Cluster(network=True) needs network namespaces: {reason}")
            store = self.settings.get("store")
            if store and sa.make_url(_option(store, "node")).get_backend_name() != "sqlite":
                raise ValueError(
                    f"Cluster(network=True): the store {store!r} is a server, which the nodes' "
                    "hosts cannot reach; use SQLite"
                )
        # A directory of its own: node logs are read to see a node come up.
        self.workdir = Path(tempfile.mkdtemp(prefix="cluster-", dir=workdir))
        # Every host has a port space of its own, but distinct ports keep Thespian (which takes
        # every address it has seen in this process as its own) from mistaking one admin for
        # another.
        self.nodes = [_Process(f"node-{i + 1}", free_port()) for i in range(n)]
        if network:
            self.net = Network(n)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def names(self) -> list[str]:
        """The node names, ``node-1`` to ``node-N``, in index order."""
        return [node.name for node in self.nodes]

    def start(self) -> Cluster:
        """Start every node, the leader first (members register with it as they start)."""
        for i in range(len(self.nodes)):
            self.start_node(i)
        return self

    def start_node(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` (``python -m thespian_dd node`` in a process group of its own, on its
        port and store) and connect a client to it; raises if it is not ready within ``timeout``
        seconds."""
        node = self.nodes[i]
        log = self.workdir / f"{node.name}.log"
        args = [sys.executable, "-m", "thespian_dd", "node", "--name", node.name]
        args += ["--port", str(node.port)]
        leader = "127.0.0.1" if self.net is None else self.net.address(0)
        if i > 0:
            args += ["--join", f"{leader}:{self.nodes[0].port}"]
        for setting, value in self.settings.items():
            args += [f"--{setting.replace('_', '-')}", _option(value, node.name)]
        if self.net is None:
            args += ["--test-partitions"]  # split() and partition() use PartitionForTests
        env = {**os.environ, "THESPLOG_FILE": str(self.workdir / f"{node.name}.thespian.log")}
        if node.python_path is not None:
            # First: its thespian_dd shadows any other (a package is found whole, in one place).
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [node.python_path, env.get("PYTHONPATH")])
            )
            # Not the working directory first (``-m`` puts it there): it may hold this tree's
            # package, which would shadow the one on python_path.
            env["PYTHONSAFEPATH"] = "1"
        if self.net is not None:
            args = self.net.command(i) + args
            # Thespian would otherwise guess its address (a UDP connect towards 8.8.8.8, which
            # fails in a host with no default route) and fall back to 127.0.0.1.
            env["THESPIAN_BASE_IPADDR"] = self.net.address(i)
        if self.net is None:  # a killed node's last thread may hold it a moment longer
            eventually(lambda: _free(node.port), timeout=10, what=f"{node.name}'s port free")
        with log.open("ab") as out:
            # Output to a file, never a pipe: the daemonised admin would hold a pipe open.
            node.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

        def ready() -> str:
            assert node.popen is not None
            if node.popen.poll() is not None:
                holders = port_holders(node.port) if self.net is None else []
                held = f" (port {node.port} is held by {'; '.join(holders)})" if holders else ""
                raise RuntimeError(f"{node.name} exited{held}: {log.read_text()[-2000:]}")
            lines = [ln for ln in log.read_text().splitlines() if " ready: " in ln]
            return lines[-1] if len(lines) > node.starts else ""

        line = eventually(ready, timeout, what=f"{node.name} ready")
        node.starts += 1  # only a start that came up: one refused prints no ready line
        node.actors_pgid = int(line.rsplit(" ", 1)[1])
        # Never an admin of this process's own on the port, should the node die now.
        if self.net is None:
            node.client = join_admin(node.port)
        else:
            with self.net.inside(i):
                node.client = _InsideHost(join_admin(node.port), self.net, i)
        node.replicator = start(node.client)

    def ask(self, i: int, message: Any, timeout: float = 10.0) -> Any:
        """Send ``message`` to node ``i``'s Replicator and return its own reply (None on
        timeout), matched as :meth:`Node.ask` matches it."""
        node = self.nodes[i]
        return ask(node.client, node.replicator, message, timeout)

    def tell(self, i: int, message: Any) -> None:
        """Send ``message`` to node ``i``'s Replicator without waiting for a reply (a reply, if
        any, is read by a later :meth:`ask` and dropped there)."""
        node = self.nodes[i]
        node.client.tell(node.replicator, message)

    def kill(self, i: int) -> None:
        """SIGKILL the node: its admin and actors' process group, and the node CLI process;
        returns once every thread of theirs has exited.  Nothing to do for a node killed
        already."""
        node = self.nodes[i]
        if node.client is not None:  # its connection, closed at once
            disconnect(node.client._asys if isinstance(node.client, _InsideHost) else node.client)
        node.client = node.replicator = None
        groups = [g for g in (node.actors_pgid, node.popen.pid if node.popen else None) if g]
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        if node.popen is not None:
            node.popen.wait(10)
        # As an operator's supervisor does: the restart waits until every process is gone (one
        # in the middle of an fsync dies only when it returns, and holds its ports until then).
        eventually(
            lambda: not any(running_in_group(g) for g in groups),
            timeout=10,
            what=f"{node.name}'s processes gone",
        )
        node.popen = node.actors_pgid = None

    def kill_writer(self, i: int) -> int:
        """SIGKILL node ``i``'s DurableWriter (the Replicator creates a new one, by a fork made
        with its commit thread ended); how many processes were killed (0 for a node without a
        store).  On ``multiprocTCPBase`` sync batches are committed on that thread, not by the
        DurableWriter: a thread cannot be killed from outside, and one that ends mid-commit is
        tested in ``tests/test_durability.py``."""
        info = self.ask(i, DescribeProcess())
        assert isinstance(info, ProcessInfo), f"{self.nodes[i].name} answered {info!r}"
        children = _children(info.pid)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(children)

    def store_url(self, i: int) -> str:
        """Node ``i``'s store URL (the ``store`` setting with its name filled in)."""
        return _option(self.settings["store"], self.nodes[i].name)

    def store_outage(self, i: int) -> StoreOutage:
        """Make node ``i``'s store refuse its writes until
        :meth:`~thespian_dd._testkit.harness.StoreOutage.end`: an SQLite file is locked
        exclusively, a server's table is locked by another session."""
        return StoreOutage(self.store_url(i))

    def restart(self, i: int) -> None:
        """Start a killed or stopped node again on the same port."""
        self.start_node(i)

    def run_code(self, i: int, python_path: str | None) -> None:
        """From its next start, node ``i`` runs the ``thespian_dd`` found in ``python_path``
        (put first on the ``PYTHONPATH`` of its process: e.g. a directory holding an earlier
        release's package, for a rolling upgrade), with this interpreter and its other packages;
        None: the code this process runs."""
        self.nodes[i].python_path = python_path

    def stop_node(self, i: int, timeout: float = 15.0) -> None:
        """Stop node ``i`` gracefully, as an operator does before an upgrade (SIGTERM: it
        flushes its store and leaves); killed if it has not stopped within ``timeout`` s."""
        node = self.nodes[i]
        if node.popen is not None and node.popen.poll() is None:
            node.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.popen.wait(timeout)
        self.kill(i)  # whatever is left of it, and wait until its processes are gone

    def split(self, *groups: list[int]) -> None:
        """Cut the cluster into ``groups`` (node indexes); nodes in no group stay connected to
        everyone; replaces an earlier split.  With ``network=True`` the hosts drop every packet
        between groups; otherwise (TEST ONLY) each Replicator drops all traffic to and from the
        other groups."""
        if self.net is not None:
            self.net.split(*groups)
            return
        for group in groups:
            others = {self.nodes[j].name for g in groups if g is not group for j in g}
            for i in group:
                self.tell(i, PartitionForTests(frozenset(others)))

    def partition(self, i: int, *others: int) -> None:
        """Node ``i`` and ``others`` stop hearing each other (see :meth:`split`)."""
        self.split([i], list(others))

    def heal(self) -> None:
        """Every node hears every node again."""
        if self.net is not None:
            self.net.heal()
            return
        for i, node in enumerate(self.nodes):
            if node.client is not None:
                self.tell(i, PartitionForTests(frozenset()))

    def stop(self) -> None:
        """Stop every node gracefully (SIGTERM), and kill what does not stop; then remove the
        network, if any."""
        net = self.net if self.net is not None and not self.net.closed else None
        if net is not None:
            net.heal()  # a node cut off from its peers stops slowly
        for node in self.nodes:
            if node.popen is not None and node.popen.poll() is None:
                node.popen.send_signal(signal.SIGTERM)
        failures = []
        for i, node in enumerate(self.nodes):
            if node.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.popen.wait(15)
            try:
                self.kill(i)
            except AssertionError as e:  # the other nodes are stopped all the same
                failures.append(e)
        if net is not None:
            net.close()
        if failures:
            raise failures[0]
