"""Operations written once, run both blocking and awaitable.

A queue operation is a generator (a *plan*) that yields the partition calls it
needs and receives their results; errors of those calls are thrown into it.
Two small drivers in ``rayqueue.transport.drivers`` run a plan: one with
``ray.get`` for plain code, one with ``await`` for async actors. Retrying a
restarting partition and translating Ray's errors live in the drivers, so the
plans hold only the queue's own rules.

The driver's contract, which plans rely on:

- A call that fails because its partition is dead, restarting or replaced is
  retried through a fresh route for up to ``PARTITION_RETRY_S``; then
  ``PartitionUnavailable`` is thrown into the plan.
- A call marked ``once`` is not retried: its failure is reported to the
  coordinator without waiting for the answer (the handle takes the healed route
  on a later operation), and ``PartitionUnavailable`` is thrown into the plan at
  once. A plan that holds something whose clock runs (received messages) uses
  it, so that it never waits on one partition while holding another's results.
- An error the partition raised on purpose (a ``RayQueueError``) is thrown into
  the plan as it is.

What each step sends back into the plan: a ``Calls`` step, the list of its calls'
results, in order; a ``FirstOf`` step, ``(index, result)`` of the first call to
finish, or None if none finished within its ``timeout_s``. A plan, in full::

    def _visible_plan(self) -> Plan[int]:  # (a simpler Queue._stats_plan)
        calls = [Call(partition, "stats", ()) for partition in range(self._count)]
        per_partition: list[PartitionStats] = yield Calls(calls)
        return sum(stats.visible for stats in per_partition)

``drivers.run(target, plan)`` runs it blocking, ``await drivers.run_async(target, plan)``
from an event loop; both return what the plan returns. Why two drivers and not one
async implementation behind a blocking facade: measured side by side in
``jobs/bench.py`` (the ``facade`` path), the facade made one-at-a-time calls slower.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rayqueue import defaults
from rayqueue.routes import Route

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One method call on one partition actor."""

    partition: int
    method: str
    args: tuple[Any, ...]
    #: How long the call may legitimately wait inside the actor (a long poll).
    wait_s: float = 0.0
    #: Arguments for a repeat after the partition failed mid-call (e.g. dedup on).
    retry_args: tuple[Any, ...] | None = None
    #: Its arguments or its result may be large (``defaults.BULKY_CALL_BYTES``): it goes through Ray.
    bulky: bool = False
    #: Not retried: fail with ``PartitionUnavailable`` at once (see the module's docstring).
    #: A step whose ``once`` call failed throws that error after its other calls finished,
    #: and their results are dropped: give such calls a step of their own.
    once: bool = False


@dataclass(frozen=True)
class Calls:
    """Run these calls concurrently; the plan receives their results in order."""

    calls: list[Call]


@dataclass(frozen=True)
class FirstOf:
    """Run these calls concurrently; the plan receives ``(index, result)`` of the
    first to finish (the others are cancelled), or None after ``timeout_s``."""

    calls: list[Call]
    timeout_s: float


Step = Calls | FirstOf
Plan = Generator[Step, Any, T]


@dataclass
class Target:
    """Where a handle's calls go: the coordinator, and the queue's cached route."""

    name: str
    coordinator: Any
    route: Route
    fetched_at: float = field(default_factory=time.monotonic)
    #: Failure reports sent to the coordinator and not yet answered, by partition
    #: (Ray object refs of the fresh route); the driver takes the route once one is ready.
    reports: dict[int, Any] = field(default_factory=dict)

    def set_route(self, route: Route) -> None:
        self.route, self.fetched_at = route, time.monotonic()

    def stale(self) -> bool:
        """A queue that scales changes its partitions: its route is re-read now and then."""
        return self.route.config.scales and time.monotonic() - self.fetched_at > defaults.ROUTE_TTL_S
