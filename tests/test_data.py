"""ReplicaId and the causal context."""

from __future__ import annotations

import pickle
from collections.abc import Hashable, Mapping

import pytest
from crdt_table import REPLICAS, ROWS, states_of
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd import ORSet, ReplicaId
from thespian_dd.data import CausalContext, Dot
from thespian_dd.orset import Held, dots_of

B, C = ReplicaId("b", 1), ReplicaId("c", 1)
A = ReplicaId("a", 1)


def test_replica_ids_are_ordered_by_node_then_incarnation() -> None:
    ids = [ReplicaId("b", 1), ReplicaId("a", 10), ReplicaId("a", 2)]
    assert sorted(ids) == [ReplicaId("a", 2), ReplicaId("a", 10), ReplicaId("b", 1)]


def test_replica_ids_are_hashable_picklable_and_printable() -> None:
    assert {A: 1}[ReplicaId("a", 1)] == 1
    assert pickle.loads(pickle.dumps(A)) == A
    assert type(pickle.loads(pickle.dumps(A))) is ReplicaId
    assert str(A) == "a#1"


@pytest.mark.parametrize("args", [("", 1), (None, 1), ("a", -1), ("a", "1"), ("a", True)])
def test_replica_ids_refuse_bad_fields(args: tuple[object, object]) -> None:
    with pytest.raises(TypeError, match="ReplicaId"):
        ReplicaId(*args)  # type: ignore[arg-type]


def test_a_context_compacts_dots_into_runs() -> None:
    ctx = CausalContext.of_dots([(A, 2), (A, 3)])
    assert ctx.ranges == {A: (1, 3)}
    assert not ctx.is_contiguous()
    ctx = ctx.add([(A, 1)])
    assert ctx == CausalContext.of_vv({A: 3})
    assert ctx.is_contiguous()
    assert (A, 3) in ctx
    assert (A, 4) not in ctx
    assert ctx.next_dot(A) == (A, 4)


def test_runs_with_gaps_answer_membership_exactly() -> None:
    ctx = CausalContext.of_dots([(A, 1), (A, 2), (A, 5), (A, 9), (A, 10)])
    assert ctx.ranges == {A: (0, 2, 4, 5, 8, 10)}
    assert [n for n in range(12) if (A, n) in ctx] == [1, 2, 5, 9, 10]


def test_a_floor_reserves_counters_without_claiming_them_seen() -> None:
    ctx = CausalContext.of_vv({A: 2}).merge(CausalContext({}, {A: 7}))
    assert (A, 5) not in ctx
    assert ctx.next_dot(A) == (A, 8)
    assert ctx.add([(A, 8)]).floor == {}  # a floor below a seen dot is dropped


def test_reserved_keeps_every_counter_and_sees_none() -> None:
    ctx = CausalContext.of_dots([(A, 1), (A, 2), (A, 5), (B, 3)])
    reserved = ctx.reserved()
    assert reserved.ranges == {}
    assert reserved.next_dot(A) == (A, 6)
    assert reserved.next_dot(B) == (B, 4)
    assert ctx.merge(reserved) is ctx  # nothing above what ctx has seen


def test_includes_is_exactly_merge_changing_nothing() -> None:
    ctx = CausalContext.of_dots([(A, 1), (A, 2), (A, 5), (A, 6), (B, 3)])
    cases = [
        CausalContext.of_dots([(A, 5)]),
        CausalContext.of_dots([(A, 1), (A, 6)]),
        CausalContext.of_dots([(A, 3)]),
        CausalContext.of_dots([(A, 4), (A, 5)]),
        CausalContext.of_dots([(B, 1)]),
        CausalContext({}, {A: 6}),
        CausalContext({}, {A: 7}),
        CausalContext({}, {C: 1}),
        CausalContext(),
        ctx,
    ]
    for other in cases:
        assert ctx.includes(other) == (ctx.merge(other) == ctx), other


def test_a_context_is_immutable_and_equal_by_content() -> None:
    ctx = CausalContext.of_vv({A: 1})
    assert ctx == CausalContext.of_dots([(A, 1)])
    assert pickle.loads(pickle.dumps(ctx)) == ctx
    with pytest.raises(AttributeError):
        ctx.ranges = {}


# The merge of dot stores: its fast path (version-vector contexts) and its key-by-key path
# against the rule itself, dot by dot, on stores drawn freely: several dots per key, keys the
# two sides share by the same object, by equal objects or with other dots, keys one side holds
# only, contexts with gaps and floors, dots outside their own side's context (a state built by
# hand), and the states and deltas of ORSet histories.

DOTS = st.tuples(st.sampled_from(REPLICAS), st.integers(1, 6))
Store = dict[Hashable, frozenset[Dot]]


def _by_the_rule(a: Store, a_ctx: CausalContext, b: Store, b_ctx: CausalContext) -> Store:
    """A dot survives when both sides hold it, or one holds it and the other has not seen it."""
    out = {}
    for key in a.keys() | b.keys():
        mine, theirs = a.get(key, frozenset()), b.get(key, frozenset())
        kept = (
            (mine & theirs)
            | {d for d in mine - theirs if d not in b_ctx}
            | {d for d in theirs - mine if d not in a_ctx}
        )
        if kept:
            out[key] = kept
    return out


@st.composite
def _context_of(draw: st.DrawFn, store: Store) -> CausalContext:
    held = {d for dots in store.values() for d in dots}
    if draw(st.booleans()):  # dropped from the context: a state built by hand
        held -= draw(st.frozensets(st.sampled_from(sorted(held)))) if held else set()
    extra = draw(st.frozensets(DOTS, max_size=6))
    floor = draw(st.dictionaries(st.sampled_from(REPLICAS), st.integers(1, 9), max_size=2))
    if draw(st.booleans()):  # a version vector: every dot up to the top of each replica
        tops: dict[ReplicaId, int] = {}
        for r, n in held | extra:
            tops[r] = max(n, tops.get(r, 0))
        return CausalContext({r: (0, n) for r, n in tops.items()}, floor)
    return CausalContext.of_dots(held | extra).merge(CausalContext({}, floor))


@st.composite
def _store_pairs(draw: st.DrawFn) -> tuple[Store, CausalContext, Store, CausalContext]:
    keys: st.SearchStrategy[Hashable] = st.integers(0, 7)
    stores = st.dictionaries(keys, st.frozensets(DOTS, min_size=1, max_size=3))
    a, b = draw(stores), draw(stores)
    for key in draw(st.frozensets(st.sampled_from(list(a)))) if a else ():
        how = draw(st.sampled_from(["same object", "equal object", "absent"]))
        if how == "absent":
            b.pop(key, None)
        else:
            b[key] = a[key] if how == "same object" else frozenset((r, n) for r, n in a[key])
    return a, draw(_context_of(a)), b, draw(_context_of(b))


def _held(store: Store) -> dict[Hashable, Held]:
    """``store`` as an ORSet holds it: an element's one dot as the dot itself."""
    return {
        key: next(iter(dots)) if len(dots) == 1 else dots for key, dots in store.items() if dots
    }


def _sets(entries: Mapping[Hashable, Held]) -> Store:
    return {key: frozenset(dots_of(held)) for key, held in entries.items()}


def _merges(a: Store, a_ctx: CausalContext, b: Store, b_ctx: CausalContext) -> list[Store]:
    """The merge of sets holding both stores, each way round, as frozensets."""
    left, right = ORSet(_held(a), a_ctx), ORSet(_held(b), b_ctx)
    return [_sets(left.merge(right).entries), _sets(right.merge(left).entries)]


@given(pair=_store_pairs())
def test_dot_store_merge_follows_the_rule_dot_by_dot(
    pair: tuple[Store, CausalContext, Store, CausalContext],
) -> None:
    expected = _by_the_rule(*pair)
    assert _merges(*pair) == [expected, expected]
    a, a_ctx, b, b_ctx = pair
    assert _merges(b, b_ctx, a, a_ctx) == [expected, expected]


@given(data=st.data())
def test_dot_store_merge_follows_the_rule_on_orset_states_and_deltas(data: st.DataObject) -> None:
    row = next(row for row in ROWS if row.name == "ORSet")
    x, y = data.draw(states_of(row, 2))
    changed = row.apply(y, REPLICAS[0], data.draw(row.ops()))
    for s, t in [(x, y), (x, changed), (x, changed.delta or changed), (changed.delta or y, y)]:
        expected = _by_the_rule(_sets(s.entries), s.context, _sets(t.entries), t.context)
        assert _merges(_sets(s.entries), s.context, _sets(t.entries), t.context) == [expected] * 2
        assert _sets(s.merge(t).entries) == expected


def test_dots_outside_a_hand_built_states_context_are_kept_as_the_rule_says() -> None:
    # Each side holds x by a dot of A above its own version vector (A: 1), so neither has seen
    # the other's: the rule keeps both, which states made through the API never need.
    context = CausalContext.of_vv({A: 1})
    a = ORSet({"x": (A, 3), "y": (A, 1)}, context)
    b = ORSet({"x": (A, 5), "y": (A, 1)}, context)
    expected = {"x": frozenset({(A, 3), (A, 5)}), "y": (A, 1)}
    assert a.merge(b).entries == expected
    assert b.merge(a).entries == expected


def test_a_set_merge_of_states_in_step_shares_their_dots() -> None:
    left = ORSet().add_all(A, range(10)).reset_delta()
    added = left.add(B, 10)
    assert added._by[A] is left._by[A]  # an update copies only the replicas it changes
    right = added.remove(B, 0).reset_delta()
    merged = left.merge(right)
    assert merged.value == frozenset(range(1, 11))
    assert merged._by[B] is right._by[B]  # left has seen none of B's dots: taken as it is
    again = right.merge(merged)
    assert again == right
    assert all(again._by[r] is right._by[r] for r in right._by)  # nothing new: kept as it is
