"""The one table every law runs over: each data type, the operations a user can do on it, and
what its merge must never lose.

States are only ever built through the public API, as riak_dt's tests do: a *history* is a random
sequence of operations on random replicas and of merges between replicas, and every state it
passes through is a candidate for the laws.  A replica only ever mutates its own state (as a
Replicator does), so the states of one history are mutually consistent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from max_register import MaxRegister  # a data type of one's own (samples/), held to the same laws

from thespian_dd import (
    DeltaReplicatedData,
    Flag,
    GCounter,
    GSet,
    LWWMap,
    LWWRegister,
    MVRegister,
    ORMap,
    ORMultiMap,
    ORSet,
    PNCounter,
    PNCounterMap,
    ReplicaId,
)
from thespian_dd.orset import dots_of

REPLICAS = (ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("b", 2))

Op = tuple[Any, ...]


def step_clock(current: int, value: Any) -> int:
    """A deterministic clock: Hypothesis must replay the same history the same way."""
    return current + 1


def fixed_clock(current: int, value: Any) -> int:
    """A clock that reuses one timestamp, to reach LWW full ties (same timestamp and writer)."""
    return 7


ELEMENTS = st.sampled_from([0, 1, 2, "x", "y", ("t", 1)])
SMALL = st.integers(0, 5)


def _orset_ops() -> st.SearchStrategy[Op]:
    return st.one_of(
        st.tuples(st.just("add"), ELEMENTS),
        st.tuples(st.just("remove"), ELEMENTS),
        st.tuples(st.just("clear")),
        st.tuples(st.just("add_all"), st.lists(ELEMENTS, max_size=3)),
    )


def _apply_method(state: Any, node: ReplicaId, op: Op) -> Any:
    return getattr(state, op[0])(node, *op[1:])


def _apply_lww(state: LWWRegister | None, node: ReplicaId, op: Op) -> LWWRegister:
    clock = fixed_clock if op[0] == "fixed" else step_clock
    if state is None:
        return LWWRegister.create(node, op[1], clock)
    return state.with_value(node, op[1], clock)


def _apply_ormap(state: ORMap, node: ReplicaId, op: Op) -> ORMap:
    kind, key = op[0], op[1]
    # The key's prefix fixes its value type: a key's type never changes.
    if kind == "remove":
        return state.remove(node, key)
    if kind == "count":
        return state.update(node, ("c", key), GCounter(), lambda c: c.increment(node, op[2]))
    if kind == "add":
        return state.update(node, ("s", key), ORSet(), lambda s: s.add(node, op[2]))
    if kind == "discard":
        return state.update(node, ("s", key), ORSet(), lambda s: s.remove(node, op[2]))
    if kind == "write":
        return state.update(
            node,
            ("r", key),
            LWWRegister(None, 0, node),
            lambda r: r.with_value(node, op[2], step_clock),
        )
    if kind == "flag":
        return state.update(node, ("f", key), Flag(), lambda f: f.switch_on(node))
    raise AssertionError(op)


_ORMAP_KEYS = st.sampled_from([("c", 0), ("c", 1), ("s", 0), ("s", 1), ("r", 0), ("f", 0)])


def _ormap_ops() -> st.SearchStrategy[Op]:
    return st.one_of(
        st.tuples(st.just("count"), st.integers(0, 1), SMALL),
        st.tuples(st.just("add"), st.integers(0, 1), ELEMENTS),
        st.tuples(st.just("discard"), st.integers(0, 1), ELEMENTS),
        st.tuples(st.just("write"), st.integers(0, 1), ELEMENTS),
        st.tuples(st.just("flag"), st.just(0)),
        st.tuples(st.just("remove"), _ORMAP_KEYS),
    )


def _lwwmap_ops() -> st.SearchStrategy[Op]:
    keys = st.sampled_from(["k0", "k1", "k2"])
    return st.one_of(
        st.tuples(st.just("put"), keys, ELEMENTS),
        st.tuples(st.just("remove"), keys),
    )


def _apply_lwwmap(state: LWWMap, node: ReplicaId, op: Op) -> LWWMap:
    if op[0] == "put":
        return state.put(node, op[1], op[2], step_clock)
    removed: LWWMap = state.remove(node, op[1])
    return removed


def _counter_map_ops() -> st.SearchStrategy[Op]:
    keys = st.sampled_from(["k0", "k1"])
    return st.one_of(
        st.tuples(st.just("increment"), keys, st.integers(-5, 5)),
        st.tuples(st.just("decrement"), keys, SMALL),
        st.tuples(st.just("remove"), keys),
    )


def _multimap_ops() -> st.SearchStrategy[Op]:
    keys = st.sampled_from(["k0", "k1"])
    return st.one_of(
        st.tuples(st.just("add_binding"), keys, ELEMENTS),
        st.tuples(st.just("remove_binding"), keys, ELEMENTS),
        st.tuples(st.just("put"), keys, st.lists(ELEMENTS, max_size=3)),
        st.tuples(st.just("remove"), keys),
    )


# -- what a merge must keep -----------------------------------------------------------------------


def _keeps_counter(a: Any, b: Any, m: Any) -> bool:
    return all(m.state.get(r, 0) >= n for r, n in a.state.items()) and m.value >= a.value


def _keeps_pncounter(a: PNCounter, b: PNCounter, m: PNCounter) -> bool:
    return _keeps_counter(a.p, b.p, m.p) and _keeps_counter(a.n, b.n, m.n)


def _keeps_dots(a: ORSet, b: ORSet, m: ORSet) -> bool:
    """Every element of ``a`` holding an add that ``b`` has not seen is in the merge."""
    return all(
        e in m.entries
        for e, held in a.entries.items()
        if any(d not in b.context for d in dots_of(held))
    )


def _keeps_lww(a: LWWRegister, b: LWWRegister, m: LWWRegister) -> bool:
    return (m.timestamp, m.node) >= (a.timestamp, a.node)


def _keeps_keys(a: ORMap, b: ORMap, m: ORMap) -> bool:
    """Every key of ``a`` holding an update that ``b`` has not seen is in the merge."""
    return all(
        key in m.versions
        for key, versions in a.versions.items()
        if any(d not in b.context for d in versions)
    )


@dataclass(frozen=True)
class Row:
    """One data type in the law table."""

    name: str
    zero: Callable[[], Any]
    ops: Callable[[], st.SearchStrategy[Op]]
    apply: Callable[[Any, ReplicaId, Op], Any]
    keeps: Callable[[Any, Any, Any], bool]
    # Whether an operation moves the state up; false only for writes with a clock that does not
    # advance (LWW with a fixed or reverse clock keeps the older write by design).
    inflationary: Callable[[Op], bool] = lambda op: True

    @property
    def has_deltas(self) -> bool:
        zero = self.zero()
        return zero is not None and isinstance(zero, DeltaReplicatedData)


ROWS = [
    Row(
        "GCounter",
        GCounter,
        lambda: st.tuples(st.just("increment"), SMALL),
        _apply_method,
        _keeps_counter,
    ),
    Row(
        "PNCounter",
        PNCounter,
        lambda: st.one_of(
            st.tuples(st.just("increment"), st.integers(-5, 5)),
            st.tuples(st.just("decrement"), st.integers(-5, 5)),
        ),
        _apply_method,
        _keeps_pncounter,
    ),
    Row(
        "GSet",
        GSet,
        lambda: st.tuples(st.just("add"), ELEMENTS),
        _apply_method,
        lambda a, b, m: a.value <= m.value,
    ),
    Row("ORSet", ORSet, _orset_ops, _apply_method, _keeps_dots),
    Row(
        "Flag",
        Flag,
        lambda: st.tuples(st.just("switch_on")),
        _apply_method,
        lambda a, b, m: m.value >= a.value,
    ),
    Row(
        "LWWRegister",
        # An LWWRegister has no empty state: a replica's first write creates it.
        lambda: None,
        lambda: st.tuples(st.sampled_from(["step", "step", "fixed"]), ELEMENTS),
        _apply_lww,
        _keeps_lww,
        inflationary=lambda op: op[0] != "fixed",
    ),
    Row(
        "MVRegister",
        MVRegister,
        lambda: st.one_of(st.tuples(st.just("assign"), ELEMENTS), st.tuples(st.just("clear"))),
        _apply_method,
        lambda a, b, m: _keeps_dots(a.writes, b.writes, m.writes),
    ),
    Row(
        "ORMap",
        ORMap,
        _ormap_ops,
        _apply_ormap,
        _keeps_keys,
    ),
    Row(
        "LWWMap",
        LWWMap,
        _lwwmap_ops,
        _apply_lwwmap,
        lambda a, b, m: _keeps_keys(a.underlying, b.underlying, m.underlying),
    ),
    Row(
        "PNCounterMap",
        PNCounterMap,
        _counter_map_ops,
        _apply_method,
        lambda a, b, m: _keeps_keys(a.underlying, b.underlying, m.underlying),
    ),
    Row(
        "ORMultiMap",
        ORMultiMap,
        _multimap_ops,
        _apply_method,
        lambda a, b, m: _keeps_keys(a.underlying, b.underlying, m.underlying),
    ),
]
ROWS.append(
    Row(
        "MaxRegister",
        MaxRegister,
        lambda: st.tuples(st.just("raise_to"), st.integers(-3, 10)),
        _apply_method,
        lambda a, b, m: m.value >= a.value,
    )
)
ROW_IDS = [row.name for row in ROWS]


@dataclass
class Snapshot:
    """A state some replica held at some point of a history."""

    owner: int
    state: Any


@st.composite
def histories(draw: st.DrawFn, row: Row, max_steps: int = 12) -> list[Snapshot]:
    """Every state that a random history of ``row``'s type passes through (at least one)."""
    states: list[Any] = [row.zero() for _ in REPLICAS]
    snapshots: list[Snapshot] = []
    for _ in range(draw(st.integers(1, max_steps))):
        i = draw(st.integers(0, len(REPLICAS) - 1))
        if draw(st.integers(0, 3)) == 0:
            j = draw(st.integers(0, len(REPLICAS) - 1))
            if states[j] is None:
                continue
            states[i] = states[j] if states[i] is None else states[i].merge(states[j])
        else:
            new = row.apply(states[i], REPLICAS[i], draw(row.ops()))
            states[i] = new.reset_delta() if isinstance(new, DeltaReplicatedData) else new
        snapshots.append(Snapshot(i, states[i]))
    if not snapshots:
        i = 0
        states[i] = row.apply(states[i], REPLICAS[i], draw(row.ops()))
        snapshots.append(Snapshot(i, states[i]))
    return snapshots


@st.composite
def states_of(draw: st.DrawFn, row: Row, n: int) -> list[Any]:
    """``n`` states (not necessarily distinct) of one random history of ``row``'s type."""
    snapshots = draw(histories(row))
    return [draw(st.sampled_from(snapshots)).state for _ in range(n)]
