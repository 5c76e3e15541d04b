"""The consistency levels' arithmetic, and when an Update's modify is pickled again (the rest
of the protocol is driven through real nodes in test_replicator.py, test_fuzz_client.py and
test_fuzz_peer.py)."""

from __future__ import annotations

import copyreg
import io
import pickle
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from thespian_dd import (
    GCounter,
    Get,
    ORSet,
    ReadAll,
    ReadFrom,
    ReadLocal,
    ReadMajority,
    ReplicaId,
    Update,
    WriteAll,
    WriteLocal,
    WriteMajority,
    WriteTo,
)
from thespian_dd._shown import shown
from thespian_dd.messages import (
    _LOADED,
    DataDeleted,
    DeleteSuccess,
    GetDataDeleted,
    GetFailure,
    GetSuccess,
    ModifyFailure,
    NotFound,
    ReplicationDeleteFailure,
    StoreFailure,
    UpdateDataDeleted,
    UpdateSuccess,
    UpdateTimeout,
    majority,
)

NODE = ReplicaId("n", 1)


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


def _increment_by(amount: object, counter: GCounter, node: ReplicaId) -> GCounter:
    assert type(amount) is int, f"{amount!r} arrived as a {type(amount).__name__}"
    return counter.increment(node, amount)


def _increment_once(counter: GCounter, node: ReplicaId) -> GCounter:
    return counter.increment(node, 1)


def _sent(update: Update) -> Any:
    """``update``'s modify as a node that has not loaded it yet loads it."""
    _LOADED.clear()
    return pickle.loads(pickle.dumps(update)).modify


def test_a_closure_is_pickled_with_what_it_captures_at_each_update() -> None:
    step = [1]

    def bump(counter: GCounter, node: ReplicaId) -> GCounter:
        return counter.increment(node, step[0])

    first = Update("k", GCounter(), bump)
    step[0] = 5  # the same function object, capturing a changed value
    second = Update("k", GCounter(), bump)
    assert _sent(first)(GCounter(), NODE).value == 1
    assert _sent(second)(GCounter(), NODE).value == 5


def test_a_function_sent_by_name_is_pickled_once() -> None:
    first = Update("k", GCounter(), _increment_once)
    assert Update("k", GCounter(), _increment_once)._modify_blob is first._modify_blob
    assert _sent(first)(GCounter(), NODE).value == 1
    once = partial(_increment_by, 2)
    assert Update("k", GCounter(), partial(_increment_by, 2))._modify_blob is (
        Update("k", GCounter(), once)._modify_blob
    )


def test_a_function_no_longer_found_by_its_name_is_not_served_its_old_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = _increment_once
    Update("k", GCounter(), original)  # cached while found by its name
    monkeypatch.setattr(sys.modules[__name__], "_increment_once", _bump_twice)
    # Its old bytes name the function, which now loads as the other one: it goes by value.
    assert _sent(Update("k", GCounter(), original))(GCounter(), NODE).value == 1


def _bump_twice(counter: GCounter, node: ReplicaId) -> GCounter:
    return counter.increment(node, 2)


def test_partials_of_equal_arguments_of_other_types_get_their_own_bytes() -> None:
    assert _sent(Update("k", GCounter(), partial(_increment_by, 1)))(GCounter(), NODE).value == 1
    with pytest.raises(AssertionError, match="True arrived as a bool"):
        _sent(Update("k", GCounter(), partial(_increment_by, True)))(GCounter(), NODE)


def test_a_partial_of_a_mutable_value_is_pickled_with_its_value_at_each_update() -> None:
    items = ["a"]
    add = partial(_add_first, items)
    first = Update("k", ORSet(), add)
    items[0] = "b"
    second = Update("k", ORSet(), add)
    assert _sent(first)(ORSet(), NODE).value == {"a"}
    assert _sent(second)(ORSet(), NODE).value == {"b"}


def _add_first(items: list[str], current: ORSet, node: ReplicaId) -> ORSet:
    return current.add(node, items[0])


def test_a_modify_that_changes_what_it_captured_runs_at_each_update_as_it_was_sent() -> None:
    # Two Updates carry the same bytes; the first run pops from the node's copy of the list.
    # The second must start from the list as it was sent, not from what the first run left.
    pending = ["a", "b"]

    def take(current: ORSet, node: ReplicaId) -> ORSet:
        return current.add(node, pending.pop())

    runs = 0

    def count(current: GCounter, node: ReplicaId) -> GCounter:
        nonlocal runs
        runs += 1
        return current.increment(node, runs)

    first, second = Update("k", ORSet(), take), Update("k", ORSet(), take)
    assert first._modify_blob == second._modify_blob
    _LOADED.clear()
    for update in (first, second):
        assert pickle.loads(pickle.dumps(update)).modify(ORSet(), NODE).value == {"b"}
    for update in (Update("k", GCounter(), count), Update("k", GCounter(), count)):
        assert pickle.loads(pickle.dumps(update)).modify(GCounter(), NODE).value == 1


def test_a_modify_that_keeps_no_state_is_loaded_once_for_every_update_that_carries_it() -> None:
    step = 2
    update = Update("k", GCounter(), lambda c, n: c.increment(n, step))
    _LOADED.clear()
    loaded = [pickle.loads(pickle.dumps(update)).modify for _ in range(2)]
    assert loaded[0] is loaded[1]
    assert loaded[0](GCounter(), NODE).value == 2


class _OwnCounter(GCounter):
    """A data type of one's own: it travels as itself, never as an empty built-in."""

    __slots__ = ()


@pytest.mark.parametrize(
    "initial",
    [GCounter(), GCounter().increment(NODE, 2), ORSet(), ORSet().add(NODE, "x"), _OwnCounter()],
)
@pytest.mark.parametrize("consistency", [WriteLocal(), WriteMajority(2.0, 3)])
def test_an_update_arrives_as_it_was_made(initial: Any, consistency: Any) -> None:
    update = Update("k", initial, _increment_once, consistency, request=("tag", 1))
    received = pickle.loads(pickle.dumps(update))
    assert type(received.initial) is type(initial)
    assert received.initial == initial
    assert (received.key, received.consistency, received.request) == ("k", consistency, ("tag", 1))
    assert received.modify is _increment_once


def test_an_initial_that_is_not_a_value_arrives_as_it_was_sent_for_the_node_to_refuse() -> None:
    # The class itself, not GCounter(): the node must see the mistake, not an empty counter.
    received = pickle.loads(pickle.dumps(Update("k", GCounter, _increment_once)))  # type: ignore[arg-type]
    assert received.initial is GCounter


@pytest.mark.parametrize("consistency", [ReadLocal(), ReadFrom(2, 1.0), ReadAll(3.0)])
def test_a_get_arrives_as_it_was_made(consistency: Any) -> None:
    get = Get("k", consistency, request=["r"])
    assert pickle.loads(pickle.dumps(get)) == get
    assert pickle.loads(pickle.dumps(get)).consistency == consistency
    assert pickle.loads(pickle.dumps(_TaggedGet("k", consistency, 3))) == _TaggedGet(
        "k", consistency, 3
    )


def test_a_get_missing_a_field_arrives_missing_it_for_the_node_to_refuse() -> None:
    get = object.__new__(Get)
    object.__setattr__(get, "key", "k")
    received = pickle.loads(pickle.dumps(get))
    assert received.key == "k"
    assert not hasattr(received, "consistency")


@dataclass(frozen=True)
class _TaggedGet(Get):
    """A Get of one's own, with a field more: it travels whole."""

    tag: int = 0


class _SlottedGet(Get):
    """A Get of one's own with slots: it travels whole too (pickle's own form refused it)."""

    __slots__ = ("note",)


def test_a_get_of_ones_own_with_slots_arrives_as_it_was_made() -> None:
    get = _SlottedGet("k", ReadAll(2.0), 5)
    object.__setattr__(get, "note", "n")
    received = pickle.loads(pickle.dumps(get))
    assert type(received) is _SlottedGet
    assert (received, getattr(received, "note", None)) == (get, "n")


def test_a_function_sent_by_name_is_checked_again_once_its_code_or_defaults_change() -> None:
    def two(counter: GCounter, node: ReplicaId) -> GCounter:
        return counter

    def three(counter: GCounter, node: ReplicaId, extra: int) -> GCounter:
        return counter

    sent = _sent_by_name
    original = (sent.__code__, sent.__defaults__, sent.__kwdefaults__)
    try:
        Update("k", GCounter(), sent)  # checked and cached
        sent.__code__ = three.__code__
        with pytest.raises(TypeError, match="must take two arguments"):
            Update("k", GCounter(), sent)
        sent.__code__ = two.__code__
        Update("k", GCounter(), sent)
        sent.__defaults__ = (1,)  # a default for node: still takes two arguments, still checked
        Update("k", GCounter(), sent)
        sent.__code__, sent.__defaults__ = three.__code__, (1,)  # the third now has a default
        Update("k", GCounter(), sent)
        sent.__defaults__ = None
        with pytest.raises(TypeError, match="must take two arguments"):
            Update("k", GCounter(), sent)
        sent.__kwdefaults__ = {}
        with pytest.raises(TypeError, match="must take two arguments"):
            Update("k", GCounter(), sent)
    finally:
        sent.__code__, sent.__defaults__, sent.__kwdefaults__ = original


def _sent_by_name(counter: GCounter, node: ReplicaId) -> GCounter:
    return counter.increment(node, 1)


REPLIES = [
    GetSuccess("k", ("tag", 1), GCounter().increment(NODE, 2)),
    NotFound("k", None),
    GetFailure("k", "r", "timed out"),
    GetDataDeleted("k", 3),
    UpdateSuccess("k", None),
    UpdateTimeout("k", [1, 2]),
    ModifyFailure("k", None, "modify failed"),
    StoreFailure("k", "r", "disk full"),
    UpdateDataDeleted("k", 0),
    DeleteSuccess("k", None),
    DataDeleted("k", "r"),
    ReplicationDeleteFailure("k", None, "timed out"),
]


@pytest.mark.parametrize("reply", REPLIES, ids=lambda reply: type(reply).__name__)
def test_a_reply_travels_as_its_class_and_fields_and_arrives_as_it_was_made(reply: Any) -> None:
    sent = pickle.dumps(reply)
    received = pickle.loads(sent)
    assert type(received) is type(reply)
    assert received == reply
    assert repr(received) == repr(reply)
    assert str(received) == str(reply)
    assert vars(received) == vars(reply)  # every field, and nothing more
    assert b"request" not in sent  # its fields in order, not by name (pickle's own form)
    assert len(sent) < len(_in_pickles_own_form(reply))


def _in_pickles_own_form(reply: Any) -> bytes:
    """``reply`` pickled in pickle's own form (as every earlier release sends it): the class,
    then a dict of the fields by name."""

    class OwnForm(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if obj is reply:
                newobj = copyreg.__newobj__  # type: ignore[attr-defined]
                return (newobj, (type(obj),), dict(vars(obj)))
            return NotImplemented

    out = io.BytesIO()
    OwnForm(out, protocol=pickle.DEFAULT_PROTOCOL).dump(reply)
    return out.getvalue()


@pytest.mark.parametrize("reply", REPLIES, ids=lambda reply: type(reply).__name__)
def test_a_reply_in_pickles_own_form_is_read(reply: Any) -> None:
    own = _in_pickles_own_form(reply)
    assert b"request" in own
    received = pickle.loads(own)
    assert type(received) is type(reply)
    assert received == reply
    assert repr(received) == repr(reply)


@dataclass(frozen=True)
class _TaggedSuccess(UpdateSuccess):
    """A reply of one's own, with a field more: it travels whole."""

    tag: int = 0


def test_a_reply_of_ones_own_or_missing_a_field_travels_whole() -> None:
    tagged = _TaggedSuccess("k", None, 7)
    received = pickle.loads(pickle.dumps(tagged))
    assert (type(received), received) == (_TaggedSuccess, tagged)
    partial_reply = object.__new__(UpdateSuccess)
    object.__setattr__(partial_reply, "key", "k")
    received = pickle.loads(pickle.dumps(partial_reply))
    assert vars(received) == {"key": "k"}


def test_an_update_shows_as_its_fields_shown_short() -> None:
    for consistency in (WriteLocal(), WriteMajority(2.0, 3), WriteTo(2, 1.0), WriteAll(4.0)):
        update = Update("k", _OwnCounter(), _increment_once, consistency, ("t", 1))
        fields = ("key", "initial", "consistency", "request")
        assert str(update) == shown(update, fields)
        assert str(update) == (
            f"Update(key='k', initial=<_OwnCounter>, consistency={consistency!r}, request=('t', 1))"
        )
    assert str(Get("k", ReadLocal())) == "Get(key='k', consistency=ReadLocal(), request=None)"


PREVIOUS_RELEASE = Path(__file__).parent / "compat" / "thespian_dd-349b515.tar.xz"

READ_IN_THE_PREVIOUS_RELEASE = """
import pickle, sys
import thespian_dd
assert thespian_dd.__file__.startswith(sys.argv[1]), thespian_dd.__file__
for m in pickle.loads(sys.stdin.buffer.read()):
    if not hasattr(m, "consistency"):  # a reply
        print(repr(m))
        continue
    initial = getattr(m, "initial", None)
    shown = (type(initial).__name__, initial.value) if initial is not None else None
    print(type(m).__name__, repr(m.key), shown, repr(m.consistency), repr(m.request))
"""

WRITTEN_BY_THE_PREVIOUS_RELEASE = """
import pickle, sys
import thespian_dd
from thespian_dd import GCounter, ReplicaId
from thespian_dd.messages import GetSuccess, ModifyFailure, UpdateSuccess
assert thespian_dd.__file__.startswith(sys.argv[1]), thespian_dd.__file__
counter = GCounter().increment(ReplicaId("n", 1), 2)
replies = [UpdateSuccess("a", None), ModifyFailure("b", [1], "no"), GetSuccess("c", "r", counter)]
sys.stdout.buffer.write(pickle.dumps(replies))
"""


def _in_the_previous_release(tmp_path: Path, script: str, given: bytes = b"") -> bytes:
    """What ``script`` prints, run by the previous release's code (extracted in ``tmp_path``)
    with ``given`` on its standard input."""
    with tarfile.open(PREVIOUS_RELEASE) as archive:
        archive.extractall(tmp_path, filter="data")
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        input=given,
        capture_output=True,
        env={"PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
        check=False,
        timeout=50,
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    return run.stdout


@pytest.mark.subprocess
@pytest.mark.timeout(60)
def test_the_updates_and_gets_of_this_tree_are_read_by_the_previous_release(
    tmp_path: Path,
) -> None:
    # A client of this tree writes to the nodes of the previous release during an upgrade.
    messages = [
        Update("a", GCounter(), _increment_once),
        Update("b", ORSet[str]().add(NODE, "x"), _increment_once, WriteMajority(2.0), [1]),
        Get("c"),
        Get("d", ReadAll(3.0), "r"),
        # A node of this tree answers a client of the previous release (another node's actor).
        UpdateSuccess("e", None),
        ModifyFailure("f", [2], "modify failed"),
        GetSuccess("g", "r", GCounter().increment(NODE, 3)),
    ]
    read = _in_the_previous_release(tmp_path, READ_IN_THE_PREVIOUS_RELEASE, pickle.dumps(messages))
    assert read.decode().splitlines() == [
        "Update 'a' ('GCounter', 0) WriteLocal() None",
        "Update 'b' ('ORSet', frozenset({'x'})) WriteMajority(timeout=2.0, min_cap=0) [1]",
        "Get 'c' None ReadLocal() None",
        "Get 'd' None ReadAll(timeout=3.0) 'r'",
        "UpdateSuccess(key='e', request=None)",
        "ModifyFailure(key='f', request=[2], error='modify failed')",
        f"GetSuccess(key='g', request='r', data={GCounter().increment(NODE, 3)!r})",
    ]


@pytest.mark.subprocess
@pytest.mark.timeout(60)
def test_the_replies_of_the_previous_release_are_read_by_this_tree(tmp_path: Path) -> None:
    # A client of this tree asks a node of the previous release during an upgrade.
    replies = pickle.loads(_in_the_previous_release(tmp_path, WRITTEN_BY_THE_PREVIOUS_RELEASE))
    assert replies == [
        UpdateSuccess("a", None),
        ModifyFailure("b", [1], "no"),
        GetSuccess("c", "r", GCounter().increment(ReplicaId("n", 1), 2)),
    ]
    assert [type(reply) for reply in replies] == [UpdateSuccess, ModifyFailure, GetSuccess]
