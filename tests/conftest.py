"""Hypothesis profiles: ``dev`` (quick, the default) and ``ci`` (thorough; chosen when CI is set,
or with HYPOTHESIS_PROFILE=ci)."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import HealthCheck, settings

# Not from .testing: pytest loads that plugin itself.
from thespian_dd._testkit.harness import scratch_database

# 250 examples per property in CI; 30 in the dev run, the quick look of `make fast` (under a
# minute on a 2-core machine, where the law tests are half its time).  The suite must stay well
# under the CI budget on a 2-core machine, and the law tests are most of its time.
settings.register_profile(
    "ci",
    max_examples=250,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# The profile's name stays in the environment: tests that scale their own counts read it.
os.environ["HYPOTHESIS_PROFILE"] = os.environ.get("HYPOTHESIS_PROFILE") or (
    "ci" if os.environ.get("CI") else "dev"
)
settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])

# The fixtures. Installed, the package registers them itself (its pytest11 entry point is named
# after the module this line reaches, so pytest loads it once); this line serves a checkout that is
# only on PYTHONPATH, and keeps the spelling users' conftests have working (test_testing_kit.py).
pytest_plugins = ["thespian_dd.testing"]

# The samples' modules are importable here as in the samples: max_register.py (a data type of
# one's own) runs through the law table like the built-in types.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "samples"))

# CI must run the real-partition tests (.ci/run installs nftables): there, a machine that cannot
# make network namespaces fails them instead of skipping.
if os.environ.get("CI"):
    os.environ.setdefault("THESPIAN_DD_REQUIRE_NETNS", "1")


# -- stores ---------------------------------------------------------------------------------------
# SQLite always; PostgreSQL and MariaDB when .ci/databases has started them and exported their
# admin URLs.  Without a URL their tests skip here, and fail in CI (CI=true), where they must run.

SERVER_URLS = {
    "postgresql": "THESPIAN_DD_TEST_POSTGRESQL_URL",
    "mariadb": "THESPIAN_DD_TEST_MARIADB_URL",
}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store of each kind.  SQLite: one file per node (``{name}`` in the URL is
    the node's name); a server: one new database shared by the nodes, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/{{name}}.db"
    else:
        with server_database(request.param) as url:
            yield url


@contextlib.contextmanager
def server_database(kind: str) -> Iterator[str]:
    """A new database on the ``kind`` server, dropped afterwards (skips, or fails in CI, when
    there is no server)."""
    admin = os.environ.get(SERVER_URLS[kind])
    if not admin:
        reason = f"no {kind} server: set {SERVER_URLS[kind]} (.ci/databases does)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the {kind} tests")
        pytest.skip(reason)
    with scratch_database(admin) as url:
        yield url


# -- the run as a whole ---------------------------------------------------------------------------
# `make test` runs two pytest-xdist workers, each taking tests of every kind as it comes free:
# free_port draws each worker's ports from a share of its own, and each network namespace has a
# name of its own.


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test with neither marker (the fast tier) that runs a program through ``subprocess``
    fails, naming the marker it needs: so `make fast` stays what it says.  (A fork, such as
    a multiprocTCPBase ActorSystem's, is not caught here: those tests are ``multinode``.)"""
    if request.node.get_closest_marker("multinode") or request.node.get_closest_marker(
        "subprocess"
    ):
        return
    name = request.node.nodeid

    def refused(*args: object, **kw: object) -> NoReturn:
        raise AssertionError(f"{name} starts a process: mark it subprocess (or multinode)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refused)


@pytest.fixture
def figure(record_property: Callable[[str, object], None]) -> Callable[[str], None]:
    """``figure(line)`` reports a measured figure: printed at the end of the run, with xdist too
    (a test's own output shows only when it fails)."""

    def report(line: str) -> None:
        record_property("figure", line)

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "figure"
    ]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(str(line))
