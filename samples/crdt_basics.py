"""The data types on their own: two replicas edit concurrently, then merge.

Run: python samples/crdt_basics.py
"""

from thespian_dd import GCounter, LWWRegister, MVRegister, ORMultiMap, ORSet, ReplicaId

# Each replica acts under its own id: the node's name and the incarnation of that node.
alice, bob = ReplicaId("alice", 1), ReplicaId("bob", 1)

# Counters: increments from every replica add up.
left = GCounter().increment(alice, 3)
right = GCounter().increment(bob, 4)
print("counter:", left.merge(right).value)

# ORSet: an add concurrent with a remove wins; a remove removes only what it has seen.
tags = ORSet().add(alice, "red").add(alice, "blue")
bob_view = tags.remove(bob, "red")  # bob removes the red he saw
alice_view = tags.add(alice, "red").add(alice, "green")  # alice re-adds red concurrently
print("tags:", sorted(bob_view.merge(alice_view).value))

# Registers: last writer wins, or keep every concurrent value.
lww = LWWRegister.create(alice, "draft").with_value(bob, "final")
print("title:", lww.value)
mv = MVRegister().assign(alice, "v1").merge(MVRegister().assign(bob, "v2"))
print("concurrent versions:", sorted(mv.value))

# Maps of sets, merged key by key.
groups = ORMultiMap().add_binding(alice, "admins", "ann").add_binding(alice, "users", "al")
groups = groups.merge(ORMultiMap().add_binding(bob, "admins", "bo"))
print("groups:", {k: sorted(v) for k, v in sorted(groups.value.items())})

# Merging in any order gives the same state.
assert left.merge(right) == right.merge(left)
