"""Every natural spelling of an Update's ``modify`` crosses the wire and runs on the node; one
that cannot fails on the client, saying how to write it instead.

Each spelling is a real script run as ``__main__`` in a process of its own, against a node that
is a separate ``python -m thespian_dd node`` process (nothing of the script is in the node's
memory: what runs there is what the Update carried).  The node can import ``shop_helpers`` (as
a user's installed module) but not ``client_only`` (a module only the client has).
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import thespian_dd as dd
from thespian_dd import Get, GetSuccess, NotFound, ORSet, ReplicaId, Update
from thespian_dd._testkit.harness import Cluster

SHOP_HELPERS = '''
"""A module of the user's that the node can import too."""


def add_gift(current, node):
    return current.add(node, "gift")


def add_item(item, current, node):
    return current.add(node, item)


def adder(item):
    return lambda current, node: current.add(node, item)


class Basket:
    def __init__(self, item):
        self.item = item

    def add(self, current, node):
        return current.add(node, self.item)
'''

CLIENT_ONLY = """
def add_secret(current, node):
    return current.add(node, "secret")
"""

SCRIPT = """
import sys
from thespian.actors import ActorSystem
import thespian_dd as dd

{body}

if __name__ == "__main__":
    asys = ActorSystem("multiprocTCPBase", {{"Admin Port": int(sys.argv[1])}})
    replicator = dd.start(asys)
    print("reply:", asys.ask(replicator, dd.Update(sys.argv[2], dd.ORSet(), modify, request=7), 10))
"""

# name: (the script's body, which defines ``modify`` at module level; what the set holds after)
SPELLINGS: dict[str, tuple[str, set[str]]] = {
    "a lambda using the package through a module alias": (
        'modify = lambda s, n: dd.ORSet().add(n, "B")',
        {"B"},
    ),
    "a lambda using a from-import": (
        """
        from thespian_dd import ORSet
        modify = lambda s, n: s.merge(ORSet().add(n, "from-import"))
        """,
        {"from-import"},
    ),
    "a closure over locals": (
        """
        def make(item, times):
            label = item * times
            return lambda s, n: s.add(n, label)
        modify = make("ab", 2)
        """,
        {"abab"},
    ),
    "a nested function": (
        """
        def make():
            suffix = "!"
            def add_nested(s, n):
                return s.add(n, "nested" + suffix)
            return add_nested
        modify = make()
        """,
        {"nested!"},
    ),
    "a function defined in __main__": (
        """
        def add_main(s, n):
            return s.add_all(n, ["main", "fn"])
        modify = add_main
        """,
        {"main", "fn"},
    ),
    "a method of a class defined in __main__": (
        """
        class Cart:
            def __init__(self, item):
                self.item = item
            def add(self, s, n):
                return s.add(n, self.item)
        modify = Cart("method").add
        """,
        {"method"},
    ),
    "a static method of a class defined in __main__": (
        """
        class Rules:
            @staticmethod
            def add(s, n):
                return s.add(n, "static")
        modify = Rules.add
        """,
        {"static"},
    ),
    "a callable object of a class defined in __main__": (
        """
        class AddItem:
            def __init__(self, item):
                self.item = item
            def __call__(self, s, n):
                return s.add(n, self.item)
        modify = AddItem("callable")
        """,
        {"callable"},
    ),
    "functools.partial of a function defined in __main__": (
        """
        import functools
        def add_item(item, s, n):
            return s.add(n, item)
        modify = functools.partial(add_item, "partial")
        """,
        {"partial"},
    ),
    "functools.partial of a function of an importable module": (
        """
        import functools, shop_helpers
        modify = functools.partial(shop_helpers.add_item, "partial-import")
        """,
        {"partial-import"},
    ),
    "a function of an importable module": (
        """
        from shop_helpers import add_gift
        modify = add_gift
        """,
        {"gift"},
    ),
    "a bound method of a user object of an importable class": (
        """
        from shop_helpers import Basket
        modify = Basket("basket").add
        """,
        {"basket"},
    ),
    "a closure made in an importable module": (
        """
        import shop_helpers as helpers
        modify = helpers.adder("factory")
        """,
        {"factory"},
    ),
    "a lambda referring to another module-level helper of __main__": (
        """
        def label(word):
            return word.upper()
        modify = lambda s, n: s.add(n, label("helper"))
        """,
        {"HELPER"},
    ),
    "a lambda whose helper of __main__ uses the module alias": (
        """
        def fresh(n):
            return dd.ORSet().add(n, "deep")
        modify = lambda s, n: s.merge(fresh(n))
        """,
        {"deep"},
    ),
    "a lambda reading a global of __main__": (
        """
        PRICES = {"socks": 3, "hat": 20}
        modify = lambda s, n: s.add_all(n, sorted(k for k, v in PRICES.items() if v < 10))
        """,
        {"socks"},
    ),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spellings")
    (root / "installed").mkdir()
    (root / "installed" / "shop_helpers.py").write_text(SHOP_HELPERS)
    (root / "client").mkdir()
    (root / "client" / "client_only.py").write_text(CLIENT_ONLY)
    return root


@pytest.fixture(scope="module")
def node(workdir: Path) -> Iterator[Cluster]:
    """One node, a process of its own, that can import ``shop_helpers`` (not ``client_only``)."""
    path = os.pathsep.join([str(workdir / "installed"), os.environ.get("PYTHONPATH", "")])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", path)  # the node command's environment
        cluster = Cluster(workdir, 1)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
    try:
        yield cluster
    finally:
        cluster.stop()


def _run_script(
    workdir: Path, node: Cluster, body: str, key: str
) -> subprocess.CompletedProcess[str]:
    """``body`` as a script run as ``__main__`` that sends ``Update(key, ORSet(), modify)``."""
    script = workdir / "client" / f"{key}.py"
    script.write_text(SCRIPT.format(body=textwrap.dedent(body)))
    path = os.pathsep.join([str(workdir / "installed"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(script), str(node.nodes[0].port), key],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
        cwd=workdir / "client",
    )


def _value(node: Cluster, key: str) -> Any:
    reply = node.ask(0, Get(key))
    assert isinstance(reply, GetSuccess), reply
    return reply.data.value


@pytest.mark.multinode
@pytest.mark.timeout(120)
@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_natural_spelling_of_modify_runs_on_the_node(
    spelling: str, workdir: Path, node: Cluster
) -> None:
    body, expected = SPELLINGS[spelling]
    key = "k" + str(list(SPELLINGS).index(spelling))
    result = _run_script(workdir, node, body, key)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"reply: UpdateSuccess(key='{key}', request=7)" in result.stdout, result.stdout
    assert _value(node, key) == expected


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_a_modify_the_client_cannot_send_fails_there_saying_what_to_write(
    workdir: Path, node: Cluster
) -> None:
    body = """
    import sqlite3
    prices = sqlite3.connect(":memory:")  # the client's own database
    prices.execute("CREATE TABLE price (item TEXT, cents INT)")
    def make(budget):
        def add_cheap(s, n):
            rows = prices.execute("SELECT item FROM price WHERE cents < ?", (budget,))
            return s.add_all(n, [item for item, in rows])
        return add_cheap
    modify = make(500)
    """
    result = _run_script(workdir, node, body, "cheap")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("TypeError: modify make.<locals>.add_cheap cannot be sent"), last
    assert "cannot pickle 'sqlite3.Connection' object" in last
    assert "refer only to plain data" in last
    assert "reply:" not in result.stdout  # nothing was sent
    assert isinstance(node.ask(0, Get("cheap")), NotFound)


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_a_function_of_a_module_the_node_cannot_import_is_a_modify_failure_naming_it(
    workdir: Path, node: Cluster
) -> None:
    body = """
    from client_only import add_secret
    modify = add_secret
    """
    result = _run_script(workdir, node, body, "secret")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reply: ModifyFailure(key='secret', request=7" in result.stdout
    assert "No module named 'client_only'" in result.stdout
    assert "install it where the node runs, or define the function in the client's __main__" in (
        result.stdout
    )
    assert isinstance(node.ask(0, Get("secret")), NotFound)


# -- on the client, no process needed ------------------------------------------------------------

A = ReplicaId("a", 1)


async def _async_add(current: ORSet, node: ReplicaId) -> ORSet:
    return current.add(node, "x")


def test_a_modify_that_cannot_be_pickled_raises_when_the_update_is_made() -> None:
    pending = (item for item in ["a", "b"])
    with pytest.raises(TypeError, match=r"cannot be sent to the node: TypeError: cannot pickle"):
        Update("k", ORSet(), lambda s, n: s.add(n, next(pending)))


@pytest.mark.parametrize(
    ("modify", "message"),
    [
        (5, "modify must be callable"),
        (None, "modify must be callable"),
        (lambda s: s, "must take two arguments"),
        (lambda s, n, extra: s, "must take two arguments"),
        (functools.partial(lambda item, s, n: s, "x", "y"), "must take two arguments"),
        (_async_add, "is an async function"),
    ],
)
def test_a_modify_the_node_could_not_call_raises_when_the_update_is_made(
    modify: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        Update("k", ORSet(), modify)


def test_an_initial_of_a_class_from_main_raises_when_the_update_is_made() -> None:
    main_type = type("Scratch", (ORSet,), {"__module__": "__main__"})
    with pytest.raises(TypeError, match="defined in __main__, which the node cannot import"):
        Update("k", main_type(), lambda s, n: s)


def test_the_modify_travels_as_it_was_when_the_update_was_made() -> None:
    items = ["before"]
    update = Update("k", ORSet(), lambda s, n: s.add_all(n, items))
    items.append("after")
    received = pickle.loads(pickle.dumps(update))
    assert received.modify(ORSet(), A).value == {"before"}


def test_a_module_used_by_the_modify_travels_by_name() -> None:
    update = Update("k", dd.ORSet(), lambda s, n: dd.ORSet().add(n, "B"))
    assert b"importlib" in update._modify_blob  # import_module("thespian_dd"), not its dict
    assert len(update._modify_blob) < 2000
