"""Every sample runs and prints what its comments promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import server_database

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _run(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(SAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.subprocess
def test_crdt_basics() -> None:
    out = _run("crdt_basics.py")
    assert "counter: 7" in out
    assert "tags: ['blue', 'green', 'red']" in out
    assert "title: final" in out
    assert "concurrent versions: ['v1', 'v2']" in out
    assert "groups: {'admins': ['ann', 'bo'], 'users': ['al']}" in out


@pytest.mark.multinode
def test_actor_app() -> None:
    out = _run("actor_app.py")
    assert "stock: {'apples': 7, 'pears': 2}" in out
    assert out.count("reply: UpdateSuccess for ") == 3


@pytest.mark.multinode
def test_shopping_cart() -> None:
    out = _run("shopping_cart.py")
    for device in ("phone", "laptop", "backend"):
        assert f"{device}: cart={{'socks': 3}} ship to=Lyon" in out


@pytest.mark.multinode
def test_counter_dashboard() -> None:
    out = _run("counter_dashboard.py")
    assert "dashboard on node-3: {'/': 3, '/cart': 2}" in out
    assert "with node-3 down: WriteMajority -> acknowledged" in out
    assert "with node-3 down: WriteAll -> UpdateTimeoutError (UpdateTimeout(key='views'" in out
    assert "dashboard on node-1: {'/': 5, '/cart': 2}" in out


@pytest.mark.multinode
def test_durable_restart() -> None:
    out = _run("durable_restart.py")
    assert "before: visits = 3" in out
    assert "after kill -9 and restart: 2 keys recovered" in out
    assert "after: visits = 3" in out
    assert "after: tags = ['crdt', 'durable']" in out
    assert "{'crdt', 'durable'}" in out  # inspect's view of the store


@pytest.mark.multinode
def test_postgresql() -> None:
    with server_database("postgresql") as url:
        out = _run("postgresql.py", url)
    for i in (1, 2):
        assert f"node-{i}: balance 70 after a restart from PostgreSQL (1 key recovered)" in out


@pytest.mark.multinode
def test_custom_type() -> None:
    out = _run("custom_type.py")
    assert "best score on node-1 and node-2: 42 42" in out
    assert "stored as: MaxRegister(42,)" in out
    assert "after kill -9 of both nodes: 1 key recovered, 0 refused" in out
    assert "best score after the restart: 42 42" in out
