"""The demo: three replicas of a shop's shared state edit concurrently, partly cut off from each
other, then exchange deltas and full states and converge.

The replicas are values in this process; the Replicator (which runs them as real Thespian nodes
with a durable store) builds on exactly these merges.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from thespian_dd import DeltaReplicatedData, Flag, GCounter, LWWMap, ORMap, PNCounter, ReplicaId
from thespian_dd.codec import decode, digest, encode

__all__ = ["run_demo"]

NODES = [ReplicaId("node-1", 1), ReplicaId("node-2", 1), ReplicaId("node-3", 1)]


class _Replica:
    """One node's copy of every key, and the deltas it has not shipped yet."""

    def __init__(self, node: ReplicaId) -> None:
        self.node = node
        self.data: dict[str, Any] = {
            "cart": ORMap(),  # item -> PNCounter (quantity)
            "address": LWWMap(),  # field -> value, last writer wins
            "hits": GCounter(),
            "new-checkout": Flag(),
        }

    def update(self, key: str, modify: Callable[[Any, ReplicaId], Any]) -> None:
        self.data[key] = modify(self.data[key], self.node)

    def take_deltas(self) -> dict[str, Any]:
        """What to ship: each key's delta, or its whole state if the type has no deltas."""
        deltas = {}
        for key, value in self.data.items():
            if isinstance(value, DeltaReplicatedData):
                if value.delta is not None:
                    deltas[key] = value.delta
                self.data[key] = value.reset_delta()
            else:
                deltas[key] = value
        return deltas

    def receive(self, states: dict[str, Any]) -> None:
        for key, state in states.items():
            self.data[key] = self.data[key].merge(state)

    def show(self) -> str:
        cart = dict(sorted(self.data["cart"].value.items()))
        return (
            f"cart={cart} address={self.data['address'].value} "
            f"hits={self.data['hits'].value} new-checkout={self.data['new-checkout'].value}"
        )


def _add_item(item: str, qty: int) -> Callable[[Any, ReplicaId], Any]:
    return lambda cart, node: cart.update(node, item, PNCounter(), lambda c: c.increment(node, qty))


def _edit_concurrently(
    r1: _Replica, r2: _Replica, r3: _Replica, out: Callable[[str], object]
) -> None:
    out("")
    out("2. node-3 is cut off.  Meanwhile, concurrently:")
    out("   node-1 removes the apples and adds a pear; node-2 adds 3 apples and counts 5 hits;")
    out("   node-3 adds 1 apple, switches the new checkout on, and edits the address.")
    r1.update("cart", lambda cart, node: cart.remove(node, "apple"))
    r1.update("cart", _add_item("pear", 1))
    r1.update("address", lambda a, node: a.put(node, "city", "Lyon"))
    r2.update("cart", _add_item("apple", 3))
    r2.update("hits", lambda c, node: c.increment(node, 5))
    r3.update("cart", _add_item("apple", 1))
    r3.update("new-checkout", lambda f, node: f.switch_on(node))
    time.sleep(0.002)  # node-3's address write comes last on the wall clock, so it wins
    r3.update("address", lambda a, node: a.put(node, "city", "Paris"))
    for r in (r1, r2, r3):
        out(f"   {r.node}: {r.show()}")


def run_demo(out: Callable[[str], object]) -> None:
    started = time.perf_counter()
    r1, r2, r3 = (_Replica(n) for n in NODES)
    replicas = [r1, r2, r3]
    out("thespian_dd demo: three replicas of a shop's state (cart, address, hits, feature flag)")
    out("")
    out("1. Everyone starts with a cart of 2 apples (node-1 adds them, ships its delta).")
    r1.update("cart", _add_item("apple", 2))
    first = r1.take_deltas()
    r2.receive(first)
    r3.receive(first)
    for r in replicas:
        out(f"   {r.node}: {r.show()}")

    _edit_concurrently(r1, r2, r3, out)
    out("")
    out("3. node-1 and node-2 exchange deltas (node-3 still cut off):")
    d1, d2 = r1.take_deltas(), r2.take_deltas()
    r1.receive(d2)
    r2.receive(d1)
    for r in replicas:
        out(f"   {r.node}: {r.show()}")
    out("   The apples come back with node-2's concurrent add (an update wins over a remove")
    out("   it has not seen), carrying the quantity node-2 knew: 2 + 3 = 5.")

    out("")
    out("4. The partition heals: node-3 gets full states and ships its deltas.")
    d3 = r3.take_deltas()
    for r in (r1, r2):
        r.receive(d3)
    r3.receive(r1.data)
    for r in replicas:
        out(f"   {r.node}: {r.show()}")

    out("")
    out("5. Every replica holds the same state: equal digests, whatever order merges came in.")
    for key in r1.data:
        digests = {digest(r.data[key]).hex()[:16] for r in replicas}
        size = len(encode(r1.data[key]))
        same = "same" if len(digests) == 1 else "DIFFERENT"
        out(f"   {key:13} {same} digest {digests.pop()}  ({size} bytes encoded)")
        if decode(encode(r1.data[key])) != r1.data[key]:
            raise RuntimeError(f"{key} does not survive encoding")
    if any(r.show() != r1.show() for r in replicas):
        raise RuntimeError("the replicas did not converge")
    out("")
    out(f"Converged in {1000 * (time.perf_counter() - started):.1f} ms.")
