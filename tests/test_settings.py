"""The Replicator's settings and the checks it makes of every request.

Settings: every bad value of every field is refused with a ValueError naming the field (one table
covering all fields), unknown names are a TypeError listing the known ones, capabilities give
settings under their prefix, lists become tuples, and the rules ``is_durable``, ``expiry``
(an exact key before the longest prefix), ``marker_ttl`` and ``matches``.

Checks (``thespian_dd._runtime.checks``): ``key_error``, ``consistency_error`` (the wrong family,
levels that arrive pickled with a timeout no timer can hold, a rule that gives no number), and
``Rejections`` (counted; each (origin, reason) logged once).
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import fields
from types import MappingProxyType
from typing import Any

import pytest

from thespian_dd import (
    GCounter,
    ReadAll,
    ReadFrom,
    ReadLocal,
    ReadMajority,
    ReplicaId,
    WriteAll,
    WriteLocal,
    WriteMajority,
    WriteTo,
)
from thespian_dd._runtime.checks import Rejections, consistency_error, failure_reply, key_error
from thespian_dd._runtime.protocol import GossipKeys
from thespian_dd._runtime.settings import CAPABILITY_PREFIX, Settings, matches
from thespian_dd.messages import (
    Delete,
    Get,
    GetFailure,
    GetStats,
    InvalidRequest,
    ModifyFailure,
    ReadConsistency,
    ReplicationDeleteFailure,
    Subscribe,
    Update,
    WriteConsistency,
)


def _noop(counter: GCounter, node: ReplicaId) -> GCounter:
    return counter


pytestmark = pytest.mark.timeout(60)

URL = "sqlite:///x.db"
NAN = math.nan

SECONDS = [0, 0.0, -1, -0.5, NAN, "1", True, False, None, [1]]
"""Not seconds > 0 (bools are no numbers)."""

BAD: dict[str, list[object]] = {
    "node_name": ["", 5, b"n1", ["n1"]],
    "notify_interval": SECONDS,
    "gossip_interval": SECONDS,
    "delta_interval": [-1, -0.5, NAN, "0.2", True, None],
    "failure_timeout": SECONDS,
    "max_value_bytes": [0, -1, 1.5, True, False, "1", None],
    "max_gossip_bytes": [0, -1, 1.5, True, False, "1", None],
    "store": ["", 5, b"sqlite://"],
    "signing_key_file": ["", 5, b"/keys/k"],
    "durable_keys": ["user:*", ["a", ""], [5], None, {"a"}, ("a", None)],
    "data_types": ["json", [""], [5], None, ["no_such_module_here"], ("json", "no.such.module")],
    "write_mode": ["async", "SYNC", "", None, ["sync"]],
    "write_behind_interval": SECONDS,
    "removal_timeout": SECONDS,
    "pruning_interval": SECONDS,
    "max_pruning_dissemination": SECONDS,
    "pruning_marker_ttl": SECONDS,
    "durable_pruning_marker_ttl": SECONDS,
    "expire_keys_after_inactivity": [
        {"": 1.0},
        {"k": 0},
        {"k": -1},
        {"k": NAN},
        {"k": True},
        {"k": "60"},
        {"k": None},
        {5: 1.0},
        ["k"],
        None,
    ],
    "test_partitions": [1, 0, "yes", None],
}

GOOD: dict[str, list[object]] = {
    "node_name": ["n1", "host:1900"],
    "notify_interval": [0.001, 1, 1e6],
    "gossip_interval": [0.001, 1, 1e6],
    "delta_interval": [0, 0.0, 0.001, 1],
    "failure_timeout": [0.5, 30],
    "max_value_bytes": [1, 10**9],
    "max_gossip_bytes": [1, 10**9],
    "store": [None, URL],
    "signing_key_file": [None, "/keys/k"],
    "durable_keys": [(), ["a"], ("a*", "b")],
    "data_types": [(), ["json"], ("json", "max_register")],
    "write_mode": ["sync", "write-behind"],
    "write_behind_interval": [0.01, 5],
    "removal_timeout": [1, 300.0],
    "pruning_interval": [1, 120.0],
    "max_pruning_dissemination": [1, 300.0],
    "pruning_marker_ttl": [1, 3600.0],
    "durable_pruning_marker_ttl": [1, 86400.0],
    "expire_keys_after_inactivity": [{}, {"k": 1}, {"p*": 0.5, "k": 10**6}],
    "test_partitions": [False, True],
}


def test_the_tables_cover_every_setting() -> None:
    names = {f.name for f in fields(Settings)}
    assert set(BAD) == names
    assert set(GOOD) == names
    assert Settings.names() == names


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, values in BAD.items() for value in values],
    ids=lambda v: repr(v)[:30],
)
def test_a_bad_value_is_refused_naming_its_setting(name: str, value: object) -> None:
    given: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=rf"^{name} must"):
        Settings(**given)
    with pytest.raises(ValueError, match=rf"^{name} must"):
        Settings.from_mapping(given)


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, values in GOOD.items() for value in values],
    ids=lambda v: repr(v)[:30],
)
def test_a_good_value_is_kept(name: str, value: object) -> None:
    given: dict[str, Any] = {name: value}
    settings = Settings(**given)
    kept = getattr(settings, name)
    assert kept == (tuple(value) if isinstance(value, list) else value)


def test_delta_interval_refuses_false_as_it_refuses_true() -> None:
    """History: ``Settings(delta_interval=True)`` raises "delta_interval must be seconds > 0,
    not True", and every other seconds setting refuses both bools (``checks.seconds``: "bools
    are not" numbers), but ``Settings(delta_interval=False)`` is accepted and kept as ``False``:
    the check runs only ``if self.delta_interval != 0``, and ``False != 0`` is False.  Harmless
    in effect (the Replicator reads it as 0: deltas off), but not what the table promises."""
    with pytest.raises(ValueError, match="delta_interval"):
        Settings(delta_interval=False)


@pytest.mark.parametrize("name", ["pruning_marker_ttl", "durable_pruning_marker_ttl"])
def test_an_infinite_marker_ttl_is_refused(name: str) -> None:
    """History: ``Settings(pruning_marker_ttl=inf)`` (or ``durable_pruning_marker_ttl=inf``) was
    accepted: ``_check_positive`` only asked ``value > 0``.  The first pruning round in which
    this node owned a marker every live node had seen then computed
    ``int(settings.marker_ttl(key) * 1000)`` and raised ``OverflowError``: that key was never
    pruned, every later round raised again, and keys the round had already pruned were changed
    in the key table but never handed back to be stored.  Every seconds setting must now be
    finite, as consistency levels' timeouts already had to be."""
    with pytest.raises(ValueError, match=f"{name} must be seconds > 0"):
        Settings.from_mapping({name: math.inf})


# -- from a mapping, from capabilities -------------------------------------------------------------


def test_unknown_names_are_a_type_error_listing_the_known_ones() -> None:
    with pytest.raises(TypeError) as raised:
        Settings.from_mapping({"gossip": 1.0, "store_url": URL, "gossip_interval": 1.0})
    message = str(raised.value)
    assert "['gossip', 'store_url']" in message
    assert f"known: {sorted(Settings.names())}" in message


def test_from_a_mapping_the_settings_are_those_given() -> None:
    settings = Settings.from_mapping({"gossip_interval": 0.5, "store": URL})
    assert settings == Settings(gossip_interval=0.5, store=URL)
    assert Settings.from_mapping({}) == Settings()


def test_capabilities_give_the_settings_under_the_prefix() -> None:
    capabilities: dict[Any, Any] = {
        "thespian_dd.gossip_interval": 0.5,
        "thespian_dd.node_name": "n1",
        "thespian_dd.durable_keys": ["a*"],
        "Admin Port": 1900,
        "thespian_ddx.store": URL,
        "thespian_dd": "no name",
        "THESPIAN_DD.store": URL,
        "other.thespian_dd.store": URL,
        7: "not a name",
    }
    values = Settings.from_capabilities(capabilities)
    assert values == {"gossip_interval": 0.5, "node_name": "n1", "durable_keys": ["a*"]}
    settings = Settings.from_mapping(values)
    assert settings.durable_keys == ("a*",)
    assert CAPABILITY_PREFIX == "thespian_dd."


def test_a_capability_that_names_no_setting_is_refused_by_from_mapping() -> None:
    values = Settings.from_capabilities({"thespian_dd.gossip": 1.0})
    with pytest.raises(TypeError, match="gossip"):
        Settings.from_mapping(values)


def test_lists_become_tuples_and_any_mapping_a_dict() -> None:
    given: dict[str, Any] = {
        "durable_keys": ["a*", "b"],
        "expire_keys_after_inactivity": MappingProxyType({"k": 5}),
    }
    settings = Settings(**given)
    assert settings.durable_keys == ("a*", "b")
    assert type(settings.expire_keys_after_inactivity) is dict
    assert settings.expire_keys_after_inactivity == {"k": 5}
    hash(settings.durable_keys)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.gossip_interval = 1.0  # type: ignore[misc]


# -- the rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("user:1", "user:1", True),
        ("user:1", "user:10", False),
        ("user:1", "user:", False),
        ("user:*", "user:1", True),
        ("user:*", "user:", True),
        ("user:*", "user", False),
        ("user:*", "users:1", False),
        ("*", "anything", True),
        ("*", "", True),
        ("a*b", "a*b", True),
        ("a*b", "axb", False),
    ],
)
def test_a_pattern_matches_its_key_or_with_a_star_its_prefix(
    pattern: str, key: str, expected: bool
) -> None:
    assert matches(pattern, key) is expected


def test_durable_keys_need_a_store_and_a_matching_pattern() -> None:
    assert not Settings().is_durable("k")
    assert Settings(store=URL).is_durable("k")  # "*" by default
    settings = Settings(store=URL, durable_keys=("user:*", "config"))
    assert settings.is_durable("user:7")
    assert settings.is_durable("config")
    assert not settings.is_durable("configs")
    assert not settings.is_durable("session:1")
    assert not Settings(store=URL, durable_keys=()).is_durable("k")
    assert not Settings(durable_keys=("user:*",)).is_durable("user:7")


def test_an_exact_key_beats_the_longest_prefix_which_beats_shorter_ones() -> None:
    settings = Settings(
        expire_keys_after_inactivity={"a*": 1, "ab*": 2, "abc": 3, "abcd*": 4, "x": 5}
    )
    assert settings.expiry("abc") == 3
    assert settings.expiry("abcd") == 4
    assert settings.expiry("abce") == 2
    assert settings.expiry("ab") == 2
    assert settings.expiry("a") == 1
    assert settings.expiry("x") == 5
    assert settings.expiry("xy") is None
    assert settings.expiry("b") is None
    assert Settings().expiry("k") is None


def test_the_marker_ttl_of_a_durable_key_is_the_durable_one() -> None:
    settings = Settings(
        store=URL,
        durable_keys=("d*",),
        pruning_marker_ttl=60.0,
        durable_pruning_marker_ttl=600.0,
    )
    assert settings.marker_ttl("d1") == 600.0
    assert settings.marker_ttl("m1") == 60.0
    in_memory = Settings(pruning_marker_ttl=60.0, durable_pruning_marker_ttl=600.0)
    assert in_memory.marker_ttl("d1") == 60.0


# -- key_error -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (7, "key must be a str, not int"),
        (None, "key must be a str, not NoneType"),
        (b"k", "key must be a str, not bytes"),
        ("", "key must not be empty"),
        ("a\x00b", "key must not contain NUL characters"),
        ("\x00", "key must not contain NUL characters"),
        ("a\ud800b", "key must be valid Unicode text"),
        ("\udfff", "key must be valid Unicode text"),
    ],
)
def test_a_key_that_cannot_name_a_value_is_refused_with_why(key: object, reason: str) -> None:
    error = key_error(key)
    assert error is not None
    assert error.startswith(reason)


@pytest.mark.parametrize("key", ["k", " ", "user:7", "ключ", "\U0001f600", "a" * 10_000, "\t"])
def test_a_good_key_has_no_error(key: str) -> None:
    assert key_error(key) is None


# -- consistency_error -----------------------------------------------------------------------------


def arrived_pickled(level: Any, **fields_: object) -> Any:
    """``level`` with ``fields_`` set past its constructor's checks, then pickled and unpickled
    (as a level from another process arrives)."""
    for name, value in fields_.items():
        object.__setattr__(level, name, value)
    return pickle.loads(pickle.dumps(level))


@pytest.mark.parametrize(
    ("level", "family"),
    [
        (ReadLocal(), ReadConsistency),
        (ReadFrom(2, 1.0), ReadConsistency),
        (ReadMajority(1.0, 3), ReadConsistency),
        (ReadAll(1.0), ReadConsistency),
        (WriteLocal(), WriteConsistency),
        (WriteTo(2, 1.0), WriteConsistency),
        (WriteMajority(1.0), WriteConsistency),
        (WriteAll(86400.0), WriteConsistency),
    ],
)
def test_a_good_level_of_its_family_has_no_error(level: object, family: type) -> None:
    assert consistency_error(level, family) is None
    assert consistency_error(pickle.loads(pickle.dumps(level)), family) is None


@pytest.mark.parametrize(
    ("level", "family"),
    [
        (ReadMajority(1.0), WriteConsistency),
        (WriteLocal(), ReadConsistency),
        ("majority", ReadConsistency),
        (None, WriteConsistency),
        (3, WriteConsistency),
    ],
)
def test_a_level_of_the_wrong_family_is_refused(level: object, family: type) -> None:
    assert consistency_error(level, family) == (
        f"consistency must be a {family.__name__}, not {type(level).__name__}"
    )


@pytest.mark.parametrize(
    ("level", "fields_", "cause"),
    [
        (WriteMajority(1.0), {"timeout": math.inf}, "OverflowError"),
        (WriteMajority(1.0), {"timeout": 1e300}, "OverflowError"),
        (ReadFrom(2, 1.0), {"timeout": 1e300}, "OverflowError"),
        (ReadAll(1.0), {"timeout": math.inf}, "OverflowError"),
        (WriteTo(2, 1.0), {"timeout": -1.0}, "ValueError: timeout must be"),
        (ReadMajority(1.0), {"timeout": NAN}, "ValueError: timeout must be"),
        (WriteAll(1.0), {"timeout": "1"}, "ValueError: timeout must be"),
        (ReadFrom(2, 1.0), {"n": 0}, "ValueError: ReadFrom n must be"),
        (WriteMajority(1.0), {"min_cap": "2"}, "TypeError"),
    ],
)
def test_a_level_that_arrives_pickled_is_checked_again(
    level: object, fields_: dict[str, object], cause: str
) -> None:
    family = ReadConsistency if isinstance(level, ReadConsistency) else WriteConsistency
    error = consistency_error(arrived_pickled(level, **fields_), family)
    assert error is not None
    assert error.startswith(f"consistency {type(level).__name__} is invalid: {cause}")


class Counted(WriteConsistency):
    """A level whose rule gives what it is told to."""

    def __init__(self, needed: object) -> None:
        self.needed = needed

    def replicas_needed(self, n: int) -> int:
        return self.needed  # type: ignore[return-value]


@pytest.mark.parametrize("needed", ["2", None, True, [2], 2j])
def test_a_level_whose_rule_gives_no_number_is_refused(needed: object) -> None:
    assert consistency_error(Counted(needed), WriteConsistency) == (
        f"consistency Counted is invalid: it needs {needed!r} replicas"
    )


@pytest.mark.parametrize("needed", [2, 2.5])
def test_a_level_whose_rule_gives_a_number_is_accepted(needed: object) -> None:
    assert consistency_error(Counted(needed), WriteConsistency) is None


def test_a_level_whose_rule_raises_is_refused() -> None:
    class Broken(WriteConsistency):
        def replicas_needed(self, n: int) -> int:
            raise ZeroDivisionError("no")

    assert consistency_error(Broken(), WriteConsistency) == (
        "consistency Broken is invalid: ZeroDivisionError: no"
    )


# -- Rejections ------------------------------------------------------------------------------------


def test_rejections_count_without_logging(caplog: pytest.LogCaptureFixture) -> None:
    rejections = Rejections(logging.getLogger("test.rejections"))
    rejections.refuse()
    rejections.refuse(4)
    assert rejections.count == 5
    assert caplog.records == []
    rejections.reset()
    assert rejections.count == 0


def test_each_origin_and_reason_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    rejections = Rejections(logging.getLogger("test.rejections"))
    with caplog.at_level(logging.WARNING, logger="test.rejections"):
        assert rejections.warn_once("b#1", "too big", "value of %r from %s", "k", "b#1")
        assert not rejections.warn_once("b#1", "too big", "value of %r from %s", "k2", "b#1")
        assert rejections.warn_once("c#1", "too big", "value of %r from %s", "k", "c#1")
        assert rejections.warn_once("b#1", "bad type", "type of %r from %s", "k", "b#1")
        assert not rejections.warn_once("c#1", "too big", "again")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "value of 'k' from b#1"),
        (logging.WARNING, "value of 'k' from c#1"),
        (logging.WARNING, "type of 'k' from b#1"),
    ]
    assert rejections.count == 0  # logging counts nothing


def test_a_reset_forgets_the_count_but_not_what_was_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rejections = Rejections(logging.getLogger("test.rejections"))
    with caplog.at_level(logging.WARNING, logger="test.rejections"):
        rejections.refuse(3)
        rejections.warn_once("b#1", "too big", "logged")
        rejections.reset()
        assert not rejections.warn_once("b#1", "too big", "not again")
    assert rejections.count == 0
    assert [r.getMessage() for r in caplog.records] == ["logged"]


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        (Get("k", request="r"), GetFailure("k", "r", "why")),
        (Update("k", GCounter(), _noop, request="r"), ModifyFailure("k", "r", "why")),
        (Delete("k", request="r"), ReplicationDeleteFailure("k", "r", "why")),
        (Subscribe("k"), InvalidRequest("Subscribe", "why", None)),
        (GetStats(request="r"), InvalidRequest("GetStats", "why", "r")),
        (GossipKeys(1, ReplicaId("p", 1), {}, frozenset()), None),
    ],
)
def test_a_request_that_cannot_be_served_gets_the_failure_of_its_family(
    message: object, reply: object
) -> None:
    assert failure_reply(message, "why") == reply


# -- a second start() asking for settings ----------------------------------------------------------


def test_asking_a_running_replicator_for_its_own_settings_is_no_conflict() -> None:
    running = Settings(gossip_interval=1.0, durable_keys=("a*",))
    assert running.conflict({}) is None
    assert running.conflict({"gossip_interval": 1.0, "durable_keys": ["a*"]}) is None


def test_asking_for_other_values_names_what_was_asked_and_what_runs() -> None:
    error = Settings(gossip_interval=1.0).conflict({"gossip_interval": 2.0})
    assert error == (
        "the Replicator is already running with other settings: asked {'gossip_interval': 2.0}, "
        "running {'gossip_interval': 1.0}"
    )


def test_an_unknown_name_is_the_conflict_reported_first() -> None:
    error = Settings().conflict({"gossip_interval": 9.0, "bogus": 1})
    assert error == "unknown thespian_dd setting(s) ['bogus']"


def test_removal_and_pruning_may_wait_forever_but_timers_and_marker_lifetimes_must_be_finite() -> (
    None
):
    never = Settings(removal_timeout=math.inf, max_pruning_dissemination=math.inf)
    assert never.removal_timeout == math.inf
    assert never.max_pruning_dissemination == math.inf
    for name in ("gossip_interval", "failure_timeout", "pruning_interval", "pruning_marker_ttl"):
        with pytest.raises(ValueError, match=f"{name} must be seconds > 0"):
            Settings.from_mapping({name: math.inf})
