"""Fuzzing the client protocol: random and mutated client messages never crash, hang or corrupt
anything.

Every request of :mod:`thespian_dd.messages`, with fields of right and wrong types, forged
consistency levels, modify functions that raise or return the wrong thing (or arrive as mutated
dill bytes), and arbitrary other objects, is sent in bursts from an actor to a real node's
Replicator: each gets exactly one reply of its family naming the problem.  After every burst the
sentinel keys written before fuzzing read back exactly as they were; at the end the Replicator
still answers, its periodic rounds still run, and a new subscriber is notified.

In CI (``CI`` set: the 'ci' Hypothesis profile, 250 examples of 22 to 32 inputs) the test sends
at least 5,000 inputs; the count is asserted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import dill
import pytest
from fuzzing import (
    BAD_KEYS,
    CI,
    DELETED_SENTINEL,
    FAKE,
    FUZZ_KEYS,
    INIT,
    JUNK,
    MIN_INPUTS_IN_CI,
    PROBE,
    SENTINEL_KEYS,
    SENTINELS,
    Expect,
    Fuzzed,
    FuzzThing,
    Placeholder,
    alive,
    bump,
    check_changes,
    check_sentinels,
    forged,
    fuzzed_node,
    mutations,
    other_type,
    raising,
    returning,
    run_burst,
    same,
    valid_key,
)
from hypothesis import example, given
from hypothesis import strategies as st

from thespian_dd import (
    Changed,
    DataDeleted,
    Delete,
    Deleted,
    DeleteSuccess,
    Flag,
    FlushChanges,
    GCounter,
    Get,
    GetDataDeleted,
    GetFailure,
    GetKeys,
    GetReplicaCount,
    GetStats,
    GetSuccess,
    GSet,
    InvalidRequest,
    Keys,
    LWWMap,
    LWWRegister,
    ModifyFailure,
    NotFound,
    ORMap,
    ORSet,
    PNCounter,
    ReadAll,
    ReadConsistency,
    ReadFrom,
    ReadLocal,
    ReadMajority,
    ReplicaCount,
    ReplicatedData,
    ReplicationDeleteFailure,
    Stats,
    Subscribe,
    Unsubscribe,
    Update,
    UpdateDataDeleted,
    UpdateSuccess,
    UpdateTimeout,
    WriteAll,
    WriteConsistency,
    WriteLocal,
    WriteMajority,
    WriteTo,
)
from thespian_dd.codec import decode, encode
from thespian_dd.data import CausalContext
from thespian_dd.messages import _load_update

fuzzed = pytest.fixture(scope="module", name="fuzzed")(fuzzed_node)

# -- what modify can be ---------------------------------------------------------------------------

BAD_MODIFIES: list[Any] = [
    *(partial(raising, kind) for kind in (ValueError, KeyError, SystemExit, KeyboardInterrupt)),
    partial(raising, GeneratorExit),
    partial(returning, None),
    partial(returning, 5),
    partial(returning, "x"),
    other_type,
    5,
    "not a function",
    None,
]
"""Modify values that must fail."""


def _bad_modify_error(modify: Any) -> str:
    """What the failure of a modify of BAD_MODIFIES says."""
    if isinstance(modify, partial) and modify.func is raising:
        return f"modify failed: {modify.args[0].__name__}"
    if (isinstance(modify, partial) and modify.func is returning) or modify is other_type:
        return "must return a"
    assert not callable(modify)
    return "must be callable"


class FuzzCRDT(GCounter):
    """A ReplicatedData the codec does not know (it cannot be gossiped nor stored)."""

    __slots__ = ()


DEFAULT = Placeholder("DEFAULT")  # the request's default consistency


# -- client messages ------------------------------------------------------------------------------

ANY_KEY = st.one_of(FUZZ_KEYS, BAD_KEYS, SENTINEL_KEYS)

TIMEOUTS = st.floats(0.01, 0.3)
BAD_TIMEOUTS = st.sampled_from([math.nan, -1.0, 0.0, -0.0, math.inf, -math.inf, 1e300, "1", None])
BAD_N = st.sampled_from([0, -1, "2", None, 1.5, True])
BAD_CAPS = st.sampled_from(["x", None, (1,)])


def _consistencies(local: type, from_n: type, majority: type, all_: type) -> Any:
    valid = st.one_of(
        st.builds(local),
        st.builds(from_n, st.integers(1, 3), TIMEOUTS),
        st.builds(majority, TIMEOUTS, st.integers(0, 3)),
        st.builds(all_, TIMEOUTS),
    )
    forged_levels = st.one_of(  # the right class, with fields its constructor refuses
        st.builds(lambda n, t: forged(from_n, n=n, timeout=t), BAD_N, TIMEOUTS),
        st.builds(lambda n, t: forged(from_n, n=n, timeout=t), st.integers(1, 3), BAD_TIMEOUTS),
        st.builds(lambda t: forged(majority, timeout=t, min_cap=0), BAD_TIMEOUTS),
        st.builds(lambda c: forged(majority, timeout=0.1, min_cap=c), BAD_CAPS),
        st.builds(lambda t: forged(all_, timeout=t), BAD_TIMEOUTS),
    )
    return valid, forged_levels


READS, FORGED_READS = _consistencies(ReadLocal, ReadFrom, ReadMajority, ReadAll)
WRITES, FORGED_WRITES = _consistencies(WriteLocal, WriteTo, WriteMajority, WriteAll)
WRONG_READS = st.one_of(JUNK, WRITES)  # a write level for a read is of the wrong kind too
WRONG_WRITES = st.one_of(JUNK, READS)

CRDT_INITIALS = st.sampled_from(
    [GCounter(), PNCounter(), ORSet(), GSet(), Flag(), LWWMap(), LWWRegister("i", 1, INIT)]
)
BAD_INITIALS: Any = st.one_of(
    st.sampled_from([5, "x", None, {}, [1], b"", 1.5, GCounter, ORMap]), st.builds(FuzzThing, JUNK)
)


def _broken_gcounter(units: Any) -> GCounter:
    """A GCounter holding ``units`` as they are (its constructor would refuse them)."""
    counter = GCounter.__new__(GCounter)
    object.__setattr__(counter, "units", units)
    object.__setattr__(counter, "_delta", None)
    return counter


BROKEN_INITIALS = st.sampled_from(
    [
        ORSet({"a": (FAKE, 5)}, CausalContext()),  # a dot outside its context: not decodable
        _broken_gcounter({"x": "y"}),
        _broken_gcounter(CausalContext({"x": (0, 5)})),  # type: ignore[dict-item]
        _broken_gcounter(CausalContext({FAKE: (-5, 0)})),
        FuzzCRDT(),
    ]
)
"""CRDTs whose state is broken, or of a type the codec does not know."""
GOOD_MODIFY = st.sampled_from([bump, same])
BAD_MODIFY = st.sampled_from(BAD_MODIFIES)


@cache
def _modify_blob() -> bytes:
    blob: bytes = dill.dumps(bump, recurse=True)
    return blob


@st.composite
def _mutated_blobs(draw: st.DrawFn) -> bytes:
    return draw(mutations(_modify_blob()))


@dataclass(frozen=True)
class Case:
    """One client input: ``kind`` names the request (or ``object``/``stripped``)."""

    kind: str
    key: Any = None
    consistency: Any = DEFAULT
    initial: Any = None
    modify: Any = None
    blob: bytes | None = None  # an Update's modify as these (mutated) dill bytes
    subscriber: Any = None
    obj: Any = None
    note: Any = None  # echoed with the request token: requests are opaque


def _get_cases() -> Any:
    return st.one_of(
        st.builds(Case, st.just("get"), ANY_KEY, st.one_of(st.just(DEFAULT), READS)),
        st.builds(Case, st.just("get"), ANY_KEY, st.one_of(WRONG_READS, FORGED_READS)),
    )


def _update_cases() -> Any:
    def case(**kw: Any) -> Any:
        fields: dict[str, Any] = {
            "kind": st.just("update"),
            "key": ANY_KEY,
            "consistency": st.one_of(st.just(DEFAULT), WRITES),
            "initial": CRDT_INITIALS,
            "modify": BAD_MODIFY,
        }
        fields.update(kw)
        return st.builds(Case, **fields)

    return st.one_of(
        case(key=FUZZ_KEYS, modify=GOOD_MODIFY),  # the only ones that may succeed
        case(),
        case(initial=BAD_INITIALS, modify=GOOD_MODIFY),
        # (None is no wrong level for an Update: it stands for the default, WriteLocal.)
        case(
            consistency=st.one_of(WRONG_WRITES, FORGED_WRITES).filter(lambda c: c is not None),
            modify=GOOD_MODIFY,
        ),
        case(key=BAD_KEYS, modify=GOOD_MODIFY),
        case(key=FUZZ_KEYS, initial=BROKEN_INITIALS, modify=GOOD_MODIFY),
        case(key=FUZZ_KEYS, modify=st.none(), blob=_mutated_blobs()),
        # A sentinel with a valid modify but an initial of another type: refused.
        case(key=st.sampled_from(list(SENTINELS)), modify=GOOD_MODIFY).filter(
            lambda c: type(c.initial) is not type(SENTINELS[c.key][0])
        ),
    )


def _delete_cases() -> Any:
    return st.one_of(
        st.builds(Case, st.just("delete"), FUZZ_KEYS, st.one_of(st.just(DEFAULT), WRITES)),
        st.builds(Case, st.just("delete"), st.one_of(BAD_KEYS, FUZZ_KEYS), WRONG_WRITES),
        st.builds(Case, st.just("delete"), ANY_KEY, FORGED_WRITES),
        st.builds(Case, st.just("delete"), BAD_KEYS, WRITES),
    )


def _subscribe_cases() -> Any:
    subscribers = st.one_of(st.none(), st.just(PROBE), JUNK)
    return st.one_of(
        st.builds(Case, st.just("subscribe"), ANY_KEY, subscriber=subscribers),
        st.builds(
            Case, st.just("subscribe"), st.sampled_from(["fz/*", "sentinel/*"]), subscriber=JUNK
        ),
        st.builds(Case, st.just("unsubscribe"), ANY_KEY, subscriber=subscribers),
    )


def _other_cases() -> Any:
    replies = st.sampled_from(
        [
            GetSuccess("k", None, GCounter()),
            UpdateSuccess("k", None),
            Keys(frozenset()),
            ReplicaCount(1),
            InvalidRequest("X", "y"),
            Changed("sentinel/gcounter", GCounter().increment(FAKE, 1000)),
            Deleted("sentinel/gcounter"),
        ]
    )
    return st.one_of(
        st.builds(Case, st.sampled_from(["keys", "count", "stats", "flush"])),
        st.builds(Case, st.just("object"), obj=st.one_of(JUNK, replies)),
        st.builds(Case, st.just("object"), obj=st.builds(FuzzThing, JUNK)),
        st.builds(
            Case,
            st.just("stripped"),
            obj=st.sampled_from([(Get, "key"), (Get, "consistency"), (Delete, "key")]),
            key=ANY_KEY,
        ),
        st.builds(
            Case,
            st.just("stripped"),
            obj=st.sampled_from([(Delete, "consistency"), (Subscribe, "key")]),
            key=st.one_of(FUZZ_KEYS, BAD_KEYS),
        ),
    )


CLIENT_CASES = st.one_of(
    _get_cases(), _update_cases(), _delete_cases(), _subscribe_cases(), _other_cases()
)
CLIENT_BATCHES = st.lists(CLIENT_CASES, min_size=22, max_size=32)


def _build(case: Case, request: Any, probe: Any) -> Any:  # noqa: PLR0911 - one per kind
    """The message of ``case``, carrying ``request``."""
    consistency = {} if case.consistency is DEFAULT else {"consistency": case.consistency}
    subscriber = probe if case.subscriber is PROBE else case.subscriber
    if case.kind == "get":
        return Get(case.key, request=request, **consistency)
    if case.kind == "update":
        if case.blob is not None or not callable(case.modify):
            # As a client that skips Update's own checks would send it (they refuse these).
            blob = dill.dumps(case.modify) if case.blob is None else case.blob
            level = consistency.get("consistency", WriteLocal())
            return _load_update(case.key, case.initial, blob, level, request)
        return Update(case.key, case.initial, case.modify, request=request, **consistency)
    if case.kind == "delete":
        return Delete(case.key, request=request, **consistency)
    if case.kind == "subscribe":
        return Subscribe(case.key, subscriber)
    if case.kind == "unsubscribe":
        return Unsubscribe(case.key, subscriber)
    if case.kind == "flush":
        return FlushChanges()
    if case.kind in ("keys", "count", "stats"):
        return {"keys": GetKeys, "count": GetReplicaCount, "stats": GetStats}[case.kind](request)
    if case.kind == "stripped":
        cls, missing = case.obj
        fields = {"key": case.key, "consistency": ReadLocal() if cls is Get else WriteLocal()}
        if cls is Subscribe:
            fields = {"key": case.key, "subscriber": None}
        else:
            fields["request"] = request
        fields = {k: v for k, v in fields.items() if k != missing}
        return forged(cls, **fields)
    obj = case.obj
    if dataclasses.is_dataclass(obj) and hasattr(obj, "request"):
        return dataclasses.replace(obj, request=request)  # type: ignore[type-var]
    return obj


def _consistency_ok(consistency: Any, expected: type) -> bool:
    """Whether a consistency level is one the Replicator must accept."""
    if consistency is DEFAULT:
        return True
    if not isinstance(consistency, expected):
        return False
    level: Any = consistency
    try:
        dataclasses.replace(level)  # runs the constructor's checks again
        level.replicas_needed(3)
    except (TypeError, ValueError, AttributeError):
        return False
    timeout = getattr(consistency, "timeout", 0.1)
    return isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout < 1e13


def _modify_error(case: Case) -> str | None:
    """What an Update's modify must fail with, or None if it works."""
    if case.blob is not None:
        try:
            loaded = dill.loads(case.blob)
        except Exception:  # noqa: BLE001 - anything the blob does is the point
            return "modify could not be loaded"
        return None if loaded in (bump, same) else "?"
    if case.modify in (bump, same):
        return None
    return _bad_modify_error(case.modify)


def _expect(case: Case, token: int, sentinels: dict[str, Any]) -> Expect | None:  # noqa: PLR0911
    """The reply ``case`` must get (None: no reply at all)."""
    key = case.key
    fuzz_key = isinstance(key, str) and key.startswith("fz/")
    if case.kind == "get":
        if not valid_key(key):
            return Expect(token, (GetFailure,), ("key must",))
        if not _consistency_ok(case.consistency, ReadConsistency):
            return Expect(token, (GetFailure,), ("consistency",))
        quorum = (GetFailure,) if case.consistency is not DEFAULT else ()
        if key == DELETED_SENTINEL:
            return Expect(token, (GetDataDeleted,))
        if key in sentinels:
            return Expect(token, (GetSuccess, *quorum), ("replicas",), data=sentinels[key])
        return Expect(token, (GetSuccess, NotFound, GetDataDeleted, *quorum), ("replicas",))
    if case.kind == "update":
        if not valid_key(key):
            return Expect(token, (ModifyFailure,), ("key must",))
        if not isinstance(case.initial, ReplicatedData):
            return Expect(token, (ModifyFailure,), ("initial must be a CRDT",))
        broken = _broken(case.initial)
        consistency = DEFAULT if case.consistency is None else case.consistency  # Update's default
        if not _consistency_ok(consistency, WriteConsistency):
            return Expect(token, (ModifyFailure,), ("consistency",))
        error = _modify_error(case)
        if key == DELETED_SENTINEL:
            return Expect(token, (UpdateDataDeleted,))
        if key in sentinels:
            if type(sentinels[key]) is not type(case.initial):
                return Expect(token, (ModifyFailure,), ("holds a",))
            assert error is not None, "a sentinel must never be changed"
            return Expect(token, (ModifyFailure,), (error,) if error != "?" else ())
        assert fuzz_key
        if key.startswith("fz/new/"):  # a key that never exists before
            if broken:
                return Expect(token, (ModifyFailure,), ("initial is not a valid",))
            if error in (None, "?"):
                return Expect(token, (UpdateSuccess, ModifyFailure), ("modify", "must"))
            return Expect(token, (ModifyFailure,), (error,))
        # The key's state is not known here: a value of another type, deleted, or new.
        errors = ("holds a", "initial is not a valid") if broken else ("holds a",)
        if error is None or error == "?":
            replies = (UpdateSuccess, UpdateTimeout, UpdateDataDeleted, ModifyFailure)
            return Expect(token, replies, (*errors, "modify", "must") if error else errors)
        return Expect(token, (ModifyFailure, UpdateDataDeleted), (error, *errors))
    if case.kind == "delete":
        if not valid_key(key):
            return Expect(token, (ReplicationDeleteFailure,), ("key must",))
        if not _consistency_ok(case.consistency, WriteConsistency):
            return Expect(token, (ReplicationDeleteFailure,), ("consistency",))
        assert fuzz_key, "a sentinel must never be deleted"
        return Expect(
            token, (DeleteSuccess, DataDeleted, ReplicationDeleteFailure), ("not confirmed",)
        )
    if case.kind == "subscribe":
        if not valid_key(key):
            return Expect(None, (InvalidRequest,), ("key must",), message_type="Subscribe")
        if case.subscriber is not None and case.subscriber is not PROBE:
            return Expect(None, (InvalidRequest,), ("subscriber",), message_type="Subscribe")
        return None  # subscribed: Changed messages follow, no reply
    if case.kind in ("unsubscribe", "flush"):
        return None
    if case.kind == "keys":
        return Expect(token, (Keys,))
    if case.kind == "count":
        return Expect(token, (ReplicaCount,))
    if case.kind == "stats":
        return Expect(token, (Stats,))
    if case.kind == "stripped":
        cls, missing = case.obj
        if cls is Subscribe:
            return Expect(None, (InvalidRequest,), message_type="Subscribe")
        family = GetFailure if cls is Get else ReplicationDeleteFailure
        errors = (missing, "key must") if valid_key(key) or missing == "key" else ("key must",)
        return Expect(token, (family,), errors)
    obj = case.obj
    tokened = dataclasses.is_dataclass(obj) and hasattr(obj, "request")
    return Expect(
        token if tokened else None,
        (InvalidRequest,),
        ("does not understand",),
        message_type=type(obj).__name__,
    )


def _broken(initial: ReplicatedData) -> bool:
    """Whether the codec cannot carry ``initial`` (so a new key must refuse it)."""
    try:
        decode(encode(initial))
    except Exception:  # noqa: BLE001
        return True
    return False


def _check_reply(expect: Expect, reply: Any) -> None:
    assert isinstance(reply, expect.types), (expect, reply)
    if expect.message_type is not None:
        assert getattr(reply, "message_type", None) == expect.message_type, (expect, reply)
    error = getattr(reply, "error", None)
    if error is not None and expect.errors:
        assert isinstance(error, str), (expect, reply)
        assert any(e in error for e in expect.errors), (expect, reply)
    if isinstance(reply, GetSuccess) and expect.data is not None:
        assert reply.data == expect.data, (expect, reply)


REGRESSIONS = [
    # modify raising a BaseException killed the Replicator's process (no reply, state lost).
    [Case("update", "fz/a", DEFAULT, GCounter(), partial(raising, SystemExit))],
    [Case("update", "fz/a", DEFAULT, GCounter(), partial(raising, KeyboardInterrupt))],
    # A consistency level whose fields skipped the constructor's checks raised in the handler,
    # after the value was already stored (then applied twice by Thespian's retry).
    [Case("update", "fz/b", forged(WriteTo, n="x", timeout=math.nan), GCounter(), bump)],
    [Case("get", "sentinel/gcounter", forged(ReadMajority, timeout=0.1, min_cap="x"))],
    [Case("delete", "fz/c", forged(WriteAll, timeout=math.inf))],
    # A subscriber that is no ActorAddress was kept, and every later notification raised.
    [Case("subscribe", "sentinel/*", subscriber=5)],
    # A request from another version, without one of its fields.
    [Case("stripped", "fz/a", obj=(Get, "consistency"))],
    # A new key from an initial the codec cannot carry (encode, or decode what it wrote):
    # accepted, then every gossip round raised (and was never scheduled again).
    [Case("update", "fz/new/broken", DEFAULT, ORSet({"a": (FAKE, 5)}, CausalContext()), same)],
    [Case("update", "fz/new/unknown", DEFAULT, FuzzCRDT(), bump)],
]


@pytest.mark.multinode
@pytest.mark.timeout(900)
def test_random_client_messages_get_a_failure_reply_and_change_nothing(
    fuzzed: Fuzzed, figure: Callable[[str], None]
) -> None:
    sent: list[int] = []

    @given(batch=CLIENT_BATCHES)
    @example(batch=[case for cases in REGRESSIONS for case in cases])
    def run(batch: list[Case]) -> None:
        expects: list[Expect] = []
        messages: list[Any] = []
        for case in batch:
            token = next(fuzzed.tokens)
            request = ("fz", token) if case.note is None else ("fz", token, case.note)
            messages.append(_build(case, request, fuzzed.probe))
            expect = _expect(case, token, fuzzed.sentinels)
            if expect is not None:
                expects.append(expect)
        replies, others = run_burst(fuzzed, messages, expects)
        for expect in expects:
            if expect.token is not None:
                _check_reply(expect, replies[expect.token])
        for message in others:
            if isinstance(message, InvalidRequest) and message.request is None:
                wanted = [e for e in expects if e.message_type == message.message_type]
                assert any(
                    not e.errors or any(x in message.error for x in e.errors) for e in wanted
                ), message
        check_changes(fuzzed, others)
        sent.append(len(messages))

    run()
    alive(fuzzed)
    check_sentinels(fuzzed)
    if CI:
        assert sum(sent) >= MIN_INPUTS_IN_CI, f"only {sum(sent)} client inputs were sent"
    figure(f"client fuzz: {sum(sent)} inputs in {len(sent)} bursts")
