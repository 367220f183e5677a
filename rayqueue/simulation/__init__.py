"""Deterministic simulation of a partition under faults (no Ray, no threads, no real time).

``run(seed)`` plays one schedule: a leader, its replicas, storage, a controller that
keeps the coordinator's failover contract, producers and consumers, all on one
event loop whose clock is virtual; every delay, storage error, lost reply, crash,
zombie leader and promotion is decided by the seed. A failing seed replays exactly.
"""

from rayqueue.simulation.world import Outcome, run

__all__ = ["Outcome", "run"]
