"""ReplicaId and the causal context."""

from __future__ import annotations

import pickle

import pytest

from thespian_dd import ReplicaId
from thespian_dd.data import CausalContext

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
