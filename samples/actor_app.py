"""A Thespian actor application that keeps its shared state in thespian_dd.

A StockKeeper actor finds the node's Replicator by its global name, subscribes to the "stock"
key and changes it with Update messages; it hears the replies and the changes in its own
receiveMsg_* handlers, as any Thespian actor would.  The program asks it for a report.

Run: python samples/actor_app.py
"""

import socket
import time
from dataclasses import dataclass

from thespian.actors import ActorExitRequest, ActorSystem, ActorTypeDispatcher

import thespian_dd
from thespian_dd import PNCounterMap, Replicator, Subscribe, Update


@dataclass(frozen=True)
class Restock:
    item: str
    amount: int


@dataclass(frozen=True)
class Sell:
    item: str
    amount: int


@dataclass(frozen=True)
class Report:
    pass


class StockKeeper(ActorTypeDispatcher):
    """Keeps a view of the shared stock and changes it through the Replicator."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.replicator = None
        self.stock = {}
        self.replies = []

    def _replicator(self):
        if self.replicator is None:
            # The node's Replicator, found by name (thespian_dd.start created it).
            self.replicator = self.createActor(Replicator, globalName=thespian_dd.REPLICATOR_NAME)
            self.send(self.replicator, Subscribe("stock"))  # Changed messages come to us
        return self.replicator

    def receiveMsg_Restock(self, msg, sender):
        # The modify function runs in the Replicator; a lambda travels with the message.
        add = lambda counters, node: counters.increment(node, msg.item, msg.amount)  # noqa: E731
        self.send(self._replicator(), Update("stock", PNCounterMap(), add, request=msg))

    def receiveMsg_Sell(self, msg, sender):
        take = lambda counters, node: counters.decrement(node, msg.item, msg.amount)  # noqa: E731
        self.send(self._replicator(), Update("stock", PNCounterMap(), take, request=msg))

    def receiveMsg_UpdateResponse(self, msg, sender):
        # UpdateSuccess, or a failure; `request` is what we passed with the Update.
        self.replies.append(f"{type(msg).__name__} for {msg.request}")

    def receiveMsg_Changed(self, msg, sender):
        self.stock = dict(sorted(msg.data.value.items()))

    def receiveMsg_Report(self, msg, sender):
        self.send(sender, (self.stock, list(self.replies)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()})
    try:
        thespian_dd.start(asys, notify_interval=0.1)  # the node's Replicator, ready to serve
        keeper = asys.createActor(StockKeeper)
        asys.tell(keeper, Restock("apples", 10))
        asys.tell(keeper, Restock("pears", 2))
        asys.tell(keeper, Sell("apples", 3))
        deadline = time.monotonic() + 20
        stock, replies = asys.ask(keeper, Report(), 5)
        while (len(replies) < 3 or stock != {"apples": 7, "pears": 2}) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
            stock, replies = asys.ask(keeper, Report(), 5)
        print("stock:", stock)
        for reply in replies:
            print("reply:", reply)
        asys.tell(keeper, ActorExitRequest())
    finally:
        asys.shutdown()


if __name__ == "__main__":
    main()
