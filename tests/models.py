"""Reference models: for every data type, a deliberately simple, obviously correct account of what
its value must be, and how each operation the public API offers changes it.

A replica's model is the set of *events* it knows; merging two replicas is the union of their
sets.  Every event carries a tag no other event has (a counter of the whole history), so nothing
here can confuse two writes, which is the very thing the real types must get right:

- counters: the increments themselves (``("inc", tag, actor, side, amount)``); the value is
  their sum;
- sets: adds of an element under a tag, and tombstones of the tags a remove saw; an element is
  present while one of its tags is not tombstoned (add wins, as in the ORSet);
- multi-value register: writes, each with the tags of the writes it overwrote; the value is
  every written value no write has seen;
- last-writer-wins register: writes with their timestamp and writer; the greatest wins;
- maps: updates of a key, each carrying the key's events as its replica knew them after the
  update, and tombstones of the updates a later update or remove saw; a key's value is the union
  of the events of its updates that no one has tombstoned.

An operation returns the events it adds (or None when the real type leaves the state as it is),
computed from the replica's own events only.  :mod:`test_models` drives the real types and these
models side by side and compares their values after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from thespian_dd import (
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
from thespian_dd._canonical import encode_tree

Events = frozenset[tuple[Any, ...]]
NO_VALUE = ("no value",)  # an MVRegister clear: a write of nothing


class Tags:
    """Tags no two events share, in the order they were made."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        self.last += 1
        return self.last


# -- values of event sets ------------------------------------------------------------------------


def tombstoned(events: Iterable[tuple[Any, ...]]) -> set[int]:
    return {e[1] for e in events if e[0] == "rm"}


def counter_value(events: Events) -> int:
    return sum(e[4] if e[3] == "+" else -e[4] for e in events if e[0] == "inc")


def set_value(events: Events) -> frozenset[Any]:
    dead = tombstoned(events)
    return frozenset(e[3] for e in events if e[0] == "add" and e[1] not in dead)


def live_tags(events: Events, element: Any) -> set[int]:
    dead = tombstoned(events)
    return {e[1] for e in events if e[0] == "add" and e[3] == element and e[1] not in dead}


def flag_value(events: Events) -> bool:
    return any(e[0] == "on" for e in events)


def lww_order(write: tuple[Any, ...]) -> tuple[int, ReplicaId, bytes]:
    _, _, timestamp, writer, value = write
    return (timestamp, writer, encode_tree(value))


def lww_winner(events: Events) -> tuple[Any, ...] | None:
    writes = [e for e in events if e[0] == "lww"]
    return max(writes, key=lww_order) if writes else None


def lww_value(events: Events) -> Any:
    winner = lww_winner(events)
    return None if winner is None else winner[4]


def mv_live(events: Events) -> list[tuple[Any, ...]]:
    """The writes of a value that no write has seen."""
    writes = [e for e in events if e[0] == "mv"]
    seen = set().union(*(e[3] for e in writes))
    return [e for e in writes if e[1] not in seen and e[2] is not NO_VALUE]


def mv_value(events: Events) -> frozenset[Any]:
    return frozenset(e[2] for e in mv_live(events))


def map_live(events: Events, key: Any) -> list[tuple[Any, ...]]:
    dead = tombstoned(events)
    return [e for e in events if e[0] == "upd" and e[2] == key and e[1] not in dead]


def map_current(events: Events, key: Any) -> Events:
    """The events of ``key`` as a replica knowing ``events`` sees them (empty: no such key)."""
    return frozenset().union(*(e[3] for e in map_live(events, key)))


def map_value(events: Events, value_of: Callable[[Any], Callable[[Events], Any]]) -> dict[Any, Any]:
    dead = tombstoned(events)
    keys = {e[2] for e in events if e[0] == "upd" and e[1] not in dead}
    return {key: value_of(key)(map_current(events, key)) for key in keys}


# -- operations: each returns (real, events added); real None means "unchanged" ----------------


@dataclass(frozen=True)
class Op:
    """One operation of the public API on a real value and on its model.

    ``apply(tags, real, events, actor, arg)`` returns the new real value and the events the
    operation adds, or raises ``ValueError`` where the type refuses it.  ``rebuild``: the
    operation returns a value built anew instead of changing the one it is given (a refusal is
    then the right answer, unless nothing is lost by it).
    """

    name: str
    apply: Callable[[Tags, Any, Events, ReplicaId, int], tuple[Any, Events]]
    rebuild: bool = False


ELEMENTS = ("x", "y", 0, 1, ("t", 2))


def _element(arg: int) -> Any:
    return ELEMENTS[arg % len(ELEMENTS)]


def _orset_add(tags: Tags, events: Events, actor: ReplicaId, elements: Iterable[Any]) -> Events:
    added: set[tuple[Any, ...]] = set()
    for element in elements:
        # An add replaces the element's earlier adds (as the ORSet does); the value is the same.
        added |= {("rm", t) for t in live_tags(events | added, element)}
        added.add(("add", tags(), actor, element))
    return frozenset(added)


def _orset_remove(events: Events, elements: Iterable[Any]) -> Events:
    return frozenset(("rm", t) for e in elements for t in live_tags(events, e))


def _orset_clear(events: Events) -> Events:
    dead = tombstoned(events)
    return frozenset(("rm", e[1]) for e in events if e[0] == "add" and e[1] not in dead)


def _orset_ops() -> list[Op]:
    def add(tags: Tags, s: ORSet, ev: Events, actor: ReplicaId, arg: int) -> tuple[Any, Events]:
        return s.add(actor, _element(arg)), _orset_add(tags, ev, actor, [_element(arg)])

    def add_all(tags: Tags, s: ORSet, ev: Events, actor: ReplicaId, arg: int) -> tuple[Any, Events]:
        elements = [_element(arg), _element(arg // 3 + 1), _element(arg)][: arg % 3 + 1]
        return s.add_all(actor, elements), _orset_add(tags, ev, actor, elements)

    def remove(tags: Tags, s: ORSet, ev: Events, actor: ReplicaId, arg: int) -> tuple[Any, Events]:
        return s.remove(actor, _element(arg)), _orset_remove(ev, [_element(arg)])

    def clear(tags: Tags, s: ORSet, ev: Events, actor: ReplicaId, arg: int) -> tuple[Any, Events]:
        return s.clear(actor), _orset_clear(ev)

    def rebuild(tags: Tags, s: ORSet, ev: Events, actor: ReplicaId, arg: int) -> tuple[Any, Events]:
        # Not through the value given: a fresh set holding one element.
        return ORSet().add(actor, _element(arg)), _orset_add(tags, ev, actor, [_element(arg)])

    return [
        Op("add", add),
        Op("add_all", add_all),
        Op("remove", remove),
        Op("clear", clear),
        Op("rebuild", rebuild, rebuild=True),
    ]


def _counter_ops(pn: bool) -> list[Op]:
    def increment(tags: Tags, c: Any, ev: Events, actor: ReplicaId, arg: int) -> tuple[Any, Events]:
        n = arg % 4
        return c.increment(actor, n), frozenset({("inc", tags(), actor, "+", n)} if n else ())

    def decrement(tags: Tags, c: Any, ev: Events, actor: ReplicaId, arg: int) -> tuple[Any, Events]:
        n = arg % 3 + 1
        return c.decrement(actor, n), frozenset({("inc", tags(), actor, "-", n)})

    return [Op("increment", increment), *([Op("decrement", decrement)] if pn else [])]


def _gset_ops() -> list[Op]:
    def add(tags: Tags, s: GSet, ev: Events, actor: ReplicaId, arg: int) -> tuple[Any, Events]:
        return s.add(actor, _element(arg)), frozenset({("add", tags(), actor, _element(arg))})

    return [Op("add", add)]


def _flag_ops() -> list[Op]:
    def switch_on(
        tags: Tags, f: Flag, ev: Events, actor: ReplicaId, arg: int
    ) -> tuple[Any, Events]:
        return f.switch_on(actor), frozenset({("on", tags())})

    return [Op("switch_on", switch_on)]


def step_clock(current: int, value: Any) -> int:
    return current + 1


def fixed_clock(current: int, value: Any) -> int:
    """Always 7: reaches full ties (same timestamp and writer), and writes that lose."""
    return 7


def lww_timestamp(events: Events) -> int:
    winner = lww_winner(events)
    return 0 if winner is None else winner[2]


def _lww_write(clock: Callable[[int, Any], int]) -> Callable[..., tuple[Any, Events]]:
    def write(tags: Tags, r: Any, ev: Events, actor: ReplicaId, arg: int) -> tuple[Any, Events]:
        value = _element(arg)
        timestamp = clock(lww_timestamp(ev), value)
        new = (
            LWWRegister.create(actor, value, clock)
            if r is None
            else r.with_value(actor, value, clock)
        )
        assert new.timestamp == timestamp, (new, timestamp)
        return new, frozenset({("lww", tags(), timestamp, actor, value)})

    return write


def _lww_ops() -> list[Op]:
    # A write with the fixed clock can lose to the current one: the Replicator refuses it.
    return [Op("write", _lww_write(step_clock)), Op("write_fixed", _lww_write(fixed_clock), True)]


def _mv_ops() -> list[Op]:
    def write(ev: Events, value: Any, tags: Tags) -> Events:
        # A write sees the values it overwrites (the ones the replica holds).
        seen = frozenset(e[1] for e in mv_live(ev))
        return frozenset({("mv", tags(), value, seen)})

    def assign(tags: Tags, r: MVRegister, ev: Events, actor: ReplicaId, arg: int) -> Any:
        return r.assign(actor, _element(arg)), write(ev, _element(arg), tags)

    def clear(tags: Tags, r: MVRegister, ev: Events, actor: ReplicaId, arg: int) -> Any:
        return r.clear(actor), write(ev, NO_VALUE, tags)

    def rebuild(tags: Tags, r: MVRegister, ev: Events, actor: ReplicaId, arg: int) -> Any:
        return MVRegister().assign(actor, _element(arg)), write(ev, _element(arg), tags)

    return [Op("assign", assign), Op("clear", clear), Op("rebuild", rebuild, rebuild=True)]


# -- maps ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nested:
    """A value type under map keys: its empty value, its operations, and its model's value."""

    empty: Callable[[ReplicaId], Any]
    ops: list[Op]
    value: Callable[[Events], Any]


NESTED = {
    "c": Nested(lambda _: GCounter(), _counter_ops(pn=False), counter_value),
    "p": Nested(lambda _: PNCounter(), _counter_ops(pn=True), counter_value),
    "s": Nested(lambda _: ORSet(), _orset_ops(), set_value),
    "v": Nested(lambda _: MVRegister(), _mv_ops(), mv_value),
    "f": Nested(lambda _: Flag(), _flag_ops(), flag_value),
    # The LWWMap's way: a key's first write starts from timestamp 0.
    "r": Nested(lambda node: LWWRegister(None, 0, node), _lww_ops()[:1], lww_value),
}


def _map_event(tags: Tags, ev: Events, key: Any, nested: Events) -> Events:
    """An update of ``key`` to ``nested``: it replaces every update of the key it saw."""
    seen = {("rm", e[1]) for e in map_live(ev, key)}
    return frozenset({*seen, ("upd", tags(), key, nested)})


def _map_update(
    tags: Tags, ev: Events, actor: ReplicaId, key: Any, op: Op, arg: int, update: Callable[..., Any]
) -> tuple[Any, Events]:
    """Update ``key`` with the nested ``op``: the real map through ``update(modify)``, the model
    as a new update event carrying the key's events."""
    current = map_current(ev, key)
    added: list[Events] = []

    def modify(value: Any) -> Any:
        new, events = op.apply(tags, value, current, actor, arg)
        # A value rebuilt equal to the one given writes nothing (see test_models).
        added.append(frozenset() if op.rebuild and new == value else events)
        return new

    real = update(modify)
    return real, _map_event(tags, ev, key, current | added[0])


def _map_remove(ev: Events, key: Any) -> Events:
    return frozenset(("rm", e[1]) for e in map_live(ev, key))


ORMAP_KEYS: tuple[tuple[str, int], ...] = (
    ("c", 0),
    ("s", 0),
    ("s", 1),
    ("p", 0),
    ("v", 0),
    ("r", 0),
    ("f", 0),
    ("m", 0),
)


def _inner_map() -> Nested:
    """An ORMap of ORSets, under the key ``("m", 0)`` of the ORMap row: nested map updates."""

    def op(inner_key: str, nested_op: Op) -> Op:
        def apply(tags: Tags, m: ORMap, ev: Events, actor: ReplicaId, arg: int) -> Any:
            return _map_update(
                tags,
                ev,
                actor,
                inner_key,
                nested_op,
                arg,
                lambda modify: m.update(actor, inner_key, ORSet(), modify),
            )

        return Op(f"{inner_key}.{nested_op.name}", apply, nested_op.rebuild)

    def remove(tags: Tags, m: ORMap, ev: Events, actor: ReplicaId, arg: int) -> Any:
        key = "a" if arg % 2 else "b"
        return m.remove(actor, key), _map_remove(ev, key)

    ops = [op(k, o) for k in ("a", "b") for o in _orset_ops()]
    return Nested(
        lambda _: ORMap(),
        [*ops, Op("remove", remove)],
        lambda ev: map_value(ev, lambda _: set_value),
    )


NESTED["m"] = _inner_map()


def _key_op(key: Any, nested: Nested, nested_op: Op) -> Op:
    """``nested_op`` on the value of ``key`` of an ORMap."""

    def apply(tags: Tags, m: ORMap, ev: Events, actor: ReplicaId, arg: int) -> Any:
        def update(modify: Callable[[Any], Any]) -> Any:
            return m.update(actor, key, nested.empty(actor), modify)

        return _map_update(tags, ev, actor, key, nested_op, arg, update)

    return Op(f"{key}.{nested_op.name}", apply, nested_op.rebuild)


def _ormap_ops() -> list[Op]:
    ops = [_key_op(key, NESTED[key[0]], op) for key in ORMAP_KEYS for op in NESTED[key[0]].ops]

    def remove(tags: Tags, m: ORMap, ev: Events, actor: ReplicaId, arg: int) -> Any:
        key = ORMAP_KEYS[arg % len(ORMAP_KEYS)]
        return m.remove(actor, key), _map_remove(ev, key)

    def rebuild(tags: Tags, m: ORMap, ev: Events, actor: ReplicaId, arg: int) -> Any:
        # A whole map built anew with one key, instead of an update of the map given.
        return _map_update(
            tags,
            frozenset(),
            actor,
            ("s", 0),
            NESTED["s"].ops[0],
            arg,
            lambda modify: ORMap().update(actor, ("s", 0), ORSet(), modify),
        )

    return [*ops, Op("remove", remove), Op("remove", remove), Op("rebuild", rebuild, True)]


def _backed_ops(kind: str) -> list[Op]:
    """The operations of LWWMap (``r``), PNCounterMap (``p``) and ORMultiMap (``s``)."""
    keys = ("k0", "k1")

    def key_of(arg: int) -> str:
        return keys[arg % 2]

    def remove(tags: Tags, m: Any, ev: Events, actor: ReplicaId, arg: int) -> Any:
        return m.remove(actor, key_of(arg)), _map_remove(ev, key_of(arg))

    def update(nested: Callable[[Tags, Events, ReplicaId, int], Events], call: Any) -> Any:
        """An operation of the specialised map, and the nested events it adds to its key."""

        def apply(tags: Tags, m: Any, ev: Events, actor: ReplicaId, arg: int) -> Any:
            key, arg = key_of(arg), arg // 2
            real = call(m, actor, key, arg)
            current = map_current(ev, key)
            return real, _map_event(tags, ev, key, current | nested(tags, current, actor, arg))

        return apply

    if kind == "r":

        def write(tags: Tags, cur: Events, actor: ReplicaId, arg: int) -> Events:
            value = _element(arg)
            return frozenset({("lww", tags(), lww_timestamp(cur) + 1, actor, value)})

        return [
            Op("put", update(write, lambda m, a, k, arg: m.put(a, k, _element(arg), step_clock))),
            Op("remove", remove),
        ]
    if kind == "p":

        def inc(tags: Tags, cur: Events, actor: ReplicaId, arg: int) -> Events:
            return frozenset({("inc", tags(), actor, "+", arg % 4)} if arg % 4 else ())

        def dec(tags: Tags, cur: Events, actor: ReplicaId, arg: int) -> Events:
            return frozenset({("inc", tags(), actor, "-", arg % 3 + 1)})

        return [
            Op("increment", update(inc, lambda m, a, k, arg: m.increment(a, k, arg % 4))),
            Op("decrement", update(dec, lambda m, a, k, arg: m.decrement(a, k, arg % 3 + 1))),
            Op("remove", remove),
        ]

    def add_binding(tags: Tags, cur: Events, actor: ReplicaId, arg: int) -> Events:
        return _orset_add(tags, cur, actor, [_element(arg)])

    def remove_binding(tags: Tags, m: ORMultiMap, ev: Events, actor: ReplicaId, arg: int) -> Any:
        key, element = key_of(arg), _element(arg // 2)
        real = m.remove_binding(actor, key, element)
        current = map_current(ev, key)
        if element not in set_value(current):
            return real, frozenset()  # nothing to remove: the map is left as it is
        nested = current | _orset_remove(current, [element])
        added = _map_event(tags, ev, key, nested)
        if not set_value(nested):
            added |= _map_remove(ev | added, key)  # its last value: the key goes
        return real, added

    def put_values(arg: int) -> list[Any]:
        return [_element(arg + i) for i in range(arg % 3)]

    def put(tags: Tags, m: ORMultiMap, ev: Events, actor: ReplicaId, arg: int) -> Any:
        key, values = key_of(arg), put_values(arg // 2)
        real = m.put(actor, key, values)
        if not values:
            return real, _map_remove(ev, key)
        current = map_current(ev, key)
        cleared = current | _orset_clear(current)
        return real, _map_event(tags, ev, key, cleared | _orset_add(tags, cleared, actor, values))

    return [
        Op(
            "add_binding",
            update(add_binding, lambda m, a, k, arg: m.add_binding(a, k, _element(arg))),
        ),
        Op("remove_binding", remove_binding),
        Op("put", put),
        Op("remove", remove),
    ]


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """One data type: its empty value (None: created by its first write), its operations, and
    the value its events stand for."""

    name: str
    zero: Callable[[], Any]
    ops: list[Op]
    value: Callable[[Events], Any]


def _ormap_value(key: Any) -> Callable[[Events], Any]:
    return NESTED[key[0]].value


MODELS = [
    Model("GCounter", GCounter, _counter_ops(pn=False), counter_value),
    Model("PNCounter", PNCounter, _counter_ops(pn=True), counter_value),
    Model("GSet", GSet, _gset_ops(), lambda ev: frozenset(e[3] for e in ev if e[0] == "add")),
    Model("ORSet", ORSet, _orset_ops(), set_value),
    Model("Flag", Flag, _flag_ops(), flag_value),
    Model("LWWRegister", lambda: None, _lww_ops(), lww_value),
    Model("MVRegister", MVRegister, _mv_ops(), mv_value),
    Model("ORMap", ORMap, _ormap_ops(), lambda ev: map_value(ev, _ormap_value)),
    Model("LWWMap", LWWMap, _backed_ops("r"), lambda ev: map_value(ev, lambda _: lww_value)),
    Model(
        "PNCounterMap",
        PNCounterMap,
        _backed_ops("p"),
        lambda ev: map_value(ev, lambda _: counter_value),
    ),
    Model(
        "ORMultiMap", ORMultiMap, _backed_ops("s"), lambda ev: map_value(ev, lambda _: set_value)
    ),
]
