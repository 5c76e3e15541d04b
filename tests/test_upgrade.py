"""A rolling upgrade, for real: three durable nodes of the previous release, upgraded one at a
time to this tree while a client keeps writing.

The previous release is frozen in ``tests/compat/thespian_dd-349b515.tar.xz`` (``git archive``
of its ``thespian_dd`` package: no git history is needed at test time, and a shallow CI clone
runs it).  It is unpacked into a directory that an old node's ``PYTHONPATH`` puts first; the
interpreter and the other packages are this virtualenv's.  When a later release is cut, its
package joins as the next "previous release" (see the operations guide, upgrading).

The writer is this module run as a script in a process of its own (this tree's client), writing
each node in turn with ``WriteMajority``; it records every write acknowledged.  At the end every
acknowledged write must be on every node (``ReadAll`` and each node's own value), no node may
have refused a peer or a peer's message, and after a full restart the stores must give the same.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import pytest

from thespian_dd import (
    Client,
    Get,
    GetStats,
    GetStatus,
    GetSuccess,
    ORSet,
    ReadAll,
    ReadConsistency,
    ReadLocal,
    ReplicaId,
    Stats,
    Status,
    WriteMajority,
)
from thespian_dd.testing import Cluster, eventually

PREVIOUS_RELEASE = Path(__file__).parent / "compat" / "thespian_dd-349b515.tar.xz"
KEYS = 8


def unpack_previous_release(into: Path) -> str:
    """The previous release's package, unpacked under ``into``; returns the directory to put
    first on ``PYTHONPATH``."""
    with tarfile.open(PREVIOUS_RELEASE) as archive:
        archive.extractall(into, filter="data")
    assert (into / "thespian_dd" / "replicator.py").is_file()
    return str(into)


def stats(cluster: Cluster, i: int) -> Stats:
    reply = cluster.ask(i, GetStats())
    assert isinstance(reply, Stats), f"{cluster.names[i]} answered {reply!r}"
    return reply


def peer_versions(cluster: Cluster, i: int) -> dict[str, str]:
    """What node ``i`` (of this tree) says its peers speak."""
    status = cluster.ask(i, GetStatus())
    assert isinstance(status, Status), f"{cluster.names[i]} answered {status!r}"
    return {peer.name: peer.versions for peer in status.peers}


def all_met(cluster: Cluster) -> bool:
    return all(stats(cluster, i).reachable_peers == len(cluster.nodes) - 1 for i in range(3))


def acknowledged(log: Path) -> dict[str, set[str]]:
    acked: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        key, element = line.split()
        acked.setdefault(key, set()).add(element)
    return acked


def elements(cluster: Cluster, i: int, key: str, consistency: ReadConsistency) -> frozenset[str]:
    reply = cluster.ask(i, Get(key, consistency), timeout=20)
    assert isinstance(reply, GetSuccess), f"{cluster.names[i]}: {key}: {reply!r}"
    value = reply.data.value
    assert isinstance(value, frozenset)
    return value


def assert_all_present(
    cluster: Cluster, acked: dict[str, set[str]], consistency: ReadConsistency
) -> None:
    for i in range(3):
        for key, wanted in acked.items():
            missing = wanted - elements(cluster, i, key, consistency)
            assert not missing, f"{cluster.names[i]} lacks acknowledged writes of {key}: {missing}"


def holds_all(cluster: Cluster, acked: dict[str, set[str]]) -> bool:
    """Whether every node holds every write of ``acked`` itself (no read repair)."""
    return all(
        wanted <= elements(cluster, i, key, ReadLocal())
        for i in range(3)
        for key, wanted in acked.items()
    )


def assert_no_refusal(cluster: Cluster, i: int) -> None:
    """Node ``i`` refused nothing (no peer message, no peer, no stored row)."""
    s = stats(cluster, i)
    assert s.rejected_inputs == 0, f"{cluster.names[i]}: {s}"
    assert s.refused_rows == 0, f"{cluster.names[i]}: {s}"
    assert not getattr(s, "incompatible_peers", ()), f"{cluster.names[i]}: {s}"


@pytest.mark.multinode
@pytest.mark.upgrade
@pytest.mark.timeout(240)
def test_a_rolling_upgrade_from_the_previous_release_loses_no_acknowledged_write(
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    old_code = unpack_previous_release(tmp_path / "previous")
    log, stop = tmp_path / "acknowledged", tmp_path / "stop"
    started = time.monotonic()
    with Cluster(tmp_path, 3, store=f"sqlite:///{tmp_path}/{{name}}.db") as cluster:
        for i in range(3):
            cluster.run_code(i, old_code)
        cluster.start()
        eventually(lambda: all_met(cluster), 20, what="the old nodes meet")
        ports = [str(node.port) for node in cluster.nodes]
        with (tmp_path / "writer.log").open("wb") as out:
            writer = subprocess.Popen(
                [sys.executable, __file__, str(log), str(stop), *ports],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            eventually(lambda: log.exists() and len(log.read_text().splitlines()) >= 20, 30)
            for i in (1, 2, 0):  # the members, then the convention leader
                assert_no_refusal(cluster, i)
                before = len(log.read_text().splitlines())
                cluster.stop_node(i)
                cluster.run_code(i, None)
                cluster.start_node(i)
                eventually(lambda: all_met(cluster), 30, what=f"{cluster.names[i]} back")
                if i == 1:  # the first node upgraded sees the others are of the first release
                    seen = peer_versions(cluster, 1)
                    assert all("the first release" in seen[cluster.names[j]] for j in (0, 2)), seen
                # Writes go on through the mixed cluster before the next node goes, and what
                # was acknowledged so far spreads to every node, old and new.
                goal = before + 20
                eventually(lambda: len(log.read_text().splitlines()) >= goal, 30)  # noqa: B023
                so_far = acknowledged(log)
                eventually(lambda: holds_all(cluster, so_far), 20, what="spread")  # noqa: B023
        finally:
            stop.touch()
            with contextlib.suppress(subprocess.TimeoutExpired):
                writer.wait(60)
            writer.kill()
        assert writer.returncode == 0, (tmp_path / "writer.log").read_text()[-3000:]
        acked = acknowledged(log)
        total = sum(map(len, acked.values()))
        assert total >= 60
        eventually(lambda: holds_all(cluster, acked), 20, what="every write on every node")
        assert_all_present(cluster, acked, ReadAll(10))
        for i in range(3):
            assert_no_refusal(cluster, i)
        upgraded = time.monotonic()
        for i in range(3):
            seen = peer_versions(cluster, i)
            assert not any("first release" in v or not v for v in seen.values()), seen
        # A full restart on the new code: the stores read back.
        for i in range(3):
            cluster.stop_node(i)
        cluster.start()
        assert_all_present(cluster, acked, ReadLocal())
        for i in range(3):
            assert_no_refusal(cluster, i)
    figure(
        f"rolling upgrade of 3 nodes from the previous release: {total} writes acknowledged, "
        f"{(tmp_path / 'writer.log').read_text().strip()}; upgraded in "
        f"{upgraded - started:.1f} s; 0 lost"
    )


def adding(element: str) -> Callable[[ORSet[str], ReplicaId], ORSet[str]]:
    return lambda s, node: s.add(node, element)


def write_until_stopped(log: Path, stop: Path, ports: list[int]) -> None:
    """The writer: a client per node, each in a thread of its own, adds new elements to KEYS
    sets with WriteMajority and notes each write acknowledged, until ``stop`` exists.  A node
    that is down (being upgraded) costs its client failed writes, which are not noted; the
    others write on meanwhile."""
    lock = threading.Lock()
    tried, failed = [0] * len(ports), [0] * len(ports)

    def write(index: int, port: int, out: TextIO) -> None:
        client: Client | None = None
        while not stop.exists():
            n = tried[index]
            tried[index] += 1
            key, element = f"set-{n % KEYS}", f"w{index}-{n}"
            try:
                if client is None:
                    client = Client.connect(port, timeout=5)
                client.update(key, ORSet[str](), adding(element), WriteMajority(3))
            except Exception:  # noqa: BLE001 - whatever fails, the write is not acknowledged
                failed[index] += 1
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                time.sleep(0.05)
                continue
            with lock:
                out.write(f"{key} {element}\n")
                out.flush()
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    with log.open("a") as out:
        threads = [
            threading.Thread(target=write, args=(i, port, out)) for i, port in enumerate(ports)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    sys.stdout.write(f"{sum(tried)} writes tried, {sum(failed)} failed\n")


if __name__ == "__main__":
    write_until_stopped(Path(sys.argv[1]), Path(sys.argv[2]), [int(p) for p in sys.argv[3:]])
