"""Quorum requests (Quorums, Pending), without processes: every request opens with its timer,
and a peer met while it is open is asked too (once per address; one that answered keeps its
answer); an answer counts once per peer, only from the address it was asked at, only while the
request is open; the timer closes it.

Also the majority levels with ``min_cap`` over a grid of N and caps, checked against the rule
messages.py states (tests/test_messages.py has Akka's worked examples; this covers every cell
of the grid, caps above N included).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd import ReadMajority, WriteMajority
from thespian_dd._runtime.protocol import RequestTimeout
from thespian_dd._runtime.quorums import Pending, Quorums
from thespian_dd.messages import GetFailure, ReplicationDeleteFailure, UpdateTimeout

pytestmark = pytest.mark.timeout(60)

PEERS = {"b": "address of b", "c": "address of c", "d": "address of d"}


def pending(needed: int, asked: dict[str, Any] | None = None, kind: str = "update") -> Pending:
    return Pending(
        kind, "client", "key", "request", needed, dict(PEERS if asked is None else asked)
    )


def quorums() -> tuple[Quorums, list[tuple[float, Any]]]:
    woken: list[tuple[float, Any]] = []
    return Quorums(lambda seconds, payload: woken.append((seconds, payload))), woken


# -- opening ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "needed"), [(0, 1), (0, 2), (1, 2), (1, 3), (3, 5), (2, 1)])
def test_every_request_opens_with_its_timer_even_one_its_peers_cannot_make_yet(
    asked: int, needed: int
) -> None:
    q, woken = quorums()
    p = pending(needed, {f"n{i}": f"address {i}" for i in range(asked)})
    q.open(p, 3.0)
    assert len(q) == 1
    assert woken == [(3.0, RequestTimeout(p.id_))]


def test_a_peer_met_while_a_request_is_open_is_asked_and_its_answer_counts() -> None:
    q, _ = quorums()
    short = pending(3, {"b": "address of b"})  # needs 2 peers, has asked 1
    q.open(short, 1.0)
    assert q.meet("b", "address of b") == []  # asked already, there
    assert q.meet("c", "address of c") == [short]
    assert short.asked == {"b": "address of b", "c": "address of c"}
    assert q.meet("c", "address of c") == []  # once
    assert q.answer(short.id_, "b", "address of b") is short
    assert not short.enough()
    assert q.answer(short.id_, "c", "address of c") is short
    assert short.enough()


def test_a_peer_met_at_a_new_address_is_asked_there_unless_it_answered() -> None:
    q, _ = quorums()
    p = pending(4)
    q.open(p, 1.0)
    assert q.answer(p.id_, "b", "address of b") is p
    assert q.meet("b", "new address of b") == []  # its answer stands
    assert q.meet("c", "new address of c") == [p]  # restarted before answering
    assert q.answer(p.id_, "c", "address of c") is None  # the old incarnation's answer
    assert q.answer(p.id_, "c", "new address of c") is p


def test_a_closed_request_meets_no_one() -> None:
    q, _ = quorums()
    p = pending(3, {})
    q.open(p, 1.0)
    q.close(p)
    assert q.meet("b", "address of b") == []


def test_each_request_has_its_own_id_and_timer() -> None:
    q, woken = quorums()
    one, two = pending(2), pending(3)
    assert one.id_ != two.id_
    q.open(one, 1.5)
    q.open(two, 4.0)
    assert woken == [(1.5, RequestTimeout(one.id_)), (4.0, RequestTimeout(two.id_))]
    assert len(q) == 2


# -- answers ---------------------------------------------------------------------------------------


def test_an_answer_counts_once_per_peer() -> None:
    q, _ = quorums()
    p = pending(4)
    q.open(p, 1.0)
    assert q.answer(p.id_, "b", "address of b") is p
    assert q.answer(p.id_, "b", "address of b") is None
    assert p.answered == {"b"}
    assert q.answer(p.id_, "c", "address of c") is p
    assert p.answered == {"b", "c"}


def test_an_answer_counts_only_from_the_address_the_peer_was_asked_at() -> None:
    q, _ = quorums()
    p = pending(2)
    q.open(p, 1.0)
    assert q.answer(p.id_, "b", "address of c") is None
    assert q.answer(p.id_, "b", "another address of b") is None
    assert q.answer(p.id_, "e", "address of e") is None  # not asked at all
    assert p.answered == set()
    assert not p.enough()


def test_answers_to_unknown_or_closed_requests_do_not_count() -> None:
    q, _ = quorums()
    p = pending(2)
    assert q.answer(p.id_, "b", "address of b") is None  # never opened
    q.open(p, 1.0)
    q.close(p)
    assert q.answer(p.id_, "b", "address of b") is None
    assert q.answer("no such request", "b", "address of b") is None
    assert p.answered == set()


@pytest.mark.parametrize("request_id", [None, 7, b"id", ("id",), ["id"], {"id": 1}])
def test_request_ids_that_are_not_str_are_ignored(request_id: object) -> None:
    q, _ = quorums()
    p = pending(2)
    q.open(p, 1.0)
    assert q.answer(request_id, "b", "address of b") is None
    assert p.answered == set()


def test_enough_counts_this_node_with_the_answers() -> None:
    p = pending(3)
    assert not p.enough()
    p.answered.add("b")
    assert not p.enough()
    p.answered.add("c")
    assert p.enough()
    assert pending(1, {}).enough()  # this node alone


def test_a_timer_closes_its_request_once() -> None:
    q, _ = quorums()
    p, other = pending(2), pending(2)
    q.open(p, 1.0)
    q.open(other, 1.0)
    assert q.timed_out(p.id_) is p
    assert q.timed_out(p.id_) is None
    assert len(q) == 1
    assert q.answer(p.id_, "b", "address of b") is None
    assert q.answer(other.id_, "b", "address of b") is other


def test_the_timer_of_a_closed_request_finds_nothing() -> None:
    q, _ = quorums()
    p = pending(2)
    q.open(p, 1.0)
    q.close(p)
    assert q.timed_out(p.id_) is None


def test_closing_twice_is_harmless() -> None:
    q, _ = quorums()
    p, other = pending(2), pending(2)
    q.open(p, 1.0)
    q.open(other, 1.0)
    q.close(p)
    q.close(p)
    assert len(q) == 1
    q.close(pending(2))  # never opened
    assert len(q) == 1


names = st.sampled_from(["b", "c", "d", "e"])
addresses = st.sampled_from(["address of b", "address of c", "address of d", "address of e"])


@given(
    needed=st.integers(1, 5),
    answers=st.lists(st.tuples(st.booleans(), names, addresses), max_size=20),
)
def test_answers_count_as_the_distinct_peers_that_answered_from_where_they_were_asked(
    needed: int, answers: list[tuple[bool, str, str]]
) -> None:
    """A reference model: the set of asked peers that answered at their own address; each
    answer counts iff it adds a peer to that set.  (``True``: the answer names this request.)"""
    q, _ = quorums()
    p, other = pending(needed), pending(1)
    q.open(p, 1.0)
    q.open(other, 1.0)
    model: set[str] = set()
    for to_p, name, address in answers:
        request = p if to_p else other
        counted = q.answer(request.id_, name, address)
        if request is p:
            counts = PEERS.get(name) == address and name not in model
            if counts:
                model.add(name)
            assert counted is (p if counts else None)
    assert p.answered == model
    assert p.enough() == (len(model) + 1 >= needed)


# -- majorities with min_cap -----------------------------------------------------------------------


def majority_by_its_rule(n: int, min_cap: int) -> int:
    """messages.py: a majority of ``n`` replicas, this one included, and at least ``min_cap`` of
    them, but never more than ``n``.  Found by counting up, not by the formula."""
    for k in range(1, n + 1):
        if 2 * k > n and k >= min_cap:
            return k
    return n


@pytest.mark.parametrize("n", range(1, 10))
def test_a_majority_with_min_cap_follows_the_stated_rule_for_every_cap(n: int) -> None:
    table = {
        min_cap: (
            WriteMajority(1.0, min_cap).replicas_needed(n),
            ReadMajority(1.0, min_cap).replicas_needed(n),
        )
        for min_cap in range(12)
    }
    expected = {min_cap: (majority_by_its_rule(n, min_cap),) * 2 for min_cap in range(12)}
    assert table == expected


def test_a_majority_with_min_cap_waits_for_as_many_answers_as_its_cap() -> None:
    q, _ = quorums()
    needed = WriteMajority(1.0, 4).replicas_needed(5)  # 4 of 5
    p = pending(needed, {"b": 1, "c": 2})
    q.open(p, 1.0)
    q.answer(p.id_, "b", 1)
    q.answer(p.id_, "c", 2)
    assert not p.enough()
    assert q.meet("d", 3) == [p]
    q.answer(p.id_, "d", 3)
    assert p.enough()


@pytest.mark.parametrize(
    ("kind", "reply"),
    [
        ("update", UpdateTimeout("k", "r")),
        ("delete", ReplicationDeleteFailure("k", "r", "not confirmed by enough replicas in time")),
        ("get", GetFailure("k", "r", "not enough replicas answered in time")),
    ],
)
def test_a_request_that_runs_out_of_time_gets_the_failure_of_its_family(
    kind: str, reply: Any
) -> None:
    assert Pending(kind, "client", "k", "r", 2, {}).timeout_reply() == reply
