"""Subscriptions and their outboxes: one notification in flight per subscriber, the rest held with
the latest state of each key replacing an older one, the next sent when the one in flight is
done; a dead subscriber dropped (and reported once); unsubscribing the last pattern forgets the
outbox; the notification timer armed once until it fires; the changed keys taken in order;
``prefix*`` patterns; a subscriber on a cut-off node holding at most one message per key; and a
property: however sends and completions interleave, each subscriber ends with the latest state of
every key it subscribed to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import Wire
from hypothesis import given
from hypothesis import strategies as st
from thespian.actors import ActorAddress
from thespian.system.transport import SendStatus

from thespian_dd._runtime.protocol import NotifyTick
from thespian_dd._runtime.subscriptions import Notification, Subscriptions
from thespian_dd.messages import Changed, Deleted, Expired

pytestmark = pytest.mark.timeout(60)

S, T = ActorAddress("subscriber-s"), ActorAddress("subscriber-t")


@dataclass
class World:
    wire: Wire = field(default_factory=Wire)
    wakes: list[tuple[float, Any]] = field(default_factory=list)
    dropped: list[Any] = field(default_factory=list)

    def subscriptions(self, interval: float = 0.5) -> Subscriptions:
        return Subscriptions(
            transmit=self.wire,
            wake=lambda seconds, payload: self.wakes.append((seconds, payload)),
            interval=interval,
            dropped=self.dropped.append,
        )


def setup(*patterns: tuple[str, Any]) -> tuple[Subscriptions, World]:
    world = World()
    subs = world.subscriptions()
    for pattern, subscriber in patterns:
        subs.subscribe(pattern, subscriber)
    return subs, world


# -- the outbox -----------------------------------------------------------------------------------


def test_one_notification_is_in_flight_and_the_rest_held_with_the_latest_per_key() -> None:
    subs, world = setup(("*", S))
    subs.notify(Changed("a", 1))
    subs.notify(Changed("b", 1))
    subs.notify(Changed("a", 2))
    subs.notify(Changed("a", 3))
    subs.notify(Deleted("b"))
    subs.notify(Expired("c"))
    assert world.wire.to(S) == [Changed("a", 1)]
    assert subs.held(S) == [Deleted("b"), Changed("a", 3), Expired("c")]


def test_the_next_held_notification_goes_when_the_one_in_flight_is_done() -> None:
    subs, world = setup(("*", S))
    for message in (Changed("a", 1), Changed("b", 1), Changed("a", 2), Changed("c", 1)):
        subs.notify(message)
    world.wire.finish_to(S)
    assert world.wire.to(S) == [Changed("a", 1), Changed("b", 1)]
    assert subs.held(S) == [Changed("a", 2), Changed("c", 1)]
    world.wire.finish_to(S, SendStatus.Failed)  # not delivered, but the subscriber may live on
    world.wire.finish_to(S, SendStatus.Expired)
    world.wire.finish_to(S)
    assert world.wire.to(S) == [Changed("a", 1), Changed("b", 1), Changed("a", 2), Changed("c", 1)]
    assert subs.held(S) == []
    assert world.wire.pending(S) == []
    subs.notify(Changed("d", 1))  # nothing in flight: sent at once
    assert world.wire.to(S)[-1] == Changed("d", 1)
    assert len(subs) == 1


def test_each_subscriber_has_its_own_outbox() -> None:
    subs, world = setup(("*", S), ("*", T))
    for i in range(5):
        subs.notify(Changed("a", i))
        world.wire.finish_to(T)
    assert world.wire.to(S) == [Changed("a", 0)]
    assert subs.held(S) == [Changed("a", 4)]
    assert world.wire.to(T) == [Changed("a", i) for i in range(5)]
    assert subs.held(T) == []


def test_a_subscriber_on_a_cut_off_node_holds_at_most_one_message_per_key() -> None:
    subs, world = setup(("*", S), ("*", T))
    keys = [f"k{i}" for i in range(5)]
    for i in range(1000):
        key = keys[i % len(keys)]
        subs.notify(Changed(key, i))
        world.wire.finish_to(T)  # t is fine; s's transmit never finishes
    assert len(world.wire.to(S)) == 1
    held = subs.held(S)
    assert len(held) == len(keys)
    assert {m.key: m for m in held} == {key: Changed(key, 995 + i) for i, key in enumerate(keys)}
    assert len(world.wire.to(T)) == 1000


def test_a_direct_tell_goes_through_the_outbox_too() -> None:
    # How the Replicator sends a new subscriber the current values.
    subs, world = setup(("*", S))
    subs.tell(S, Changed("a", 1))
    subs.tell(S, Changed("b", 1))
    subs.notify(Changed("b", 2))
    assert world.wire.to(S) == [Changed("a", 1)]
    assert subs.held(S) == [Changed("b", 2)]


def test_equal_addresses_are_one_subscriber() -> None:
    subs, world = setup(("*", ActorAddress("same")), ("*", ActorAddress("same")))
    assert len(subs) == 1
    subs.notify(Changed("a", 1))
    subs.notify(Changed("a", 2))
    assert world.wire.to(ActorAddress("same")) == [Changed("a", 1)]
    assert subs.held(ActorAddress("same")) == [Changed("a", 2)]


# -- dead subscribers ---------------------------------------------------------------------------


def test_a_dead_target_drops_the_subscriber_and_what_it_was_to_be_told() -> None:
    subs, world = setup(("a", S), ("b*", S), ("*", T))
    subs.notify(Changed("a", 1))
    subs.notify(Changed("b1", 1))
    world.wire.finish_to(S, SendStatus.DeadTarget)
    assert world.dropped == [S]
    assert world.wire.to(S) == [Changed("a", 1)]  # what was held is not sent
    assert subs.held(S) == []
    assert len(subs) == 1
    subs.notify(Changed("a", 2))
    assert world.wire.to(S) == [Changed("a", 1)]
    assert world.wire.to(T)[0] == Changed("a", 1)
    subs.drop(S)  # the dead-letter route tells of it too: reported once
    assert world.dropped == [S]


def test_drop_forgets_every_pattern_of_the_address_and_reports_it_once() -> None:
    subs, world = setup(("a", S), ("b*", S), ("a", T))
    subs.drop(S)
    subs.drop(S)
    subs.drop(ActorAddress("never subscribed"))
    assert world.dropped == [S]
    assert len(subs) == 1
    subs.notify(Changed("a", 1))
    subs.notify(Changed("b", 1))
    assert world.wire.to(S) == []
    assert world.wire.to(T) == [Changed("a", 1)]


# -- unsubscribing ------------------------------------------------------------------------------


def test_unsubscribing_the_last_pattern_forgets_the_outbox() -> None:
    subs, world = setup(("a", S), ("b*", S))
    subs.notify(Changed("a", 1))
    subs.notify(Changed("b1", 1))
    subs.unsubscribe("a", S)
    assert subs.held(S) == [Changed("b1", 1)]  # still subscribed to b*: kept
    subs.notify(Changed("a", 2))
    assert subs.held(S) == [Changed("b1", 1)]
    subs.unsubscribe("b*", S)
    assert subs.held(S) == []
    assert len(subs) == 0
    world.wire.finish_to(S)  # the one in flight completes late: nothing more goes
    assert world.wire.to(S) == [Changed("a", 1)]
    assert world.dropped == []


def test_a_late_completion_after_unsubscribing_neither_drops_nor_sends() -> None:
    subs, world = setup(("a", S))
    subs.notify(Changed("a", 1))
    subs.unsubscribe("a", S)
    subs.subscribe("a", S)  # subscribed again meanwhile: a new outbox
    subs.notify(Changed("a", 2))
    subs.notify(Changed("a", 3))
    first, second = world.wire.sent
    first.finished = True
    first.done(SendStatus.DeadTarget)  # the old outbox's transmit
    assert world.dropped == []
    assert len(subs) == 1
    assert subs.held(S) == [Changed("a", 3)]
    assert second.message == Changed("a", 2)
    world.wire.finish_to(S)
    assert world.wire.to(S) == [Changed("a", 1), Changed("a", 2), Changed("a", 3)]


def test_unsubscribing_what_was_never_subscribed_changes_nothing() -> None:
    subs, world = setup(("a", S))
    subs.unsubscribe("b", S)
    subs.unsubscribe("a", T)
    assert len(subs) == 1
    subs.notify(Changed("a", 1))
    assert world.wire.to(S) == [Changed("a", 1)]


def test_subscribing_twice_is_one_subscription() -> None:
    subs, world = setup(("a", S), ("a", S))
    assert len(subs) == 1
    subs.notify(Changed("a", 1))
    assert world.wire.to(S) == [Changed("a", 1)]
    assert subs.held(S) == []
    subs.unsubscribe("a", S)
    assert len(subs) == 0


# -- patterns -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "told"),
    [
        ("a", "a", True),
        ("a", "ab", False),
        ("ab", "a", False),
        ("user:*", "user:1", True),
        ("user:*", "user:", True),
        ("user:*", "users", False),
        ("user:*", "user", False),
        ("*", "anything", True),
        ("a*b", "a*b", True),  # only a trailing * is a wildcard
        ("a*b", "axb", False),
    ],
)
def test_a_pattern_ending_in_a_star_is_a_prefix_and_any_other_an_exact_key(
    pattern: str, key: str, told: bool
) -> None:
    subs, world = setup((pattern, S))
    subs.notify(Changed(key, 1))
    assert world.wire.to(S) == ([Changed(key, 1)] if told else [])


# -- the notification timer and the changed keys -----------------------------------------------


def test_a_change_arms_the_timer_once_until_it_fires() -> None:
    world = World()
    subs = world.subscriptions(interval=0.25)
    subs.subscribe("*", S)
    subs.changed("b")
    subs.changed("a")
    subs.changed("b")
    assert world.wakes == [(0.25, NotifyTick())]
    subs.due()
    assert world.wakes == [(0.25, NotifyTick())]  # firing alone arms nothing
    subs.changed("c")
    assert world.wakes == [(0.25, NotifyTick()), (0.25, NotifyTick())]
    subs.changed("d")
    assert len(world.wakes) == 2


def test_the_changed_keys_are_taken_sorted_and_once() -> None:
    subs, _ = setup(("*", S))
    for key in ("b", "c", "a", "b"):
        subs.changed(key)
    assert subs.take_changed() == ["a", "b", "c"]
    assert subs.take_changed() == []
    subs.changed("z")
    assert subs.take_changed() == ["z"]


def test_changes_taken_before_the_timer_fires_leave_it_armed() -> None:
    # FlushChanges notifies at once; the timer still fires later and finds nothing.
    subs, world = setup(("*", S))
    subs.changed("a")
    assert subs.take_changed() == ["a"]
    subs.changed("b")
    assert len(world.wakes) == 1
    subs.due()
    assert subs.take_changed() == ["b"]


def test_with_no_subscriber_a_change_arms_no_timer_and_is_not_kept() -> None:
    """Nobody to tell: no notification wakeup (a peer's write merged on a node without
    subscribers costs none), and nothing is kept for a later subscriber, which is told the
    current values when it subscribes (Parts.subscribe)."""
    subs, world = setup()
    subs.changed("a")
    assert world.wakes == []
    subs.subscribe("*", S)
    assert subs.take_changed() == []
    subs.changed("b")
    assert world.wakes == [(0.5, NotifyTick())]
    subs.due()
    assert subs.take_changed() == ["b"]
    subs.unsubscribe("*", S)
    subs.changed("c")
    assert len(world.wakes) == 1
    assert subs.take_changed() == []


# -- against a model ------------------------------------------------------------------------------

KEYS = ["a", "ab", "b"]
PATTERNS = ["a", "a*", "b", "*"]
SUBSCRIBERS = [S, T]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("notify"), st.sampled_from(KEYS), st.integers(0, 9)),
        st.tuples(st.just("finish"), st.sampled_from(SUBSCRIBERS), st.sampled_from([0, 1])),
    ),
    max_size=40,
)


@given(
    st.lists(st.tuples(st.sampled_from(PATTERNS), st.sampled_from(SUBSCRIBERS)), min_size=1),
    steps,
)
def test_every_subscriber_ends_with_the_latest_state_of_each_of_its_keys(
    patterns: list[tuple[str, Any]], ops: list[tuple[str, Any, int]]
) -> None:
    subs, world = setup(*patterns)
    latest: dict[str, Notification] = {}
    statuses = [SendStatus.Sent, SendStatus.Failed]
    for op, what, n in ops:
        if op == "notify":
            message: Notification = Deleted(what) if n == 9 else Changed(what, n)
            latest[what] = message
            subs.notify(message)
        elif world.wire.pending(what):
            world.wire.finish_to(what, statuses[n])
        for subscriber in SUBSCRIBERS:
            assert len(world.wire.pending(subscriber)) <= 1
            held = subs.held(subscriber)
            assert len({m.key for m in held}) == len(held)  # one per key
    for subscriber in SUBSCRIBERS:
        while world.wire.pending(subscriber):
            world.wire.finish_to(subscriber)
        mine = [p for p, s in patterns if s == subscriber]
        told = {m.key: m for m in world.wire.to(subscriber)}  # the last of each key
        assert told == {
            key: message
            for key, message in latest.items()
            if any(p == key or (p.endswith("*") and key.startswith(p[:-1])) for p in mine)
        }
