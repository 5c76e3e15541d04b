"""The laws every data type obeys, run over the whole table of tests/crdt_table.py.

A failure prints the history's states; pin any shrunk counterexample in test_regressions.py.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from crdt_table import REPLICAS, ROWS, Row, histories, states_of
from hypothesis import assume, given
from hypothesis import strategies as st

from thespian_dd import DeltaReplicatedData, RemovedNodePruning
from thespian_dd.codec import decode, digest, encode
from thespian_dd.data import DotBased


def _rows(rows: list[Row]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("row", rows, ids=[row.name for row in rows])


every_type = _rows(ROWS)
# Flag and LWWRegister have no deltas (as in Akka: their whole state is as small as a delta).
delta_types = _rows([row for row in ROWS if row.has_deltas])
# GSet, Flag and LWWRegister keep no per-replica slots (an LWW writer id is a tie-breaker that
# the next write replaces), so there is nothing to prune.
pruning_types = _rows([row for row in ROWS if isinstance(row.zero(), RemovedNodePruning)])
# Values whose changes are dots (sets, registers, counters, maps): they have marks.
dot_types = _rows([row for row in ROWS if isinstance(row.zero(), DotBased)])


@every_type
@given(data=st.data())
def test_merge_is_commutative(row: Row, data: st.DataObject) -> None:
    a, b = data.draw(states_of(row, 2))
    assert a.merge(b) == b.merge(a)


@every_type
@given(data=st.data())
def test_merge_is_associative(row: Row, data: st.DataObject) -> None:
    a, b, c = data.draw(states_of(row, 3))
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@every_type
@given(data=st.data())
def test_merge_is_idempotent(row: Row, data: st.DataObject) -> None:
    a, b = data.draw(states_of(row, 2))
    assert a.merge(a) == a
    ab = a.merge(b)
    assert ab.merge(b) == ab
    assert ab.merge(a) == ab


@every_type
@given(data=st.data())
def test_merge_never_loses_what_the_other_side_has_not_seen(row: Row, data: st.DataObject) -> None:
    a, b = data.draw(states_of(row, 2))
    assert row.keeps(a, b, a.merge(b))
    assert row.keeps(b, a, a.merge(b))


@every_type
@given(data=st.data())
def test_mutations_only_move_a_state_up(row: Row, data: st.DataObject) -> None:
    snapshot = data.draw(st.sampled_from(data.draw(histories(row))))
    op = data.draw(row.ops())
    assume(row.inflationary(op))
    new = row.apply(snapshot.state, REPLICAS[snapshot.owner], op)
    assert snapshot.state.merge(new) == _without_delta(new)
    # What the Replicator and the maps ask of an update (new dots only above the old ones).
    assert snapshot.state is None or new.is_inflation_of(snapshot.state)


@delta_types
@given(data=st.data())
def test_a_merge_keeps_the_pending_delta(row: Row, data: st.DataObject) -> None:
    """What this replica changed and has not shipped yet still has to be shipped."""
    snapshot = data.draw(st.sampled_from(data.draw(histories(row))))
    (other,) = data.draw(states_of(row, 1))
    changed = row.apply(
        snapshot.state.reset_delta(), REPLICAS[snapshot.owner], data.draw(row.ops())
    )
    assume(changed.delta is not None)
    assert changed.merge(other).delta == changed.delta
    assert changed.merge_delta(other).delta == changed.delta


@dot_types
@given(data=st.data())
def test_marks_reserve_every_dot_and_change_no_value(row: Row, data: st.DataObject) -> None:
    (a,) = data.draw(states_of(row, 1))
    marks = a.marks()
    assert marks.is_empty()
    assert marks.marks() == marks
    assert a.merge(marks) == a  # a value holds its marks...
    assert not marks.is_inflation_of(a) or a.is_empty()  # ...and its marks hold none of it


@delta_types
@given(data=st.data())
def test_a_delta_brings_the_old_state_to_the_new_one(row: Row, data: st.DataObject) -> None:
    snapshot = data.draw(st.sampled_from(data.draw(histories(row))))
    old = snapshot.state.reset_delta()
    new = old
    for op in data.draw(st.lists(row.ops(), min_size=1, max_size=4)):
        new = row.apply(new, REPLICAS[snapshot.owner], op)
    if new.delta is None:
        assert new == old
        return
    assert old.merge_delta(new.delta) == new.reset_delta()
    # A delta is a state of the same type: it merges, encodes and pickles like one.
    assert type(new.delta) is type(new)
    assert decode(encode(new.delta)) == new.delta


@pruning_types
@given(data=st.data())
def test_pruning_keeps_the_value(row: Row, data: st.DataObject) -> None:
    snapshot = data.draw(st.sampled_from(data.draw(histories(row))))
    state, owner = snapshot.state, REPLICAS[snapshot.owner]
    removable = sorted(state.modified_by_nodes() - {owner})
    if not removable:
        return
    removed = data.draw(st.sampled_from(removable))
    assert state.needs_pruning_from(removed)
    pruned = state.prune(removed, owner)
    assert pruned.value == state.value
    assert not pruned.needs_pruning_from(removed)
    assert removed not in pruned.modified_by_nodes()
    assert pruned.pruning_cleanup(removed) == pruned
    # The pruned state is still a state the owner can go on mutating.
    after = row.apply(pruned, owner, data.draw(row.ops()))
    assert not after.needs_pruning_from(removed)


@every_type
@given(data=st.data())
def test_codec_and_pickle_round_trip(row: Row, data: st.DataObject) -> None:
    (a,) = data.draw(states_of(row, 1))
    assert decode(encode(a)) == a
    assert pickle.loads(pickle.dumps(a)) == a
    assert encode(pickle.loads(pickle.dumps(a))) == encode(a)


@every_type
@given(data=st.data())
def test_digests_are_equal_exactly_when_states_are(row: Row, data: st.DataObject) -> None:
    a, b = data.draw(states_of(row, 2))
    for x, y in [(a, b), (a, a.merge(b)), (b, a.merge(b)), (a.merge(b), b.merge(a))]:
        assert (digest(x) == digest(y)) == (x == y)


def _without_delta(value: Any) -> Any:
    return value.reset_delta() if isinstance(value, DeltaReplicatedData) else value
