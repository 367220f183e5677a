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
finish, or None if none finished within its ``timeout_s``. Plans take steps through
``gather`` and ``first``, and make calls with the typed constructors below (``stats``,
``receive``...), so a type checker knows what each step gives back. A plan, in full
(``Queue`` imports this module as ``steps``)::

    def _visible_plan(self) -> Plan[int]:  # (a simpler Queue._stats_plan)
        per_partition = yield from steps.gather([steps.stats(p) for p in range(self._count)])
        return sum(s.visible for s in per_partition)  # per_partition: list[PartitionStats]

``drivers.run(target, plan)`` runs it blocking, ``await drivers.run_async(target, plan)``
from an event loop; both return what the plan returns. Why two drivers and not one
async implementation behind a blocking facade: measured side by side in
``jobs/bench.py`` (the ``facade`` path), the facade made one-at-a-time calls slower.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pyarrow as pa

from rayqueue import defaults
from rayqueue.message import PartitionStats
from rayqueue.routes import Route

T = TypeVar("T")
#: What a call's method returns.
R = TypeVar("R")


@dataclass(frozen=True)
class Call(Generic[R]):
    """One method call on one partition actor; ``R`` is what it returns."""

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

    calls: list[Call[Any]]


@dataclass(frozen=True)
class FirstOf:
    """Run these calls concurrently; the plan receives ``(index, result)`` of the
    first to finish (the others are cancelled), or None after ``timeout_s``."""

    calls: list[Call[Any]]
    timeout_s: float


Step = Calls | FirstOf
Plan = Generator[Step, Any, T]


def gather(calls: list[Call[R]]) -> Plan[list[R]]:
    """A step: run ``calls`` concurrently; their results, in order."""
    results: list[R] = yield Calls(list(calls))
    return results


def first(calls: list[Call[R]], timeout_s: float) -> Plan[tuple[int, R] | None]:
    """A step: run ``calls`` concurrently; ``(index, result)`` of the first to finish
    (the others are cancelled), or None after ``timeout_s``."""
    found: tuple[int, R] | None = yield FirstOf(list(calls), timeout_s)
    return found


# ----------------------------------------------- the partition's calls, typed


def send(partition: int, rows: pa.Table, *, dedup: bool, bulky: bool) -> Call[None]:
    """Store ``rows`` (with ``dedup``, skipping ids stored within the dedup window). A repeat
    after a failure always checks the ids: the first try may have stored them."""
    return Call(partition, "send", (rows, dedup), retry_args=(rows, True), bulky=bulky)


def receive(
    partition: int, max_messages: int, wait_s: float, visibility_s: float | None, *, once: bool = False
) -> Call[pa.Table]:
    return Call(partition, "receive", (max_messages, wait_s, visibility_s), wait_s=wait_s, once=once)


def wait_visible(partition: int, seconds: float) -> Call[bool]:
    return Call(partition, "wait_visible", (seconds,), wait_s=seconds)


def delete(partition: int, offsets: Any, tokens: Any, receipts: pa.Array) -> Call[None]:
    return Call(partition, "delete", (offsets, tokens, receipts))


def change_visibility(partition: int, offset: int, token: int, receipt: str, timeout_s: float) -> Call[None]:
    return Call(partition, "change_visibility", (offset, token, receipt, timeout_s))


def stats(partition: int) -> Call[PartitionStats]:
    return Call(partition, "stats", ())


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
