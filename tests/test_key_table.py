"""KeyTable, the Replicator's record of every key: put, delete, expire, restore and clear keep the
values, tombstones, pruning markers, digests and buckets in step; a key's digest follows its
markers; ``buckets()`` changes only where a key changed and drops a bucket whose last key left;
digests computed on demand equal those computed from the encoding; a damaged stored row is
refused whole; last use (touch, expiry rules, idle keys, what was used here); and a state
machine against a dict model that recomputes every digest and bucket from scratch after every
step (the stale-digest class of bug)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from fakes import Clock, counting_key_hashes
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from thespian_dd import GCounter, ORSet, ReplicaId
from thespian_dd._canonical import CodecError, Limits
from thespian_dd._runtime.keys import (
    BUCKETS,
    TOMBSTONE_DIGEST,
    KeyTable,
    bucket_digests,
    bucket_of,
    key_hash,
)
from thespian_dd._runtime.markers import (
    Initialized,
    Marker,
    Performed,
    envelope_digest,
    join_envelope,
)
from thespian_dd._runtime.protocol import TOMBSTONE
from thespian_dd._runtime.settings import Settings
from thespian_dd.codec import FORMAT_VERSION, digest, encode
from thespian_dd.data import ReplicatedData

pytestmark = pytest.mark.timeout(60)

A, B = ReplicaId("a", 1), ReplicaId("b", 1)
GONE, GONE_TOO = ReplicaId("gone", 1), ReplicaId("gone", 2)
# k0 and k144 share bucket 59, k1 is alone in 61 and "a" in 30 (checked below).
SAME_BUCKET = ("k0", "k144")
OTHER = "k1"
KEYS = ["k0", "k144", "k1", "a"]


def never(_key: str) -> float | None:
    return None


def counter(n: int, by: ReplicaId = A) -> GCounter:
    return GCounter().increment(by, n)


def expected_digest(
    value: ReplicatedData, markers: dict[ReplicaId, Marker] | None, version: int = FORMAT_VERSION
) -> bytes:
    """A key's digest computed from scratch: its value's, or with its markers folded in."""
    value_digest = digest(value, version)
    return envelope_digest(value_digest, markers) if markers else value_digest


def test_the_chosen_keys_fall_in_the_buckets_the_tests_rely_on() -> None:
    assert bucket_of(SAME_BUCKET[0]) == bucket_of(SAME_BUCKET[1]) == 59
    assert bucket_of(OTHER) == 61
    assert bucket_of("a") == 30
    assert all(0 <= bucket_of(f"key{i}") < BUCKETS for i in range(500))


# -- put, delete, expire, restore, clear ---------------------------------------------------------


def test_a_put_keeps_the_value_its_digest_and_its_bucket() -> None:
    keys = KeyTable(never)
    value = counter(3)
    keys.put("a", value, encode(value))
    assert keys.get("a") == value
    assert "a" in keys
    assert len(keys) == 1
    assert keys.names() == {"a"}
    assert not keys.is_deleted("a")
    assert keys.tombstones() == 0
    assert dict(keys.digests()) == {"a": digest(value)}
    assert keys.buckets() == bucket_digests({"a": digest(value)}, ["a"])
    assert keys.payload("a") == encode(value)
    assert keys.payload("unknown") is None


def test_a_delete_leaves_a_tombstone_whose_digest_is_the_tombstone_digest() -> None:
    keys = KeyTable(never)
    value = counter(3)
    keys.put("a", value, encode(value), {GONE: Performed(5)})
    keys.delete("a")
    assert keys.get("a") is None
    assert "a" not in keys
    assert len(keys) == 0
    assert keys.names() == frozenset()
    assert keys.is_deleted("a")
    assert keys.tombstones() == 1
    assert keys.markers("a") == {}
    assert keys.keys_with_markers() == []
    assert dict(keys.digests()) == {"a": TOMBSTONE_DIGEST}
    assert keys.payload("a") == TOMBSTONE
    # The tombstone stays in its bucket: peers must learn of it.
    assert keys.buckets() == bucket_digests({"a": TOMBSTONE_DIGEST}, ["a"])


def test_a_delete_of_a_key_put_without_its_encoding_needs_no_digest_of_the_value() -> None:
    keys = KeyTable(never)
    keys.put("a", counter(1))  # digest left to compute
    keys.delete("a")
    assert dict(keys.digests()) == {"a": TOMBSTONE_DIGEST}


def test_an_expired_key_leaves_no_value_tombstone_markers_digest_nor_last_use() -> None:
    clock = Clock(1_000_000.0)
    keys = KeyTable(lambda _k: 10.0, clock)
    value = counter(2)
    keys.put("a", value, encode(value), {GONE: Performed(5)})
    keys.touch("a")
    keys.buckets()
    keys.expire("a")
    assert keys.get("a") is None
    assert not keys.is_deleted("a")
    assert keys.payload("a") is None
    assert keys.markers("a") == {}
    assert dict(keys.digests()) == {}
    assert keys.buckets() == {}
    assert keys.used(["a"]) == {}
    assert keys.take_used_here() == {}
    clock.now += 1000
    assert keys.idle() == []


def test_an_expired_key_put_without_its_encoding_is_not_digested_later() -> None:
    keys = KeyTable(never)
    keys.put("a", counter(1))  # stale: its digest is owed
    keys.expire("a")
    assert dict(keys.digests()) == {}  # the owed digest went with the key (no KeyError)
    assert keys.buckets() == {}


def test_a_clear_forgets_every_key_and_every_record() -> None:
    clock = Clock(1_000_000.0)
    keys = KeyTable(lambda _k: 10.0, clock)
    keys.put("a", counter(1), None, {GONE: Performed(5)})
    keys.put("k1", counter(2), encode(counter(2)))
    keys.delete("k0")
    keys.touch("a")
    keys.buckets()
    keys.put("k144", counter(3))  # dirty and stale when cleared
    keys.clear()
    assert len(keys) == 0
    assert keys.names() == frozenset()
    assert keys.tombstones() == 0
    assert not keys.is_deleted("k0")
    assert keys.keys_with_markers() == []
    assert dict(keys.digests()) == {}
    assert keys.buckets() == {}
    assert keys.digests_in(range(BUCKETS)) == {}
    assert keys.take_used_here() == {}
    assert keys.used(["a"]) == {}
    clock.now += 1000
    assert keys.idle() == []
    # And the table works as new afterwards.
    keys.put("a", counter(4), encode(counter(4)))
    assert keys.buckets() == bucket_digests({"a": digest(counter(4))}, ["a"])


def test_a_restored_row_keeps_its_value_markers_and_digest_and_counts_as_used_now() -> None:
    clock = Clock(1_000_000.0)
    keys = KeyTable(lambda k: 30.0 if k == "a" else None, clock)
    value = counter(7)
    markers: dict[ReplicaId, Marker] = {
        GONE: Performed(99),
        GONE_TOO: Initialized(A, frozenset({"a"})),
    }
    keys.restore("a", join_envelope(encode(value), markers), Limits())
    keys.restore("k1", encode(counter(1)), Limits())
    keys.restore("k0", None, Limits())
    assert keys.get("a") == value
    assert keys.markers("a") == markers
    assert keys.is_deleted("k0")
    assert keys.get("k1") == counter(1)
    assert keys.markers("k1") == {}
    expected = {
        "a": envelope_digest(digest(value), markers),
        "k1": digest(counter(1)),
        "k0": TOMBSTONE_DIGEST,
    }
    assert dict(keys.digests()) == expected
    assert keys.buckets() == bucket_digests(expected, expected)
    assert keys.payload("a") == join_envelope(encode(value), markers)
    assert keys.pruned == {GONE}  # only a Performed marker says the replica was pruned
    # Its last use before the restart is unknown: it counts as used now, here.
    assert keys.take_used_here() == {"a": clock.now}


def test_a_row_whose_markers_are_damaged_raises_codec_error_and_keeps_nothing() -> None:
    clock = Clock(1_000_000.0)
    keys = KeyTable(lambda _k: 30.0, clock)
    keys.put("k1", counter(1), encode(counter(1)))
    before = keys.buckets()
    payload = join_envelope(encode(counter(5)), {GONE: Performed(99)})
    with pytest.raises(CodecError):
        keys.restore("a", payload[:6], Limits())
    assert "a" not in keys
    assert not keys.is_deleted("a")
    assert keys.markers("a") == {}
    assert keys.pruned == set()
    assert keys.buckets() == before
    assert set(keys.digests()) == {"k1"}
    assert keys.used(["a"]) == {}
    assert keys.take_used_here() == {}


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p[:-1], id="truncated value"),
        pytest.param(lambda p: p[:-3] + bytes([p[-3] ^ 0xFF]) + p[-2:], id="bad checksum"),
        pytest.param(lambda _p: b"not an encoding at all", id="garbage"),
    ],
)
def test_a_restored_value_that_fails_its_decode_when_first_used_is_dropped_and_reported(
    damage: Callable[[bytes], bytes],
) -> None:
    """A restored value is kept as its bytes (a node serves as soon as its rows are read); the
    first use decodes it, and one that fails is refused as a bad row at load would be: reported,
    never served, and nothing of it is left to gossip."""
    clock = Clock(1_000_000.0)
    refused: list[tuple[str, CodecError]] = []
    keys = KeyTable(lambda _k: 30.0, clock, refused=lambda key, e: refused.append((key, e)))
    keys.put("k1", counter(1), encode(counter(1)))
    before = keys.buckets()
    keys.restore("a", damage(encode(counter(5))), Limits())
    assert "a" in keys  # not decoded yet
    assert keys.undecoded() == 1
    assert keys.get("a") is None
    assert [key for key, _ in refused] == ["a"]
    assert isinstance(refused[0][1], CodecError)
    assert "a" not in keys
    assert keys.undecoded() == 0
    assert not keys.is_deleted("a")
    assert keys.payload("a") is None
    assert keys.buckets() == before
    assert set(keys.digests()) == {"k1"}
    assert keys.used(["a"]) == {}


def test_a_restored_value_travels_and_is_digested_from_its_bytes_until_first_used() -> None:
    keys = KeyTable(never)
    raw = encode(counter(7))
    markers = {GONE: Performed(99)}
    keys.restore("a", join_envelope(raw, markers), Limits())
    assert keys.undecoded() == 1
    assert keys.payload("a") == join_envelope(raw, markers)
    assert keys.digests()["a"] == envelope_digest(raw[-16:], markers)
    assert keys.names() == {"a"}
    assert len(keys) == 1
    assert keys.undecoded() == 1  # none of that decoded it
    assert keys.get("a") == counter(7)
    assert keys.undecoded() == 0


def test_restored_values_are_decoded_in_slices() -> None:
    keys = KeyTable(never)
    for i in range(10):
        keys.restore(f"k{i}", encode(counter(i + 1)), Limits())
    ticks = iter(range(100))
    assert keys.decode_for(2.5, clock=lambda: float(next(ticks))) == 7  # 3 decoded in 2.5 "s"
    assert keys.decode_for(1e9) == 0
    assert {k: v.value for k, v in keys.items()} == {f"k{i}": i + 1 for i in range(10)}


def _restored_state(keys: KeyTable) -> dict[str, object]:
    """Everything a restore records, read without decoding a value."""
    names = sorted(keys.names() | set(keys.digests()))
    return {
        "digests": dict(keys.digests()),
        "buckets": keys.buckets(),
        "names": keys.names(),
        "tombstones": keys.tombstones(),
        "undecoded": keys.undecoded(),
        "markers": {k: dict(keys.markers(k)) for k in names},
        "payloads": {k: keys.payload(k) for k in names},
        "used": keys.take_used_here(),
        "pruned": set(keys.pruned),
    }


def test_restore_rows_restores_every_row_as_restore_does_and_returns_those_refused() -> None:
    """A load's chunk restored at once: the common row (a plain value of the current format)
    takes the quick way, every other (markers, a tombstone, a key held already, damaged markers)
    the way of :meth:`KeyTable.restore`; the table ends the same either way."""
    markers: dict[ReplicaId, Marker] = {GONE: Performed(99)}
    damaged = join_envelope(encode(counter(5)), markers)[:6]
    rows: list[tuple[str, bytes | None]] = [
        ("plain", encode(counter(1))),
        ("session:x", encode(counter(2))),  # expires: counts as used now
        ("marked", join_envelope(encode(counter(3)), markers)),
        ("gone", None),
        ("held", encode(counter(4))),
        ("damaged", damaged),
        ("set", encode(ORSet().add(A, "x"))),
    ]
    tables = []
    for bulk in (False, True):
        clock = Clock(1_000_000.0)
        keys = KeyTable(lambda k: 30.0 if k.startswith("session:") else None, clock)
        keys.put("held", counter(9), encode(counter(9)))
        refused: list[str] = []
        if bulk:
            refused = [key for key, error in keys.restore_rows(rows, Limits())]
        else:
            for key, payload in rows:
                try:
                    keys.restore(key, payload, Limits())
                except CodecError:
                    refused.append(key)
        assert refused == ["damaged"]
        tables.append(keys)
    assert _restored_state(tables[1]) == _restored_state(tables[0])
    keys = tables[1]
    assert keys.undecoded() == 5  # held was decoded already; nothing read decoded any other
    assert keys.get("held") == counter(4)  # the stored row replaces what was held
    assert keys.get("marked") == counter(3)
    assert keys.is_deleted("gone")


# -- digests and markers -------------------------------------------------------------------------


def test_a_keys_digest_with_markers_differs_and_follows_its_markers() -> None:
    keys = KeyTable(never)
    value = counter(3)
    raw = encode(value)
    keys.put("a", value, raw)
    plain = keys.digests()["a"]
    assert plain == digest(value) == raw[-16:]

    one: dict[ReplicaId, Marker] = {GONE: Initialized(A, frozenset({"a"}))}
    keys.put("a", value, raw, one)
    marked = keys.digests()["a"]
    assert marked not in (plain, TOMBSTONE_DIGEST)
    assert marked == envelope_digest(digest(value), one)

    seen_more: dict[ReplicaId, Marker] = {GONE: Initialized(A, frozenset({"a", "b"}))}
    keys.put("a", value, raw, seen_more)
    assert keys.digests()["a"] not in (plain, marked)

    performed: dict[ReplicaId, Marker] = {GONE: Performed(10)}
    keys.put("a", value, raw, performed)
    performed_digest = keys.digests()["a"]
    assert performed_digest == envelope_digest(digest(value), performed)
    keys.put("a", value, raw, {GONE: Performed(11)})
    assert keys.digests()["a"] != performed_digest  # a later expiry is another state

    keys.put("a", value, raw)  # markers None: unchanged
    assert keys.markers("a") == {GONE: Performed(11)}
    assert keys.digests()["a"] == envelope_digest(digest(value), {GONE: Performed(11)})

    keys.put("a", value, raw, {})  # no markers any more: the plain digest again
    assert keys.markers("a") == {}
    assert keys.keys_with_markers() == []
    assert keys.digests()["a"] == plain


def test_the_bucket_of_a_key_changes_when_only_its_markers_change() -> None:
    keys = KeyTable(never)
    value = counter(3)
    keys.put("a", value, encode(value))
    before = keys.buckets()
    keys.put("a", value, None, {GONE: Performed(10)})
    after = keys.buckets()
    assert set(before) == set(after) == {bucket_of("a")}
    assert after[bucket_of("a")] != before[bucket_of("a")]


def test_a_digest_computed_on_demand_equals_the_one_computed_from_the_encoding() -> None:
    values: list[ReplicatedData] = [
        counter(3),
        ORSet().add(A, "x").add(B, ("y", 1)).reset_delta(),
        GCounter(),
    ]
    markers: dict[ReplicaId, Marker] = {GONE: Performed(4)}
    for value in values:
        given_raw, on_demand = KeyTable(never), KeyTable(never)
        given_raw.put("a", value, encode(value))
        on_demand.put("a", value)
        assert dict(on_demand.digests()) == dict(given_raw.digests()) == {"a": digest(value)}
        assert on_demand.buckets() == given_raw.buckets()
        given_raw.put("a", value, encode(value), markers)
        on_demand.put("a", value, None, markers)
        assert dict(on_demand.digests()) == dict(given_raw.digests())
        assert on_demand.digests()["a"] == envelope_digest(digest(value), markers)


def test_a_value_is_encoded_once_for_the_peers_it_goes_to_until_it_changes() -> None:
    """A quorum write sends one value to many peers: its bytes are made once (the same object
    comes back), in each format asked, and never outlive the value they encode."""
    keys = KeyTable(never)
    keys.put("k", counter(1))
    first = keys.payload("k")
    assert first == encode(counter(1))
    assert keys.payload("k") is first
    assert keys.payload("k", 1) == encode(counter(1), 1)
    assert keys.payload("k") == first  # back to the current format: made again, the same bytes
    given_bytes = encode(counter(2))
    keys.put("k", counter(2), given_bytes)
    assert keys.payload("k") is given_bytes  # the encoding given with the value is used
    keys.put("k", counter(3))
    assert keys.payload("k") == encode(counter(3))
    keys.put("other", counter(3))  # an equal value, its own object: bytes made for it
    assert keys.payload("other") == encode(counter(3))
    keys.delete("k")
    assert keys.payload("k") == TOMBSTONE


def test_a_value_put_without_its_encoding_after_one_with_gets_a_fresh_digest() -> None:
    keys = KeyTable(never)
    keys.put("a", counter(1), encode(counter(1)))
    assert keys.digests()["a"] == digest(counter(1))
    keys.put("a", counter(2))
    assert keys.digests()["a"] == digest(counter(2))
    keys.put("a", counter(3), encode(counter(3)))
    assert keys.digests()["a"] == digest(counter(3))


# -- buckets ------------------------------------------------------------------------------------


def test_buckets_change_exactly_in_the_bucket_of_a_changed_key() -> None:
    keys = KeyTable(never)
    for i, key in enumerate(KEYS):
        keys.put(key, counter(i + 1), encode(counter(i + 1)))
    before = keys.buckets()
    assert set(before) == {bucket_of(k) for k in KEYS}

    keys.put(OTHER, counter(40))
    after = keys.buckets()
    assert set(after) == set(before)
    assert {b for b in before if before[b] != after[b]} == {bucket_of(OTHER)}

    keys.delete("a")
    deleted = keys.buckets()
    assert {b for b in after if after[b] != deleted[b]} == {bucket_of("a")}

    keys.put(SAME_BUCKET[0], counter(41), None, {GONE: Performed(1)})
    marked = keys.buckets()
    assert {b for b in deleted if deleted[b] != marked[b]} == {bucket_of(SAME_BUCKET[0])}

    keys.put("k2", counter(1), encode(counter(1)))  # a new key in a new bucket
    grown = keys.buckets()
    assert set(grown) - set(marked) == {bucket_of("k2")}
    assert all(grown[b] == marked[b] for b in marked)


def test_a_bucket_whose_last_key_expired_disappears() -> None:
    keys = KeyTable(never)
    first, second = SAME_BUCKET
    bucket = bucket_of(first)
    keys.put(first, counter(1), encode(counter(1)))
    keys.put(second, counter(2), encode(counter(2)))
    keys.put(OTHER, counter(3), encode(counter(3)))
    both = keys.buckets()
    keys.expire(first)
    one_left = keys.buckets()
    assert bucket in one_left
    assert one_left[bucket] != both[bucket]
    assert one_left[bucket] == bucket_digests({second: digest(counter(2))}, [second])[bucket]
    keys.expire(second)
    assert keys.buckets() == {bucket_of(OTHER): both[bucket_of(OTHER)]}
    assert keys.digests_in([bucket]) == {}
    # A key that comes back fills the bucket again.
    keys.put(first, counter(1), encode(counter(1)))
    assert keys.buckets()[bucket] == bucket_digests({first: digest(counter(1))}, [first])[bucket]


def test_a_bucket_emptied_and_refilled_between_two_reads_is_right() -> None:
    keys = KeyTable(never)
    first, second = SAME_BUCKET
    keys.put(first, counter(1), encode(counter(1)))
    keys.buckets()
    keys.expire(first)
    keys.put(second, counter(2))
    assert keys.buckets() == bucket_digests({second: digest(counter(2))}, [second])


def test_digests_in_gives_the_keys_of_the_buckets_asked_and_ignores_what_is_no_bucket() -> None:
    keys = KeyTable(never)
    first, second = SAME_BUCKET
    keys.put(first, counter(1))
    keys.put(second, counter(2), encode(counter(2)), {GONE: Performed(3)})
    keys.put(OTHER, counter(3), encode(counter(3)))
    keys.delete("a")
    assert keys.digests_in([bucket_of(first)]) == {
        first: digest(counter(1)),
        second: envelope_digest(digest(counter(2)), {GONE: Performed(3)}),
    }
    assert keys.digests_in([bucket_of("a"), "junk", None, 2.5, b"61", [61], {}]) == {
        "a": TOMBSTONE_DIGEST
    }
    assert keys.digests_in([bucket_of(OTHER), bucket_of("a")]) == {
        OTHER: digest(counter(3)),
        "a": TOMBSTONE_DIGEST,
    }
    assert keys.digests_in([]) == {}
    assert keys.digests_in([12345, -1]) == {}


@pytest.mark.parametrize("held", [1_000, 10_000])
def test_reading_the_buckets_hashes_the_keys_changed_since_the_last_read_not_the_keys_held(
    monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    """A bucket's digest is kept as its keys change (two hashes a changed key: out with the old
    digest, in with the new), so a gossip round under a load costs what was written, not what
    is held (hashing every bucket's keys in order cost 0.5 s a round at 300,000 keys)."""
    keys = KeyTable(never)
    for i in range(held):
        keys.put(f"key{i}", counter(1), encode(counter(1)))
    keys.buckets()
    calls = counting_key_hashes(monkeypatch)
    for i in range(40):  # every bucket (probably) changes, as under a load
        keys.put(f"key{i}", counter(2), encode(counter(2)))
    for i in range(40, 50):
        keys.put(f"key{i}", counter(2))  # digest computed when next read
    keys.put("new", counter(1), encode(counter(1)))
    keys.delete("key50")
    keys.expire("key51")
    buckets = keys.buckets()
    assert calls[0] == 2 * 50 + 1 + 2 + 1
    assert keys.buckets() == buckets
    assert calls[0] == 2 * 50 + 1 + 2 + 1  # nothing changed since: no work
    assert buckets == bucket_digests(keys.digests(), keys.digests())  # as if from scratch


def test_format_1_buckets_hash_their_keys_in_order_as_the_first_release_does() -> None:
    """A peer of the first release compares format 1 bucket digests, the hash of the bucket's
    keys and digests in key order; later formats XOR the keys' hashes."""
    keys = KeyTable(never)
    first, second = SAME_BUCKET
    for key in (first, second, OTHER):
        keys.put(key, counter(3), encode(counter(3)))
    bucket = bucket_of(first)
    old = {k: digest(counter(3), 1) for k in (first, second)}
    ordered = hashlib.blake2b(digest_size=8)
    for key in sorted(old):
        ordered.update(key.encode() + b"\0" + old[key])
    assert keys.buckets(1)[bucket] == ordered.digest()
    assert keys.buckets(1) == bucket_digests(keys.digests(1), keys.digests(1), 1)
    new = {k: digest(counter(3)) for k in (first, second)}
    xor = key_hash(first, new[first]) ^ key_hash(second, new[second])
    assert keys.buckets()[bucket] == xor.to_bytes(8, "big")


# -- pruned replicas ------------------------------------------------------------------------------


def test_pruned_collects_the_replicas_of_performed_markers_only() -> None:
    keys = KeyTable(never)
    keys.put("a", counter(1), None, {GONE: Initialized(A, frozenset({"a"}))})
    assert keys.pruned == set()
    keys.put("a", counter(1), None, {GONE: Performed(5), B: Initialized(A, frozenset())})
    assert keys.pruned == {GONE}
    keys.put("k1", counter(1), None, {GONE_TOO: Performed(5)})
    assert keys.pruned == {GONE, GONE_TOO}
    # A pruned replica may never be a peer again: the set does not shrink with its markers.
    keys.put("a", counter(1), None, {})
    keys.delete("k1")
    assert keys.pruned == {GONE, GONE_TOO}


def test_the_pruned_set_is_the_same_object_for_the_life_of_the_table() -> None:
    # The PeerTable is given this set once and reads it on every learn().
    keys = KeyTable(never)
    pruned = keys.pruned
    keys.put("a", counter(1), None, {GONE: Performed(5)})
    keys.clear()
    keys.restore("a", join_envelope(encode(counter(1)), {GONE_TOO: Performed(5)}), Limits())
    assert keys.pruned is pruned
    assert GONE_TOO in pruned


# -- last use -----------------------------------------------------------------------------------

RULES = Settings(
    expire_keys_after_inactivity={"session:*": 60.0, "session:long*": 3600.0, "session:admin": 5.0}
)


def test_the_expiry_of_a_key_is_its_exact_rule_before_the_longest_prefix() -> None:
    keys = KeyTable(RULES.expiry, Clock(1_000_000.0))
    assert RULES.expiry("session:admin") == 5.0
    assert RULES.expiry("session:longer") == 3600.0
    assert RULES.expiry("session:x") == 60.0
    assert RULES.expiry("session:administrator") == 60.0
    assert RULES.expiry("other") is None
    keys.touch("session:admin")
    keys.touch("other")
    assert keys.used(["session:admin", "other"]) == {"session:admin": 1_000_000.0}


def test_a_key_is_expired_only_once_idle_longer_than_its_own_rule() -> None:
    clock = Clock(1000.0)
    keys = KeyTable(RULES.expiry, clock)
    for key in ("session:admin", "session:x", "session:long1", "other"):
        keys.put(key, counter(1), encode(counter(1)))
        keys.touch(key)
    clock.now = 1005.0  # exactly the admin key's 5 s: not yet
    assert keys.idle() == []
    assert not keys.expired("session:admin", 1000.0)
    clock.now = 1005.5
    assert keys.idle() == [("session:admin", 1000.0)]
    assert keys.expired("session:admin", 1000.0)
    assert not keys.expired("session:x", 1000.0)
    clock.now = 1060.0
    assert [k for k, _ in keys.idle()] == ["session:admin"]
    clock.now = 1061.0
    assert sorted(keys.idle()) == [("session:admin", 1000.0), ("session:x", 1000.0)]
    clock.now = 1000.0 + 10_000
    assert sorted(k for k, _ in keys.idle()) == ["session:admin", "session:long1", "session:x"]
    # A key without a rule never expires, whatever is asked.
    assert not keys.expired("other", 0.0)
    # Without a known last use there is nothing to expire by.
    assert not keys.expired("session:x", None)


def test_a_use_later_than_the_last_one_postpones_expiry_and_an_earlier_one_does_not() -> None:
    clock = Clock(1000.0)
    keys = KeyTable(RULES.expiry, clock)
    keys.put("session:x", counter(1), encode(counter(1)))
    keys.touch("session:x")
    keys.touch("session:x", at=1030.0)  # a peer used it later
    keys.touch("session:x", at=900.0)  # a stale report: ignored
    assert keys.used(["session:x"]) == {"session:x": 1030.0}
    clock.now = 1061.0
    assert keys.idle() == []
    clock.now = 1090.5
    assert keys.idle() == [("session:x", 1030.0)]
    clock.now = 1100.0
    keys.touch("session:x")
    assert keys.idle() == []
    assert keys.used(["session:x"]) == {"session:x": 1100.0}


def test_idle_lists_only_keys_holding_a_value() -> None:
    clock = Clock(1000.0)
    keys = KeyTable(RULES.expiry, clock)
    keys.put("session:x", counter(1), encode(counter(1)))
    keys.touch("session:x")
    keys.touch("session:never-stored", at=990.0)  # heard of from a peer only
    keys.put("session:y", counter(1), encode(counter(1)))
    keys.touch("session:y")
    keys.delete("session:y")
    clock.now = 2000.0
    assert keys.idle() == [("session:x", 1000.0)]


def test_a_key_without_expiry_keeps_no_last_use() -> None:
    clock = Clock(1000.0)
    keys = KeyTable(RULES.expiry, clock)
    keys.put("other", counter(1), encode(counter(1)))
    keys.touch("other")
    keys.touch("other", at=5.0)
    assert keys.used(["other"]) == {}
    assert keys.take_used_here() == {}
    clock.now = 10**9
    assert keys.idle() == []


def test_take_used_here_gives_the_keys_used_on_this_node_since_the_last_call() -> None:
    clock = Clock(1000.0)
    keys = KeyTable(RULES.expiry, clock)
    for key in ("session:a", "session:b", "session:c"):
        keys.put(key, counter(1), encode(counter(1)))
    keys.touch("session:a")
    clock.now = 1001.0
    keys.touch("session:b")
    keys.touch("session:c", at=1000.5)  # a peer's use: the peer tells the others itself
    keys.touch("other")  # never expires: nobody needs to hear of it
    assert keys.take_used_here() == {"session:a": 1000.0, "session:b": 1001.0}
    assert keys.take_used_here() == {}
    clock.now = 1002.0
    keys.touch("session:a")
    keys.touch("session:c", at=1003.0)  # later than here: the latest use is what travels
    keys.touch("session:c")
    assert keys.take_used_here() == {"session:a": 1002.0, "session:c": 1003.0}
    keys.touch("session:b")
    keys.expire("session:b")  # expired meanwhile: nothing to tell
    assert keys.take_used_here() == {}
    assert keys.used(["session:a", "session:b", "session:c", "nope"]) == {
        "session:a": 1002.0,
        "session:c": 1003.0,
    }


# -- against a model ------------------------------------------------------------------------------

counters = st.builds(counter, st.integers(1, 5), st.sampled_from([A, B]))
marker_choices = st.sampled_from(
    [
        None,
        {},
        {GONE: Performed(1)},
        {GONE: Initialized(A, frozenset({"a"}))},
        {GONE: Initialized(A, frozenset({"a", "b"})), GONE_TOO: Performed(2)},
    ]
)


class Model:
    """What the table should hold: key -> (value, markers), or None for a tombstone."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[ReplicatedData, dict[ReplicaId, Marker]] | None] = {}

    def put(self, key: str, value: ReplicatedData, markers: dict[ReplicaId, Marker] | None) -> None:
        current = self.keys.get(key)
        kept = current[1] if current is not None else {}
        self.keys[key] = (value, dict(kept if markers is None else markers))

    def digests(self, version: int = FORMAT_VERSION) -> dict[str, bytes]:
        return {
            key: TOMBSTONE_DIGEST if entry is None else expected_digest(*entry, version)
            for key, entry in self.keys.items()
        }

    def holds_value(self, key: str) -> bool:
        return self.keys.get(key) is not None


def apply(
    keys: KeyTable, model: Model, op: str, key: str, value: GCounter, markers: object, raw: bool
) -> None:
    """One operation as the Replicator uses it: no put on a tombstone (a deleted key stays
    deleted), and only keys holding a value expire (``idle()`` lists no others)."""
    assert markers is None or isinstance(markers, dict)
    if op.startswith(("put", "restore")) and key in model.keys and not model.holds_value(key):
        return
    if op == "put":
        keys.put(key, value, encode(value) if raw else None, markers)
        model.put(key, value, markers)
    elif op == "restore":
        keys.restore(key, join_envelope(encode(value), markers or {}), Limits())
        model.put(key, value, markers or {})
    elif op == "restore_rows":  # a load's chunk: this key and every other not deleted
        payload = join_envelope(encode(value), markers or {})
        chunk = [
            key,
            *(k for k in KEYS[:3] if k != key and (model.holds_value(k) or k not in model.keys)),
        ]
        assert keys.restore_rows([(k, payload) for k in chunk], Limits()) == []
        for k in chunk:
            model.put(k, value, markers or {})
    elif op == "restore_damaged":  # a row whose checksum fails when first used: dropped then
        keys.restore(key, encode(value)[:-1], Limits())
        assert keys.get(key) is None
        model.keys.pop(key, None)
    elif op == "delete":
        keys.delete(key)
        model.keys[key] = None
    elif op == "expire":
        if model.holds_value(key) or key not in model.keys:
            keys.expire(key)
            model.keys.pop(key, None)
    elif op == "clear":
        keys.clear()
        model.keys.clear()
    elif op == "forget_older":  # no peer of an older format left: its digests are dropped
        keys.keep_formats([])


def check(keys: KeyTable, model: Model, older: bool = False) -> None:
    """``older``: the digests and buckets in format 1 too (an older peer's, kept as well from
    the first look on)."""
    if older:
        expected_1 = model.digests(1)
        assert dict(keys.digests(1)) == expected_1
        assert keys.buckets(1) == bucket_digests(expected_1, expected_1, 1)
    expected = model.digests()
    assert dict(keys.digests()) == expected
    assert keys.buckets() == bucket_digests(expected, expected)
    assert keys.names() == {k for k in model.keys if model.holds_value(k)}
    assert keys.tombstones() == sum(1 for e in model.keys.values() if e is None)
    for key in KEYS:
        entry = model.keys.get(key)
        assert keys.get(key) == (None if entry is None else entry[0])
        assert dict(keys.markers(key)) == ({} if entry is None else entry[1])
        assert keys.is_deleted(key) == (key in model.keys and entry is None)
        for version in (FORMAT_VERSION, 1, FORMAT_VERSION):  # each twice: once made, once kept
            for _ in range(2):
                assert keys.payload(key, version) == (
                    None
                    if key not in model.keys
                    else TOMBSTONE
                    if entry is None
                    else join_envelope(encode(entry[0], version), entry[1])
                )
        bucket = bucket_of(key)
        in_bucket = {k: d for k, d in expected.items() if bucket_of(k) == bucket}
        assert keys.digests_in([bucket]) == in_bucket


class KeyTableMachine(RuleBasedStateMachine):
    """After every step, every digest and bucket equals one recomputed from scratch."""

    def __init__(self) -> None:
        super().__init__()
        self.table = KeyTable(never)
        self.model = Model()

    @rule(
        key=st.sampled_from(KEYS),
        value=counters,
        markers=marker_choices,
        raw=st.booleans(),
    )
    def put(
        self, key: str, value: GCounter, markers: dict[ReplicaId, Marker] | None, raw: bool
    ) -> None:
        apply(self.table, self.model, "put", key, value, markers, raw)

    @rule(key=st.sampled_from(KEYS), value=counters, markers=marker_choices)
    def restore(self, key: str, value: GCounter, markers: dict[ReplicaId, Marker] | None) -> None:
        apply(self.table, self.model, "restore", key, value, markers, True)

    @rule(key=st.sampled_from(KEYS), value=counters, markers=marker_choices)
    def restore_rows(
        self, key: str, value: GCounter, markers: dict[ReplicaId, Marker] | None
    ) -> None:
        apply(self.table, self.model, "restore_rows", key, value, markers, True)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        apply(self.table, self.model, "delete", key, counter(1), None, False)

    @rule(key=st.sampled_from(KEYS))
    def expire(self, key: str) -> None:
        apply(self.table, self.model, "expire", key, counter(1), None, False)

    @invariant()
    def digests_and_buckets_are_as_if_recomputed(self) -> None:
        check(self.table, self.model)


TestKeyTableMachine = KeyTableMachine.TestCase

operations = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *["put", "put", "put", "restore", "restore_rows", "delete", "expire", "expire"],
                *["clear", "forget_older", "restore_damaged"],
            ]
        ),
        st.sampled_from(KEYS[:3]),  # two keys share a bucket
        counters,
        marker_choices,
        st.booleans(),  # put: with the encoding
        st.integers(0, 3).map(lambda n: n == 0),  # look at digests and buckets now (1 in 4)
    ),
    min_size=4,
    max_size=40,
)


@given(operations, st.booleans())
def test_buckets_read_now_and_then_equal_those_recomputed_from_scratch(
    ops: list[tuple[str, str, GCounter, dict[ReplicaId, Marker] | None, bool, bool]],
    older: bool,
) -> None:
    """Changes that pile up between two reads of the buckets (several keys of a bucket, a key
    put then expired, ...) come out as if every digest were recomputed: in the current format,
    whose bucket digests are kept key by key, and in format 1 (``older``), whose are
    recomputed (and rebuilt from nothing after the last older peer left)."""
    keys, model = KeyTable(never), Model()
    for op, key, value, markers, raw, look in ops:
        apply(keys, model, op, key, value, markers, raw)
        if look:
            check(keys, model, older)
    check(keys, model, older)
