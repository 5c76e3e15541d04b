"""The Replicator's runtime: plain classes the actor in :mod:`thespian_dd.replicator` owns.

None of them is an actor (on Thespian's multiprocess bases an actor is a process).  Each takes
what it needs to act on the world (a ``send`` callable, a timer, a clock) as arguments, so each
has unit tests of its own that run without processes.  Nothing here is public.
"""
