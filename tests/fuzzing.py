"""What the fuzz tests share (test_fuzz_client, test_fuzz_peer, test_fuzz_rows, test_codec).

- The fuzzed node: a real node (its own ActorSystem, ``multiprocTCPBase``) with sentinel keys
  written before fuzzing, a probe that records every reply (PoisonMessage too), and the checks
  that it still answers, still gossips and still holds its sentinels exactly.
- A burst: many inputs sent at once from the probe, followed by a read of every sentinel, and
  every reply collected and matched to what it must be (:class:`Expect`).
- The modify functions an Update may carry: module-level functions (and partials) of this
  importable module, so that dill pickles them by reference and the node loads them.
- Inputs shared by the client and peer fuzz (keys, junk, forged instances), byte mutations, and
  valid values of every type (a fake peer's, and the stored rows').
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import count
from typing import Any

from hypothesis import strategies as st

from thespian_dd import (
    Changed,
    Delete,
    Deleted,
    DeleteSuccess,
    Flag,
    GCounter,
    Get,
    GetDataDeleted,
    GetStats,
    GetSuccess,
    GSet,
    InvalidRequest,
    LWWMap,
    LWWRegister,
    ORMap,
    ORSet,
    PNCounter,
    ReplicaId,
    Stats,
    Subscribe,
    Unsubscribe,
    Update,
    UpdateSuccess,
)
from thespian_dd._testkit.harness import Node, Probe, ProbeSendAll, eventually, start_node
from thespian_dd.codec import encode

CI = bool(os.environ.get("CI"))
MIN_INPUTS_IN_CI = 5000
MAX_VALUE_BYTES = 64 * 1024  # the fuzzed node's cap, so oversize values stay cheap to send
REPLY_TIMEOUT = 15.0

FAKE = ReplicaId("fz-peer-x", 1)  # a fake peer's replica, used to build valid values
INIT = ReplicaId("fz-init", 1)

# -- what modify can be: module-level functions (and partials) so they pickle ---------------------


def bump(value: Any, node: ReplicaId) -> Any:
    """A valid change of every data type the fuzz uses as an initial value."""
    if isinstance(value, (GCounter, PNCounter)):
        return value.increment(node, 1)
    if isinstance(value, (ORSet, GSet)):
        return value.add(node, "fz")
    if isinstance(value, Flag):
        return value.switch_on(node)
    if isinstance(value, LWWRegister):
        return value.with_value(node, "fz")
    if isinstance(value, LWWMap):
        return value.put(node, "fz", 1)
    return value


def same(value: Any, node: ReplicaId) -> Any:
    return value


def raising(kind: type[BaseException], value: Any, node: ReplicaId) -> Any:
    raise kind("fuzz")


def returning(result: Any, value: Any, node: ReplicaId) -> Any:
    return result


def other_type(value: Any, node: ReplicaId) -> Any:
    return GCounter() if isinstance(value, Flag) else Flag()


def _add(element: Any, value: Any, node: ReplicaId) -> Any:
    return value.add(node, element)


def _increment(n: int, value: Any, node: ReplicaId) -> Any:
    return value.increment(node, n)


def _pn(value: PNCounter, node: ReplicaId) -> PNCounter:
    return value.increment(node, 5).decrement(node, 2)


def _set_register(value: LWWRegister, node: ReplicaId) -> LWWRegister:
    return value.with_value(node, "sentinel")


def _put(value: LWWMap, node: ReplicaId) -> LWWMap:
    return value.put(node, "k", ("v", 1))


def _switch(value: Flag, node: ReplicaId) -> Flag:
    return value.switch_on(node)


@dataclass(frozen=True)
class FuzzThing:
    """A user dataclass the Replicator does not understand (with a request to echo)."""

    payload: Any
    request: Any = None


class Recorder(Probe):
    """A Probe that also records PoisonMessage: what comes back when a handler raised."""

    def receiveMsg_PoisonMessage(self, msg: Any, sender: Any) -> None:
        self.received.append(msg)
        self.times.append(time.time())


class Placeholder:
    """A named stand-in in a generated input, replaced when its message is built."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PROBE = Placeholder("PROBE")  # the probe's ActorAddress (known only once the node runs)


def forged(cls: type, **fields: Any) -> Any:
    """An instance of ``cls`` with ``fields`` set and its constructor's checks skipped, as a
    pickle from another version or a hostile client arrives."""
    obj: Any = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


# -- the node -------------------------------------------------------------------------------------


SENTINELS: dict[str, tuple[Any, Any]] = {
    "sentinel/gcounter": (GCounter(), partial(_increment, 7)),
    "sentinel/pncounter": (PNCounter(), _pn),
    "sentinel/orset": (ORSet(), partial(_add, "apple")),
    "sentinel/gset": (GSet(), partial(_add, ("t", 1))),
    "sentinel/flag": (Flag(), _switch),
    "sentinel/lww": (LWWRegister("init", 1, INIT), _set_register),
    "sentinel/lwwmap": (LWWMap(), _put),
}
DELETED_SENTINEL = "sentinel/deleted"


@dataclass
class Fuzzed:
    """The node under fuzz, its recording probe, and what the sentinels hold."""

    node: Node
    probe: Any
    sentinels: dict[str, Any]
    tokens: Iterator[int] = field(default_factory=lambda: count(1))

    def send_all(self, messages: list[Any]) -> None:
        self.node.asys.tell(self.probe, ProbeSendAll(self.node.replicator, messages))

    def take(self) -> list[Any]:
        return self.node.received(self.probe, clear=True)

    def ask(self, message: Any) -> Any:
        """Send ``message`` from the probe, tagged, and return its reply (others are dropped)."""
        token = next(self.tokens)
        tagged = dataclasses.replace(message, request=("fz", token))
        self.send_all([tagged])
        got: list[Any] = []

        def reply() -> Any:
            got.extend(self.take())
            return next((m for m in got if _token(m) == token), None)

        return eventually(reply, REPLY_TIMEOUT, 0.005, what=f"a reply to {message!r}")


def fuzzed_node() -> Iterator[Fuzzed]:
    """The fuzzed node, its sentinels written, shut down afterwards: a module-scoped fixture
    in each test module that fuzzes a node (``pytest.fixture(scope="module")(fuzzed_node)``)."""
    node = start_node(
        node_name="fuzz-node",
        notify_interval=0.05,
        gossip_interval=0.1,
        delta_interval=0.1,
        failure_timeout=1.0,
        max_value_bytes=MAX_VALUE_BYTES,
        # Fake peers are never removed nor pruned while the fuzz runs.
        removal_timeout=3600.0,
        pruning_interval=3600.0,
    )
    try:
        probe = node.asys.createActor(Recorder)
        sentinels = {}
        for key, (initial, modify) in SENTINELS.items():
            written = node.ask(Update(key, initial, modify))
            assert written == UpdateSuccess(key, None), (key, written)
            reply = node.ask(Get(key))
            assert isinstance(reply, GetSuccess), reply
            sentinels[key] = reply.data
        node.ask(Update(DELETED_SENTINEL, GCounter(), partial(_increment, 1)))
        deleted = node.ask(Delete(DELETED_SENTINEL))
        assert deleted == DeleteSuccess(DELETED_SENTINEL, None), deleted
        yield Fuzzed(node, probe, sentinels)
    finally:
        node.asys.shutdown()


def _token(message: Any) -> int | None:
    request = getattr(message, "request", None)
    if isinstance(request, tuple) and len(request) >= 2 and request[0] == "fz":
        token: int = request[1]
        return token
    return None


def alive(fuzzed: Fuzzed) -> None:
    """The Replicator answers, its gossip rounds go on, and a new subscriber is notified."""
    first = fuzzed.ask(GetStats())
    assert isinstance(first, Stats), first
    eventually(
        lambda: fuzzed.ask(GetStats()).gossip_rounds > first.gossip_rounds + 1,
        what="gossip rounds go on",
    )
    key = f"fz/canary/{next(fuzzed.tokens)}"
    fuzzed.send_all([Subscribe(key), Update(key, GCounter(), partial(_increment, 2))])
    got: list[Any] = []

    def notified() -> bool:
        got.extend(fuzzed.take())
        return any(isinstance(m, Changed) and m.key == key and m.data.value == 2 for m in got)

    eventually(notified, REPLY_TIMEOUT, 0.005, what="a subscriber is notified")
    fuzzed.send_all([Unsubscribe(key)])


def check_sentinels(fuzzed: Fuzzed) -> None:
    for key, value in fuzzed.sentinels.items():
        reply = fuzzed.ask(Get(key))
        assert isinstance(reply, GetSuccess), (key, reply)
        assert reply.data == value, (key, reply)
    reply = fuzzed.ask(Get(DELETED_SENTINEL))
    assert isinstance(reply, GetDataDeleted), reply


# -- inputs shared by the client and peer fuzz ---------------------------------------------------


def valid_key(key: object) -> bool:
    if not isinstance(key, str) or not key or "\x00" in key:
        return False
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


KEY_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=10,
)
FUZZ_KEYS = st.one_of(
    KEY_TEXT.map(lambda s: "fz/" + s),
    st.sampled_from(["fz/a", "fz/b", "fz/c"]),  # shared, so requests meet each other's state
    st.integers(1_000, 70_000).map(lambda n: "fz/huge/" + "k" * n),
)
BAD_KEYS = st.one_of(
    st.sampled_from(["", "\x00", "nul\x00inside", "lone \ud800 surrogate", "\udfff"]),
    st.integers(),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.tuples(KEY_TEXT),
    st.frozensets(st.integers(), max_size=2),
)
SENTINEL_KEYS = st.sampled_from([*SENTINELS, DELETED_SENTINEL])
JUNK = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    st.tuples(st.integers(), st.text(max_size=3)),
    st.builds(FuzzThing, st.integers()),
    st.just(GCounter()),
)


@st.composite
def mutations(draw: st.DrawFn, raw: bytes, *, keep_empty: bool = True) -> bytes:
    """``raw`` changed: bits flipped, bytes inserted or deleted, truncated, or extended."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "append", "set"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[at:]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
    mutated = bytes(data)
    if mutated == raw:
        mutated = raw + b"\x00"
    if not mutated and not keep_empty:
        mutated = raw[:1]
    return mutated


# -- bursts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What the reply to one input must be (no token: it carries no request)."""

    token: int | None
    types: tuple[type, ...]
    errors: tuple[str, ...] = ()  # one of them is in the reply's error, when it has one
    message_type: str | None = None  # for an InvalidRequest without a token
    data: Any = None  # a GetSuccess must hold exactly this


def run_burst(
    fuzzed: Fuzzed, messages: list[Any], expects: list[Expect]
) -> tuple[dict[int, Any], list[Any]]:
    """Send ``messages`` as one burst from the probe, then a read of every sentinel and a
    GetStats; collect every reply ``expects`` names.  Returns the tokened replies and all the
    other messages the probe received."""
    trailer: list[Any] = []
    for key, value in fuzzed.sentinels.items():
        token = next(fuzzed.tokens)
        trailer.append(Get(key, request=("fz", token)))
        expects.append(Expect(token, (GetSuccess,), data=value))
    token = next(fuzzed.tokens)
    trailer.append(Get(DELETED_SENTINEL, request=("fz", token)))
    expects.append(Expect(token, (GetDataDeleted,)))
    token = next(fuzzed.tokens)
    trailer.append(GetStats(request=("fz", token)))
    expects.append(Expect(token, (Stats,)))
    fuzzed.send_all(messages + trailer)

    wanted = {e.token for e in expects if e.token is not None}
    untokened = Counter(e.message_type for e in expects if e.token is None)
    replies: dict[int, Any] = {}
    others: list[Any] = []
    deadline = time.monotonic() + REPLY_TIMEOUT
    while True:
        for message in fuzzed.take():
            number = _token(message)
            if number is not None and number in wanted:
                assert number not in replies, ("two replies", replies[number], message)
                replies[number] = message
            else:
                others.append(message)
        seen = Counter(
            m.message_type for m in others if isinstance(m, InvalidRequest) and m.request is None
        )
        if len(replies) == len(wanted) and seen == untokened:
            return replies, others
        poisoned = [m for m in others if type(m).__name__ == "PoisonMessage"]
        assert not poisoned, f"a handler raised: {_poison(poisoned[0])}"
        missing = [
            (e, messages[i] if i < len(messages) else trailer[i - len(messages)])
            for i, e in enumerate(expects)
            if e.token is not None and e.token not in replies
        ]
        assert time.monotonic() < deadline, (
            f"no reply to {missing[:3]}; untokened expected {untokened}, got {seen}"
        )
        time.sleep(0.005)


def _poison(message: Any) -> str:
    """A PoisonMessage as text (its message may lack fields its repr needs)."""
    try:
        return str(message)
    except Exception:  # noqa: BLE001
        return f"Poison<a malformed {type(message.poisonMessage).__name__}>: {message.details}"


def check_changes(fuzzed: Fuzzed, others: list[Any]) -> None:
    """What subscriptions sent: sentinels only ever as they are."""
    for message in others:
        assert type(message).__name__ != "PoisonMessage", f"a handler raised: {_poison(message)}"
        if isinstance(message, Changed) and message.key in fuzzed.sentinels:
            assert message.data == fuzzed.sentinels[message.key], message
        if isinstance(message, Deleted):
            assert message.key not in fuzzed.sentinels, message


# -- valid values of every type ------------------------------------------------------------------


def sample_values() -> dict[type, Any]:
    """A valid value of each type, made by a fake peer (different from every sentinel)."""
    return {
        GCounter: GCounter().increment(FAKE, 3),
        PNCounter: PNCounter().increment(FAKE, 2).decrement(FAKE, 9),
        ORSet: ORSet().add(FAKE, "pear"),
        GSet: GSet().add(FAKE, "pear"),
        Flag: Flag().switch_on(FAKE),
        LWWRegister: LWWRegister.create(FAKE, "fake"),
        LWWMap: LWWMap().put(FAKE, "k", "fake"),
        ORMap: ORMap().update(FAKE, "m", GCounter(), lambda c: c.increment(FAKE, 1)),
    }


@cache
def encoded_samples() -> dict[type, bytes]:
    return {cls: encode(value) for cls, value in sample_values().items()}


# The stored rows' values (test_fuzz_rows); with the samples, the codec's (test_codec).
ROW_VALUES: dict[str, Any] = {
    "gcounter": GCounter().increment(FAKE, 4),
    "pncounter": PNCounter().increment(FAKE, 2).decrement(INIT, 5),
    "orset": ORSet().add(FAKE, "x").add(INIT, ("y", 2)),
    "lww": LWWRegister.create(FAKE, {"nested": [1, 2]}),
    "lwwmap": LWWMap().put(FAKE, "k", b"bytes"),
    "flag": Flag().switch_on(FAKE),
    "ключ/🔑": GSet().add(FAKE, frozenset({1, "two"})),
}
