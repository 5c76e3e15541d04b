"""thespian_dd.testing as a user's project meets it: its helpers import without pytest, and the
installed package registers its fixtures with pytest (the ``pytest11`` entry point), so a user's
tests need no ``conftest.py``; an older ``pytest_plugins = ["thespian_dd.testing"]`` line still
works and does not register the plugin twice."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from thespian_dd.testing import free_port

SETUP_CFG = Path(__file__).parents[1] / "setup.cfg"

WITHOUT_PYTEST = """
import sys

sys.modules["pytest"] = sys.modules["_pytest"] = None  # any import of them now fails
from thespian_dd.testing import (
    Cluster, Node, Probe, eventually, fault_schedule, free_port, run_chaos, start_node,
)

port = free_port()
assert eventually(lambda: port, timeout=1.0) == port
print(port)
"""

USER_TESTS = """
from thespian_dd import Get, GetSuccess, ORSet, Update, UpdateSuccess


def test_the_node_fixture_is_a_real_node(thespian_node):
    update = Update("k", ORSet(), lambda s, n: s.add(n, "x"))
    assert isinstance(thespian_node.ask(update), UpdateSuccess)
    reply = thespian_node.ask(Get("k"))
    assert isinstance(reply, GetSuccess)
    assert reply.data.value == {"x"}


def test_the_cluster_factory_is_there(cluster_factory):
    assert callable(cluster_factory)
"""


@pytest.mark.subprocess
def test_the_helpers_import_and_work_without_pytest() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYTEST],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert 0 < int(result.stdout) < 65536


def test_the_installed_package_declares_the_plugin_of_setup_cfg() -> None:
    """The entry points come from the installed metadata (``make`` installs this checkout with
    ``pip install -e``); a stale install would hide a broken declaration from the test below."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(SETUP_CFG)
    declared = {
        tuple(part.strip() for part in line.split("="))
        for line in config["options.entry_points"]["pytest11"].strip().splitlines()
    }
    installed = {(ep.name, ep.value) for ep in entry_points(group="pytest11")}
    assert declared == {("thespian_dd._testkit.plugin", "thespian_dd._testkit.plugin")}
    assert declared <= installed, "the installed thespian_dd is stale: pip install -e ."


@pytest.mark.multinode
@pytest.mark.parametrize(
    ("conftest", "autoload"),
    [
        (None, True),  # installed: the entry point alone
        ('pytest_plugins = ["thespian_dd.testing"]\n', True),  # the old line, and the entry point
        ('pytest_plugins = ["thespian_dd.testing"]\n', False),  # the old line alone
    ],
    ids=["entry point", "old conftest line with the entry point", "old conftest line alone"],
)
def test_a_users_tests_get_the_fixtures(
    tmp_path: Path, conftest: str | None, autoload: bool
) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this project's settings
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    if conftest is not None:
        (tmp_path / "conftest.py").write_text(conftest)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    result = subprocess.run(
        # A plugin registered twice is an error; one imported before pytest could rewrite its
        # asserts is a warning, made an error here.
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-W",
            "error::pytest.PytestWarning",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_free_port_never_hands_out_a_port_twice() -> None:
    # Regression: the kernel gives a port that is free again to the next bind, so a Cluster of
    # many nodes got one port twice and its second node silently joined the first's ActorSystem.
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)


def test_free_port_stays_below_the_ports_of_outgoing_connections() -> None:
    # Regression: a port chosen for the 28th node of a 32-node Cluster was taken, before that
    # node started, by an outgoing connection of the nodes started before it.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(1024 < free_port() < low for _ in range(200))


def test_regression_two_xdist_workers_never_draw_the_same_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """History: under `make test`'s two workers, gw1's 12-node test started its node-6 on the
    port gw0 had given node-8 of its 32-node test, which had not started yet: node-8 found the
    port in use.  On CI a node of one worker, killed for a restart, lost its port so to a node
    of the other worker.  The workers drew from one range, each checking only its own ports."""
    drawn = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        drawn[worker] = [free_port() for _ in range(300)]
    assert max(drawn["gw0"]) < min(drawn["gw1"])  # shares apart, not only ports apart
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    alone = [free_port() for _ in range(300)]  # outside xdist: the whole range
    assert min(alone) < max(drawn["gw0"])
    assert max(alone) > min(drawn["gw1"])
