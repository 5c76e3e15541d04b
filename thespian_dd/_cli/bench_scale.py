"""The ``scale`` section of the benchmark: what many nodes and many keys cost.

Real node processes on loopback with the default intervals (gossip every 2 s, deltas every
0.2 s, failure timeout 10 s); each figure next to the same figure at 3 nodes, or at the start of
the load, measured in the same run:

- Idle CPU: the CPU time of every process of every node (admins, Replicators, writers) over a
  quiet window, as a share of one core, at N nodes against 3 nodes.
- WriteMajority: the median round trip of a client's ``Update`` with ``WriteMajority`` at N
  nodes against 3 nodes.
- Convergence: one node updates 1,000 keys; the time from its last write until every node holds
  them all, at N nodes against 3 nodes.
- Every node writing: each node updates :data:`EACH` new keys of its own at once (one client
  actor a node, one update after the other); the updates a second of all nodes together, at N
  nodes against 3 nodes (each node's deltas to its peers compete for the cores with the writes).
- Load: one node of 3 updates ``keys`` new keys one after the other (WriteLocal): the rate of
  the last 20,000 against the rate of the first 20,000 (the rate must not fall with the number
  of keys), and the gossip bytes every node sent meanwhile (until converged) against the bytes
  of the values themselves times the N-1 other replicas that must receive each (the least any
  replication sends).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thespian.actors import ActorTypeDispatcher

from thespian_dd import GCounter, GetStats, GetStatus, Stats, Status, Update, WriteMajority
from thespian_dd._testkit.harness import Cluster, eventually

__all__ = ["DEFAULTS", "scale_section"]

DEFAULTS: dict[str, Any] = {
    "gossip_interval": 2.0,
    "delta_interval": 0.2,
    "notify_interval": 0.5,
    "failure_timeout": 10.0,
}
"""The node command's defaults (the test kit's Cluster otherwise runs with short intervals)."""

CHUNK = 20_000
"""Keys in the first and in the last chunk of the load, whose rates are compared."""

EACH = 300
"""Keys each node updates when every node writes at once."""


@dataclass(frozen=True)
class _Fill:
    """To a :class:`_Loader`: update the keys ``key-<start>`` .. ``key-<stop - 1>`` in turn."""

    target: Any
    start: int
    stop: int


@dataclass(frozen=True)
class _Filled:
    seconds: float


def _increment(counter: GCounter, node: Any) -> GCounter:
    return counter.increment(node, 1)


class _Loader(ActorTypeDispatcher):  # type: ignore[misc]
    """Sequential Updates of new keys from inside the actor system, timed end to end."""

    def receiveMsg__Fill(self, msg: _Fill, sender: Any) -> None:  # noqa: N802 - Thespian's name
        self.job, self.client, self.next = msg, sender, msg.start
        self.started = time.perf_counter()
        self._send()

    def _send(self) -> None:
        self.send(self.job.target, Update(f"key-{self.next}", GCounter(), _increment))

    def receiveMsg_UpdateResponse(self, msg: Any, sender: Any) -> None:  # noqa: N802, ARG002
        self.next += 1
        if self.next < self.job.stop:
            self._send()
        else:
            self.send(self.client, _Filled(time.perf_counter() - self.started))


def _fill(cluster: Cluster, start: int, stop: int) -> float:
    """Seconds node 0 took to update the keys ``start`` .. ``stop - 1``."""
    node = cluster.nodes[0]
    loader = node.client.createActor(_Loader)
    done = node.client.ask(loader, _Fill(node.replicator, start, stop), 3600)
    if not isinstance(done, _Filled):
        raise TypeError(f"the bench loader answered {done!r}")
    return done.seconds


def _cpu_seconds(groups: set[int]) -> float:
    """CPU time (user + system) so far of every process in the process groups ``groups``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text(encoding="ascii", errors="replace")
            fields = stat.rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) in groups:  # pgrp; utime and stime are fields 14 and 15
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _groups(cluster: Cluster) -> set[int]:
    return {
        g
        for node in cluster.nodes
        for g in (node.actors_pgid, node.popen.pid if node.popen else None)
        if g
    }


def _stats(cluster: Cluster, i: int) -> Stats:
    stats = cluster.ask(i, GetStats(), timeout=30)
    assert isinstance(stats, Stats), f"{cluster.names[i]} answered {stats!r}"
    return stats


def _meshed(cluster: Cluster) -> None:
    """Wait until every node reaches every other."""
    n = len(cluster.nodes)
    waiting = list(range(n))

    def all_reach() -> bool:
        waiting[:] = [i for i in waiting if _stats(cluster, i).reachable_peers < n - 1]
        return not waiting

    eventually(all_reach, timeout=60 + 2 * n, what=f"{n} nodes reach each other")


def _idle_cpu(cluster: Cluster, seconds: float) -> float:
    """The share of one core all nodes' processes used over ``seconds`` of quiet."""
    groups = _groups(cluster)
    time.sleep(2 * DEFAULTS["gossip_interval"])  # the joins' last exchanges
    before, started = _cpu_seconds(groups), time.monotonic()
    time.sleep(seconds)
    return (_cpu_seconds(groups) - before) / (time.monotonic() - started)


def _write_majority_median(cluster: Cluster, writes: int) -> float:
    node = cluster.nodes[0]
    times = []
    for i in range(writes):
        update = Update(f"majority-{i % 5}", GCounter(), _increment, WriteMajority(10.0))
        started = time.perf_counter()
        reply = cluster.ask(0, update, timeout=30)
        times.append(time.perf_counter() - started)
        assert type(reply).__name__ == "UpdateSuccess", f"{node.name} answered {reply!r}"
    return statistics.median(times)


def _converge(cluster: Cluster, start: int, stop: int) -> float:
    """Seconds from node 0's last write of keys ``start`` .. ``stop - 1`` until every node
    holds as many keys as node 0."""
    _fill(cluster, start, stop)
    written = time.perf_counter()
    want = _stats(cluster, 0).keys
    waiting = list(range(1, len(cluster.nodes)))

    def all_hold() -> bool:
        waiting[:] = [i for i in waiting if _stats(cluster, i).keys < want]
        return not waiting

    eventually(all_hold, timeout=600, what=f"every node holds {want} keys")
    return time.perf_counter() - written


def _all_writing(cluster: Cluster, each: int) -> float:
    """Updates a second of all nodes together, each updating ``each`` new keys of its own at
    once (keys numbered from a million: apart from the other figures' keys)."""
    loaders = [node.client.createActor(_Loader) for node in cluster.nodes]
    started = time.perf_counter()
    for j, (node, loader) in enumerate(zip(cluster.nodes, loaders, strict=True)):
        first = 1_000_000 + j * each
        node.client.tell(loader, _Fill(node.replicator, first, first + each))
    for node in cluster.nodes:
        done = node.client.listen(600)
        while done is not None and not isinstance(done, _Filled):  # a late reply of an ask
            done = node.client.listen(600)
        if done is None:
            raise TimeoutError(f"the bench loader of {node.name} did not finish")
    return len(cluster.nodes) * each / (time.perf_counter() - started)


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    value: float
    baseline: float
    baseline_name: str


def _cluster_figures(workdir: Path, n: int, out: Callable[[str], object]) -> dict[str, float]:
    out(
        f"  scale: {n} nodes: mesh, idle CPU, WriteMajority, convergence of 1,000 keys, "
        "every node writing ..."
    )
    with Cluster(workdir, n, **DEFAULTS) as cluster:
        cluster.start()
        _meshed(cluster)
        cpu = _idle_cpu(cluster, 20.0)
        median = _write_majority_median(cluster, 40)
        converged = _converge(cluster, 0, 1000)
        everyone = _all_writing(cluster, EACH)
    return {"cpu": cpu, "majority": median, "converged": converged, "everyone": everyone}


def _load(workdir: Path, keys: int, out: Callable[[str], object]) -> dict[str, float]:
    out(f"  scale: 3 nodes, {keys:,} keys loaded on one ...")
    chunk = min(CHUNK, keys // 2)
    with Cluster(workdir, 3, **DEFAULTS) as cluster:
        cluster.start()
        _meshed(cluster)
        sent_before = sum(_stats(cluster, i).gossip_bytes_out for i in range(3))
        first = chunk / _fill(cluster, 0, chunk)
        if keys - chunk > chunk:
            _fill(cluster, chunk, keys - chunk)
        last = chunk / _fill(cluster, keys - chunk, keys)
        loaded = time.perf_counter()
        waiting = [1, 2]

        def all_hold() -> bool:
            waiting[:] = [i for i in waiting if _stats(cluster, i).keys < keys]
            return not waiting

        eventually(all_hold, timeout=1800, what=f"every node holds {keys} keys")
        converged = time.perf_counter() - loaded
        sent = sum(_stats(cluster, i).gossip_bytes_out for i in range(3)) - sent_before
        status = cluster.ask(0, GetStatus(), timeout=30)
        assert isinstance(status, Status)
    return {
        "first": first,
        "last": last,
        "converged": converged,
        "gossip": sent,
        "values": status.value_bytes * 2,
        "chunk": chunk,
    }


def scale_section(nodes: int, keys: int, out: Callable[[str], object]) -> list[Figure]:
    """The figures of the module docstring at ``nodes`` nodes and ``keys`` loaded keys."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        small = _cluster_figures(workdir, 3, out)
        large = _cluster_figures(workdir, nodes, out)
        load = _load(workdir, keys, out)
    at3 = "the same at 3 nodes"
    chunk = int(load["chunk"])
    return [
        Figure(f"idle CPU of {nodes} nodes", "cores", large["cpu"], small["cpu"], at3),
        Figure(
            f"WriteMajority median at {nodes} nodes",
            "ms",
            large["majority"] * 1e3,
            small["majority"] * 1e3,
            at3,
        ),
        Figure(
            f"convergence of 1,000 keys at {nodes} nodes",
            "s",
            large["converged"],
            small["converged"],
            at3,
        ),
        Figure(
            f"update rate, all {nodes} nodes writing at once",
            "msg/s",
            large["everyone"],
            small["everyone"],
            at3,
        ),
        Figure(
            f"load rate, last {chunk:,} of {keys:,} keys",
            "msg/s",
            load["last"],
            load["first"],
            f"rate of the first {chunk:,}",
        ),
        Figure(
            f"gossip bytes loading {keys:,} keys on 3 nodes",
            "bytes",
            load["gossip"],
            load["values"],
            "value bytes x 2 other replicas",
        ),
        Figure(
            f"convergence after loading {keys:,} keys",
            "s",
            load["converged"],
            DEFAULTS["gossip_interval"],
            "one gossip interval",
        ),
    ]
