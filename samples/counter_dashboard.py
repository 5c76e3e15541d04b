"""A page-view dashboard over three nodes with quorum reads and writes.

Every node counts views in a PNCounterMap with WriteMajority (2 of 3 nodes acknowledge) and
the dashboard reads with ReadMajority, so it sees every acknowledged view: a majority write and
a majority read always share a node (2 + 2 > 3).  With one node down a majority still answers;
WriteAll cannot, and times out (the view is still counted, and spreads later).

Run: python samples/counter_dashboard.py
"""

import tempfile
from pathlib import Path

from thespian_dd import (
    Get,
    GetStats,
    PNCounterMap,
    ReadMajority,
    Update,
    UpdateSuccess,
    UpdateTimeout,
    WriteAll,
    WriteMajority,
)
from thespian_dd.testing import Cluster, eventually


def view(page):
    return lambda counters, node: counters.increment(node, page, 1)


def dashboard(cluster, i):
    reply = cluster.ask(i, Get("views", ReadMajority(timeout=5.0)))
    return dict(sorted(reply.data.value.items()))


def main():
    with tempfile.TemporaryDirectory() as workdir, Cluster(Path(workdir), 3) as cluster:
        cluster.start()
        eventually(lambda: cluster.ask(0, GetStats()).reachable_peers == 2, timeout=20)
        for i, page in [(0, "/"), (1, "/"), (2, "/cart"), (0, "/cart"), (1, "/")]:
            reply = cluster.ask(i, Update("views", PNCounterMap(), view(page), WriteMajority(5.0)))
            assert isinstance(reply, UpdateSuccess), reply
        print("dashboard on node-3:", dashboard(cluster, 2))

        cluster.kill(2)  # node-3 goes down
        eventually(lambda: cluster.ask(0, GetStats()).reachable_peers == 1, timeout=20)
        majority = cluster.ask(0, Update("views", PNCounterMap(), view("/"), WriteMajority(2.0)))
        everyone = cluster.ask(1, Update("views", PNCounterMap(), view("/"), WriteAll(1.0)))
        print("with node-3 down: WriteMajority ->", type(majority).__name__)
        print("with node-3 down: WriteAll ->", type(everyone).__name__)
        assert isinstance(everyone, UpdateTimeout)
        print("dashboard on node-1:", dashboard(cluster, 0))


if __name__ == "__main__":
    main()
