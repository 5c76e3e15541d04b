"""The demo: a durable cluster of three real nodes keeps a shop's shared state through a
full-cluster ``kill -9``.

Three ``python -m thespian_dd node`` processes (each its own ActorSystem, SQLite file and
process group) edit a shopping cart, a delivery address, page-hit counters and a feature flag
concurrently and converge; then every process of every node is killed with SIGKILL at once, the
nodes start again from their stores, and every value is compared with what it was.  Every
process the demo starts is stopped when it ends, also on Ctrl-C.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from thespian_dd import (
    Flag,
    GCounter,
    Get,
    GetStats,
    GetSuccess,
    LWWMap,
    ORMap,
    PNCounter,
    ReadAll,
    ReplicaId,
    Stats,
    Update,
    UpdateSuccess,
    WriteLocal,
    WriteMajority,
)
from thespian_dd._testkit.harness import Cluster, eventually

__all__ = ["run_demo"]

KEYS = ("cart", "address", "hits", "new-checkout")


def _add_item(item: str, qty: int) -> Callable[[ORMap, ReplicaId], ORMap]:
    return lambda cart, node: cart.update(node, item, PNCounter(), lambda c: c.increment(node, qty))


def _remove_item(item: str) -> Callable[[ORMap, ReplicaId], ORMap]:
    return lambda cart, node: cart.remove(node, item)


def _put(field: str, value: str) -> Callable[[LWWMap, ReplicaId], LWWMap]:
    return lambda address, node: address.put(node, field, value)


def _hits(n: int) -> Callable[[GCounter, ReplicaId], GCounter]:
    return lambda counter, node: counter.increment(node, n)


def _switch_on(flag: Flag, node: ReplicaId) -> Flag:
    return flag.switch_on(node)


INITIAL = {"cart": ORMap(), "address": LWWMap(), "hits": GCounter(), "new-checkout": Flag()}


@contextmanager
def _directory(given: str | None) -> Iterator[Path]:
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        yield Path(given)
    else:
        with tempfile.TemporaryDirectory(prefix="thespian_dd-demo-") as temporary:
            yield Path(temporary)


def _view(cluster: Cluster, i: int) -> dict[str, Any]:
    """Node ``i``'s values, read from every node (ReadAll) so they are the converged ones."""
    view = {}
    for key in KEYS:
        reply = cluster.ask(i, Get(key, ReadAll(5.0)))
        if not isinstance(reply, GetSuccess):
            raise TypeError(f"node-{i + 1} could not read {key}: {reply!r}")
        value = reply.data.value
        view[key] = dict(sorted(value.items())) if isinstance(value, dict) else value
    return view


def _converged(cluster: Cluster) -> dict[str, Any] | None:
    """The view every node shares, or None while they differ."""
    first, *others = (_view(cluster, i) for i in range(len(cluster.nodes)))
    return first if all(view == first for view in others) else None


def _show(view: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in view.items())


def _update(cluster: Cluster, i: int, key: str, modify: Any, majority: bool = False) -> None:
    consistency = WriteMajority(5.0) if majority else WriteLocal()
    reply = cluster.ask(i, Update(key, INITIAL[key], modify, consistency))
    if not isinstance(reply, UpdateSuccess):
        raise TypeError(f"node-{i + 1} could not update {key}: {reply!r}")


def _edit(cluster: Cluster, out: Callable[[str], object]) -> None:
    out("")
    out("2. They edit the shop's state concurrently (each update is acknowledged once stored):")
    _update(cluster, 0, "cart", _add_item("apple", 2))
    _update(cluster, 0, "address", _put("city", "Lyon"))
    out("   node-1: 2 apples in the cart, delivery to Lyon")
    _update(cluster, 1, "cart", _add_item("apple", 3))
    _update(cluster, 1, "cart", _add_item("pear", 1))
    _update(cluster, 1, "hits", _hits(5), majority=True)
    out("   node-2: 3 more apples and a pear, 5 page hits (WriteMajority: 2 of 3 nodes)")
    _update(cluster, 2, "new-checkout", _switch_on)
    _update(cluster, 2, "hits", _hits(2))
    _update(cluster, 2, "address", _put("zip", "69001"))
    cluster.ask(2, Get("cart", ReadAll(5.0)))  # sees the pear (a read repairs the replica)
    _update(cluster, 2, "cart", _remove_item("pear"))
    out("   node-3: new checkout on, 2 page hits, zip code 69001, the pear it read removed")


def _restart(cluster: Cluster, out: Callable[[str], object]) -> None:
    out("")
    started = time.perf_counter()
    for i in range(3):
        cluster.restart(i)
    out(f"5. The nodes are back in {time.perf_counter() - started:.1f} s, each from its store:")
    for i, node in enumerate(cluster.nodes):
        stats = cluster.ask(i, GetStats())
        if isinstance(stats, Stats):
            out(
                f"   {node.name}: {stats.keys} keys recovered in "
                f"{1000 * (stats.recovery_time or 0):.0f} ms, as {stats.node}"
            )


def run_demo(out: Callable[[str], object], directory: str | None = None) -> int:
    """Run the story; returns 0 if every value survived, 1 otherwise."""
    with (
        _directory(directory) as workdir,
        Cluster(workdir, 3, store=f"sqlite:///{workdir}/{{name}}.db") as cluster,
    ):
        out("thespian_dd demo: 3 nodes, each a process group with its own SQLite store in")
        out(f"  {workdir}")
        out("")
        started = time.perf_counter()
        cluster.start()
        out(f"1. The nodes are up in {time.perf_counter() - started:.1f} s:")
        for node in cluster.nodes:
            out(f"   {node.name} on port {node.port}")

        _edit(cluster, out)
        out("")
        started = time.perf_counter()
        before = eventually(lambda: _converged(cluster), timeout=30, what="the nodes converge")
        assert before is not None  # eventually returns only a true value
        out(f"3. Converged in {time.perf_counter() - started:.2f} s; every node reads:")
        out(f"   {_show(before)}")

        out("")
        out("4. kill -9 of every process of every node, all at once (no flush, no goodbye).")
        for i in range(3):
            cluster.kill(i)

        _restart(cluster, out)
        out("")
        out("6. Every value, compared with before the kill:")
        failures = 0
        for i in range(3):
            after = _view(cluster, i)
            for key in KEYS:
                same = after[key] == before[key]
                failures += not same
                mark = "intact" if same else f"DIFFERENT (was {before[key]!r})"
                out(f"   node-{i + 1} {key:13} {after[key]!r:40} {mark}")
        out("")
        if failures:
            out(f"{failures} values did not survive the restart.")
            return 1
        out("Every acknowledged value survived the full-cluster kill -9.")
        return 0
