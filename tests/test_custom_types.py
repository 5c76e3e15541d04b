"""A data type of one's own: registered with the codec, held to the built-in types' checks, and
known to every node that names its module in ``data_types``.

The laws run on samples/max_register.py's MaxRegister through the one law table
(tests/crdt_table.py); the sample itself runs in test_samples.py.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cbor2 import CBORTag
from max_register import MaxRegister
from thespian.actors import ActorSystem

from thespian_dd import (
    GetStats,
    ModifyFailure,
    NotFound,
    ORMap,
    ReplicaId,
    ReplicatedData,
    Settings,
    Stats,
    Update,
    UpdateSuccess,
    register_data_type,
    start,
)
from thespian_dd._canonical import encode_tree
from thespian_dd.codec import FORMAT_VERSIONS, CodecError, decode, encode, type_name
from thespian_dd.messages import Get, GetSuccess
from thespian_dd.testing import Cluster, eventually

A = ReplicaId("a", 1)
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


class Tags(ReplicatedData):
    """A grow-only set whose constructor takes any iterable: it has more spellings than one."""

    __slots__ = ("tags",)

    tags: tuple[str, ...]

    def __init__(self, tags: Any = ()) -> None:
        object.__setattr__(self, "tags", tuple(sorted(set(tags))))

    def _state(self) -> tuple[Any, ...]:
        return (self.tags,)

    @property
    def value(self) -> tuple[str, ...]:
        return self.tags

    def merge(self, other: Tags) -> Tags:
        return Tags(self.tags + other.tags)


class Forgetful(ReplicatedData):
    """Its ``_state`` leaves out part of what it holds: it does not decode to an equal value."""

    __slots__ = ("n", "note")

    n: int
    note: str

    def __init__(self, n: int, note: str = "") -> None:
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "note", note)

    def _state(self) -> tuple[Any, ...]:
        return (self.n,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Forgetful) and (self.n, self.note) == (other.n, other.note)

    __hash__ = None

    @property
    def value(self) -> int:
        return self.n

    def merge(self, other: Forgetful) -> Forgetful:
        return self if self.n >= other.n else other


def _spelled(tree: list[Any], version: int) -> bytes:
    """``[type name, state]`` as a value of format ``version``, with a valid checksum: only the
    codec's checks of the state stand."""
    name, state = tree
    if version == 1:
        body = encode_tree(tree)
    else:  # no replicas listed; the state as a tree inside tag 21572
        body = cbor2.dumps([[], [name, CBORTag(21572, encode_tree(state))]], canonical=True)
    head = b"TDD" + bytes((version,)) + body
    return head + hashlib.blake2b(head, digest_size=16).digest()


register_data_type(Tags, "tests.Tags")
register_data_type(Forgetful, "tests.Forgetful")


def test_a_registered_type_round_trips_under_its_name_also_inside_a_map() -> None:
    best = MaxRegister().raise_to(A, 7)
    assert type_name(best) == "samples.MaxRegister"
    assert decode(encode(best)) == best
    scores = ORMap().update(A, "ann", MaxRegister(), lambda r: r.raise_to(A, 3))
    assert decode(encode(scores)) == scores.reset_delta()


@pytest.mark.parametrize(
    ("cls", "name", "error"),
    [
        (
            MaxRegister,
            "samples.Other",
            "MaxRegister is already registered as 'samples.MaxRegister'",
        ),
        (
            type("Late", (MaxRegister,), {}),
            "samples.MaxRegister",
            "'samples.MaxRegister' is already",
        ),
        (type("NoDot", (MaxRegister,), {}), "NoDot", "must be a str with a dot"),
        (type("Blank", (MaxRegister,), {}), " x.Y", "must be a str with a dot"),
        (type("Dots", (MaxRegister,), {}), "..", "must be a str with a dot"),
        (type("Main", (MaxRegister,), {"__module__": "__main__"}), "x.Main", "defined in __main__"),
    ],
)
def test_registration_refuses_a_taken_name_or_class_and_what_other_nodes_cannot_load(
    cls: Any, name: str, error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        register_data_type(cls, name)
    with pytest.raises(TypeError, match="must be a ReplicatedData subclass"):
        register_data_type(int, "x.Int")  # type: ignore[arg-type]


def test_an_unregistered_type_cannot_be_encoded_and_says_how_to_register_it() -> None:
    unregistered = type("Unregistered", (MaxRegister,), {})
    with pytest.raises(TypeError, match="must be registered: see register_data_type"):
        encode(unregistered(3))


@pytest.mark.parametrize("version", FORMAT_VERSIONS)
def test_an_unknown_type_name_is_refused_naming_the_setting(version: int) -> None:
    """The same words in both formats (``inspect`` shows them): format 2 first said it under
    the type's name, as a fault of the type's state."""
    raw = _spelled(["someone.Else", (1,)], version)
    with pytest.raises(CodecError, match=r"^unknown data type 'someone\.Else'.*data_types setting"):
        decode(raw)


@pytest.mark.parametrize(
    ("tree", "error"),
    [
        (["samples.MaxRegister", (True,)], "invalid state: TypeError: a MaxRegister holds an int"),
        (["samples.MaxRegister", ("7",)], "holds an int, not str"),
        (["samples.MaxRegister", (1, 2)], "invalid state: TypeError"),
        (["samples.MaxRegister", [7]], "a samples.MaxRegister state is a tuple"),
        (["tests.Tags", (("b", "a"),)], "the one spelling of its value"),
        (["tests.Tags", (("a", "a"),)], "the one spelling of its value"),
    ],
)
@pytest.mark.parametrize("version", FORMAT_VERSIONS)
def test_a_state_the_type_refuses_or_spelled_another_way_is_refused(
    tree: Any, error: str, version: int
) -> None:
    with pytest.raises(CodecError, match=error):
        decode(_spelled(tree, version))
    assert decode(_spelled(["tests.Tags", (("a", "b"),)], version)) == Tags("ba")


def test_a_value_that_would_not_decode_to_itself_is_not_encoded() -> None:
    assert decode(encode(Forgetful(3))) == Forgetful(3)
    with pytest.raises(ValueError, match="does not decode to an equal value"):
        encode(Forgetful(3, "lost on the way"))


def test_an_update_whose_value_cannot_be_encoded_fails_and_applies_nothing() -> None:
    asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=None)
    try:
        replicator = start(asys)
        update = Update("k", Forgetful(0), lambda f, node: Forgetful(3, "lost on the way"))
        reply = asys.ask(replicator, update, 5)
        assert isinstance(reply, ModifyFailure), reply
        assert "what modify returned cannot be encoded" in reply.error
        assert isinstance(asys.ask(replicator, Get("k"), 5), NotFound)
        reply = asys.ask(replicator, Update("j", MaxRegister(), lambda r, n: r.raise_to(n, 2)), 5)
        assert isinstance(reply, UpdateSuccess), reply
    finally:
        asys.shutdown()


def test_the_data_types_setting_imports_each_module_or_says_why_not() -> None:
    assert Settings(data_types=["max_register"]).data_types == ("max_register",)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"data_types must name modules .*: .no_such_module_here.: ModuleNotFound"
    ):
        Settings(data_types=("no_such_module_here",))
    with pytest.raises(ValueError, match="data_types must be a list of module names"):
        Settings(data_types="max_register")  # type: ignore[arg-type]


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_a_node_imports_the_type_by_name_and_reads_it_back_after_every_process_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The nodes are processes of their own: all they know of MaxRegister is its module's name.
    monkeypatch.setenv("PYTHONPATH", f"{SAMPLES}:{Path(__file__).resolve().parent.parent}")
    store = f"sqlite:///{tmp_path}/{{name}}.db"
    with Cluster(tmp_path, 2, store=store, data_types=["max_register"]) as cluster:
        cluster.start()
        reply = cluster.ask(0, Update("best", MaxRegister(), lambda r, n: r.raise_to(n, 9)))
        assert isinstance(reply, UpdateSuccess), reply
        cluster.ask(1, Update("best", MaxRegister(), lambda r, n: r.raise_to(n, 4)))

        def on_both() -> bool:
            replies = [cluster.ask(i, Get("best")) for i in (0, 1)]
            return all(isinstance(r, GetSuccess) and r.data == MaxRegister(9) for r in replies)

        eventually(on_both, what="both nodes hold the merge")
        for i in (0, 1):
            cluster.kill(i)
        cluster.restart(0)  # alone: what it holds can only come from its store
        reply = cluster.ask(0, Get("best"))
        assert isinstance(reply, GetSuccess), reply
        assert reply.data == MaxRegister(9)

        # Without the setting the node cannot read the row, says why, and counts it.
        cluster.kill(0)
        del cluster.settings["data_types"]
        cluster.restart(0)
        assert isinstance(cluster.ask(0, Get("best")), NotFound)
        stats = cluster.ask(0, GetStats())
        assert isinstance(stats, Stats)
        assert stats.refused_rows == 1, stats
        log = (cluster.workdir / "node-1.log").read_text()
        assert "unknown data type 'samples.MaxRegister'" in log

    # An operator reads such a store with the same modules.
    inspect = [sys.executable, "-m", "thespian_dd", "inspect", "--store", cluster.store_url(0)]
    with_type = subprocess.run(
        [*inspect, "--key", "best", "--data-types", "max_register"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "type:           samples.MaxRegister" in with_type.stdout
    assert "value:          9" in with_type.stdout
    without = subprocess.run(
        [*inspect, "--key", "best"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "value:          UNREADABLE: unknown data type 'samples.MaxRegister'" in without.stdout
