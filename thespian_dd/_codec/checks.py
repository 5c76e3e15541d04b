"""The structural checks both formats' readers make, refusing a state with :class:`CodecError`
that names what is wrong."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from thespian_dd._canonical import CodecError
from thespian_dd.data import DotBased, ReplicatedData
from thespian_dd.ormap import ORMap, ORMapBacked


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise CodecError(f"malformed state: {what}")


def positive(n: Any, what: str) -> int:
    """``n``, which must be an int > 0 (a counter, a dot's number)."""
    expect(type(n) is int and n > 0, f"{what} must be an int > 0, not {n!r}")
    result: int = n
    return result


def ascending(items: list[Any]) -> bool:
    """Whether ``items`` are in strictly ascending order (sorted, each once)."""
    return all(a < b for a, b in pairwise(items))


def unknown_type(name: Any) -> CodecError:
    """The refusal of a value whose type this node does not know (both formats say it alike: an
    operator's inspect shows this line)."""
    return CodecError(
        f"unknown data type {name!r} (a data type of one's own must be registered on every "
        "node that reads it: name its module in the data_types setting)"
    )


def valid_marks(m: ORMap, key: Any, floor: ReplicatedData) -> ReplicatedData:
    """``floor``, the marks stored for ``key`` of ``m``: dots only, of the key's type, and
    stored only where they reserve more than the key's versions do."""
    expect(isinstance(floor, DotBased) and floor == floor.marks(), "marks reserve dots only")
    live = m.get(key)
    expect(live is None or type(live) is type(floor), "a key's marks share its type")
    expect(
        live is None or (floor.is_inflation_of(live.marks()) and floor != live.marks()),
        "marks are stored only where they reserve more than the key's versions",
    )
    return floor


def backed(
    cls: type[ORMapBacked], value_type: type[ReplicatedData], underlying: ORMap
) -> ReplicatedData:
    """A map backed by an ORMap (LWWMap, PNCounterMap, ORMultiMap) around ``underlying``, whose
    every value and mark must be a ``value_type``."""
    expect(
        all(type(v) is value_type for v in underlying._all_values())
        and all(type(v) is value_type for v in underlying.floors.values()),
        f"every {cls.__name__} value is a {value_type.__name__}",
    )
    value: ReplicatedData = cls(underlying)
    return value
