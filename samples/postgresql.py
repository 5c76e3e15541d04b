"""Two nodes keeping their data in one PostgreSQL database (rows are per node).

Install thespian_dd with its `postgresql` extra (psycopg 3; from a clone:
`pip install '/path/to/thespian_dd[postgresql]'`) and give the URL:
    python samples/postgresql.py postgresql+psycopg://USER:PASSWORD@HOST/DATABASE
MariaDB and MySQL work the same way with the `mysql` extra and
`mysql+pymysql://USER:PASSWORD@HOST/DATABASE?charset=utf8mb4`.
"""

import sys
import tempfile
from pathlib import Path

from thespian_dd import Client, PNCounter, ReadAll, WriteAll
from thespian_dd.testing import Cluster


def main(url):
    with tempfile.TemporaryDirectory() as workdir, Cluster(Path(workdir), 2, store=url) as cluster:
        cluster.start()
        ports = [node.port for node in cluster.nodes]
        with Client.connect(ports[0]) as first, Client.connect(ports[1]) as second:
            first.update("balance", PNCounter(), lambda c, n: c.increment(n, 100), WriteAll(5.0))
            second.update("balance", PNCounter(), lambda c, n: c.decrement(n, 30), WriteAll(5.0))
        for i in range(2):
            cluster.kill(i)  # both nodes, at once
        for i in range(2):
            cluster.restart(i)
        for i, port in enumerate(ports):
            with Client.connect(port) as client:
                recovered = client.stats().keys
                balance = client.get("balance", ReadAll(5.0)).value
            print(
                f"node-{i + 1}: balance {balance} after a restart from PostgreSQL "
                f"({recovered} key recovered)"
            )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
