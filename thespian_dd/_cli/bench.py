"""The benchmark: every figure is printed next to a baseline measured in the same run.

Section ``replicator`` (real ``multiprocTCPBase`` nodes on loopback):
- Update (WriteLocal) and Get throughput: an actor makes sequential request/response round trips
  to the Replicator; the baseline is the same actor doing round trips with an echo actor, i.e.
  raw Thespian messaging.  The three run interleaved, in blocks (echo, Update, Get, then the
  next block in the next order) and each rate is that of its median block, so that what else the
  machine does meanwhile slows all three alike.  Target: at least 0.95x the baseline.
- Convergence: one node updates 10,000 keys; the time until the other two nodes hold all of
  them, against the time the updates themselves took.
- Idle gossip: bytes per gossip round between two converged nodes at 2,000 and 20,000 keys; the
  baseline is the 2,000-key figure (the ratio should stay near 1).

Section ``scale``: idle CPU, WriteMajority and convergence at many nodes, and a long load (see
:mod:`thespian_dd._cli.bench_scale`).

Section ``crdt``: merge time and encoded size of ORSet and ORMap states of n elements.
- Merge: two replicas that share half their elements and each removed some; the baseline is the
  same-size merge of plain Python containers (``set | set``, ``{**dict, **dict}``), i.e. the
  cost of touching n elements at C speed.  The ratio says what causality tracking costs.
- Size: bytes of ``codec.encode(state)``; the baseline is ``pickle.dumps`` of the plain value
  (the elements alone, with no causal metadata).
- Decode: ``codec.decode`` of those bytes (all its checks included), and of an ORSet and an ORMap
  of 10; the baseline is ``pickle.loads`` of the plain value.
- Growth: merge time at the largest size over the next one, divided by the size ratio (1.0 is
  linear), next to the same figure for the plain merge: a ratio near 1 means ORSet and ORMap
  scale like Python's own containers on this machine (caches make both grow faster than n).
"""

from __future__ import annotations

import ctypes
import gc
import json
import pickle
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, astuple, dataclass
from functools import partial
from operator import or_
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from thespian.actors import ActorExitRequest, ActorTypeDispatcher

from thespian_dd import (
    GCounter,
    Get,
    GetStats,
    GetSuccess,
    ORMap,
    ORSet,
    ReplicaId,
    Stats,
    Update,
    UpdateSuccess,
    WriteAll,
    WriteLocal,
)
from thespian_dd._cli.bench_scale import CHUNK, scale_section
from thespian_dd._runtime.protocol import DescribeProcess, ProcessInfo
from thespian_dd._runtime.rows import Entry
from thespian_dd._runtime.store import Store
from thespian_dd._testkit.harness import Cluster, Node, eventually, scratch_database, start_node
from thespian_dd.codec import decode, encode
from thespian_dd.data import CausalContext

__all__ = ["Result", "run_bench"]

A, B = ReplicaId("bench-a", 1), ReplicaId("bench-b", 1)
T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    section: str
    name: str
    unit: str
    value: float
    baseline: float
    baseline_name: str

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")


def _progress(steps: Iterable[T], what: str, total: int | None = None) -> Iterable[T]:
    """``steps`` with a progress bar on a terminal (tqdm, the ``bench`` extra), plain otherwise."""
    if not sys.stderr.isatty():
        return steps
    try:
        from tqdm import tqdm
    except ImportError:
        return steps
    bar: Iterable[T] = tqdm(steps, desc=f"  {what}", total=total, leave=False, unit="step")
    return bar


def _median_of(fn: Callable[[], object], repeat: int) -> float:
    """The median of ``repeat`` timings of ``fn()``, in seconds (garbage collector paused)."""
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    finally:
        gc.enable()
    return statistics.median(times)


def _orset_pair(n: int) -> tuple[ORSet, ORSet]:
    shared = ORSet().add_all(A, range(n // 2)).reset_delta()
    left = shared.add_all(A, range(n // 2, n)).remove_all(A, range(0, n // 2, 10)).reset_delta()
    right = shared.add_all(B, range(n, n + n // 2)).remove_all(B, range(5, n // 2, 10))
    return left, right.reset_delta()


def _ormap_pair(n: int) -> tuple[ORMap, ORMap]:
    # Built directly as the states n updates would make: n updates through the API copy the map
    # n times (values are immutable), which would make the set-up, not the merge, quadratic.
    def state(node: ReplicaId, keys: list[int], base: ORMap | None = None) -> ORMap:
        start = base.context.high(node) if base else 0
        versions: dict[object, dict[Any, Any]] = dict(base.versions) if base else {}
        for i, k in enumerate(keys, start + 1):
            versions[k] = {(node, i): GCounter({node: 1})}
        context = CausalContext.of_vv({node: start + len(keys)})
        return ORMap(versions, base.context.merge(context) if base else context)

    shared = state(A, list(range(n // 2)))
    return state(A, list(range(n // 2, n)), shared), state(B, list(range(n, n + n // 2)), shared)


def _dict_merge(a: dict[Any, Any], b: dict[Any, Any]) -> dict[Any, Any]:
    return {**a, **b}


def _small_counter() -> GCounter:
    return GCounter().increment(A, 3).merge(GCounter().increment(B, 2)).increment(A, 1)


def _small_map() -> ORMap:
    m = ORMap()
    for k in range(10):
        m = m.update(A, k, GCounter(), partial(_bump_counter, A))
    return m.reset_delta()


def _bump_counter(node: ReplicaId, counter: GCounter) -> GCounter:
    return counter.increment(node, 1)


def _bump(counter: GCounter) -> GCounter:
    return counter.increment(A, 1)


def _add_new(s: ORSet) -> ORSet:
    return s.add(A, "new")


def _hit_map(m: ORMap) -> ORMap:
    return m.update(A, 0, GCounter(), partial(_bump_counter, A))


def _update_check(
    name: str, current: Any, modify: Callable[[Any], Any], loops: int = 2000
) -> Result:
    """What the Replicator's check that an update is an inflation of the current value costs,
    against what the update itself (``modify``) costs."""
    new = modify(current)
    assert new.is_inflation_of(current)
    check = _median_of(partial(_repeat, partial(new.is_inflation_of, current), loops), 5) / loops
    update = _median_of(partial(_repeat, partial(modify, current), loops), 5) / loops
    return Result("crdt", f"{name}: Update check", "µs", check * 1e6, update * 1e6, "the update")


def _decode_time(name: str, value: Any, repeat: int, loops: int = 1) -> Result:
    """What decoding ``value``'s encoding costs, against ``pickle.loads`` of its plain value."""
    raw, plain = encode(value), pickle.dumps(value.value)
    assert decode(raw) == value.reset_delta()
    ours = _median_of(partial(_repeat, partial(decode, raw), loops), repeat) / loops
    base = _median_of(partial(_repeat, partial(pickle.loads, plain), loops), repeat) / loops
    unit, scale = ("µs", 1e6) if loops > 1 else ("ms", 1e3)
    return Result("crdt", name, unit, ours * scale, base * scale, "pickle.loads of the plain value")


def _repeat(fn: Callable[[], object], times: int) -> None:
    for _ in range(times):
        fn()


def _crdt(sizes: list[int], out: Callable[[str], object]) -> list[Result]:
    """Merge time and encoded size at each size of ``sizes``."""
    results: list[Result] = []
    merge_times: dict[str, dict[int, tuple[float, float]]] = {"ORSet": {}, "ORMap": {}}
    for n in sizes:
        repeat = 5 if n <= 10_000 else 3
        out(f"  crdt: building ORSet and ORMap states of {n:,} elements ...")
        s_left, s_right = _orset_pair(n)
        m_left, m_right = _ormap_pair(n)
        pairs: list[tuple[str, Any, Any, Callable[[], object]]] = [
            ("ORSet", s_left, s_right, partial(or_, set(s_left.value), set(s_right.value))),
            ("ORMap", m_left, m_right, partial(_dict_merge, m_left.value, m_right.value)),
        ]
        for name, left, right, baseline in pairs:
            merged_time = _median_of(partial(left.merge, right), repeat)
            base_time = _median_of(baseline, repeat)
            merge_times[name][n] = (merged_time, base_time)
            results.append(
                Result(
                    "crdt",
                    f"{name} merge, {n:,} elements",
                    "ms",
                    merged_time * 1e3,
                    base_time * 1e3,
                    "plain set/dict merge",
                )
            )
            results.append(
                Result(
                    "crdt",
                    f"{name} encoded size, {n:,} elements",
                    "bytes",
                    len(encode(left)),
                    len(pickle.dumps(left.value)),
                    "pickle of the plain value",
                )
            )
            results.append(_decode_time(f"{name} decode, {n:,} elements", left, repeat))
    largest = max(sizes)
    out("  crdt: the Update check (is_inflation_of) against the update it checks ...")
    results += [
        _update_check("GCounter of 3 replicas", _small_counter(), _bump),
        _update_check("ORSet of 10 elements", ORSet().add_all(A, range(10)), _add_new),
        _update_check("ORMap of 10 keys", _small_map(), _hit_map),
        _update_check(f"ORSet of {largest:,} elements", _orset_pair(largest)[0], _add_new, 1),
        _update_check(f"ORMap of {largest:,} keys", _ormap_pair(largest)[0], _hit_map, 1),
        _decode_time("ORSet of 10 elements: decode", ORSet().add_all(A, range(10)), 5, 2000),
        _decode_time("ORMap of 10 keys: decode", _small_map(), 5, 2000),
    ]
    ordered = sorted(sizes)
    if len(ordered) >= 2:
        small, large = ordered[-2], ordered[-1]
        for name, times in merge_times.items():
            (ours_small, base_small), (ours_large, base_large) = times[small], times[large]
            results.append(
                Result(
                    "crdt",
                    f"{name} merge time growth {small:,} -> {large:,}, per x{large // small}",
                    "x",
                    ours_large / ours_small / (large / small),
                    base_large / base_small / (large / small),
                    "growth of the plain merge; 1.0 = linear",
                )
            )
    return results


@dataclass(frozen=True)
class _Ping:
    pass


@dataclass(frozen=True)
class _RoundTrips:
    """To a :class:`_Driver`: make ``n`` sequential round trips to ``target`` and report."""

    target: Any
    kind: str  # "ping" | "update" | "get" | "fill"
    n: int
    key: str = "bench"


@dataclass(frozen=True)
class _Done:
    seconds: float


def _increment(counter: GCounter, node: ReplicaId) -> GCounter:
    return counter.increment(node, 1)


class _Echo(ActorTypeDispatcher):  # type: ignore[misc]
    def receiveMsg__Ping(self, msg: _Ping, sender: Any) -> None:
        self.send(sender, msg)


class _Driver(ActorTypeDispatcher):  # type: ignore[misc]
    """Sequential request/response from inside the actor system, timed end to end."""

    def receiveMsg__RoundTrips(self, msg: _RoundTrips, sender: Any) -> None:
        self.job, self.client, self.left = msg, sender, msg.n
        self.started = time.perf_counter()
        self._next()

    def _next(self) -> None:
        job = self.job
        i = job.n - self.left
        if job.kind == "ping":
            self.send(job.target, _Ping())
        elif job.kind == "update":
            self.send(job.target, Update(job.key, GCounter(), _increment))
        elif job.kind == "fill":
            self.send(job.target, Update(f"key-{i}", GCounter(), _increment))
        else:
            self.send(job.target, Get("bench"))

    def _reply(self) -> None:
        self.left -= 1
        if self.left:
            self._next()
        else:
            self.send(self.client, _Done(time.perf_counter() - self.started))

    def receiveMsg__Ping(self, msg: _Ping, sender: Any) -> None:
        self._reply()

    def receiveMsg_UpdateResponse(self, msg: Any, sender: Any) -> None:
        self._reply()

    def receiveMsg_GetResponse(self, msg: Any, sender: Any) -> None:
        self._reply()


def _round_trips(asys: Any, driver: Any, target: Any, kind: str, n: int) -> float:
    done = asys.ask(driver, _RoundTrips(target, kind, n), 600)
    if not isinstance(done, _Done):
        raise TypeError(f"the bench driver answered {done!r}")
    return done.seconds


ROUND_TRIP_BLOCKS = 10
"""Blocks the round trips of :func:`_round_trip_rates` are made in."""


def _round_trip_rates(asys: Any, driver: Any, targets: dict[str, Any], n: int) -> dict[str, float]:
    """Round trips per second of each kind of ``targets`` (kind: address), ``n`` of each in all,
    made in :data:`ROUND_TRIP_BLOCKS` blocks that take turns (each block all kinds, each
    starting one kind further on): the rate of a kind is that of its median block.  Measured one
    kind after the other, the machine's load drifting between them moved the ratios by 20% from
    run to run on a shared 2-core machine; interleaved, the drift slows every kind alike, and a
    block that met a burst of load is an outlier the median leaves out."""
    each = max(1, n // ROUND_TRIP_BLOCKS)
    times = _interleaved(
        list(targets),
        ROUND_TRIP_BLOCKS,
        lambda kind: _round_trips(asys, driver, targets[kind], kind, each),
    )
    return {kind: each / statistics.median(t) for kind, t in times.items()}


def _interleaved(
    kinds: list[str], blocks: int, measure: Callable[[str], float]
) -> dict[str, list[float]]:
    """``measure(kind)`` of every kind in each of ``blocks`` blocks, each block starting one
    kind further on: each kind's times, block by block."""
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for block in range(blocks):
        for turn in range(len(kinds)):
            kind = kinds[(block + turn) % len(kinds)]
            times[kind].append(measure(kind))
    return times


def _replicator(scale: float, out: Callable[[str], object]) -> list[Result]:
    def scaled(n: int) -> int:
        return max(10, int(n * scale))

    results: list[Result] = []
    n = scaled(2000)
    out(
        f"  replicator: {n:,} sequential round trips each: echo, Update, Get, "
        f"interleaved in {ROUND_TRIP_BLOCKS} blocks ..."
    )
    node = start_node()
    try:
        driver = node.asys.createActor(_Driver)
        echo = node.asys.createActor(_Echo)
        targets = {"ping": echo, "update": node.replicator, "get": node.replicator}
        for kind, target in targets.items():  # warm up every path (the Update makes the key)
            _round_trips(node.asys, driver, target, kind, 200)
        rates = _round_trip_rates(node.asys, driver, targets, n)
        for kind, name in (("update", "Update (WriteLocal)"), ("get", "Get (ReadLocal)")):
            results.append(
                Result(
                    "replicator",
                    f"{name} throughput",
                    "msg/s",
                    rates[kind],
                    rates["ping"],
                    "Thespian echo, interleaved",
                )
            )
    finally:
        node.asys.shutdown()

    with tempfile.TemporaryDirectory() as workdir:
        keys = scaled(10_000)
        out(f"  replicator: 3 nodes, {keys:,} keys updated on one, until all have them ...")
        with Cluster(Path(workdir), 3) as cluster:
            cluster.start()
            first = cluster.nodes[0]
            driver = first.client.createActor(_Driver)
            started = time.perf_counter()
            writing = _round_trips(first.client, driver, first.replicator, "fill", keys)
            for i in (1, 2):
                _wait_for_keys(cluster, i, keys)
            converged = time.perf_counter() - started
            results.append(
                Result(
                    "replicator",
                    f"convergence of {keys:,} updated keys on 3 nodes",
                    "s",
                    converged,
                    writing,
                    "time to make the updates",
                )
            )

        out("  replicator: idle gossip at two key counts ...")
        with Cluster(Path(workdir), 2) as cluster:
            cluster.start()
            first = cluster.nodes[0]
            driver = first.client.createActor(_Driver)
            per_round = {}
            small, large = scaled(2_000), scaled(20_000)
            for total in (small, large):
                _round_trips(first.client, driver, first.replicator, "fill", total)
                _wait_for_keys(cluster, 1, total)
                per_round[total] = _idle_gossip(cluster)
            results += [
                Result(
                    "replicator",
                    f"idle gossip per round, {total:,} keys",
                    "bytes",
                    per_round[total],
                    per_round[small],
                    f"idle gossip at {small:,} keys",
                )
                for total in (small, large)
            ]
    return results


def _wait_for_keys(cluster: Cluster, i: int, keys: int) -> None:
    def has_all() -> bool:
        stats = cluster.ask(i, GetStats())
        return isinstance(stats, Stats) and stats.keys == keys

    eventually(has_all, timeout=300, what=f"node {i} holds {keys} keys")


def _idle_gossip(cluster: Cluster) -> float:
    """Bytes node 0 sends per gossip round, once the last exchanges have settled."""

    def rounds_so_far() -> int:
        stats = cluster.ask(0, GetStats())
        assert isinstance(stats, Stats)
        return stats.gossip_rounds

    settle = rounds_so_far() + 5
    eventually(lambda: rounds_so_far() >= settle, timeout=60)
    before = cluster.ask(0, GetStats())
    eventually(lambda: rounds_so_far() >= before.gossip_rounds + 10, timeout=60)
    after = cluster.ask(0, GetStats())
    sent: int = after.gossip_bytes_out - before.gossip_bytes_out
    rounds: int = after.gossip_rounds - before.gossip_rounds
    return sent / rounds


MODE_BLOCKS = 5
"""The durable section's Update throughputs are measured in this many blocks per mode."""

CLIENT_UPDATES_PER_BLOCK = 100
"""The fewest Updates each client makes in a block of the durable section (times the scale).
A block ends when its last client is done, so the shorter the block, the more its last moments
weigh, when fewer clients are left to share a sync commit; with 25 Updates a client (16 clients,
2,000 a mode), 16 clients' sync ratio read 0.70x-0.85x from run to run."""


@dataclass(frozen=True)
class _Rates:
    """What :func:`_update_rates` measured of each node (by mode)."""

    per_second: dict[str, float]
    """Updates a second."""
    cpu: dict[str, float] | None
    """Seconds of CPU the Replicator's process took per Update, all its threads (None where a
    process's CPU clock cannot be read)."""


def _cpu_clock(pid: int) -> int | None:
    """The clock of the CPU time of process ``pid``, all its threads (libc's
    ``clock_getcpuclockid``), for ``time.clock_gettime``; None where there is none."""
    try:
        getcpuclockid = ctypes.CDLL(None).clock_getcpuclockid
        clock = ctypes.c_int()
        if getcpuclockid(pid, ctypes.byref(clock)) != 0:
            return None
        time.clock_gettime(clock.value)
    except (AttributeError, OSError, TypeError):
        return None
    return clock.value


def _update_rates(nodes: dict[str, Node], clients: int, each: int) -> _Rates:
    """Updates per second of each node when ``clients`` driver actors each make sequential
    Updates (of their own key) at the same time, ``each`` a driver in each of
    :data:`MODE_BLOCKS` blocks, the nodes taken in turn (each block in the next order), each
    node's rate its Updates over the sum of its blocks' times.  Load that comes and goes on a
    shared machine falls on every node alike, where measuring one node after the other gave it
    to one alone.  And the CPU each node's Replicator took per Update in those blocks (the
    other nodes idle meanwhile): where the rates follow every program on the machine, it
    counts the Replicator's own work."""
    clocks = {}
    for mode, node in nodes.items():
        info = node.ask(DescribeProcess())
        assert isinstance(info, ProcessInfo), info
        clocks[mode] = _cpu_clock(info.pid)
    cpu = dict.fromkeys(nodes, 0.0)
    drivers = {
        mode: [node.asys.createActor(_Driver) for _ in range(clients)]
        for mode, node in nodes.items()
    }
    for mode, node in nodes.items():  # warm up: every key exists, every path is hot
        for c, driver in enumerate(drivers[mode]):
            node.asys.ask(driver, _RoundTrips(node.replicator, "update", 20, f"bench-{c}"), 60)

    def measure(mode: str) -> float:
        clock = clocks[mode]
        before = 0.0 if clock is None else time.clock_gettime(clock)
        seconds = _block(nodes[mode], drivers[mode], each)
        if clock is not None:
            cpu[mode] += time.clock_gettime(clock) - before
        return seconds

    times = _interleaved(list(nodes), MODE_BLOCKS, measure)
    for mode, node in nodes.items():
        for driver in drivers[mode]:
            node.asys.tell(driver, ActorExitRequest())
    updates = each * clients * MODE_BLOCKS
    return _Rates(
        {mode: updates / sum(t) for mode, t in times.items()},
        None if None in clocks.values() else {mode: c / updates for mode, c in cpu.items()},
    )


def _block(node: Node, drivers: list[Any], each: int) -> float:
    """Seconds for every driver to make ``each`` sequential Updates, all at the same time."""
    started = time.perf_counter()
    for c, driver in enumerate(drivers):
        node.asys.tell(driver, _RoundTrips(node.replicator, "update", each, f"bench-{c}"))
    done = 0
    while done < len(drivers):
        reply = node.asys.listen(600)
        if reply is None:
            raise TimeoutError("the bench drivers did not finish")
        done += isinstance(reply, _Done)
    return time.perf_counter() - started


def _stores(workdir: str, postgresql: str | None) -> Iterator[tuple[str, str]]:
    """(label, URL template) of each store to measure; ``{mode}`` names the node's own."""
    yield "SQLite", f"sqlite:///{workdir}/{{mode}}.db"
    if postgresql:
        with scratch_database(postgresql) as url:
            yield "PostgreSQL", url


def _durable(scale: float, postgresql: str | None, out: Callable[[str], object]) -> list[Result]:
    """Section ``durable``, on SQLite and, given its URL, PostgreSQL.

    - Update throughput with 1 and 16 clients (driver actors making sequential Updates of a
      key each) of a sync and a write-behind node; the baseline is an in-memory node.  The
      three nodes run at the same time and are measured in turn, in blocks (see
      :func:`_update_rates`), so the ratios compare the same stretch of the machine's load.
    - Sync Updates per second with 1 client against sqlite3's own one-row commits per second on
      the same disk: what the disk allows.
    - Recovery of 10,000 and 100,000 keys (from asking for the rows to serving) against reading
      and decoding the same rows in one process, and against a bare SELECT of them: each the
      median of three (three starts of the node, three runs of each baseline)."""
    results: list[Result] = []
    n = max(64, int(2000 * scale))
    fewest = max(1, round(CLIENT_UPDATES_PER_BLOCK * scale))  # a client's Updates a block
    with tempfile.TemporaryDirectory() as workdir:
        if not postgresql:
            out(
                "  durable: no PostgreSQL URL (--postgresql or THESPIAN_DD_TEST_POSTGRESQL_URL): "
                "SQLite only"
            )
        for label, template in _stores(workdir, postgresql):
            for clients in (1, 16):
                each = max(fewest, n // (clients * MODE_BLOCKS))
                updates = each * clients * MODE_BLOCKS
                out(
                    f"  durable: {label}, {clients} client(s), {updates:,} Updates per mode, "
                    f"in {MODE_BLOCKS} blocks per mode taken in turn ..."
                )
                nodes: dict[str, Node] = {}
                try:
                    for mode in ("memory", "sync", "write-behind"):
                        settings: dict[str, Any] = {"node_name": f"bench-{mode}-{clients}"}
                        if mode != "memory":
                            settings["store"] = template.format(mode=f"{mode}-{clients}")
                            settings["write_mode"] = mode
                        nodes[mode] = start_node(**settings)
                    rates = _update_rates(nodes, clients, each)
                finally:
                    for node in nodes.values():
                        node.asys.shutdown()
                results += [
                    Result(
                        "durable",
                        f"{label} {mode} Update throughput, {clients} client(s)",
                        "msg/s",
                        rates.per_second[mode],
                        rates.per_second["memory"],
                        f"in memory, {clients} client(s)",
                    )
                    for mode in ("sync", "write-behind")
                ]
                if rates.cpu is not None:
                    results += [
                        Result(
                            "durable",
                            f"{label} {mode} Replicator CPU per Update, {clients} client(s)",
                            "µs",
                            rates.cpu[mode] * 1e6,
                            rates.cpu["memory"] * 1e6,
                            f"in memory, {clients} client(s)",
                        )
                        for mode in ("sync", "write-behind")
                    ]
                if label == "SQLite" and clients == 1:
                    # What the disk allows: a sync Update waits for one commit, and no commit
                    # can be faster than sqlite3's own one-row transaction on this disk.
                    commits = _bare_commits(Path(workdir) / "bare.db", n)
                    results.append(
                        Result(
                            "durable",
                            "SQLite sync Updates per second, 1 client, against the disk",
                            "msg/s",
                            rates.per_second["sync"],
                            commits,
                            "sqlite3 one-row commits/s (WAL, synchronous=FULL)",
                        )
                    )
            for keys in (max(100, int(10_000 * scale)), max(1000, int(100_000 * scale))):
                out(f"  durable: {label}, recovery of {keys:,} keys ...")
                url = template.format(mode=f"recovery-{keys}")
                name = f"bench-recovery-{keys}"
                _fill_store(url, name, keys)
                raw = _median_of(partial(_select_and_decode, url, name), 3)
                bare = _median_of(partial(_select, url, name), 3)
                # Measured as the baselines are: the median of three (three starts of the node).
                recovery = statistics.median(_recovery(url, name, keys) for _ in range(3))
                results += [
                    Result(
                        "durable",
                        f"{label} recovery of {keys:,} keys",
                        "s",
                        recovery,
                        raw,
                        "SELECT and decode the rows in one process",
                    ),
                    Result(
                        "durable",
                        f"{label} recovery of {keys:,} keys",
                        "s",
                        recovery,
                        bare,
                        "a bare SELECT of the same keys and payloads",
                    ),
                ]
    return results


def _recovery(url: str, name: str, keys: int) -> float:
    """Seconds a node named ``name`` took to recover its ``keys`` rows from ``url`` (its own
    figure: from its start until it serves)."""
    node = start_node(store=url, node_name=name)
    try:
        stats = node.asys.ask(node.replicator, GetStats(), 60)
        assert isinstance(stats, Stats), stats
        assert stats.keys == keys, stats
        assert stats.recovery_time is not None
        return float(stats.recovery_time)
    finally:
        node.asys.shutdown()


def _bare_commits(path: Path, n: int) -> float:
    """One-row upsert transactions per second with sqlite3 alone, as the store's pragmas make
    them durable: the floor of a sync Update's commit on this disk."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v BLOB)")
        upsert = "INSERT INTO t VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
        started = time.perf_counter()
        for i in range(n):
            conn.execute("BEGIN")
            conn.execute(upsert, ("key", i.to_bytes(8, "big")))
            conn.execute("COMMIT")
        return n / (time.perf_counter() - started)
    finally:
        conn.close()


def _fill_store(url: str, node: str, keys: int) -> None:
    """``keys`` rows for ``node``: GCounters of three replicas and ORSets of five elements."""
    store = Store(url)
    try:
        replicas = [ReplicaId(f"n{i}", 1) for i in range(3)]
        counter = GCounter()
        for i, r in enumerate(replicas):
            counter = counter.increment(r, i + 1)
        small_set = ORSet().add_all(replicas[0], [f"element-{i}" for i in range(5)])
        entries = {}
        for k in range(keys):
            value = counter if k % 2 else small_set
            entries[f"key-{k}"] = Entry(type(value).__name__, encode(value), "")
        for start in _progress(range(0, keys, 10_000), f"writing {keys:,} rows"):
            chunk = dict(list(entries.items())[start : start + 10_000])
            store.write(node, chunk)
    finally:
        store.close()


def _select(url: str, node: str) -> int:
    """The floor of recovery: read the same rows' keys and payloads with SQLAlchemy."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT key, payload FROM thespian_dd_entries WHERE node = :n")
            return len(conn.execute(query, {"n": node}).all())
    finally:
        engine.dispose()


def _select_and_decode(url: str, node: str) -> int:
    """The baseline of recovery: read the same rows with SQLAlchemy and decode each."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT key, payload FROM thespian_dd_entries WHERE node = :n")
            values = {key: decode(bytes(raw)) for key, raw in conn.execute(query, {"n": node})}
        return len(values)
    finally:
        engine.dispose()


PRUNING: dict[str, Any] = {
    "pruning_interval": 0.3,
    "max_pruning_dissemination": 1.0,
    "removal_timeout": 4.0,
}
NO_PRUNING: dict[str, Any] = {"max_pruning_dissemination": 1e9}


def _add_own_element(s: ORSet, node: ReplicaId) -> ORSet:
    """The same element for every start of a node: only the replicas behind it change."""
    return s.add(node, f"element-of-{node.node}")


def _hit(m: ORMap, node: ReplicaId) -> ORMap:
    return m.update(node, "hits", GCounter(), lambda c: c.increment(node, 1))


def _restart_workload(cluster: Cluster, restarts: int) -> None:
    """Every node updates a GCounter, an ORSet and an ORMap key; node 3 (whose writes reach
    every node first) is killed and restarted, ``restarts`` times."""
    for r in _progress(range(restarts + 1), f"{restarts} restarts"):
        for i in range(3):
            consistency = WriteAll(10.0) if i == 2 else WriteLocal()
            updates = [
                Update("counter", GCounter(), _increment, consistency),
                Update("set", ORSet(), _add_own_element, consistency),
                Update("map", ORMap(), _hit, consistency),
            ]
            for update in updates:
                reply = cluster.ask(i, update, 15)
                if not isinstance(reply, UpdateSuccess):
                    raise TypeError(f"bench update on node {i + 1} failed: {reply!r}")
        if r < restarts:
            cluster.kill(2)
            cluster.restart(2)


def _sizes(cluster: Cluster) -> dict[str, float]:
    """Encoded bytes of each key on node 1, and its idle gossip bytes per round."""
    sizes: dict[str, float] = {}
    for key in ("counter", "set", "map"):
        reply = cluster.ask(0, Get(key))
        if not isinstance(reply, GetSuccess):
            raise TypeError(f"bench: {key} is missing: {reply!r}")
        sizes[key] = len(encode(reply.data))
    sizes["gossip"] = _idle_gossip(cluster)
    return sizes


def _pruned(cluster: Cluster) -> bool:
    live = set()
    for i in range(3):
        stats = cluster.ask(i, GetStats())
        assert isinstance(stats, Stats)
        name, incarnation = stats.node.rsplit("#", 1)
        live.add(ReplicaId(name, int(incarnation)))
    for i in range(3):
        for key in ("counter", "set", "map"):
            reply = cluster.ask(i, Get(key))
            assert isinstance(reply, GetSuccess)
            assert reply.data.modified_by_nodes() <= live
    return True


def _pruning(scale: float, out: Callable[[str], object]) -> list[Result]:
    restarts = max(3, int(30 * scale))
    found: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        out(f"  pruning: 3 nodes, {restarts} restarts of one, pruning held back ...")
        with Cluster(Path(workdir), 3, **NO_PRUNING) as cluster:
            cluster.start()
            _restart_workload(cluster, 0)
            found["before"] = _sizes(cluster)
            _restart_workload(cluster, restarts)
            found["restarted"] = _sizes(cluster)
        out(f"  pruning: 3 nodes, {restarts} restarts of one, pruning on ...")
        with Cluster(Path(workdir), 3, **PRUNING) as cluster:
            cluster.start()
            _restart_workload(cluster, restarts)
            eventually(lambda: _pruned(cluster), timeout=120, what="every old replica pruned")
            found["pruned"] = _sizes(cluster)
    names = {"counter": "GCounter", "set": "ORSet", "map": "ORMap"}
    results = []
    for key, label in [*names.items(), ("gossip", "idle gossip per round")]:
        what = f"{label} key size" if key in names else label
        for phase, words in (("restarted", "not pruned"), ("pruned", "pruned")):
            results.append(
                Result(
                    "pruning",
                    f"{what} after {restarts} restarts, {words}",
                    "bytes",
                    found[phase][key],
                    found["before"][key],
                    "before the restarts",
                )
            )
    return results


SECTIONS = ("crdt", "replicator", "durable", "pruning", "scale")


def _fmt(value: float, unit: str) -> str:
    text = f"{value:,.0f}" if unit in ("bytes", "msg/s") else f"{value:,.3f}"
    return f"{text} {unit}"


def _table(results: list[Result]) -> list[str]:
    width = max(len(r.name) for r in results)
    lines = [f"{'section':10} {'measure':{width}} {'value':>16} {'baseline':>16} {'ratio':>8}"]
    lines += [
        f"{r.section:10} {r.name:{width}} {_fmt(r.value, r.unit):>16} "
        f"{_fmt(r.baseline, r.unit):>16} {r.ratio:>7.2f}x  (baseline: {r.baseline_name})"
        for r in results
    ]
    return lines


def run_bench(  # noqa: PLR0913 - one keyword per command-line option
    sections: list[str],
    *,
    sizes: list[int],
    scale: float,
    json_path: str | None,
    out: Callable[[str], object],
    postgresql: str | None = None,
    nodes: int = 32,
) -> list[Result]:
    """Run ``sections``: crdt at each of ``sizes``; replicator and durable with counts times
    ``scale``; durable on SQLite and, given its admin URL, PostgreSQL; scale with ``nodes`` nodes
    and 300,000 keys times ``scale`` (see :mod:`thespian_dd._cli.bench_scale`)."""
    out(f"thespian_dd bench on Python {platform.python_version()}, {platform.machine()}")
    results: list[Result] = []
    if "crdt" in sections:
        results += _crdt(sizes, out)
    if "replicator" in sections:
        results += _replicator(scale, out)
    if "durable" in sections:
        results += _durable(scale, postgresql, out)
    if "pruning" in sections:
        results += _pruning(scale, out)
    if "scale" in sections:
        keys = max(2 * CHUNK // 10, int(300_000 * scale))
        results += [Result("scale", *astuple(f)) for f in scale_section(nodes, keys, out)]
    for line in _table(results):
        out(line)
    if json_path:
        rows = [{**asdict(r), "ratio": r.ratio} for r in results]
        Path(json_path).write_text(json.dumps(rows, indent=2), encoding="utf-8")
        out(f"results written to {json_path}")
    return results
