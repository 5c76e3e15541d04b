"""The consistency levels' arithmetic (the rest of the protocol is driven through real nodes in
test_replicator.py, test_fuzz_client.py and test_fuzz_peer.py)."""

from __future__ import annotations

import pickle

import pytest

from thespian_dd import (
    GCounter,
    ReadAll,
    ReadFrom,
    ReadLocal,
    ReadMajority,
    Update,
    WriteLocal,
    WriteMajority,
)
from thespian_dd.messages import majority


@pytest.mark.parametrize(
    ("n", "min_cap", "needed"),
    [
        # Without a cap: more than half, this node included.
        (1, 0, 1),
        (2, 0, 2),
        (3, 0, 2),
        (4, 0, 3),
        (5, 0, 3),
        (6, 0, 4),
        (10, 0, 6),
        # Akka's examples with min_cap 5: N=3 -> 3, 6..9 -> 5, 10 -> 6, 12 -> 7.
        (3, 5, 3),
        (6, 5, 5),
        (7, 5, 5),
        (8, 5, 5),
        (9, 5, 5),
        (10, 5, 6),
        (12, 5, 7),
    ],
)
def test_a_majority_is_min_n_and_max_half_plus_one_and_min_cap(
    n: int, min_cap: int, needed: int
) -> None:
    assert majority(n, min_cap) == needed
    assert WriteMajority(1.0, min_cap).replicas_needed(n) == needed
    assert ReadMajority(1.0, min_cap).replicas_needed(n) == needed


def test_the_other_levels_count_this_replica_and_stop_at_n() -> None:
    assert ReadLocal().replicas_needed(4) == 1
    assert ReadFrom(3, 1.0).replicas_needed(4) == 3
    assert ReadFrom(9, 1.0).replicas_needed(4) == 4
    assert ReadAll(1.0).replicas_needed(4) == 4


def test_an_update_with_another_request_keeps_its_pickled_modify() -> None:
    update = Update("k", GCounter(), lambda c, n: c.increment(n, 1), WriteLocal(), "a")
    tagged = update.with_request("b")
    assert (tagged.key, tagged.initial, tagged.consistency, tagged.request) == (
        "k",
        GCounter(),
        WriteLocal(),
        "b",
    )
    assert tagged._modify_blob is update._modify_blob  # not pickled again
    assert update.request == "a"
    assert pickle.loads(pickle.dumps(tagged)).request == "b"
