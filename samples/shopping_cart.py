"""A shopping cart shared by three nodes: the customer's phone, laptop and the shop's backend
edit it at the same time, and every node ends up with the same cart.

In production each node is `python -m thespian_dd node --name N --port P [--join LEADER]` on its
own host, and the program beside it talks to it through `thespian_dd.Client.connect(P)`;
thespian_dd.testing.Cluster starts those same commands here, on loopback ports.

Run: python samples/shopping_cart.py
"""

import contextlib
import tempfile
from pathlib import Path

from thespian_dd import Client, LWWMap, ORMap, PNCounter, ReadMajority, WriteMajority
from thespian_dd.testing import Cluster


def add(item, quantity):
    # An ORMap of counters: concurrent adds of the same item add up.
    return lambda cart, node: cart.update(
        node, item, PNCounter(), lambda c: c.increment(node, quantity)
    )


def remove(item):
    return lambda cart, node: cart.remove(node, item)


def main():
    with (
        tempfile.TemporaryDirectory() as workdir,
        Cluster(Path(workdir), 3) as cluster,
        contextlib.ExitStack() as clients,
    ):
        cluster.start()
        phone, laptop, backend = (
            clients.enter_context(Client.connect(node.port)) for node in cluster.nodes
        )
        majority = WriteMajority(timeout=5.0)  # acknowledged by 2 of the 3 nodes
        read = ReadMajority(timeout=5.0)
        phone.update("cart", ORMap(), add("socks", 2), majority)
        laptop.update("cart", ORMap(), add("socks", 1), majority)
        laptop.update("cart", ORMap(), add("hat", 1), majority)
        assert "hat" in backend.get("cart", read).value  # a majority read sees the hat...
        backend.update("cart", ORMap(), remove("hat"), majority)  # ...out of stock
        ship_to = lambda a, node: a.put(node, "city", "Lyon")  # noqa: E731
        phone.update("address", LWWMap(), ship_to, majority)
        for name, client in (("phone", phone), ("laptop", laptop), ("backend", backend)):
            cart = client.get("cart", read).value
            address = client.get("address", read).value
            print(f"{name}: cart={dict(sorted(cart.items()))} ship to={address['city']}")


if __name__ == "__main__":
    main()
