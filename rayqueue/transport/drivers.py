"""Every call a handle makes to an actor goes through here.

Data calls to partitions go over the direct channel (``rayqueue.transport.direct``),
long-poll probes and coordinator calls through Ray. Here transport errors become
rayqueue's: an error raised inside an actor comes back as itself, and a
partition that died or is restarting is retried, after a fresh route from the
coordinator, until ``PARTITION_RETRY_S`` has passed; then the caller gets
``PartitionUnavailable``. A call marked ``once`` is not retried (see
``rayqueue.client.plan``). A coordinator call never lets a Ray error out: a coordinator
that restarts, or that met a dead actor while it failed one over, is retried;
then the caller gets ``CoordinatorUnavailable``. Nothing here
knows a queue's rules.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayError, RayTaskError, TaskCancelledError

from rayqueue import defaults
from rayqueue.backoff import Backoff
from rayqueue.client.plan import Call, Calls, FirstOf, Plan, Step, T, Target
from rayqueue.errors import (
    CoordinatorUnavailable,
    PartitionFenced,
    PartitionRetired,
    PartitionUnavailable,
    RayQueueError,
)
from rayqueue.transport.direct import TRANSPORT, Pending, unwrap
from rayqueue.transport.wire import ChannelBroken

#: Errors after which the same call may succeed once the actor is back.
_RETRYABLE = (RayActorError, ObjectLostError, GetTimeoutError, ChannelBroken)
#: Errors raised by a partition that another actor serves now (or soon): retried after a fresh route.
_ELSEWHERE = (PartitionUnavailable, PartitionFenced)
#: How a call ends that is retried (or, marked ``once``, given up): the partition is
#: gone, restarting or elsewhere, or the call timed out.
_FAILED = (*_ELSEWHERE, *_RETRYABLE, TimeoutError)


def _actor(target: Target, call: Call[Any]) -> Any:
    if call.partition >= len(target.route.partitions):
        # Scaling in removed it (drained) since the plan chose it.
        raise PartitionRetired(target.name, call.partition)
    return target.route.partitions[call.partition]


def _args(call: Call[Any], retry: bool) -> tuple[Any, ...]:
    return call.retry_args if retry and call.retry_args is not None else call.args


def _submit(target: Target, call: Call[Any], retry: bool) -> ray.ObjectRef[Any]:
    """Through Ray: for calls that may be cancelled (long-poll probes)."""
    return getattr(_actor(target, call), call.method).remote(*_args(call, retry))


def _start(target: Target, call: Call[Any], retry: bool) -> Pending:
    return TRANSPORT.start(_actor(target, call), call.method, _args(call, retry), _timeout(call), call.bulky)


class _StepRun:
    """One ``Calls`` step as both drivers run it: the calls still to make, their results,
    and what one round of outcomes means. The drivers differ only in how they wait."""

    def __init__(self, target: Target, step: Calls) -> None:
        self.target = target
        self.step = step
        self.results: list[Any] = [None] * len(step.calls)
        self.todo = list(range(len(step.calls)))
        #: Repeats use each call's ``retry_args`` (dedup on).
        self.retrying = False
        self._deadline = time.monotonic() + defaults.PARTITION_RETRY_S
        self._backoff = Backoff(*defaults.CALL_BACKOFF_S)

    def pending(self) -> dict[int, Call[Any]]:
        return {index: self.step.calls[index] for index in self.todo}

    def settle(self, outcomes: dict[int, Any]) -> tuple[int, float] | None:
        """Take one round's outcomes (each call's result, or the error it ended with).

        Returns None once every call has its result, or the partition to report and the
        seconds to wait before the next round. Raises what a call raised on purpose, and
        ``PartitionUnavailable`` for a failed ``once`` call or once retrying runs out.
        """
        failed: list[tuple[int, BaseException]] = []
        for index, outcome in outcomes.items():
            if not isinstance(outcome, BaseException):
                self.results[index] = outcome
                continue
            error = unwrap(outcome) if isinstance(outcome, RayTaskError) else outcome
            if not isinstance(error, _FAILED):
                raise error
            failed.append((index, error))
        _give_up_once(self.target, self.step, failed)
        self.todo, self.retrying = [index for index, _ in failed], True
        if not failed:
            return None
        index, error = failed[0]
        call = self.step.calls[index]
        if time.monotonic() >= self._deadline:
            raise _unavailable(self.target, call, error)
        return call.partition, self._backoff.next()


def _first_failed(error: BaseException) -> None:
    """A ``FirstOf`` call that failed: return if its partition is gone, restarting or
    replaced (the driver reports it), or raise what the partition raised on purpose."""
    cause = unwrap(error) if isinstance(error, RayTaskError) else error
    if not isinstance(cause, (*_FAILED, TaskCancelledError)):
        raise cause from None


def _timeout(call: Call[Any]) -> float:
    return call.wait_s + defaults.CALL_TIMEOUT_S


def _unavailable(target: Target, call: Call[Any], error: BaseException) -> PartitionUnavailable:
    return PartitionUnavailable(target.name, call.partition, f"{type(error).__name__}: {error}")


def _give_up_once(target: Target, step: Calls, failed: list[tuple[int, BaseException]]) -> None:
    """Raise for the first failed ``once`` call of the step, after reporting every one."""
    once = [(index, error) for index, error in failed if step.calls[index].once]
    for index, _ in once:
        report_soon(target, step.calls[index].partition)
    if once:
        index, error = once[0]
        raise _unavailable(target, step.calls[index], error)


def report_soon(target: Target, partition: int) -> None:
    """Tell the coordinator that ``partition`` failed, without waiting: during a
    failover it answers only after seconds. One report per partition is in flight
    at a time; ``take_reports`` picks up the fresh route it returns."""
    if partition not in target.reports:
        target.reports[partition] = target.coordinator.report_failure.remote(target.name, partition)


def take_reports(target: Target) -> None:
    """Take the route from every failure report the coordinator has answered (never waits)."""
    if not target.reports:
        return
    ready, _ = ray.wait(list(target.reports.values()), num_returns=len(target.reports), timeout=0)
    for partition, ref in list(target.reports.items()):
        if ref not in ready:
            continue
        del target.reports[partition]
        try:
            target.set_route(ray.get(ref))
        except (RayError, RayQueueError):
            pass  # the coordinator restarted or the queue went: the next call finds out and reports again


# ---------------------------------------------------------------- blocking driver


def run(target: Target, plan: Plan[T]) -> T:
    """Run a plan with blocking calls."""
    take_reports(target)
    if target.stale():
        target.set_route(call_coordinator(target.coordinator, "route", target.name))
    outcome = _resume(plan, None)
    while not isinstance(outcome, _Done):
        try:
            result = _execute(target, outcome)
        except RayQueueError as error:
            outcome = _resume_with_error(plan, error)
        else:
            outcome = _resume(plan, result)
    return outcome.value


def _execute(target: Target, step: Step) -> Any:
    if isinstance(step, FirstOf):
        return _first_of(target, step)
    run = _StepRun(target, step)
    while calls := run.pending():
        outcomes: dict[int, Any] = {}
        started: dict[int, Pending] = {}
        for index, call in calls.items():
            try:
                started[index] = _start(target, call, run.retrying)
            except Exception as error:  # settle() tells a failure to retry from an answer
                outcomes[index] = error
        for index, pending in started.items():
            try:
                outcomes[index] = pending.result(_timeout(calls[index]))
            except Exception as error:
                outcomes[index] = error
        retry = run.settle(outcomes)
        if retry is not None:
            partition, delay = retry
            time.sleep(delay)
            report_failure(target, partition)
    return run.results


def _first_of(target: Target, step: FirstOf) -> tuple[int, Any] | None:
    refs = [_submit(target, call, False) for call in step.calls]
    ready, pending = ray.wait(refs, num_returns=1, timeout=step.timeout_s)
    for ref in pending:
        ray.cancel(ref)
    if not ready:
        return None
    index = refs.index(ready[0])
    try:
        return index, ray.get(ready[0])
    except Exception as error:
        _first_failed(error)
    report_failure(target, step.calls[index].partition)
    return None


def report_failure(target: Target, partition: int) -> None:
    """Tell the coordinator (which fails over a dead leader) and take its fresh route."""
    target.set_route(call_coordinator(target.coordinator, "report_failure", target.name, partition))


def call_coordinator(coordinator: Any, method: str, *args: Any) -> Any:
    """A blocking coordinator call, retried while the coordinator restarts; it raises
    only rayqueue errors (see ``_coordinator_error``)."""
    deadline = time.monotonic() + defaults.PARTITION_RETRY_S
    backoff = Backoff(*defaults.CALL_BACKOFF_S)
    while True:
        try:
            return ray.get(getattr(coordinator, method).remote(*args), timeout=defaults.CALL_TIMEOUT_S)
        except RayError as error:
            _coordinator_error(method, error, time.monotonic() >= deadline)
        time.sleep(backoff.next())


def _coordinator_error(method: str, error: BaseException, late: bool) -> None:
    """What a failed coordinator call means: raise the rayqueue error to give the
    caller, or return (to retry) when the coordinator may answer on a later try.

    Retried: the coordinator restarting or unreachable (``_RETRYABLE``), and a
    Ray error raised inside it (an actor it called died while it failed one
    over: the next try sees the new state). A rayqueue error it raised is the
    answer. Anything else (its constructor failing included) is a fault in the
    coordinator, named, not retried.
    """
    cause = unwrap(error) if isinstance(error, RayTaskError) else error
    if isinstance(cause, RayQueueError):
        raise cause from None
    # A task error whose cause Ray could not rebuild is a fault, not a restart; so is a
    # coordinator whose constructor raised (e.g. storage it cannot reach): it stays dead.
    retryable = (
        isinstance(cause, (*_RETRYABLE, RayError, asyncio.TimeoutError))
        and not isinstance(cause, RayTaskError)
        and not getattr(cause, "actor_init_failed", False)
    )
    if retryable and not late:
        return
    what = "" if retryable else "it failed: "
    raise CoordinatorUnavailable(method, f"{what}{type(cause).__name__}: {cause}") from (None if retryable else cause)


# --------------------------------------------------------------- awaitable driver


async def run_async(target: Target, plan: Plan[T]) -> T:
    """Run a plan without blocking the event loop."""
    take_reports(target)
    if target.stale():
        target.set_route(await call_coordinator_async(target.coordinator, "route", target.name))
    outcome = _resume(plan, None)
    while not isinstance(outcome, _Done):
        try:
            result = await _execute_async(target, outcome)
        except RayQueueError as error:
            outcome = _resume_with_error(plan, error)
        else:
            outcome = _resume(plan, result)
    return outcome.value


async def _execute_async(target: Target, step: Step) -> Any:
    if isinstance(step, FirstOf):
        return await _first_of_async(target, step)
    run = _StepRun(target, step)
    while calls := run.pending():
        outcomes = await asyncio.gather(
            *(
                asyncio.wait_for(
                    TRANSPORT.call(_actor(target, call), call.method, _args(call, run.retrying), call.bulky),
                    _timeout(call),
                )
                for call in calls.values()
            ),
            return_exceptions=True,
        )
        retry = run.settle(dict(zip(calls, outcomes)))
        if retry is not None:
            partition, delay = retry
            await asyncio.sleep(delay)
            await report_failure_async(target, partition)
    return run.results


async def _await(ref: ray.ObjectRef[Any]) -> Any:
    return await ref


async def _first_of_async(target: Target, step: FirstOf) -> tuple[int, Any] | None:
    refs = [_submit(target, call, False) for call in step.calls]
    tasks = [asyncio.ensure_future(_await(ref)) for ref in refs]
    done, pending = await asyncio.wait(tasks, timeout=step.timeout_s, return_when=asyncio.FIRST_COMPLETED)
    for ref, task in zip(refs, tasks):
        if task in pending:
            ray.cancel(ref)
            task.cancel()
    if not done:
        return None
    task = next(iter(done))
    try:
        return tasks.index(task), task.result()
    except Exception as error:
        _first_failed(error)
    await report_failure_async(target, step.calls[tasks.index(task)].partition)
    return None


async def report_failure_async(target: Target, partition: int) -> None:
    target.set_route(await call_coordinator_async(target.coordinator, "report_failure", target.name, partition))


async def call_coordinator_async(coordinator: Any, method: str, *args: Any) -> Any:
    """``call_coordinator`` without blocking the event loop."""
    deadline = time.monotonic() + defaults.PARTITION_RETRY_S
    backoff = Backoff(*defaults.CALL_BACKOFF_S)
    while True:
        try:
            return await asyncio.wait_for(_await(getattr(coordinator, method).remote(*args)), defaults.CALL_TIMEOUT_S)
        except (TimeoutError, RayError) as error:
            _coordinator_error(method, error, time.monotonic() >= deadline)
        await asyncio.sleep(backoff.next())


# ------------------------------------------------------------------ plan stepping


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value


def _resume(plan: Plan[Any], result: Any) -> Step | _Done:
    """Hand the plan its last step's result; what it does next."""
    try:
        return plan.send(result)
    except StopIteration as stop:
        return _Done(stop.value)


def _resume_with_error(plan: Plan[Any], error: BaseException) -> Step | _Done:
    """Raise ``error`` inside the plan, where its last step was; what it does next."""
    try:
        return plan.throw(error)
    except StopIteration as stop:
        return _Done(stop.value)
