"""An Update applied (:mod:`thespian_dd._runtime.updates`), without processes: what ``modify``
returns is refused, before anything is applied, when the codec could not store or gossip it;
a counter made through its methods is known to be encodable without encoding it."""

from __future__ import annotations

import pytest

from thespian_dd import GCounter, PNCounter, ReplicaId, Update, codec
from thespian_dd._runtime.updates import modified
from thespian_dd.data import CausalContext

pytestmark = pytest.mark.timeout(60)

NODE = ReplicaId("n", 1)


def _add_three(counter: GCounter, node: ReplicaId) -> GCounter:
    return counter.increment(node, 3)


def _down_two(counter: PNCounter, node: ReplicaId) -> PNCounter:
    return counter.increment(node, 5).decrement(node, 2)


def _units_of_a_str(counter: GCounter, node: ReplicaId) -> GCounter:
    return GCounter.of_units(CausalContext({"not a replica": (0, 1)}))  # type: ignore[dict-item]


def _pn_of_a_str(counter: PNCounter, node: ReplicaId) -> PNCounter:
    return PNCounter(p=_units_of_a_str(GCounter(), node))


@pytest.mark.parametrize(
    ("initial", "modify", "value"),
    [(GCounter(), _add_three, 3), (PNCounter(), _down_two, 3)],
    ids=["GCounter", "PNCounter"],
)
def test_a_counter_is_applied_with_its_delta(initial: object, modify: object, value: int) -> None:
    current = GCounter().increment(ReplicaId("other", 1), 4) if type(initial) is GCounter else None
    new, shipped = modified(Update("k", initial, modify), current, NODE)  # type: ignore[arg-type]
    assert new.value == value + (4 if current is not None else 0)
    assert new.delta is None  # type: ignore[attr-defined]
    assert codec.decode(codec.encode(shipped)) == shipped


@pytest.mark.parametrize("modify", [_units_of_a_str, _pn_of_a_str], ids=["GCounter", "PNCounter"])
def test_a_counter_whose_units_name_something_else_is_refused_as_unencodable(
    modify: object,
) -> None:
    initial = GCounter() if modify is _units_of_a_str else PNCounter()
    with pytest.raises(ValueError, match="what modify returned cannot be encoded"):
        modified(Update("k", initial, modify), None, NODE)  # type: ignore[arg-type]
