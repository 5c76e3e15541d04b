"""Anti-entropy's arithmetic: which buckets and keys two nodes disagree on (``differing_buckets``,
``differing_keys``: what to send and what to ask for, keys only one side has included), and what
one gossip message carries (``within_budget``: smallest first, a value over the budget alone and
reported, stopping at the first value that does not fit).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd._runtime.antientropy import differing_buckets, differing_keys, within_budget

pytestmark = pytest.mark.timeout(60)


# -- buckets ---------------------------------------------------------------------------------------


def test_buckets_that_agree_do_not_differ() -> None:
    mine = {0: b"d0", 5: b"d5"}
    assert differing_buckets(mine, dict(mine)) == frozenset()
    assert differing_buckets({}, {}) == frozenset()


def test_buckets_whose_digests_differ_or_that_one_side_lacks_differ() -> None:
    mine = {0: b"same", 1: b"mine", 2: b"only here"}
    theirs = {0: b"same", 1: b"theirs", 3: b"only there"}
    assert differing_buckets(mine, theirs) == {1, 2, 3}


def test_what_the_peer_sent_that_is_no_bucket_number_comes_back_as_it_is() -> None:
    assert differing_buckets({0: b"d"}, {0: b"d", "junk": b"x", 7.5: b"y"}) == {"junk", 7.5}


def test_a_peers_digest_of_another_type_differs() -> None:
    assert differing_buckets({0: b"d"}, {0: "d"}) == {0}


# -- keys ------------------------------------------------------------------------------------------


def test_keys_that_agree_are_neither_sent_nor_asked_for() -> None:
    digests = {"a": b"1", "b": b"2"}
    assert differing_keys(digests, dict(digests)) == ([], frozenset())


def test_a_key_only_this_side_has_is_sent() -> None:
    assert differing_keys({"a": b"1", "mine": b"m"}, {"a": b"1"}) == (["mine"], frozenset())


def test_a_key_only_the_peer_has_is_asked_for() -> None:
    assert differing_keys({"a": b"1"}, {"a": b"1", "theirs": b"t"}) == ([], frozenset({"theirs"}))


def test_a_key_whose_digests_differ_is_sent_and_asked_for() -> None:
    send, want = differing_keys({"a": b"1", "b": b"2"}, {"a": b"1", "b": b"3"})
    assert send == ["b"]
    assert want == {"b"}


def test_keys_the_peer_sent_that_are_not_str_are_never_asked_for() -> None:
    send, want = differing_keys({"a": b"1"}, {"a": b"1", 7: b"x", b"bytes": b"y", None: b"z"})
    assert send == []
    assert want == frozenset()


digests = st.dictionaries(st.sampled_from("abcdef"), st.sampled_from([b"1", b"2"]), max_size=6)


@given(digests, digests)
def test_send_and_want_are_the_keys_each_side_would_learn_from_the_other(
    mine: dict[str, bytes], theirs: dict[str, bytes]
) -> None:
    send, want = differing_keys(mine, theirs)
    assert sorted(send) == sorted(k for k in mine if mine[k] != theirs.get(k))
    assert want == {k for k in theirs if theirs[k] != mine.get(k)}
    assert len(send) == len(set(send))
    # The peer's own view of the same exchange is the mirror image.
    their_send, their_want = differing_keys(theirs, mine)
    assert set(their_send) == want
    assert their_want == set(send)


# -- the budget ------------------------------------------------------------------------------------


def test_values_go_smallest_first_while_they_fit() -> None:
    payloads = [("big", b"x" * 6), ("small", b"x"), ("mid", b"x" * 3)]
    entries, over = within_budget(payloads, 10)
    assert list(entries) == ["small", "mid", "big"]
    assert over == []
    entries, over = within_budget(payloads, 9)
    assert list(entries) == ["small", "mid"]
    assert over == []


def test_a_value_over_the_budget_goes_alone_and_is_reported() -> None:
    entries, over = within_budget([("huge", b"x" * 50)], 10)
    assert entries == {"huge": b"x" * 50}
    assert over == ["huge"]


def test_a_value_over_the_budget_waits_while_smaller_ones_go() -> None:
    payloads = [("huge", b"x" * 50), ("small", b"x" * 2)]
    entries, over = within_budget(payloads, 10)
    assert entries == {"small": b"xx"}
    assert over == []
    entries, over = within_budget([("huge", b"x" * 50)], 10)  # the next round
    assert over == ["huge"]


def test_only_one_value_over_the_budget_goes_per_message() -> None:
    entries, over = within_budget([("huge", b"x" * 50), ("huger", b"x" * 60)], 10)
    assert entries == {"huge": b"x" * 50}
    assert over == ["huge"]


def test_the_message_stops_at_the_first_value_that_does_not_fit() -> None:
    payloads = [("a", b"x" * 4), ("b", b"x" * 4), ("c", b"x" * 4), ("d", b"x" * 9)]
    entries, over = within_budget(payloads, 10)
    assert set(entries) == {"a", "b"}
    assert over == []


def test_a_value_that_fits_exactly_goes() -> None:
    entries, _ = within_budget([("a", b"x" * 4), ("b", b"x" * 6)], 10)
    assert set(entries) == {"a", "b"}


def test_tombstones_cost_nothing() -> None:
    payloads = [("gone", b""), ("also gone", b""), ("a", b"x" * 10)]
    entries, over = within_budget(payloads, 10)
    assert set(entries) == {"gone", "also gone", "a"}
    assert over == []


def test_nothing_to_send_sends_nothing() -> None:
    assert within_budget([], 10) == ({}, [])


payload_lists = st.lists(st.binary(max_size=20), max_size=12).map(
    lambda values: [(f"k{i}", v) for i, v in enumerate(values)]
)


@given(payload_lists, st.integers(1, 40))
def test_a_message_is_the_longest_run_of_smallest_values_within_the_budget(
    payloads: list[tuple[str, bytes]], budget: int
) -> None:
    """Reference: sorted by size, take values while the total stays within the budget; if not
    even the smallest fits, it goes alone."""
    ordered = sorted(payloads, key=lambda kp: len(kp[1]))
    expected: dict[str, bytes] = {}
    total = 0
    for key, value in ordered:
        if total + len(value) > budget:
            break
        expected[key] = value
        total += len(value)
    if not expected and ordered:
        expected = dict(ordered[:1])
    entries, over = within_budget(payloads, budget)
    assert entries == expected
    assert list(entries) == list(expected)  # smallest first
    assert over == [k for k, v in entries.items() if len(v) > budget]
    assert len(over) <= 1
    assert sum(map(len, entries.values())) <= budget or len(entries) == 1
