"""A shopping cart shared by three nodes: the customer's phone, laptop and the shop's backend
edit it at the same time, and every node ends up with the same cart.

In production each node is `python -m thespian_dd node --name N --port P [--join LEADER]` on its
own host; thespian_dd.testing.Cluster starts those same commands here, on loopback ports.

Run: python samples/shopping_cart.py
"""

import tempfile
from pathlib import Path

from thespian_dd import Get, LWWMap, ORMap, PNCounter, ReadMajority, Update, WriteMajority
from thespian_dd.testing import Cluster


def add(item, quantity):
    # An ORMap of counters: concurrent adds of the same item add up.
    return lambda cart, node: cart.update(
        node, item, PNCounter(), lambda c: c.increment(node, quantity)
    )


def remove(item):
    return lambda cart, node: cart.remove(node, item)


def main():
    with tempfile.TemporaryDirectory() as workdir, Cluster(Path(workdir), 3) as cluster:
        cluster.start()
        phone, laptop, backend = 0, 1, 2
        majority = WriteMajority(timeout=5.0)  # acknowledged by 2 of the 3 nodes
        cluster.ask(phone, Update("cart", ORMap(), add("socks", 2), majority))
        cluster.ask(laptop, Update("cart", ORMap(), add("socks", 1), majority))
        cluster.ask(laptop, Update("cart", ORMap(), add("hat", 1), majority))
        cluster.ask(backend, Get("cart", ReadMajority(timeout=5.0)))  # sees the hat...
        cluster.ask(backend, Update("cart", ORMap(), remove("hat"), majority))  # out of stock
        ship_to = lambda a, node: a.put(node, "city", "Lyon")  # noqa: E731
        cluster.ask(phone, Update("address", LWWMap(), ship_to, majority))
        for name, i in (("phone", phone), ("laptop", laptop), ("backend", backend)):
            cart = cluster.ask(i, Get("cart", ReadMajority(timeout=5.0))).data.value
            address = cluster.ask(i, Get("address", ReadMajority(timeout=5.0))).data.value
            print(f"{name}: cart={dict(sorted(cart.items()))} ship to={address['city']}")


if __name__ == "__main__":
    main()
