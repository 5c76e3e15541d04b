"""Quorum requests (Quorums, Pending), without processes: every request opens with its timer,
and a peer met while it is open is asked too (once per address; one that answered keeps its
answer); an answer counts once per peer, only from the address it was asked at, only while the
request is open; the timer closes it.

Also the majority levels with ``min_cap`` over a grid of N and caps, checked against the rule
messages.py states (tests/test_messages.py has Akka's worked examples; this covers every cell
of the grid, caps above N included).
"""

from __future__ import annotations

import heapq
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd import ReadAll, ReadFrom, ReadMajority, WriteAll, WriteMajority, WriteTo
from thespian_dd._runtime.protocol import RequestTimeout
from thespian_dd._runtime.quorums import (
    EXTRA_PRIMARIES,
    SECONDARY_DELAY_MAX,
    AskSecondaries,
    Pending,
    Quorums,
    secondary_delay,
)
from thespian_dd.messages import (
    GetFailure,
    ReadConsistency,
    ReplicationDeleteFailure,
    UpdateTimeout,
    WriteConsistency,
)

pytestmark = pytest.mark.timeout(60)

Level = ReadConsistency | WriteConsistency

PEERS = {"b": "address of b", "c": "address of c", "d": "address of d"}


def pending(needed: int, kind: str = "update") -> Pending:
    return Pending(kind, "client", "key", "request", needed)


def quorums(seed: int = 0) -> tuple[Quorums, list[tuple[float, Any]]]:
    woken: list[tuple[float, Any]] = []
    wake = lambda seconds, payload: woken.append((seconds, payload))  # noqa: E731
    return Quorums(wake, random.Random(seed)), woken


# -- opening ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "needed"), [(0, 1), (0, 2), (1, 2), (1, 3), (3, 5), (2, 1)])
def test_every_request_opens_with_its_timer_even_one_its_peers_cannot_make_yet(
    asked: int, needed: int
) -> None:
    q, woken = quorums()
    p = pending(needed)
    q.open(p, {f"n{i}": f"address {i}" for i in range(asked)}, 3.0)
    assert len(q) == 1
    assert woken == [(3.0, RequestTimeout(p.id_))]


def test_a_peer_met_while_a_request_is_open_is_asked_and_its_answer_counts() -> None:
    q, _ = quorums()
    short = pending(3)
    assert q.open(short, {"b": "address of b"}, 1.0) == {"b": "address of b"}  # needs 2 peers
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
    q.open(p, PEERS, 1.0)
    assert q.answer(p.id_, "b", "address of b") is p
    assert q.meet("b", "new address of b") == []  # its answer stands
    assert q.meet("c", "new address of c") == [p]  # restarted before answering
    assert q.answer(p.id_, "c", "address of c") is None  # the old incarnation's answer
    assert q.answer(p.id_, "c", "new address of c") is p


def test_a_closed_request_meets_no_one() -> None:
    q, _ = quorums()
    p = pending(3)
    q.open(p, {}, 1.0)
    q.close(p)
    assert q.meet("b", "address of b") == []


def test_each_request_has_its_own_id_and_timer() -> None:
    q, woken = quorums()
    one, two = pending(2), pending(3)
    assert one.id_ != two.id_
    q.open(one, PEERS, 1.5)
    q.open(two, PEERS, 4.0)
    assert woken == [(1.5, RequestTimeout(one.id_)), (4.0, RequestTimeout(two.id_))]
    assert len(q) == 2


# -- answers ---------------------------------------------------------------------------------------


def test_an_answer_counts_once_per_peer() -> None:
    q, _ = quorums()
    p = pending(4)
    q.open(p, PEERS, 1.0)
    assert q.answer(p.id_, "b", "address of b") is p
    assert q.answer(p.id_, "b", "address of b") is None
    assert p.answered == {"b"}
    assert q.answer(p.id_, "c", "address of c") is p
    assert p.answered == {"b", "c"}


def test_an_answer_counts_only_from_the_address_the_peer_was_asked_at() -> None:
    q, _ = quorums()
    p = pending(2)
    q.open(p, PEERS, 1.0)
    assert q.answer(p.id_, "b", "address of c") is None
    assert q.answer(p.id_, "b", "another address of b") is None
    assert q.answer(p.id_, "e", "address of e") is None  # not asked at all
    assert p.answered == set()
    assert not p.enough()


def test_answers_to_unknown_or_closed_requests_do_not_count() -> None:
    q, _ = quorums()
    p = pending(2)
    assert q.answer(p.id_, "b", "address of b") is None  # never opened
    q.open(p, PEERS, 1.0)
    q.close(p)
    assert q.answer(p.id_, "b", "address of b") is None
    assert q.answer("no such request", "b", "address of b") is None
    assert p.answered == set()


@pytest.mark.parametrize("request_id", [None, 7, b"id", ("id",), ["id"], {"id": 1}])
def test_request_ids_that_are_not_str_are_ignored(request_id: object) -> None:
    q, _ = quorums()
    p = pending(2)
    q.open(p, PEERS, 1.0)
    assert q.answer(request_id, "b", "address of b") is None
    assert p.answered == set()


def test_enough_counts_this_node_with_the_answers() -> None:
    p = pending(3)
    assert not p.enough()
    p.answered.add("b")
    assert not p.enough()
    p.answered.add("c")
    assert p.enough()
    assert pending(1).enough()  # this node alone


def test_a_timer_closes_its_request_once() -> None:
    q, _ = quorums()
    p, other = pending(2), pending(2)
    q.open(p, PEERS, 1.0)
    q.open(other, PEERS, 1.0)
    assert q.timed_out(p.id_) is p
    assert q.timed_out(p.id_) is None
    assert len(q) == 1
    assert q.answer(p.id_, "b", "address of b") is None
    assert q.answer(other.id_, "b", "address of b") is other


def test_the_timer_of_a_closed_request_finds_nothing() -> None:
    q, _ = quorums()
    p = pending(2)
    q.open(p, PEERS, 1.0)
    q.close(p)
    assert q.timed_out(p.id_) is None


def test_closing_twice_is_harmless() -> None:
    q, _ = quorums()
    p, other = pending(2), pending(2)
    q.open(p, PEERS, 1.0)
    q.open(other, PEERS, 1.0)
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
    q.open(p, PEERS, 1.0)
    q.open(other, PEERS, 1.0)
    model: set[str] = set()
    for to_p, name, address in answers:
        request = p if to_p else other
        counted = q.answer(request.id_, name, address)
        if request is p:
            counts = p.asked.get(name) == address and name not in model
            if counts:
                model.add(name)
            assert counted is (p if counts else None)
    assert p.answered == model
    assert p.enough() == (len(model) + 1 >= needed)


# -- primaries first, secondaries after a delay ----------------------------------------------------


class Asking:
    """The Replicator's side of :class:`Quorums` without processes: a fake clock whose timers
    come back as the Replicator routes them, a record of every peer asked (the sends), and the
    reply each request got."""

    def __init__(self, seed: int = 0) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Any]] = []
        self.sent: list[tuple[str, str, str]] = []  # (request id, peer name, address)
        self.replies: dict[str, str] = {}  # request id -> "success" | "timeout"
        self.quorums = Quorums(self._wake, random.Random(seed))

    def _wake(self, seconds: float, payload: Any) -> None:
        heapq.heappush(
            self.timers, (self.now + seconds, len(self.sent) + len(self.timers), payload)
        )

    def _send(self, p: Pending, peers: dict[str, str]) -> None:
        self.sent += [(p.id_, name, address) for name, address in peers.items()]

    def open(self, needed: int, peers: dict[str, str], timeout: float = 10.0) -> Pending:
        p = pending(needed)
        self._send(p, self.quorums.open(p, peers, timeout))
        return p

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self.timers and self.timers[0][0] <= until:
            self.now, _, payload = heapq.heappop(self.timers)
            if isinstance(payload, RequestTimeout):
                if self.quorums.timed_out(payload.request_id) is not None:
                    self.replies[payload.request_id] = "timeout"
            else:
                assert isinstance(payload, AskSecondaries)
                due = self.quorums.secondaries_due(payload.request_id)
                if due is not None:
                    self._send(*due)
        self.now = until

    def answer(self, p: Pending, name: str, address: str | None = None) -> None:
        counted = self.quorums.answer(p.id_, name, address or f"address of {name}")
        if counted is not None and counted.enough():
            self.quorums.close(counted)
            self.replies[p.id_] = "success"

    def meet(self, name: str, address: str) -> None:
        for p in self.quorums.meet(name, address):
            self._send(p, {name: address})

    def lost(self, name: str) -> None:
        for p, other, address in self.quorums.lost(name):
            self._send(p, {other: address})

    def asked(self, p: Pending) -> list[str]:
        """The peers ``p`` was sent to, in order (a name twice if sent twice)."""
        return [name for id_, name, _ in self.sent if id_ == p.id_]


def peers_of(n: int) -> dict[str, str]:
    """The peers of one node of an ``n``-node cluster."""
    return {f"n{i}": f"address of n{i}" for i in range(1, n)}


@pytest.mark.parametrize(
    ("n", "level", "at_once"),
    [
        (32, WriteMajority(10.0), 16 + EXTRA_PRIMARIES),
        (32, ReadMajority(10.0), 16 + EXTRA_PRIMARIES),
        (32, WriteMajority(10.0, min_cap=20), 19 + EXTRA_PRIMARIES),
        (32, WriteTo(5, 10.0), 4 + EXTRA_PRIMARIES),
        (32, ReadFrom(2, 10.0), 1 + EXTRA_PRIMARIES),
        (12, WriteMajority(10.0), 6 + EXTRA_PRIMARIES),
        (5, WriteMajority(10.0), 4),  # 2 + 2: every peer
        (3, WriteMajority(10.0), 2),
        (32, WriteAll(10.0), 31),
        (32, ReadAll(10.0), 31),
        (32, WriteMajority(10.0, min_cap=31), 31),
    ],
)
def test_a_request_asks_the_peers_it_needs_and_a_few_more_at_once_and_arms_the_delay_if_others_wait(
    n: int, level: Level, at_once: int
) -> None:
    q, woken = quorums()
    p = pending(level.replicas_needed(n))
    asked = q.open(p, peers_of(n), 10.0)
    assert len(asked) == at_once
    assert set(asked) | set(p.secondaries) == set(peers_of(n))
    assert not set(asked) & set(p.secondaries)
    assert all(asked[name] == f"address of {name}" for name in asked)
    assert woken[0] == (10.0, RequestTimeout(p.id_))
    if at_once < n - 1:
        assert woken[1:] == [(secondary_delay(10.0), AskSecondaries(p.id_))]
    else:  # every peer asked: WriteAll and ReadAll as before, with no second timer
        assert woken[1:] == []


def test_the_primaries_are_chosen_at_random() -> None:
    picks = set()
    for seed in range(20):
        q, _ = quorums(seed)
        picks.add(frozenset(q.open(pending(17), peers_of(32), 10.0)))
    assert len(picks) > 1


def test_a_majority_the_primaries_make_sends_nothing_more_after_the_delay() -> None:
    a = Asking()
    p = a.open(17, peers_of(32))
    primaries = a.asked(p)
    for name in primaries[:16]:
        a.answer(p, name)
    assert a.replies == {p.id_: "success"}
    a.advance(10.0)
    assert a.asked(p) == primaries  # no secondary asked; the timer found the request closed
    assert a.replies == {p.id_: "success"}


def test_a_request_still_short_after_the_delay_asks_the_secondaries_whose_answers_count() -> None:
    a = Asking()
    p = a.open(17, peers_of(32))
    primaries = a.asked(p)
    for name in primaries[:15]:  # three primaries are slow (frozen, or not found dead yet)
        a.answer(p, name)
    a.advance(secondary_delay(10.0) * 0.99)
    assert a.asked(p) == primaries
    a.advance(secondary_delay(10.0) * 0.02)
    secondaries = a.asked(p)[len(primaries) :]
    assert sorted(primaries + secondaries) == sorted(peers_of(32))  # each peer asked once
    assert a.replies == {}
    a.answer(p, secondaries[-1])
    assert a.replies == {p.id_: "success"}


def test_a_request_that_secondaries_cannot_complete_either_times_out_as_before() -> None:
    a = Asking()
    p = a.open(17, peers_of(32))
    a.advance(secondary_delay(10.0))
    for name in a.asked(p)[:15]:
        a.answer(p, name)
    a.advance(10.0)
    assert len(a.asked(p)) == 31
    assert a.replies == {p.id_: "timeout"}
    assert p.timeout_reply() == UpdateTimeout("key", "request")


def test_an_unanswered_primary_found_unreachable_is_replaced_by_a_secondary_at_once() -> None:
    a = Asking()
    p = a.open(7, peers_of(12))  # 6 peers needed, 8 asked, 3 secondaries
    primaries = a.asked(p)
    secondaries = list(p.secondaries)
    a.answer(p, primaries[0])
    a.lost(primaries[0])  # answered: its answer stands, no one replaces it
    assert a.asked(p) == primaries
    a.lost(primaries[1])
    assert a.asked(p) == [*primaries, secondaries[0]]
    a.lost(secondaries[2])  # a secondary found unreachable is not asked at the delay
    a.advance(secondary_delay(10.0))
    assert a.asked(p) == [*primaries, secondaries[0], secondaries[1]]
    a.lost(primaries[2])  # no secondary left: nothing to ask
    assert len(a.asked(p)) == 10
    for name in [primaries[0], *primaries[3:], secondaries[0]]:
        a.answer(p, name)
    assert a.replies == {p.id_: "success"}


def test_when_no_secondary_is_left_a_peer_met_is_asked_at_once() -> None:
    a = Asking()
    p = a.open(3, peers_of(6))  # 2 peers needed, 4 asked, 1 secondary
    (secondary,) = p.secondaries
    a.lost(a.asked(p)[0])
    assert a.asked(p)[-1] == secondary
    a.meet("n6", "address of n6")
    assert a.asked(p)[-1] == "n6"


def test_a_peer_met_while_the_primaries_are_out_waits_with_the_secondaries() -> None:
    a = Asking()
    p = a.open(7, peers_of(12))
    primaries = a.asked(p)
    a.meet("n12", "address of n12")
    assert a.asked(p) == primaries
    a.advance(secondary_delay(10.0))
    assert "n12" in a.asked(p)
    a.meet("n13", "address of n13")  # after the delay: at once
    assert a.asked(p)[-1] == "n13"
    a.answer(p, "n13")
    assert p.answered == {"n13"}


def test_a_peer_met_when_too_few_are_reachable_is_asked_at_once() -> None:
    """A rolling restart: this node has met 2 of its 11 peers; a majority needs 6 of them."""
    a = Asking()
    p = a.open(7, {"n1": "address of n1", "n2": "address of n2"})
    assert sorted(a.asked(p)) == ["n1", "n2"]
    assert len(a.timers) == 1  # the request timer only
    for i in range(3, 12):
        a.meet(f"n{i}", f"address of n{i}")
    assert sorted(a.asked(p)) == sorted(peers_of(12))
    for i in range(1, 7):
        a.answer(p, f"n{i}")
    assert a.replies == {p.id_: "success"}


def test_a_restarted_primary_is_asked_again_at_once_and_a_restarted_secondary_at_the_delay() -> (
    None
):
    a = Asking()
    p = a.open(7, peers_of(12))
    primary, secondary = a.asked(p)[0], next(iter(p.secondaries))
    a.meet(primary, "new address")
    assert a.sent[-1] == (p.id_, primary, "new address")
    a.meet(secondary, "new address")
    assert a.sent[-1] != (p.id_, secondary, "new address")
    a.advance(secondary_delay(10.0))
    assert (p.id_, secondary, "new address") in a.sent
    assert (p.id_, secondary, f"address of {secondary}") not in a.sent
    a.answer(p, secondary)  # the old incarnation's answer does not count
    a.answer(p, secondary, "new address")
    assert p.answered == {secondary}


@pytest.mark.parametrize("timeout", [0.05, 0.5, 1.0, 2.5, 3.0, 10.0, 60.0])
def test_the_secondary_delay_is_a_fifth_of_the_timeout_at_most_its_bound(timeout: float) -> None:
    delay = secondary_delay(timeout)
    assert delay == min(timeout / 5, SECONDARY_DELAY_MAX)
    assert 0 < delay < timeout


@given(
    n=st.integers(2, 40),
    level=st.sampled_from(
        [WriteMajority(10.0), ReadMajority(10.0, min_cap=5), WriteTo(3, 10.0), WriteAll(10.0)]
    ),
    responsive=st.integers(0, 2**40),
    lost=st.integers(0, 2**40),
    seed=st.integers(0, 100),
)
def test_a_request_succeeds_exactly_when_enough_responsive_peers_answer(
    n: int, level: Level, responsive: int, lost: int, seed: int
) -> None:
    """Some peers answer as soon as asked; the others never do, and some of those are found
    unreachable before the delay.  Whatever the primaries drawn, the request succeeds iff the
    responsive peers and this node make ``needed``, with only the primaries asked when those
    sufficed; it never asks a peer twice, nor one after it was found unreachable."""
    a = Asking(seed)
    peers = peers_of(n)
    answering = {name for i, name in enumerate(peers) if responsive >> i & 1}
    gone = {name for i, name in enumerate(peers) if lost >> i & 1} - answering
    needed = level.replicas_needed(n)
    p = a.open(needed, peers)
    asked_at_once = list(a.asked(p))

    def answer_all() -> None:
        for name in a.asked(p):
            if name in answering and p.id_ not in a.replies:
                a.answer(p, name)

    answer_all()
    for name in sorted(gone):
        a.lost(name)
    answer_all()
    before_delay = len(a.asked(p))
    a.advance(secondary_delay(10.0))
    assert not set(a.asked(p)[before_delay:]) & gone  # a peer found unreachable is not asked
    answer_all()
    a.advance(10.0)
    enough = len(answering) + 1 >= needed
    assert a.replies == {p.id_: "success" if enough else "timeout"}
    assert len(a.asked(p)) == len(set(a.asked(p)))
    assert p.answered <= answering
    if a.replies[p.id_] == "success":
        assert len(p.answered) + 1 >= needed
    if len(answering & set(asked_at_once)) + 1 >= needed:
        assert a.asked(p) == asked_at_once


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
    p = pending(needed)
    q.open(p, {"b": 1, "c": 2}, 1.0)
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
    assert Pending(kind, "client", "k", "r", 2).timeout_reply() == reply
