"""A durable node: what it acknowledged survives kill -9, and `inspect` shows the store.

The node keeps its data in an SQLite file (`--store sqlite:///PATH`; any SQLAlchemy URL
works).  An update is acknowledged only once committed (write_mode "sync", the default), so
killing every process of the node loses nothing that was acknowledged; at its next start the
node reads its rows back before it answers anyone.

Run: python samples/durable_restart.py
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from thespian_dd import Client, GCounter, ORSet
from thespian_dd.testing import Cluster


def main():
    with tempfile.TemporaryDirectory() as workdir:
        store = f"sqlite:///{workdir}/{{name}}.db"  # one file per node: node-1.db
        with Cluster(Path(workdir), 1, store=store) as cluster:
            cluster.start()
            port = cluster.nodes[0].port
            with Client.connect(port) as client:
                for _ in range(3):  # each returns once committed to node-1.db
                    client.update("visits", GCounter(), lambda c, n: c.increment(n, 1))
                client.update("tags", ORSet(), lambda s, n: s.add_all(n, ["durable", "crdt"]))
                print("before: visits =", client.get("visits").value)

            cluster.kill(0)  # SIGKILL to every process of the node: no flush, no goodbye
            cluster.restart(0)
            with Client.connect(port) as client:  # the restarted node, on the same port
                print(f"after kill -9 and restart: {client.stats().keys} keys recovered")
                print("after: visits =", client.get("visits").value)
                print("after: tags =", sorted(client.get("tags").value))
        # Operators can look into a store without a node running:
        inspect = [sys.executable, "-m", "thespian_dd", "inspect", "--store"]
        out = subprocess.run(
            [*inspect, store.format(name="node-1")], capture_output=True, text=True, check=True
        )
        print(out.stdout.rstrip())


if __name__ == "__main__":
    main()
