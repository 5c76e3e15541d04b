"""How messages show as text (:mod:`thespian_dd._shown`): Thespian formats every message it sends
and receives (``str``), so a message carrying a large value shows its fields short, without
formatting the value, its bytes or its collections; ``repr`` stays whole."""

from __future__ import annotations

from typing import Any

import pytest

from thespian_dd import GCounter, ORSet, ReplicaId, Update
from thespian_dd._runtime.protocol import PROTOCOL_VERSION, GossipEntries, GossipKeys, PeerWrite
from thespian_dd.messages import Changed, GetSuccess, Keys

pytestmark = pytest.mark.timeout(60)

NODE = ReplicaId("n", 1)
BIG = ORSet[str]().add_all(NODE, [f"e{i}" for i in range(100_000)])


@pytest.fixture
def unformattable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Formatting an ORSet fails the test: a message must show without it."""

    def refused(self: Any) -> str:
        raise AssertionError("the value was formatted")

    monkeypatch.setattr(ORSet, "__repr__", refused)


@pytest.mark.usefixtures("unformattable")
@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (GetSuccess("k", 7, BIG), "GetSuccess(key='k', request=7, data=<ORSet>)"),
        (Changed("k", BIG), "Changed(key='k', data=<ORSet>)"),
        (
            Update("k", BIG, lambda s, n: s, request="r"),
            "Update(key='k', initial=<ORSet>, consistency=WriteLocal(), request='r')",
        ),
        (
            Keys(frozenset(f"k{i}" for i in range(50_000)), 3),
            "Keys(keys=<frozenset of 50000>, request=3)",
        ),
        (
            PeerWrite(PROTOCOL_VERSION, NODE, "id", "k", b"x" * 1_000_000),
            (
                f"PeerWrite(version={PROTOCOL_VERSION}, sender={NODE!r}, request_id='id', "
                "key='k', payload=<1000000 bytes>)"
            ),
        ),
    ],
    ids=["GetSuccess", "Changed", "Update", "Keys", "PeerWrite"],
)
def test_a_message_shows_its_fields_short(message: Any, expected: str) -> None:
    assert str(message) == expected


def test_a_few_items_show_each_short_and_many_show_their_count() -> None:
    few = GossipEntries(PROTOCOL_VERSION, NODE, {"a": b"12345"}, frozenset())
    assert "entries={'a': <5 bytes>}" in str(few)
    digests = {f"k{i}": b"d" * 16 for i in range(20_000)}
    many = GossipKeys(PROTOCOL_VERSION, NODE, digests, frozenset(range(64)))
    assert "<dict of 20000>" in str(many)
    assert len(str(many)) < 200


def test_repr_stays_whole() -> None:
    counter = GCounter().increment(NODE, 2)
    assert repr(GetSuccess("k", 1, counter)) == f"GetSuccess(key='k', request=1, data={counter!r})"


def test_short_fields_show_as_their_repr_and_long_ones_cut() -> None:
    expected = "GetSuccess(key='k', request=(1, 'r'), data=None)"
    assert str(GetSuccess("k", (1, "r"), None)) == expected
    long_key, huge = "k" * 1_000, 10**1_000
    shown = str(Update(long_key, GCounter(), lambda c, n: c, request=huge))
    assert len(shown) < 300
    assert "initial=<GCounter>" in shown


def test_an_int_of_more_digits_than_python_writes_shows_as_its_size() -> None:
    """Found in review: ``str`` of a message with an int of more than 4,300 digits raised
    (``reprlib`` writes it whole first), alone or inside a short tuple."""
    giant = 10**5_000
    assert str(GetSuccess("k", giant, None)) == (
        f"GetSuccess(key='k', request=<int of {giant.bit_length()} bits>, data=None)"
    )
    assert "<int of" in str(GetSuccess("k", (1, giant), None))
