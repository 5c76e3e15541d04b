"""Every public callable has a docstring of its own, so the API reference has no empty entry.

Public: every name in ``thespian_dd.__all__``, ``thespian_dd.testing.__all__`` and the pytest
plugin's fixtures (``thespian_dd._testkit.plugin.__all__``), and every public method, property,
classmethod and staticmethod of those classes that thespian_dd itself defines (inherited from a
thespian_dd base included; Python's and Thespian's own are not ours).  Thespian's message
handlers (``receiveMsg_*``) are left out: Thespian calls them, a user never does, and the
messages they handle are documented.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import thespian_dd
import thespian_dd.testing
from thespian_dd._testkit import plugin

THESPIAN_HANDLERS = ("receiveMsg_", "receiveMessage", "receiveUnrecognizedMessage")


def _own_doc(obj: object) -> str | None:
    if isinstance(obj, type):
        doc = obj.__dict__.get("__doc__")
        if dataclasses.is_dataclass(obj) and doc == _generated_doc(obj):
            return None  # the signature @dataclass writes when the class has no docstring
        return doc if isinstance(doc, str) else None
    return getattr(obj, "__doc__", None)


def _generated_doc(cls: type) -> str:
    try:
        signature = str(inspect.signature(cls)).replace(" -> None", "")
    except (TypeError, ValueError):
        signature = ""
    return cls.__name__ + signature


def _members(cls: type) -> Iterator[tuple[str, object]]:
    """The public callables and properties of ``cls`` that a thespian_dd class defines."""
    seen: set[str] = set()
    for owner in cls.__mro__:
        if not owner.__module__.startswith("thespian_dd"):
            continue
        for name, attr in vars(owner).items():
            if name.startswith("_") or name.startswith(THESPIAN_HANDLERS) or name in seen:
                continue
            seen.add(name)
            if isinstance(attr, (staticmethod, classmethod)):
                yield f"{owner.__module__}.{owner.__qualname__}.{name}", attr.__func__
            elif isinstance(attr, property):
                yield f"{owner.__module__}.{owner.__qualname__}.{name}", attr.fget
            elif inspect.isfunction(attr):
                yield f"{owner.__module__}.{owner.__qualname__}.{name}", attr


def public_callables() -> dict[str, object]:
    modules: tuple[ModuleType, ...] = (thespian_dd, thespian_dd.testing, plugin)
    found: dict[str, object] = {}
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if not callable(obj):
                continue  # constants: REPLICATOR_NAME, FAST
            found[f"{module.__name__}.{name}"] = obj
            if isinstance(obj, type):
                found.update(_members(obj))
    return found


def test_the_walk_finds_the_public_api_and_leaves_out_thespian_handlers() -> None:
    found = public_callables()
    for name in (
        "thespian_dd.start",
        "thespian_dd.ORSet",
        "thespian_dd.orset.ORSet.add",
        "thespian_dd.orset.ORSet.value",
        "thespian_dd.lwwregister.LWWRegister.create",
        "thespian_dd.ormap.ORMapBacked.merge",
        "thespian_dd._testkit.plugin.cluster_factory",
        "thespian_dd._testkit.harness.Cluster.ask",
    ):
        assert name in found, name
    assert not [n for n in found if ".receiveMsg_" in n]
    assert _own_doc(dataclasses.make_dataclass("Bare", [("key", str)])) is None
    assert len(found) > 200


def test_every_public_callable_has_a_docstring_of_its_own() -> None:
    missing = [
        name for name, obj in public_callables().items() if not (_own_doc(obj) or "").strip()
    ]
    assert missing == [], f"no docstring of their own: {missing}"


def test_the_settings_docstring_has_one_bullet_per_field_in_field_order() -> None:
    """The settings table of the documentation is made from these bullets (docs/conf.py)."""
    doc = inspect.cleandoc(thespian_dd.Settings.__doc__ or "")  # 3.13 dedents docstrings itself
    bullets = re.findall(r"^- ``(\w+)``: ", doc, re.MULTILINE)
    assert bullets == [f.name for f in dataclasses.fields(thespian_dd.Settings)]


def test_the_api_reference_lists_every_public_name() -> None:
    """docs/api.md names each object of ``thespian_dd.__all__`` (the testing kit is documented
    whole, by ``automodule``), so a new public name cannot be left out of the reference."""
    api = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    entry = r"^\.\. auto(?:class|exception|function|data):: thespian_dd\.(\w+)$"
    listed = set(re.findall(entry, api, re.MULTILINE))
    assert sorted(set(thespian_dd.__all__) - listed) == []
    assert ".. automodule:: thespian_dd.testing" in api
