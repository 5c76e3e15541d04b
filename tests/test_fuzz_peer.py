"""Fuzzing the peer protocol: random, mutated, oversize and wrong-type peer payloads never crash,
hang or corrupt anything.

Every message of :mod:`thespian_dd._peers`, with wrong versions and senders, fields missing as
from another version, and random, mutated, oversize and wrong-type payloads, is sent in bursts
from an actor posing as peers to a real node's Replicator: each is rejected and counted, or
harmlessly ignored; none makes a handler raise, and only real peer names are ever learnt.  After
every burst the sentinel keys written before fuzzing read back exactly as they were; at the end
the Replicator still answers, its periodic rounds still run, and a new subscriber is notified.
The size cap applies to the result of a merge, not only to each payload.

In CI (``CI`` set: the 'ci' Hypothesis profile, 250 examples of 22 to 32 inputs) the fuzz test
sends at least 5,000 inputs; the count is asserted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from fuzzing import (
    BAD_KEYS,
    CI,
    DELETED_SENTINEL,
    FAKE,
    FUZZ_KEYS,
    JUNK,
    MAX_VALUE_BYTES,
    MIN_INPUTS_IN_CI,
    PROBE,
    SENTINEL_KEYS,
    Fuzzed,
    alive,
    check_changes,
    check_sentinels,
    encoded_samples,
    forged,
    fuzzed_node,
    mutations,
    run_burst,
    sample_values,
    valid_key,
)
from hypothesis import example, given
from hypothesis import strategies as st

from thespian_dd import (
    Flag,
    GCounter,
    Get,
    GetStats,
    GetSuccess,
    GSet,
    LWWMap,
    LWWRegister,
    ORSet,
    PNCounter,
    ReplicaId,
    Stats,
)
from thespian_dd._peers import (
    PROTOCOL_VERSION,
    TOMBSTONE,
    DeltaPropagation,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    Heartbeat,
    PeerHello,
    PeerMessage,
    PeerRead,
    PeerReadResult,
    PeerRemoved,
    PeerWrite,
    PeerWriteAck,
)
from thespian_dd._testkit.harness import eventually
from thespian_dd.codec import encode

fuzzed = pytest.fixture(scope="module", name="fuzzed")(fuzzed_node)

# -- peer payloads --------------------------------------------------------------------------------

FAKE_NAMES = ("fz-peer-a", "fz-peer-b", "fz-peer-c")
FAKE_REPLICAS = st.builds(ReplicaId, st.sampled_from(FAKE_NAMES), st.integers(1, 3))
JUNK_SENDERS = st.one_of(
    st.none(), st.text(max_size=5), st.integers(), st.tuples(st.text(max_size=3), st.integers())
)
SENDERS = st.one_of(FAKE_REPLICAS, FAKE_REPLICAS, JUNK_SENDERS)
VERSIONS = st.one_of(
    st.just(PROTOCOL_VERSION),
    st.just(PROTOCOL_VERSION),
    st.just(PROTOCOL_VERSION),
    st.integers(-2, 5),
    st.text(max_size=3),
    st.none(),
    st.floats(allow_nan=False),
)


@cache
def _oversize() -> dict[type, bytes]:
    """Valid encodings of each type, too big for the node's max_value_bytes."""
    big = "x" * (MAX_VALUE_BYTES + 100)
    many = [ReplicaId(f"fz-{i}", 1) for i in range(MAX_VALUE_BYTES // 8)]
    values: dict[type, Any] = {
        GCounter: GCounter(dict.fromkeys(many, 1)),
        PNCounter: PNCounter(GCounter(dict.fromkeys(many, 1)), GCounter()),
        ORSet: ORSet().add(FAKE, big),
        GSet: GSet().add(FAKE, big),
        LWWRegister: LWWRegister.create(FAKE, big),
        LWWMap: LWWMap().put(FAKE, "k", big),
        Flag: GSet().add(FAKE, big),  # a Flag cannot be big: a big value of another type
    }
    raws = {cls: encode(v) for cls, v in values.items()}
    assert all(len(raw) > MAX_VALUE_BYTES for raw in raws.values())
    return raws


@dataclass(frozen=True)
class Payload:
    """A peer payload for a key, and whether the Replicator must reject (and count) it."""

    raw: Any
    rejected: bool

    def __repr__(self) -> str:
        raw = self.raw
        shown = f"{raw[:24]!r}...({len(raw)} bytes)" if isinstance(raw, bytes) else repr(raw)
        return f"Payload({shown}, rejected={self.rejected})"


@st.composite
def _sentinel_payloads(draw: st.DrawFn, key: str, sentinels: dict[str, Any]) -> Payload:
    """A payload for a sentinel key that must never change it."""
    current = sentinels[key]
    own = encode(current)
    others = [raw for cls, raw in encoded_samples().items() if cls is not type(current)]
    choice = draw(st.sampled_from(["wrong type", "mutated", "random", "oversize", "junk", "own"]))
    if choice == "wrong type":
        return Payload(draw(st.sampled_from(others)), True)
    if choice == "mutated":
        bigger = encode(current.merge(sample_values()[type(current)]))
        return Payload(
            draw(mutations(draw(st.sampled_from([own, bigger])), keep_empty=False)), True
        )
    if choice == "random":
        return Payload(draw(st.binary(min_size=1, max_size=64)), True)
    if choice == "oversize":
        return Payload(_oversize()[type(current)], True)
    if choice == "junk":
        junk = draw(st.one_of(st.text(max_size=4), st.integers(), st.none(), st.just([own])))
        return Payload(junk, True)
    return Payload(own, False)  # its own value again: merged, nothing changes


@st.composite
def _fuzz_payloads(draw: st.DrawFn) -> Payload:
    """A payload for a fuzz key: anything, valid or not (the key's state is not checked)."""
    samples = list(encoded_samples().values())
    return Payload(
        draw(
            st.one_of(
                st.sampled_from([*samples, TOMBSTONE]),
                st.sampled_from(samples).flatmap(mutations),
                st.binary(max_size=32),
                st.sampled_from(list(_oversize().values())),
                st.none(),
                st.integers(),
            )
        ),
        False,
    )


@st.composite
def _entries(draw: st.DrawFn, sentinels: dict[str, Any]) -> dict[Any, Payload]:
    entries: dict[Any, Payload] = {}
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["sentinel", "deleted", "fuzz", "bad key"]))
        if kind == "sentinel":
            key = draw(st.sampled_from(list(sentinels)))
            entries[key] = draw(_sentinel_payloads(key, sentinels))
        elif kind == "deleted":  # a tombstone wins: every value for it is ignored
            entries[DELETED_SENTINEL] = Payload(
                draw(st.sampled_from(list(encoded_samples().values()))), False
            )
        elif kind == "fuzz":
            entries[draw(FUZZ_KEYS.filter(lambda k: len(k) < 100))] = draw(_fuzz_payloads())
        else:
            bad = draw(BAD_KEYS)
            try:
                hash(bad)
            except TypeError:
                bad = repr(bad) + "\x00"
            entries[bad] = Payload(draw(st.sampled_from(list(encoded_samples().values()))), True)
    return entries


def _maybe(valid: Any) -> Any:
    """Mostly ``valid``, sometimes junk of any type."""
    return st.one_of(valid, valid, valid, JUNK)


@dataclass(frozen=True)
class PeerCase:
    """A peer message with Payload markers (and PROBE for the fake peer's address)."""

    cls: type
    fields: dict[str, Any]

    def build(self, probe: Any) -> Any:
        def resolve(value: Any) -> Any:
            if value is PROBE:
                return probe
            if isinstance(value, Payload):
                return value.raw
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if type(value) is tuple:  # a ReplicaId is a tuple too: it must stay one
                return tuple(resolve(v) for v in value)
            return value

        fields = {name: resolve(value) for name, value in self.fields.items()}
        try:
            return self.cls(**fields)
        except TypeError:  # fields missing or extra: what another version would send
            return forged(self.cls, **fields)

    def must_reject(self) -> int:  # noqa: PLR0911
        """How many rejections the Replicator must count for this message, at least."""
        version, sender = self.fields.get("version"), self.fields.get("sender")
        if self.cls is PeerRemoved or "sender" not in self.fields or "version" not in self.fields:
            return 0
        if self.cls is PeerMessage or not isinstance(sender, ReplicaId):
            return 1
        if version != PROTOCOL_VERSION:
            return 1
        if {f.name for f in dataclasses.fields(self.cls)} - set(self.fields):
            return 0  # a field is missing: where the handler stops depends on which
        entries = self.fields.get("entries")
        if self.cls is GossipEntries and isinstance(entries, dict):
            return sum(1 for p in entries.values() if isinstance(p, Payload) and p.rejected)
        payload = self.fields.get("payload")
        if self.cls is PeerWrite and isinstance(payload, Payload):
            return int(payload.rejected or not valid_key(self.fields.get("key")))
        return 0


@st.composite
def peer_cases(draw: st.DrawFn, sentinels: dict[str, Any]) -> PeerCase:
    cls = draw(
        st.sampled_from(
            [
                GossipEntries,
                GossipEntries,
                DeltaPropagation,
                DeltaPropagation,
                PeerWrite,
                PeerWrite,
                PeerRead,
                PeerReadResult,
                PeerWriteAck,
                GossipStatus,
                GossipKeys,
                PeerHello,
                Heartbeat,
                PeerRemoved,
                PeerMessage,
            ]
        )
    )
    fields: dict[str, Any] = {"version": draw(VERSIONS), "sender": draw(SENDERS)}
    any_key = st.one_of(SENTINEL_KEYS, FUZZ_KEYS.filter(lambda k: len(k) < 100), BAD_KEYS)
    used = _maybe(
        st.dictionaries(any_key.filter(_hashable), st.floats(allow_nan=False), max_size=2)
    )
    if cls in (GossipEntries, DeltaPropagation):
        fields["entries"] = draw(_maybe(_entries(sentinels)))
        fields["used"] = draw(used)
        if cls is GossipEntries:
            fields["want"] = draw(_maybe(st.frozensets(SENTINEL_KEYS, max_size=2)))
        else:
            fields["seq"] = draw(_maybe(st.integers(0, 5)))
    elif cls is PeerWrite:
        key = draw(st.one_of(st.sampled_from(list(sentinels)), FUZZ_KEYS, BAD_KEYS))
        if _hashable(key) and key in sentinels:
            payload = draw(_sentinel_payloads(key, sentinels))
        elif valid_key(key):
            payload = draw(_fuzz_payloads())
        else:
            payload = Payload(encode(GCounter()), True)
        fields.update(request_id=draw(_maybe(st.text(max_size=8))), key=key, payload=payload)
    elif cls is PeerRead:
        fields.update(request_id=draw(_maybe(st.text(max_size=8))), key=draw(any_key))
    elif cls is PeerReadResult:
        fields.update(
            request_id=draw(_maybe(st.text(max_size=8))),
            key=draw(any_key),
            payload=draw(_fuzz_payloads()),
        )
    elif cls is PeerWriteAck:
        fields["request_id"] = draw(_maybe(st.text(max_size=8)))
    elif cls is GossipStatus:
        fields["buckets"] = draw(
            _maybe(st.dictionaries(st.integers(-1, 70), st.binary(max_size=8)))
        )
        fields["peers"] = draw(_maybe(_directories()))
        fields["used"] = draw(used)
    elif cls is GossipKeys:
        fields["digests"] = draw(
            _maybe(st.dictionaries(any_key.filter(_hashable), st.binary(max_size=16)))
        )
        fields["buckets"] = draw(_maybe(st.frozensets(st.integers(-1, 70), max_size=4)))
        parts = st.tuples(st.integers(-1, 300), st.integers(-1, 300))
        fields["part"] = draw(st.one_of(st.none(), _maybe(parts)))
    elif cls is PeerHello:
        fields["address"] = draw(st.one_of(st.just(PROBE), st.just(PROBE), JUNK))
        fields["peers"] = draw(_maybe(_directories()))
        fields["reply"] = draw(_maybe(st.booleans()))
    elif cls is PeerRemoved:
        fields["removed"] = draw(st.one_of(FAKE_REPLICAS, JUNK))
    if cls in (GossipStatus, PeerHello, Heartbeat):  # what the sender says of its watch
        names = st.frozensets(st.one_of(st.sampled_from(["a", "b", "c"]), st.text(max_size=3)))
        fields["watching"] = draw(st.one_of(st.none(), _maybe(names)))
        fields["silent"] = draw(_maybe(names))
    if cls is not PeerMessage and draw(st.integers(0, 9)) == 0:
        del fields[draw(st.sampled_from(sorted(fields)))]  # a field of another version is missing
    return PeerCase(cls, fields)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _directories() -> Any:
    entry = st.one_of(
        st.tuples(FAKE_REPLICAS, st.one_of(st.just(PROBE), JUNK)),
        st.tuples(FAKE_REPLICAS),
        JUNK,
    )
    return st.dictionaries(
        st.one_of(st.sampled_from(FAKE_NAMES), st.text(max_size=3)), entry, max_size=3
    )


PEER_REGRESSIONS = [
    # A directory that is no mapping raised in the GossipStatus handler (uncounted).
    PeerCase(
        GossipStatus,
        {"version": 1, "sender": ReplicaId("fz-peer-a", 1), "buckets": {}, "peers": 5},
    ),
    # A hello whose address is no ActorAddress was learnt as a peer; every later gossip round
    # then raised before scheduling the next one: gossip stopped for good.
    PeerCase(PeerHello, {"version": 1, "sender": ReplicaId("fz-peer-b", 1), "address": 5}),
    # Buckets that are not iterable, from a known peer.
    PeerCase(PeerHello, {"version": 1, "sender": ReplicaId("fz-peer-c", 1), "address": PROBE}),
    PeerCase(
        GossipKeys,
        {"version": 1, "sender": ReplicaId("fz-peer-c", 1), "digests": {}, "buckets": 7},
    ),
    # A delta numbered with something that is not an int, then a good one from the same sender.
    PeerCase(
        DeltaPropagation,
        {"version": 1, "sender": ReplicaId("fz-peer-c", 1), "seq": "x", "entries": {}},
    ),
    PeerCase(
        DeltaPropagation,
        {"version": 1, "sender": ReplicaId("fz-peer-c", 1), "seq": 1, "entries": {}},
    ),
]


@pytest.mark.multinode
@pytest.mark.timeout(900)
def test_random_peer_payloads_are_rejected_and_counted_or_ignored(
    fuzzed: Fuzzed, figure: Callable[[str], None]
) -> None:
    sent: list[int] = []
    sentinels = fuzzed.sentinels

    @given(batch=st.lists(peer_cases(sentinels), min_size=22, max_size=32))
    @example(batch=PEER_REGRESSIONS)
    def run(batch: list[PeerCase]) -> None:
        before = fuzzed.ask(GetStats())
        assert isinstance(before, Stats), before
        _, others = run_burst(fuzzed, [case.build(fuzzed.probe) for case in batch], [])
        check_changes(fuzzed, others)
        # Every rejection the batch must cause.  Thespian's transport does not keep a burst in
        # order: a message may reach the Replicator after the GetStats sent behind it (seen as a
        # rejection counted only a moment later), so the count is awaited, not read once.
        at_least = sum(case.must_reject() for case in batch)
        floor = before.rejected_inputs + at_least

        def counted() -> Stats | None:
            stats = fuzzed.ask(GetStats())
            assert isinstance(stats, Stats), stats
            return stats if stats.rejected_inputs >= floor else None

        after = eventually(counted, what=f"{at_least} rejections counted after {before}")
        assert after is not None
        assert after.keys >= len(sentinels)
        assert after.peers <= len(FAKE_NAMES), after  # only the fake names, never junk
        sent.append(len(batch))

    run()
    alive(fuzzed)
    check_sentinels(fuzzed)
    if CI:
        assert sum(sent) >= MIN_INPUTS_IN_CI, f"only {sum(sent)} peer inputs were sent"
    figure(f"peer fuzz: {sum(sent)} inputs in {len(sent)} bursts")


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_the_size_cap_applies_to_the_merge_result(fuzzed: Fuzzed) -> None:
    half = "y" * (MAX_VALUE_BYTES // 2 + 10)
    key = f"fz/cap/{next(fuzzed.tokens)}"
    sender = ReplicaId("fz-peer-a", 9)
    first = encode(GSet().add(FAKE, "a" + half))
    second = encode(GSet().add(FAKE, "b" + half))
    assert len(first) < MAX_VALUE_BYTES < len(first) + len(second)
    before = fuzzed.ask(GetStats())
    fuzzed.send_all([GossipEntries(PROTOCOL_VERSION, sender, {key: first})])
    reply = eventually(lambda: _found(fuzzed.ask(Get(key))), what="the first value merged")
    fuzzed.send_all([GossipEntries(PROTOCOL_VERSION, sender, {key: second})])
    eventually(
        lambda: fuzzed.ask(GetStats()).rejected_inputs == before.rejected_inputs + 1,
        what="the merge over the cap rejected",
    )
    assert fuzzed.ask(Get(key)).data == reply.data  # unchanged


def _found(reply: Any) -> Any:
    return reply if isinstance(reply, GetSuccess) else None
