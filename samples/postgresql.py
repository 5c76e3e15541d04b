"""Two nodes keeping their data in one PostgreSQL database (rows are per node).

Install the driver with `pip install 'thespian_dd[postgresql]'` (psycopg 3) and give the URL:
    python samples/postgresql.py postgresql+psycopg://USER:PASSWORD@HOST/DATABASE
MariaDB and MySQL work the same way with `thespian_dd[mysql]` and
`mysql+pymysql://USER:PASSWORD@HOST/DATABASE?charset=utf8mb4`.
"""

import sys
import tempfile
from pathlib import Path

from thespian_dd import Get, GetStats, PNCounter, ReadAll, Update, WriteAll
from thespian_dd.testing import Cluster


def main(url):
    with tempfile.TemporaryDirectory() as workdir, Cluster(Path(workdir), 2, store=url) as cluster:
        cluster.start()
        cluster.ask(
            0, Update("balance", PNCounter(), lambda c, n: c.increment(n, 100), WriteAll(5.0))
        )
        cluster.ask(
            1, Update("balance", PNCounter(), lambda c, n: c.decrement(n, 30), WriteAll(5.0))
        )
        for i in range(2):
            cluster.kill(i)  # both nodes, at once
        for i in range(2):
            cluster.restart(i)
        for i in range(2):
            stats = cluster.ask(i, GetStats())
            balance = cluster.ask(i, Get("balance", ReadAll(5.0))).data.value
            print(
                f"node-{i + 1}: balance {balance} after a restart from PostgreSQL "
                f"({stats.keys} key recovered)"
            )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
