"""The operator's traps, each through the real CLI (``python -m thespian_dd ...`` in a
subprocess) on real ports and real SQLite files: a used port, ``kill -9`` of the printed pid,
bad stores and options, a clean stop, the log flags, the store URL kept out of argv and
capabilities, ``forget-node`` as the offline-bound refusal prints it, and ``inspect`` reading
only (:mod:`thespian_dd._cli.node`, :mod:`thespian_dd._cli.forget`,
:mod:`thespian_dd._cli.inspect`)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import ActorAddress, ActorSystem
from thespian.system.messages.status import Thespian_StatusReq
from thespian.system.transport.IPBase import TCPv4ActorAddress

from thespian_dd import (
    REPLICATOR_NAME,
    Client,
    GCounter,
    Get,
    GetStats,
    GetSuccess,
    Stats,
    Update,
    start,
)
from thespian_dd._procs import port_in_use, running_in_group
from thespian_dd._runtime.store import Store
from thespian_dd.client import connect_admin
from thespian_dd.testing import FAST, Cluster, eventually, free_port

FAST_OPTIONS = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]


def _increment(amount: int) -> Any:
    return lambda counter, node: counter.increment(node, amount)


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thespian_dd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class _Node:
    """One ``python -m thespian_dd node`` process, its output in a file (never a pipe)."""

    def __init__(self, workdir: Path, name: str, port: int, *options: str) -> None:
        self.name, self.port = name, port
        self.log = workdir / f"{name}.{time.monotonic_ns()}.log"
        args = ["node", "--name", name, "--port", str(port), *FAST_OPTIONS, *options]
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "thespian_dd", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgid: int | None = None

    def ready(self) -> str:
        def line() -> str:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()}")
            return next((ln for ln in self.log.read_text().splitlines() if " ready: " in ln), "")

        ready = eventually(line, 30, what=f"{self.name} ready")
        self.pgid = int(ready.rsplit(" ", 1)[1])
        return ready

    def client(self) -> Any:
        return connect_admin(self.port, 10)  # never an admin of this process's own

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(15)
        for group in (self.pgid, self.popen.pid):
            if group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
        self.popen.wait(10)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[_Node]]:
    """Start nodes with ``nodes.append(_Node(...))``; every one is stopped after the test."""
    started: list[_Node] = []
    yield started
    for node in started:
        node.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert " ready: " not in result.stdout
    error = result.stderr.strip()
    assert error, result.stderr
    assert "\n" not in error, result.stderr
    return error


# -- a used port --------------------------------------------------------------------------------


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_a_second_node_on_a_used_port_is_refused_and_the_first_runs_on(
    nodes: list[_Node], tmp_path: Path
) -> None:
    first = _Node(tmp_path, "p1", free_port(), "--store", f"sqlite:///{tmp_path}/p1.db")
    nodes.append(first)
    first.ready()
    second = f"sqlite:///{tmp_path}/p2.db"
    error = _one_line_error(
        _cli("node", "--name", "p2", "--port", str(first.port), "--store", second)
    )
    assert f"node: port {first.port} is in use" in error
    assert not (tmp_path / "p2.db").exists()
    client = first.client()
    replicator = start(client)
    stats = client.ask(replicator, GetStats(), 10)
    assert isinstance(stats, Stats)
    assert stats.node.startswith("p1#")
    assert first.popen.poll() is None


@pytest.mark.subprocess
@pytest.mark.timeout(60)
def test_a_port_held_by_another_program_is_refused_at_once() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        began = time.monotonic()
        error = _one_line_error(_cli("node", "--name", "x", "--port", str(port)))
    assert f"node: port {port} is in use" in error
    assert time.monotonic() - began < 10  # Thespian alone failed after 11 s, with a traceback


# -- kill -9 of the printed pid -----------------------------------------------------------------


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_kill_9_of_the_printed_pid_stops_every_process_and_a_restart_recovers(
    nodes: list[_Node], tmp_path: Path
) -> None:
    port = free_port()
    store = f"sqlite:///{tmp_path}/k.db"
    node = _Node(tmp_path, "k", port, "--store", store)
    nodes.append(node)
    ready = node.ready()
    pid = int(ready.split(" pid ")[1].split()[0])
    assert pid == node.popen.pid
    assert "kill -9 of it stops every process of the node" in ready
    client = node.client()
    replicator = start(client)
    assert client.ask(replicator, Update("hits", GCounter(), _increment(3)), 10) is not None
    before = client.ask(replicator, GetStats(), 10)
    assert isinstance(before, Stats)
    assert node.pgid is not None
    pgid = node.pgid
    assert running_in_group(pgid)

    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not running_in_group(pgid), 10, what="every process of the node gone")
    eventually(lambda: port_in_use(port) is None, 10, what="the port free")

    again = _Node(tmp_path, "k", port, "--store", store)
    nodes.append(again)
    assert ", 1 keys recovered in " in again.ready()
    client = again.client()
    replicator = start(client)
    after = client.ask(replicator, GetStats(), 10)
    assert isinstance(after, Stats)
    assert after.node != before.node  # a new incarnation: a real recovery, not the old processes
    reply = client.ask(replicator, Get("hits"), 10)
    assert isinstance(reply, GetSuccess)
    assert reply.data.value == 3


# -- bad stores and options ---------------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--store", "sqlite:///{tmp}/nodir/x.db"], "cannot open the store sqlite:///"),
        (["--store", "bogus://x"], "cannot open the store bogus://x: Can't load plugin"),
        (["--store", "postgresql://u:secret@127.0.0.1:{port}/db"], "u:***@127.0.0.1"),
        (
            ["--store", "sqlite:///{tmp}/k.db", "--signing-key-file", "{tmp}/none.key"],
            "cannot read the signing key file",
        ),
        (["--write-mode", "write-behind"], "--write-mode needs a store"),
        (["--signing-key-file", "{tmp}/k.key"], "--signing-key-file needs a store"),
        (["--durable-keys", "a*", "--write-behind-interval", "2"], "need a store"),
        (["--store-file", "{tmp}/none.url"], "cannot read the store URL file"),
        (["--store-file", "{tmp}/empty.url"], "is empty"),
        (["--log-config", "{tmp}/bad.json"], "is not JSON"),
        (["--log-config", "{tmp}/list.json"], 'with "version": 1'),
    ],
)
def test_bad_stores_and_options_get_one_line_and_exit_1(
    tmp_path: Path, options: list[str], message: str
) -> None:
    (tmp_path / "empty.url").write_text("\n")
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "list.json").write_text("[]")
    port = free_port()
    args = [o.format(tmp=tmp_path, port=free_port()) for o in options]
    error = _one_line_error(_cli("node", "--name", "b", "--port", str(port), *args))
    assert error.startswith("node: ")
    assert message in error
    assert "secret" not in error
    assert not (tmp_path / "nodir").exists()
    assert not (tmp_path / "k.db").exists()
    assert not _listening(port)


@pytest.mark.subprocess
@pytest.mark.timeout(60)
def test_debug_shows_the_traceback() -> None:
    result = _cli(
        "node", "--name", "b", "--port", str(free_port()), "--store", "bogus://x", "--debug"
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "NodeError: cannot open the store bogus://x" in result.stderr


# -- a clean stop -------------------------------------------------------------------------------


@pytest.mark.multinode
@pytest.mark.timeout(180)
def test_a_clean_stop_of_a_cluster_logs_no_error(tmp_path: Path) -> None:
    """Each stop logged ``Pending Actor create ... failed (3585)`` up to four times per node:
    Thespian's admin failing, as it shut down, the Introducer creations it had forwarded."""
    with Cluster(tmp_path, 3, store=f"sqlite:///{tmp_path}/{{name}}.db") as cluster:
        cluster.start()
        eventually(lambda: all(cluster.ask(i, GetStats()).peers == 2 for i in range(3)))
        cluster.ask(0, Update("hits", GCounter(), _increment(1)))
        cluster.stop()
        logs = {name: (cluster.workdir / f"{name}.log").read_text() for name in cluster.names}
    assert len(logs) == 3
    for name, text in logs.items():
        assert " stopping" in text, name
        assert "ERROR" not in text, (name, text)
        assert "Traceback" not in text, (name, text)


# -- log flags ----------------------------------------------------------------------------------


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_log_level_and_log_config_reach_the_actors_logs(nodes: list[_Node], tmp_path: Path) -> None:
    quiet = _Node(tmp_path, "quiet", free_port())
    store = f"--store=sqlite:///{tmp_path / 'loud.sqlite'}"
    loud = _Node(tmp_path, "loud", free_port(), "--log-level", "info", store)
    records = tmp_path / "records.log"
    config = tmp_path / "logging.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"f": {"format": "%(levelname)s|%(name)s|%(message)s"}},
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "filename": str(records),
                        "formatter": "f",
                    }
                },
                "root": {"level": "INFO", "handlers": ["file"]},
            }
        )
    )
    configured = _Node(tmp_path, "configured", free_port(), "--log-config", str(config))
    nodes.extend([quiet, loud, configured])
    for node in nodes:
        node.ready()
    # The Replicator (an actor process) logs through Thespian's logDefs.
    eventually(
        lambda: "INFO thespian_dd.replicator: thespian_dd Replicator loud#" in loud.log.read_text()
    )
    eventually(
        lambda: (
            records.exists()
            and "INFO|thespian_dd.replicator|thespian_dd Replicator configured#"
            in records.read_text()
        )
    )
    assert "INFO" not in quiet.log.read_text()
    # Its store was loaded (SQL ran) before it was ready: not one statement in its log.
    assert "recovered 0 keys" in loud.log.read_text()
    assert "sqlalchemy" not in loud.log.read_text()


# -- the store URL out of argv and capabilities -------------------------------------------------


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_the_store_url_from_a_file_stays_out_of_argv_and_capabilities(
    nodes: list[_Node], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/secret-store.db"
    url_file = tmp_path / "store.url"
    url_file.write_text(url + "\n")
    port = free_port()
    node = _Node(tmp_path, "s", port, "--store-file", str(url_file))
    nodes.append(node)
    node.ready()
    client = node.client()
    replicator = start(client)
    assert client.ask(replicator, Update("hits", GCounter(), _increment(5)), 10) is not None
    admin = ActorAddress(TCPv4ActorAddress("127.0.0.1", port, external=True))
    status = client.ask(admin, Thespian_StatusReq(), 10)
    capabilities = status.capabilities
    assert capabilities["thespian_dd.store"] == f"file:{url_file}"
    assert "secret-store" not in repr(capabilities)
    assert node.pgid is not None
    for pid in [*running_in_group(node.pgid), node.popen.pid]:
        assert b"secret-store" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    node.stop()
    inspected = _cli("inspect", "--store-file", str(url_file), "--key", "hits")
    assert inspected.returncode == 0, inspected.stderr
    assert "value:          5" in inspected.stdout


# -- forget-node --------------------------------------------------------------------------------


@pytest.mark.multinode
@pytest.mark.timeout(180)
def test_forget_node_as_the_offline_refusal_prints_it_lets_the_node_rejoin(
    tmp_path: Path,
) -> None:
    ttl = 2.0
    store = f"sqlite:///{tmp_path}/{{name}}.db"
    with Cluster(tmp_path, 2, store=store, durable_pruning_marker_ttl=ttl) as cluster:
        cluster.start()
        cluster.ask(1, Update("hits", GCounter(), _increment(1)))
        eventually(lambda: _hits(cluster, 0) == 1, what="node-1 has node-2's update")
        cluster.kill(1)
        killed = time.monotonic()
        cluster.ask(0, Update("hits", GCounter(), _increment(10)))
        eventually(lambda: time.monotonic() - killed > ttl * 1.5, 2 * ttl, what="offline > TTL")
        with pytest.raises(RuntimeError, match="exited") as refused:
            cluster.restart(1)
        refusal = [ln for ln in str(refused.value).splitlines() if ln.startswith("node: ")]
        advice = refusal[-1].split("run: ", 1)[1]
        assert advice.startswith("python -m thespian_dd forget-node --store sqlite:///")
        assert advice.endswith("--node node-2")
        forgot = subprocess.run(
            [sys.executable, *shlex.split(advice)[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert forgot.returncode == 0, forgot.stderr
        assert "forgot node node-2" in forgot.stdout
        cluster.restart(1)

        eventually(lambda: _hits(cluster, 1) == 11, 20, what="node-2 has the data from its peer")


def _hits(cluster: Cluster, i: int) -> int | None:
    reply = cluster.ask(i, Get("hits"))
    return reply.data.value if isinstance(reply, GetSuccess) else None


@pytest.mark.subprocess
@pytest.mark.timeout(60)
def test_forget_node_refuses_an_unknown_node_and_a_missing_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    Store(url).close()
    error = _one_line_error(_cli("forget-node", "--store", url, "--node", "nobody"))
    assert "the store has no node 'nobody'" in error
    missing = tmp_path / "missing.db"
    error = _one_line_error(_cli("forget-node", "--store", f"sqlite:///{missing}", "--node", "n"))
    assert "no such file" in error
    assert not missing.exists()


# -- inspect reads only -------------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.iterdir())
    }


@pytest.mark.subprocess
@pytest.mark.timeout(60)
def test_inspect_changes_no_file_and_creates_none(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    before = _snapshot(tmp_path)
    error = _one_line_error(_cli("inspect", "--store", f"sqlite:///{empty}"))
    assert "it has no thespian_dd tables" in error
    error = _one_line_error(_cli("inspect", "--store", f"sqlite:///{tmp_path}/missing.db"))
    assert "no such file" in error
    assert _snapshot(tmp_path) == before

    url = f"sqlite:///{tmp_path}/good.db"
    store = Store(url)
    store.next_incarnation("n")
    store.write("n", {})
    store.close()
    before = _snapshot(tmp_path)
    assert "good.db-wal" not in before  # a stopped node's store: WAL mode, no -wal file
    result = _cli("inspect", "--store", url)
    assert result.returncode == 0, result.stderr
    assert "node n: incarnation 1, schema 1, 0 rows" in result.stdout
    assert _snapshot(tmp_path) == before


# -- status -----------------------------------------------------------------------------------


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return _cli("status", *args, timeout=90)


@pytest.mark.multinode
@pytest.mark.timeout(180)
def test_status_shows_each_peer_and_a_node_down(tmp_path: Path) -> None:
    with Cluster(tmp_path, 3, store=f"sqlite:///{tmp_path}/{{name}}.db") as cluster:
        cluster.start()
        cluster.ask(0, Update("hits", GCounter(), _increment(2)))
        cluster.kill(2)
        port = cluster.nodes[0].port

        def shows_node_3_down() -> str:
            result = _status("--node", f"127.0.0.1:{port}")
            assert result.returncode == 0, result.stderr
            assert "peers: 2 known, 1 reachable" in result.stdout, result.stdout
            return result.stdout

        text = eventually(shows_node_3_down, timeout=20, what="node-3 unreachable")
        lines = text.splitlines()
        assert lines[0].startswith("node node-1#")
        assert lines[0].split(": ", 1)[1].startswith("serving")
        assert any("node-2#" in ln and " reachable " in ln for ln in lines)
        assert any("node-3#" in ln and "UNREACHABLE" in ln for ln in lines)
        assert f"store: sqlite:///{tmp_path}/node-1.db (sync), 0 keys queued" in text
        assert "keys: 1 (" in text
        as_json = json.loads(_status("--node", str(port), "--json").stdout)
        peers = {p["name"]: p["reachable"] for p in as_json["status"]["peers"]}
        assert peers == {"node-2": True, "node-3": False}
        assert as_json["stats"]["keys"] == 1
        ready = _status("--node", str(port), "--ready")
        assert (ready.returncode, ready.stdout) == (0, "")


@pytest.mark.subprocess
@pytest.mark.timeout(120)
def test_status_of_what_is_no_node_here_is_one_line() -> None:
    free = free_port()
    assert "no thespian_dd node listens on port" in _one_line_error(_status("--node", str(free)))
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        error = _one_line_error(_status("--node", str(port)))
    assert f"port {port} of this host is not a Thespian ActorSystem's admin port" in error
    error = _one_line_error(_status("--node", "192.0.2.1:19000"))
    assert "192.0.2.1 is not this host" in error
    assert "--node takes [HOST:]PORT" in _one_line_error(_status("--node", "nowhere"))
    ready = _status("--node", str(free), "--ready")
    assert ready.returncode == 1


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_status_says_a_node_that_cannot_load_its_store_is_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    Store(f"sqlite:///{path}").close()
    port = free_port()
    asys = ActorSystem(
        "multiprocTCPBase",
        {"Admin Port": port, "thespian_dd.store": f"sqlite:///{path}"},
        transientUnique=True,
    )
    # Locked only now: an SQLite connection must not be open when the ActorSystem forks.
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        asys.createActor("thespian_dd.replicator.Replicator", globalName=REPLICATOR_NAME)

        def not_serving() -> str:
            result = _status("--node", str(port))
            assert "NOT SERVING" in result.stdout, (result.stdout, result.stderr)
            assert "the store cannot be loaded" in result.stdout  # tried: locked
            return result.stdout

        eventually(not_serving, timeout=30)
        ready = _status("--node", str(port), "--ready")
        assert ready.returncode == 1
        assert "not serving: the store cannot be loaded" in ready.stderr
        lock.execute("ROLLBACK")
        eventually(lambda: _status("--node", str(port), "--ready").returncode == 0, timeout=30)
    finally:
        lock.close()
        asys.shutdown()


# -- metrics ----------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_metrics_ready_and_alive_are_served_over_http(nodes: list[_Node], tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics_port = free_port()
    node = _Node(
        tmp_path,
        "m1",
        free_port(),
        "--store",
        f"sqlite:///{tmp_path}/m1.db",
        "--metrics-port",
        str(metrics_port),
        "--metrics-host",
        "127.0.0.1",
    )
    nodes.append(node)
    node.ready()
    base = f"http://127.0.0.1:{metrics_port}"
    with Client.connect(node.port) as client:
        client.update("hits", GCounter(), _increment(3))
        client.update("other", GCounter(), _increment(1))
    status, text = _get(f"{base}/metrics")
    assert status == 200
    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["thespian_dd_keys"].value == 2
    assert samples["thespian_dd_keys"].labels == {"node": "m1"}
    assert samples["thespian_dd_up"].value == 1
    assert samples["thespian_dd_serving"].value == 1
    assert samples["thespian_dd_store_queue_depth"].value == 0
    assert samples["thespian_dd_incompatible_peers"].value == 0
    assert "thespian_dd_gossip_rounds_total" in samples  # a counter (Prometheus' _total)
    assert samples["thespian_dd_recovery_seconds"].value >= 0
    assert samples["thespian_dd_last_flush_timestamp_seconds"].value > time.time() - 60
    assert _get(f"{base}/ready") == (200, "ok\n")
    assert _get(f"{base}/alive") == (200, "ok\n")
    assert _get(f"{base}/elsewhere")[0] == 404


@pytest.mark.subprocess
@pytest.mark.timeout(120)
def test_a_metrics_port_that_cannot_serve_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        used = other.getsockname()[1]
        result = _cli(
            "node", "--name", "m", "--port", str(free_port()), "--metrics-port", str(used)
        )
    assert f"--metrics-port {used}:" in _one_line_error(result)
    without = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys; sys.modules['prometheus_client'] = None; "
                "from thespian_dd._cli.main import main; "
                f"sys.exit(main(['node', '--name', 'm', '--port', '{free_port()}', "
                f"'--metrics-port', '{free_port()}']))"
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "needs the prometheus extra" in _one_line_error(without)


# -- backup and restore -------------------------------------------------------------------------


@pytest.mark.multinode
@pytest.mark.timeout(180)
def test_a_backup_taken_while_the_node_runs_restores_its_values(
    nodes: list[_Node], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/b1.db"
    node = _Node(tmp_path, "b1", free_port(), "--store", url)
    nodes.append(node)
    node.ready()
    with Client.connect(node.port) as client:
        client.update("hits", GCounter(), _increment(5))
        result = _cli("backup", "--store", url, "--to", str(tmp_path / "backup.db"))
        assert result.returncode == 0, result.stderr
        assert result.stdout == (
            f"backed up 1 nodes and 1 rows of {url} into {tmp_path / 'backup.db'}\n"
        )
        client.update("hits", GCounter(), _increment(1))  # after the backup: not in it
    node.stop()
    for leftover in tmp_path.glob("b1.db*"):
        leftover.unlink()  # the store is lost
    result = _cli("restore", "--from", str(tmp_path / "backup.db"), "--store", url)
    assert result.returncode == 0, result.stderr
    assert "restored 1 nodes and 1 rows" in result.stdout
    error = _one_line_error(_cli("restore", "--from", str(tmp_path / "backup.db"), "--store", url))
    assert "is not empty" in error
    restarted = _Node(tmp_path, "b1", free_port(), "--store", url)
    nodes.append(restarted)
    assert "1 keys recovered" in restarted.ready()
    with Client.connect(restarted.port) as client:
        assert client.get("hits").value == 5
