"""Typed keys are plain str keys at run time, and travel as str."""

from __future__ import annotations

import pickle

import dill

from thespian_dd import (
    GCounter,
    GCounterKey,
    Get,
    Key,
    ORSet,
    ORSetKey,
    Update,
)


def test_a_typed_key_is_the_str_it_names() -> None:
    key = GCounterKey("hits")
    assert isinstance(key, str)
    assert key == "hits"
    assert hash(key) == hash("hits")
    assert {"hits": 1}[key] == 1
    assert Key[ORSet]("cart") == ORSetKey("cart") == "cart"


def test_a_typed_key_pickles_as_a_plain_str_alone_and_inside_messages() -> None:
    key = ORSetKey("cart")
    for dumps in (pickle.dumps, dill.dumps):
        assert type(pickle.loads(dumps(key))) is str
    get = pickle.loads(pickle.dumps(Get(key)))
    assert type(get.key) is str
    assert get.key == "cart"
    update = pickle.loads(pickle.dumps(Update(GCounterKey("hits"), GCounter(), lambda c, n: c)))
    assert type(update.key) is str


def test_a_typed_key_adds_no_state_of_its_own() -> None:
    # No __dict__: nothing but the str can ride along (or be lost in pickling).
    assert not hasattr(GCounterKey("hits"), "__dict__")
