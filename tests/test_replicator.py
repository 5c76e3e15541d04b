"""The Replicator on one node: every request type and every reply type, bad input,
subscriptions, and an Update whose modify is a lambda from another program's __main__.

Each protocol test runs twice: on a real ``multiprocTCPBase`` node (its admin and every actor are
processes) and on ``simpleSystemBase`` (Thespian's base for unit tests: every actor runs in this
process, in the caller's thread), so the protocol does not depend on the transport.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dill
import pytest
from thespian.actors import ActorExitRequest, ActorSystem, WakeupMessage

from thespian_dd import (
    REPLICATOR_NAME,
    Changed,
    DataDeleted,
    Delete,
    Deleted,
    DeleteResponse,
    DeleteSuccess,
    Flag,
    FlushChanges,
    GCounter,
    Get,
    GetDataDeleted,
    GetFailure,
    GetKeys,
    GetReplicaCount,
    GetResponse,
    GetStats,
    GetStatus,
    GetSuccess,
    InvalidRequest,
    Keys,
    ModifyFailure,
    NotFound,
    ORSet,
    ReadAll,
    ReadConsistency,
    ReadFrom,
    ReadMajority,
    ReplicaCount,
    ReplicaId,
    ReplicationDeleteFailure,
    Replicator,
    Stats,
    Status,
    Subscribe,
    Unsubscribe,
    Update,
    UpdateDataDeleted,
    UpdateResponse,
    UpdateSuccess,
    WriteAll,
    WriteConsistency,
    WriteMajority,
    WriteTo,
    start,
)
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    GossipStatus,
    LoadOverdue,
    PartitionForTests,
    PeerHello,
)
from thespian_dd._runtime.protocol import Every as _Every
from thespian_dd._runtime.writer import LoadChunk, Loaded, Written
from thespian_dd.codec import encode
from thespian_dd.messages import WriteLocal, _load_update
from thespian_dd.testing import Node, ProbeSend, eventually, start_node

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(
    params=[pytest.param("multiprocTCPBase", marks=pytest.mark.multinode), "simpleSystemBase"]
)
def thespian_node(request: pytest.FixtureRequest) -> Iterator[Node]:
    """The testing plugin's node, on each of the two bases."""
    if request.param == "multiprocTCPBase":
        node = start_node(notify_interval=0.05)
    else:
        asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=None)
        node = Node(asys, 0, start(asys, notify_interval=0.05))
    try:
        yield node
    finally:
        node.asys.shutdown()


@pytest.fixture
def real_node() -> Iterator[Node]:
    """Only on ``multiprocTCPBase``: for what needs processes (another program joining the node,
    an actor's death reported by the transport, which simpleSystemBase does not do)."""
    node = start_node(notify_interval=0.05)
    try:
        yield node
    finally:
        node.asys.shutdown()


def _incr(n: int) -> Any:
    return lambda counter, node: counter.increment(node, n)


def _sent_as_is(initial: Any, modify: Any) -> Update:
    """An Update of ``modify`` whatever it is (``Update(...)`` refuses what the node could not
    call)."""
    return _load_update("k", initial, dill.dumps(modify), WriteLocal(), None)


def _value(node: Node, key: str) -> Any:
    reply = node.ask(Get(key, request="read"))
    assert isinstance(reply, GetSuccess), reply
    return reply.data.value


def test_update_then_get_echoes_the_request(thespian_node: Node) -> None:
    reply = thespian_node.ask(Update("hits", GCounter(), _incr(2), request=("req", 1)))
    assert reply == UpdateSuccess("hits", ("req", 1))
    assert isinstance(reply, UpdateResponse)
    thespian_node.ask(Update("hits", GCounter(), _incr(3)))
    reply = thespian_node.ask(Get("hits", request="r2"))
    assert isinstance(reply, GetSuccess)
    assert isinstance(reply, GetResponse)
    assert reply.request == "r2"
    assert reply.data.value == 5
    assert len(reply.data.modified_by_nodes()) == 1  # both updates made by this node


def test_a_missing_key_is_not_found(thespian_node: Node) -> None:
    assert thespian_node.ask(Get("nothing", request=7)) == NotFound("nothing", 7)


def test_every_consistency_level_is_met_by_a_single_node(thespian_node: Node) -> None:
    writes: list[WriteConsistency] = [WriteTo(1, 1.0), WriteMajority(1.0, min_cap=3), WriteAll(1.0)]
    for i, write in enumerate(writes):
        reply = thespian_node.ask(Update("c", GCounter(), _incr(1), write, request=i))
        assert reply == UpdateSuccess("c", i)
    reads: list[ReadConsistency] = [ReadFrom(2, 1.0), ReadMajority(1.0), ReadAll(1.0)]
    for read in reads:
        reply = thespian_node.ask(Get("c", read))
        assert isinstance(reply, GetSuccess)
        assert reply.data.value == 3


def test_a_modify_that_raises_or_changes_the_type_applies_nothing(thespian_node: Node) -> None:
    thespian_node.ask(Update("k", GCounter(), _incr(1)))

    def boom(counter: Any, node: Any) -> Any:
        raise RuntimeError("no thanks")

    reply = thespian_node.ask(Update("k", GCounter(), boom, request="x"))
    assert isinstance(reply, ModifyFailure)
    assert reply.request == "x"
    assert "RuntimeError: no thanks" in reply.error
    reply = thespian_node.ask(Update("k", GCounter(), lambda c, n: ORSet()))
    assert isinstance(reply, ModifyFailure)
    assert "must return a GCounter, not ORSet" in reply.error
    reply = thespian_node.ask(Update("k", GCounter(), lambda c, n: c.increment(n, -1)))
    assert isinstance(reply, ModifyFailure)
    assert "can only grow" in reply.error
    assert _value(thespian_node, "k") == 1


def _generator() -> Any:
    return (x for x in range(3))


def test_a_modify_whose_result_cannot_be_encoded_applies_nothing(thespian_node: Node) -> None:
    """Regression: a built-in type holding what the codec cannot encode was applied, and then
    every store write and gossip round of its key raised.  History: a set holds "a"; a
    ``modify`` adds a generator (an ORSet takes any hashable element) and is acknowledged; the
    next delta propagation, gossip round or commit tries to encode it, fails, and fails again at
    every later round.  Now the new state is encoded (its delta: only that is new) before
    anything is applied, and the Update gets ModifyFailure."""
    node = thespian_node
    node.ask(Update("s", ORSet(), lambda s, n: s.add(n, "a")))
    reply = node.ask(Update("s", ORSet(), lambda s, n: s.add(n, _generator()), request="g"))
    assert isinstance(reply, ModifyFailure), reply
    assert reply.request == "g"
    assert "cannot be encoded" in reply.error
    reply = node.ask(Update("new", ORSet(), lambda s, n: s.add(n, _generator())))
    assert isinstance(reply, ModifyFailure), reply
    assert _value(node, "s") == {"a"}
    assert isinstance(node.ask(Get("new")), NotFound)
    node.ask(Update("s", ORSet(), lambda s, n: s.add(n, "b")))
    assert _value(node, "s") == {"a", "b"}


@pytest.mark.parametrize(
    ("message", "reply_type", "error"),
    [
        (Update(5, GCounter(), _incr(1)), ModifyFailure, "key must be a str"),  # type: ignore[arg-type]
        (Update("", GCounter(), _incr(1)), ModifyFailure, "key must not be empty"),
        (Update("k", 5, _incr(1)), ModifyFailure, "initial must be a CRDT"),  # type: ignore[arg-type]
        (Update("k", GCounter(), _incr(1), "all"), ModifyFailure, "WriteConsistency"),  # type: ignore[arg-type]
        (Update("k", ORSet(), _incr(1)), ModifyFailure, "holds a GCounter"),
        # Update itself refuses it: as a client that skips its checks would send it.
        (_sent_as_is(GCounter(), "not callable"), ModifyFailure, "must be callable"),
        (Get(["k"]), GetFailure, "key must be a str"),  # type: ignore[arg-type]
        (Get("k", "majority"), GetFailure, "ReadConsistency"),  # type: ignore[arg-type]
        (Delete(None), ReplicationDeleteFailure, "key must be a str"),  # type: ignore[arg-type]
        (Subscribe(42), InvalidRequest, "key must be a str"),  # type: ignore[arg-type]
        ("hello", InvalidRequest, "does not understand a str"),
        ({"op": "get"}, InvalidRequest, "does not understand a dict"),
        (GCounter(), InvalidRequest, "does not understand a GCounter"),
        (PartitionForTests(frozenset({"n2"})), InvalidRequest, "test-only setting"),
    ],
)
def test_bad_input_gets_a_failure_naming_the_problem_and_changes_nothing(
    thespian_node: Node, message: Any, reply_type: type[Any], error: str
) -> None:
    thespian_node.ask(Update("k", GCounter(), _incr(1)))
    reply: Any = thespian_node.ask(message)
    assert isinstance(reply, reply_type), reply
    assert error in reply.error
    assert _value(thespian_node, "k") == 1
    stats = thespian_node.ask(GetStats())
    assert isinstance(stats, Stats)
    assert stats.keys == 1


def test_rejected_inputs_are_counted(thespian_node: Node) -> None:
    for garbage in ["a", 1, b"x", Get(1)]:  # type: ignore[arg-type]
        thespian_node.ask(garbage)
    stats = thespian_node.ask(GetStats(request="s"))
    assert isinstance(stats, Stats)
    assert stats.rejected_inputs == 4
    assert stats.request == "s"


def test_a_node_started_with_test_partitions_obeys_partition_for_tests() -> None:
    asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=None)
    try:
        node = Node(asys, 0, start(asys, test_partitions=True))
        node.asys.tell(node.replicator, PartitionForTests(frozenset({"n2"})))
        stats = node.ask(GetStats())
        assert isinstance(stats, Stats)
        assert stats.rejected_inputs == 0
    finally:
        asys.shutdown()


def test_status_names_the_node_its_keys_sizes_and_largest_keys(thespian_node: Node) -> None:
    node = thespian_node
    node.ask(Update("small", GCounter(), _incr(1)))
    node.ask(Update("big", ORSet(), lambda s, n: s.add(n, "x" * 300)))
    node.ask(Update("gone", GCounter(), _incr(1)))
    node.ask(Delete("gone"))
    status = node.ask(GetStatus(largest=1, request="s"))
    assert isinstance(status, Status), status
    stats = node.ask(GetStats())
    assert status.node == stats.node
    assert status.serving
    assert (status.keys, status.tombstones) == (2, 1)
    sizes = {}
    for key in ("small", "big"):
        reply = node.ask(Get(key))
        assert isinstance(reply, GetSuccess)
        sizes[key] = len(encode(reply.data))
    assert status.value_bytes == sum(sizes.values())
    assert status.largest == (("big", sizes["big"]),)
    assert (status.peers, status.removed) == ((), ())
    assert (status.store, status.write_mode, status.store_queue_depth) == (None, "sync", 0)
    assert status.request == "s"
    with pytest.raises(ValueError, match="largest must be an int >= 0"):
        GetStatus(largest=-1)


def test_forged_timers_and_store_messages_from_another_actor_are_ignored(
    thespian_node: Node,
) -> None:
    """Only the Replicator's own timers and its DurableWriter's messages are acted on: another
    actor cannot make it run a method of its choosing, or load rows."""
    thespian_node.ask(Update("k", GCounter(), _incr(1)))
    before = thespian_node.ask(GetStats())
    probe = thespian_node.probe()
    forged = [
        WakeupMessage(timedelta(0), _Every("_reincarnate", "gossip_interval")),
        WakeupMessage(timedelta(0), LoadOverdue(0, 0)),
        LoadChunk([("k", None), ("planted", b"")], []),
        Loaded(99, 2),
        Written(1, None),
    ]
    for message in forged:
        thespian_node.asys.tell(probe, ProbeSend(thespian_node.replicator, message))
    assert _value(thespian_node, "k") == 1
    assert isinstance(thespian_node.ask(Get("planted")), NotFound)
    after = thespian_node.ask(GetStats())
    assert after.node == before.node  # no new incarnation
    assert after.rejected_inputs == before.rejected_inputs + 2  # the forged timers


def test_delete_leaves_a_tombstone(thespian_node: Node) -> None:
    thespian_node.ask(Update("gone", Flag(), lambda f, n: f.switch_on(n)))
    reply = thespian_node.ask(Delete("gone", request=1))
    assert reply == DeleteSuccess("gone", 1)
    assert isinstance(reply, DeleteResponse)
    assert thespian_node.ask(Delete("gone", request=2)) == DataDeleted("gone", 2)
    assert thespian_node.ask(Get("gone", request=3)) == GetDataDeleted("gone", 3)
    reply = thespian_node.ask(Update("gone", Flag(), lambda f, n: f.switch_on(n), request=4))
    assert reply == UpdateDataDeleted("gone", 4)
    keys = thespian_node.ask(GetKeys(request=5))
    assert keys == Keys(frozenset(), 5)


def test_keys_and_replica_count(thespian_node: Node) -> None:
    for key in ["a", "b"]:
        thespian_node.ask(Update(key, GCounter(), _incr(1)))
    assert thespian_node.ask(GetKeys()) == Keys(frozenset({"a", "b"}))
    assert thespian_node.ask(GetReplicaCount(request="n")) == ReplicaCount(1, "n")


def _changes(node: Node, probe: Any) -> list[Any]:
    return [m for m in node.received(probe) if isinstance(m, (Changed, Deleted))]


def test_a_subscriber_gets_the_current_value_first_then_each_change(thespian_node: Node) -> None:
    node = thespian_node
    node.ask(Update("cart", ORSet(), lambda s, n: s.add(n, "apple")))
    probe = node.probe()
    node.asys.tell(probe, ProbeSend(node.replicator, Subscribe("cart")))
    # The notification of the first update may still be due when the subscriber joins: it can
    # hear {"apple"} twice (the current value, then that notification), never anything else.
    first = eventually(lambda: _changes(node, probe), what="the current value")
    assert {(c.key, c.data.value) for c in first} == {("cart", frozenset({"apple"}))}
    node.ask(Update("cart", ORSet(), lambda s, n: s.add(n, "pear")))
    # Its last Changed must be the new value.
    eventually(lambda: _changes(node, probe)[-1].data.value == {"apple", "pear"}, what="the change")
    node.ask(Delete("cart"))
    eventually(lambda: Deleted("cart") in _changes(node, probe), what="Deleted")


def test_a_wildcard_subscription_sees_every_key_with_the_prefix(thespian_node: Node) -> None:
    node = thespian_node
    probe = node.probe()
    node.asys.tell(node.replicator, Subscribe("page-*", subscriber=probe))
    for key in ["page-home", "page-about", "other"]:
        node.ask(Update(key, GCounter(), _incr(1)))
    node.asys.tell(node.replicator, FlushChanges())

    def keys_seen() -> set[str]:
        keys = {c.key for c in _changes(node, probe)}
        assert keys >= {"page-home", "page-about"}, keys
        return keys

    assert "other" not in eventually(keys_seen, what="both pages")


def test_unsubscribe_stops_the_changes(thespian_node: Node) -> None:
    node = thespian_node
    probe = node.probe()
    node.asys.tell(node.replicator, Subscribe("k", subscriber=probe))
    node.ask(Update("k", GCounter(), _incr(1)))
    node.asys.tell(node.replicator, FlushChanges())
    eventually(lambda: _changes(node, probe), what="the first change")
    node.asys.tell(node.replicator, Unsubscribe("k", subscriber=probe))
    node.received(probe, clear=True)
    node.ask(Update("k", GCounter(), _incr(1)))
    node.asys.tell(node.replicator, FlushChanges())
    assert node.ask(Get("k")).data.value == 2  # the flush has been handled by now
    assert _changes(node, probe) == []


@pytest.mark.multinode
def test_a_subscriber_that_dies_is_dropped(real_node: Node) -> None:
    node = real_node
    probe = node.probe()
    node.asys.tell(node.replicator, Subscribe("k", subscriber=probe))
    eventually(lambda: node.ask(GetStats()).subscribers == 1, what="the subscription")
    node.asys.tell(probe, ActorExitRequest())
    updates = 0

    def changed_then_dropped() -> bool:
        # The probe's process stops some time after its ActorExitRequest, and a notification
        # delivered before then succeeds: the drop comes with the first one that fails.
        nonlocal updates
        node.ask(Update("k", GCounter(), _incr(1)))
        updates += 1
        node.asys.tell(node.replicator, FlushChanges())
        stats = node.ask(GetStats())
        return isinstance(stats, Stats) and stats.subscribers == 0

    eventually(changed_then_dropped, interval=0.1, what="the subscriber dropped")
    assert _value(node, "k") == updates


def test_start_is_idempotent_and_createactor_reaches_the_same_replicator(
    thespian_node: Node,
) -> None:
    node = thespian_node
    node.ask(Update("k", GCounter(), _incr(1)))
    assert start(node.asys) == node.replicator
    assert node.asys.createActor(Replicator, globalName=REPLICATOR_NAME) == node.replicator
    assert _value(node, "k") == 1


def test_start_refuses_unknown_settings_and_conflicting_ones(thespian_node: Node) -> None:
    with pytest.raises(TypeError, match="unknown thespian_dd setting"):
        start(thespian_node.asys, gossip_intervall=1)
    with pytest.raises(ValueError, match="notify_interval must be seconds > 0"):
        start(thespian_node.asys, notify_interval=-1)
    with pytest.raises(RuntimeError, match="already running with other settings"):
        start(thespian_node.asys, notify_interval=3.0)


CLIENT = textwrap.dedent(
    """
    import sys
    from thespian.actors import ActorSystem
    import thespian_dd
    from thespian_dd import Get, GSet, Update

    greeting = "hello from " + sys.argv[2]   # a global of this __main__, used by the closure

    def make_modify(suffix):
        return lambda s, node: s.add(node, greeting + suffix)

    asys = ActorSystem("multiprocTCPBase", {"Admin Port": int(sys.argv[1])})
    replicator = thespian_dd.start(asys)
    print(asys.ask(replicator, Update("greetings", GSet(), make_modify("!"), request=1), 10))
    print(sorted(asys.ask(replicator, Get("greetings"), 10).data.value))
    """
)


@pytest.mark.multinode
def test_a_lambda_from_another_programs_main_crosses_processes(real_node: Node) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, str(real_node.port), "the client"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "UpdateSuccess(key='greetings', request=1)" in result.stdout
    assert "['hello from the client!']" in result.stdout
    assert _value(real_node, "greetings") == {"hello from the client!"}


def test_a_hello_answered_leaves_the_keys_used_here_to_the_round_that_tells_every_peer() -> None:
    """Found in review: the status answering a hello took the keys that expire used here, so
    only the hello's sender heard of the use and the round told nobody else (they expired a
    key still in use).  Hellos now come every round while two directories disagree."""
    asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=None)
    try:
        node = Node(
            asys,
            0,
            start(asys, gossip_interval=0.2, expire_keys_after_inactivity={"k": 60.0}),
        )
        assert isinstance(node.ask(Update("k", GCounter(), _incr(1))), UpdateSuccess)
        probe = node.probe()
        hello = PeerHello(PROTOCOL_VERSION, ReplicaId("peer", 7), probe, {}, True)
        asys.tell(node.replicator, hello)
        statuses: list[GossipStatus] = []

        def used_in_a_round() -> bool:
            node.ask(GetStats())  # simpleSystemBase runs its timers while a call waits
            statuses.extend(m for m in node.received(probe) if isinstance(m, GossipStatus))
            return any("k" in s.used for s in statuses[1:])

        eventually(used_in_a_round, timeout=10, what="a round's status naming k")
        assert statuses[0].used == {}, statuses[0]  # the hello's answer
    finally:
        asys.shutdown()


def test_an_actor_created_on_another_node_does_not_end_the_commit_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: every createActor ended the commit thread first, waiting out a commit
    in progress (up to a store's timeouts) with the Replicator frozen, also for an Introducer,
    which the admin creates on the peer's node and which forks nothing here."""
    from thespian.actors import Actor

    class Commits:
        paused = 0

        def pause(self) -> None:
            self.paused += 1

    created: list[Any] = []
    monkeypatch.setattr(Actor, "createActor", lambda _self, *a, **kw: created.append((a, kw)))
    replicator = Replicator.__new__(Replicator)
    commits = Commits()
    replicator._commits = commits  # type: ignore[assignment]
    replicator.createActor(Replicator, targetActorRequirements={"thespian_dd_node": "n2"})
    assert commits.paused == 0
    replicator.createActor(Replicator)  # a child forked here: the thread ends first
    assert commits.paused == 1
    assert len(created) == 2
