"""``python -m thespian_dd inspect`` (:mod:`thespian_dd._cli.inspect`): what each node stored, on
every store, the same read from rows the store wrote itself (no node), and never a store created
by reading one.  Corrupted and signed rows as inspect shows them: ``tests/test_durable.py``, with
the nodes that load them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thespian_dd import Delete, GCounter, ORSet, ReplicaId, Update
from thespian_dd._cli.main import main
from thespian_dd._runtime.rows import Entry
from thespian_dd._runtime.store import Store
from thespian_dd.codec import encode

pytestmark = pytest.mark.timeout(180)


def _increment(amount: int) -> Any:
    # A lambda travels by value (dill); node processes cannot import this test module.
    return lambda counter, node: counter.increment(node, amount)


def _add(element: str) -> Any:
    return lambda s, node: s.add(node, element)


@pytest.mark.multinode
def test_inspect_prints_what_each_node_stored(
    cluster_factory: Any, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = cluster_factory(1, store=store_url)
    cluster.ask(0, Update("hits", GCounter(), _increment(7)))
    cluster.ask(0, Update("cart", ORSet(), _add("pear")))
    cluster.ask(0, Update("gone", GCounter(), _increment(1)))
    cluster.ask(0, Delete("gone"))
    cluster.stop()
    url = store_url.format(name="node-1")
    assert main(["inspect", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "node node-1: incarnation " in out
    assert ", 3 rows" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "GCounter" in lines["hits"]
    assert lines["hits"].endswith(" 7")
    assert lines["cart"].endswith("{'pear'}")
    assert lines["gone"].endswith("(deleted)")
    assert main(["inspect", "--store", url, "--key", "hits"]) == 0
    detail = capsys.readouterr().out
    assert "replicas:       node-1#" in detail
    assert "value:          7" in detail
    assert main(["inspect", "--store", url, "--node", "nobody"]) == 1
    assert "no node 'nobody'" in capsys.readouterr().out
    assert main(["inspect", "--store", url, "--key", "nothing"]) == 1


def test_inspect_never_creates_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(SystemExit, match=r"cannot open the store .*no such file"):
        main(["inspect", "--store", f"sqlite:///{missing}"])
    assert not missing.exists()


def test_inspect_reads_rows_the_store_wrote_without_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table and ``--key``: set members in order, a long value cut, an empty store named."""
    url = f"sqlite:///{tmp_path}/s.db"
    store = Store(url)
    try:
        assert main(["inspect", "--store", url]) == 1
        assert capsys.readouterr().out == "this store holds no node yet\n"
        replica = ReplicaId("n", store.next_incarnation("n", 3))
        few = ORSet().add_all(replica, ["b", "c", "a"])
        many = ORSet().add_all(replica, [f"item-{i:03}" for i in range(30, 0, -1)])
        store.write(
            "n",
            {
                "few": Entry("ORSet", encode(few), str(replica)),
                "many": Entry("ORSet", encode(many), str(replica)),
                "gone": None,
            },
        )
    finally:
        store.close()
    assert main(["inspect", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "node n: incarnation 3, schema 1, 3 rows" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["few"].endswith("  {'a', 'b', 'c'}")
    assert lines["many"].endswith("  {'item-001', 'item-002', 'item-003', 'item-004', 'item-00...")
    assert lines["gone"].endswith("  (deleted)")
    assert main(["inspect", "--store", url, "--key", "few"]) == 0
    detail = capsys.readouterr().out
    assert "replicas:       n#3" in detail
    assert "value:          {'a', 'b', 'c'}" in detail
