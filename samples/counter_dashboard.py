"""A page-view dashboard over three nodes with quorum reads and writes.

Every node counts views in a PNCounterMap with WriteMajority (2 of 3 nodes acknowledge) and
the dashboard reads with ReadMajority, so it sees every acknowledged view: a majority write and
a majority read always share a node (2 + 2 > 3).  With one node down a majority still answers;
WriteAll cannot, and times out (the view is still counted, and spreads later).

Each node's web server would hold a thespian_dd.Client of its node (Client.connect(port)); here
the three clients live in one program.

Run: python samples/counter_dashboard.py
"""

import contextlib
import tempfile
from pathlib import Path

from thespian_dd import (
    Client,
    PNCounterMap,
    ReadMajority,
    UpdateTimeoutError,
    WriteAll,
    WriteMajority,
)
from thespian_dd.testing import Cluster, eventually


def view(page):
    return lambda counters, node: counters.increment(node, page, 1)


def dashboard(client):
    views = client.get("views", ReadMajority(timeout=5.0))
    return dict(sorted(views.value.items()))


def main():
    with (
        tempfile.TemporaryDirectory() as workdir,
        Cluster(Path(workdir), 3) as cluster,
        contextlib.ExitStack() as clients,
    ):
        cluster.start()
        node = [clients.enter_context(Client.connect(n.port)) for n in cluster.nodes]
        eventually(lambda: node[0].stats().reachable_peers == 2, timeout=20)
        for i, page in [(0, "/"), (1, "/"), (2, "/cart"), (0, "/cart"), (1, "/")]:
            node[i].update("views", PNCounterMap(), view(page), WriteMajority(5.0))
        print("dashboard on node-3:", dashboard(node[2]))

        cluster.kill(2)  # node-3 goes down
        eventually(lambda: node[0].stats().reachable_peers == 1, timeout=20)
        node[0].update("views", PNCounterMap(), view("/"), WriteMajority(2.0))
        print("with node-3 down: WriteMajority -> acknowledged")
        try:
            node[1].update("views", PNCounterMap(), view("/"), WriteAll(1.0))
        except UpdateTimeoutError as e:  # applied on node-2, spreads to node-3 when it is back
            print("with node-3 down: WriteAll ->", type(e).__name__, f"({e.reply!r})")
        print("dashboard on node-1:", dashboard(node[0]))


if __name__ == "__main__":
    main()
