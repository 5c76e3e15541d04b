"""A data type of one's own: replicated, stored in SQLite, read back after every node is killed.

``max_register.py`` (next to this file) defines ``MaxRegister``, the highest int ever written,
and registers it with the codec under the name ``samples.MaxRegister``.  The nodes are processes
of their own: each imports that module by name before it reads its store (the ``data_types``
setting, ``--data-types`` of the node command), so the module must be importable there, as an
installed package of yours would be.

Run: python samples/custom_type.py
"""

import os
import tempfile
from pathlib import Path

from max_register import MaxRegister  # registers the type in this process too

from thespian_dd import Get, GetStats, Update
from thespian_dd.testing import Cluster, eventually

HERE = Path(__file__).resolve().parent


def best(cluster, i):
    reply = cluster.ask(i, Get("best"))
    return reply.data.value if hasattr(reply, "data") else None


def main():
    # The node processes find max_register.py on their path (an installed package needs nothing).
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
    )
    with tempfile.TemporaryDirectory() as workdir:
        store = f"sqlite:///{workdir}/{{name}}.db"  # one file per node: node-1.db, node-2.db
        with Cluster(Path(workdir), 2, store=store, data_types=["max_register"]) as cluster:
            cluster.start()
            # Two best scores written at once on two nodes: the merge keeps the higher one.
            cluster.ask(0, Update("best", MaxRegister(), lambda r, node: r.raise_to(node, 42)))
            cluster.ask(1, Update("best", MaxRegister(), lambda r, node: r.raise_to(node, 37)))
            eventually(lambda: best(cluster, 0) == best(cluster, 1) == 42)
            print("best score on node-1 and node-2:", best(cluster, 0), best(cluster, 1))
            print("stored as:", repr(cluster.ask(0, Get("best")).data))

            for i in (0, 1):
                cluster.kill(i)  # SIGKILL to every process of both nodes: no flush, no peer left
            for i in (0, 1):
                cluster.restart(i)
            stats = cluster.ask(0, GetStats())
            recovered = f"{stats.keys} key recovered, {stats.refused_rows} refused"
            print("after kill -9 of both nodes:", recovered)
            print("best score after the restart:", best(cluster, 0), best(cluster, 1))


if __name__ == "__main__":
    main()
