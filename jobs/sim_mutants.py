"""Does the simulation find the durability review's findings? Re-introduce each one and count.

    python jobs/sim_mutants.py F1 200      # F1, F2, F3, F5, shrink or colocated; schedules to play

Each mutant puts one hole the review found (or one the simulation found) back into the
write path by patching the running modules, then plays schedules until they fail. A
mutant no schedule catches is a blind spot of the simulation.
"""

import sys

from rayqueue.partition import leadership, replication, writer
from rayqueue.simulation import run


def f1():  # floors pass stored-but-unpublished keys
    def open_(self, key):
        self._waiting[key] = {"stored"}

    writer.Settlement.open = open_


def f2():  # a failed background store is forgotten
    orig = writer.OrderedWriter.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        self._fatal = False

    writer.OrderedWriter.__init__ = init


def f3():  # no read-index: memory answers without confirming leadership
    async def confirm(self):
        return None

    leadership.Leadership.confirm = confirm


def f5():  # acknowledge on the local in-sync set, recorded or not, and shrink at once
    orig = replication.ReplicaSet._to_all

    async def to_all(self, method, args):
        await orig(self, method, args)
        return bool(self._in_sync)

    replication.ReplicaSet._to_all = to_all


def shrink():  # report a lost replica before its acknowledged writes are stored
    async def nothing():
        return None

    orig = replication.ReplicaSet.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        object.__setattr__(self, "stored", nothing)

    replication.ReplicaSet.__init__ = init
    replication.ReplicaSet.stored = property(lambda self: nothing, lambda self, v: None)


def colocated():  # count a replica on the leader's node as a second copy (chaos, S3, seed 24)
    replication.ReplicaSet._survives_the_leaders_node = lambda self: bool(self._recorded)


MUTANTS = {"F1": f1, "F2": f2, "F3": f3, "F5": f5, "shrink": shrink, "colocated": colocated}
name = sys.argv[1]
MUTANTS[name]()
found = []
for seed in range(int(sys.argv[2])):
    o = run(seed)
    if not o.ok:
        found.append(seed)
        if len(found) == 1:
            print(name, "first found by", o.summary(), flush=True)
print(name, f"{len(found)} of {sys.argv[2]} seeds fail; first seeds {found[:5]}")
