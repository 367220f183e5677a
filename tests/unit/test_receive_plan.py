"""A receive over several partitions when one fails, and what the call layer does with
a failed call, driven without a cluster (invariant 7; review F11, F12).

The plans are generators: these tests play the driver's part (``rayqueue.client.plan``
states its contract) with partitions that are up or down.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pytest
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError, TaskCancelledError

from rayqueue.client.plan import Call, Calls, FirstOf, Target
from rayqueue.client.queue import Queue
from rayqueue.config import QueueConfig
from rayqueue.errors import CoordinatorUnavailable, PartitionUnavailable, QueueFull, QueueNotFound
from rayqueue.routes import Route
from rayqueue.transport import drivers
from rayqueue.transport.wire import ChannelBroken


@dataclass
class Partitions:
    """What each partition holds (a count of visible messages), and which are down."""

    visible: dict[int, int]
    down: set[int] = field(default_factory=set)
    #: Failing over: a once call fails, a retried call meets the new leader.
    recovering: set[int] = field(default_factory=set)
    #: Messages that arrive while the plan long-polls.
    arriving: dict[int, int] = field(default_factory=dict)
    #: Every call the plan made, in order (long-poll probes as "poll").
    calls: list[Call | str] = field(default_factory=list)

    def receive(self, call: Call) -> pa.Table:
        self.calls.append(call)
        if call.partition in self.down or (call.partition in self.recovering and call.once):
            # The driver's contract: a once call fails at once; any other call fails
            # only after its retries ran out. Either way the plan sees this.
            raise PartitionUnavailable("q", call.partition, "ActorDiedError: down")
        wanted = call.args[0]
        taken = min(wanted, self.visible[call.partition])
        self.visible[call.partition] -= taken
        return pa.table({"offset": pa.array(range(taken), pa.int64())})


def drive(plan: Any, partitions: Partitions) -> Any:
    """Run a receive plan as the driver would, against ``partitions``."""
    outcome: Callable[[], Any] = lambda: next(plan)  # noqa: E731
    while True:
        try:
            step = outcome()
        except StopIteration as stop:
            return stop.value
        if isinstance(step, FirstOf):
            partitions.calls.append("poll")
            for partition, count in partitions.arriving.items():
                partitions.visible[partition] += count
            partitions.arriving = {}
            up = [c.partition not in partitions.down and partitions.visible[c.partition] for c in step.calls]
            ready = [i for i, has in enumerate(up) if has]
            result = (ready[0], True) if ready else None
            outcome = lambda result=result: plan.send(result)  # noqa: E731
            continue
        assert isinstance(step, Calls)
        try:
            results = [partitions.receive(call) for call in step.calls]
        except PartitionUnavailable as error:
            outcome = lambda error=error: plan.throw(error)  # noqa: E731
        else:
            outcome = lambda results=results: plan.send(results)  # noqa: E731


def queue_of(partitions: int) -> Queue:
    config = QueueConfig.build(name="q", max_messages=1000, max_message_bytes=64, partitions=partitions)
    queue = Queue("q", None, Route(config, "uid", tuple(object() for _ in range(partitions))))
    queue._round_robin = itertools.count(0)  # start at partition 0: the order is known
    return queue


def received(deliveries: list[tuple[int, pa.Table]]) -> dict[int, int]:
    return {partition: table.num_rows for partition, table in deliveries}


def test_a_failing_partition_is_skipped_and_the_others_messages_are_returned():
    partitions = Partitions({0: 3, 1: 5, 2: 4}, down={1})

    deliveries = drive(queue_of(3)._receive_plan(10, 0.0, None), partitions)

    assert received(deliveries) == {0: 3, 2: 4}
    assert [(c.partition, c.once) for c in partitions.calls] == [(0, True), (1, True), (2, True)]


def test_messages_already_taken_are_returned_when_a_later_partition_fails():
    # The review's F11: partition 0 handed messages out, then partition 1 failed.
    # They must reach the caller now, not after 30 s of retries, and not be dropped.
    partitions = Partitions({0: 2, 1: 5, 2: 0}, down={1, 2})

    deliveries = drive(queue_of(3)._receive_plan(10, 5.0, None), partitions)

    assert received(deliveries) == {0: 2}
    assert "poll" not in partitions.calls and all(call.once for call in partitions.calls)


def test_a_failing_partition_with_others_empty_is_waited_for_holding_nothing():
    # "Empty" would be a lie if the failing partition holds the only messages left (a
    # drain loop would stop early): with nothing held, the receive waits for it as a
    # single-partition receive does, and raises only once its retries ran out.
    partitions = Partitions({0: 0, 1: 5, 2: 0}, down={1})

    with pytest.raises(PartitionUnavailable):
        drive(queue_of(3)._receive_plan(10, 0.0, None), partitions)
    assert [call.once for call in partitions.calls] == [True, True, True, False]
    assert partitions.calls[-1].partition == 1


def test_every_failing_partition_is_waited_for_before_the_answer_is_empty():
    # A node's removal took the leaders of partitions 1 and 2; only 2 holds messages.
    # Waiting for the first failed one alone, and answering empty when it had nothing,
    # stopped a drain loop with 2's messages still queued (seen in test_replicas).
    partitions = Partitions({0: 0, 1: 0, 2: 5}, recovering={1, 2})

    assert received(drive(queue_of(3)._receive_plan(10, 0.0, None), partitions)) == {2: 5}
    calls = [(c.partition, c.once) for c in partitions.calls]
    assert calls == [(0, True), (1, True), (2, True), (1, False), (2, False)]


def test_failed_partitions_that_all_come_back_empty_answer_empty():
    partitions = Partitions({0: 0, 1: 0, 2: 0}, recovering={0, 2})

    assert drive(queue_of(3)._receive_plan(10, 0.0, None), partitions) == []
    assert [(c.partition, c.once) for c in partitions.calls][3:] == [(0, False), (2, False)]


def test_the_wait_for_failed_partitions_stops_at_the_first_that_delivers():
    partitions = Partitions({0: 3, 1: 0, 2: 4}, recovering={0, 1, 2})

    assert received(drive(queue_of(3)._receive_plan(10, 0.0, None), partitions)) == {0: 3}
    assert partitions.visible[2] == 4  # not taken: nothing is held while a partition is waited for


def test_a_long_poll_goes_on_past_a_failing_partition():
    partitions = Partitions({0: 0, 1: 5, 2: 0}, down={1}, arriving={2: 1})

    assert received(drive(queue_of(3)._receive_plan(10, 1.0, None), partitions)) == {2: 1}
    assert partitions.calls[3] == "poll"


def test_when_every_partition_fails_the_receive_waits_for_one_holding_nothing():
    partitions = Partitions({0: 1, 1: 1, 2: 1}, down={0, 1, 2})

    with pytest.raises(PartitionUnavailable):
        drive(queue_of(3)._receive_plan(10, 0.0, None), partitions)

    # Three quick tries, then one that the driver retries (it held nothing meanwhile).
    assert [(c.partition, c.once) for c in partitions.calls] == [(0, True), (1, True), (2, True), (0, False)]


def test_a_single_partition_receive_is_retried_as_before():
    partitions = Partitions({0: 1})

    drive(queue_of(1)._receive_plan(10, 0.0, None), partitions)

    assert [c.once for c in partitions.calls] == [False]


def test_the_receive_stops_asking_once_it_has_enough():
    partitions = Partitions({0: 4, 1: 5, 2: 5}, down={2})

    assert received(drive(queue_of(3)._receive_plan(6, 0.0, None), partitions)) == {0: 4, 1: 2}
    assert [c.partition for c in partitions.calls] == [0, 1]


# ----------------------------------------------------------- the call layer


class FakeMethod:
    def __init__(self, sent: list[tuple[Any, ...]]) -> None:
        self.sent = sent

    def remote(self, *args: Any) -> str:
        self.sent.append(args)
        return f"ref-{len(self.sent)}"


class FakeCoordinator:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.report_failure = FakeMethod(self.sent)


def target_of(queue: Queue, coordinator: FakeCoordinator) -> Target:
    return Target("q", coordinator, queue._target.route)


def test_a_failed_once_call_is_reported_without_waiting_and_raises_partition_unavailable():
    coordinator = FakeCoordinator()
    target = target_of(queue_of(3), coordinator)
    step = Calls([Call(1, "receive", (10, 0.0, None), once=True)])

    with pytest.raises(PartitionUnavailable) as caught:
        drivers._give_up_once(target, step, [(0, RayActorError())])

    assert caught.value.partition == 1 and "RayActorError" in caught.value.cause
    assert coordinator.sent == [("q", 1)] and set(target.reports) == {1}


def test_one_report_per_partition_is_in_flight_at_a_time():
    coordinator = FakeCoordinator()
    target = target_of(queue_of(3), coordinator)
    step = Calls([Call(1, "receive", (10, 0.0, None), once=True)])

    for _ in range(3):
        with pytest.raises(PartitionUnavailable):
            drivers._give_up_once(target, step, [(0, RayActorError())])

    assert coordinator.sent == [("q", 1)]


def test_a_failed_call_that_is_not_once_is_left_to_the_retries():
    coordinator = FakeCoordinator()
    target = target_of(queue_of(3), coordinator)

    drivers._give_up_once(target, Calls([Call(1, "receive", (10, 0.0, None))]), [(0, RayActorError())])

    assert coordinator.sent == [] and target.reports == {}


# ------------------------------------------------------ coordinator errors (F12)


def task_error(cause: BaseException) -> RayTaskError:
    return RayTaskError("report_failure", "traceback", cause)


@pytest.mark.parametrize(
    "error",
    [
        RayActorError(),
        ActorUnavailableError("restarting", None),
        task_error(RayActorError()),  # the coordinator called a replica that died mid-call
    ],
)
def test_a_coordinator_restart_or_a_dead_actor_inside_it_is_retried(error):
    assert drivers._coordinator_error("route", error, late=False) is None


@pytest.mark.parametrize(
    "error", [RayActorError(), ActorUnavailableError("restarting", None), task_error(RayActorError())]
)
def test_after_the_retries_a_coordinator_failure_is_coordinator_unavailable_naming_it(error):
    with pytest.raises(CoordinatorUnavailable) as caught:
        drivers._coordinator_error("route", error, late=True)

    assert caught.value.operation == "route"
    assert "coordinator is unavailable (route)" in str(caught.value)


def test_a_rayqueue_error_raised_by_the_coordinator_is_raised_as_it_is():
    with pytest.raises(QueueNotFound):
        drivers._coordinator_error("route", task_error(QueueNotFound("q")), late=False)


def test_a_fault_inside_the_coordinator_is_named_not_retried():
    with pytest.raises(CoordinatorUnavailable) as caught:
        drivers._coordinator_error("route", task_error(KeyError("x")), late=False)

    assert "(route): it failed: KeyError" in str(caught.value)


def test_a_coordinator_whose_constructor_failed_is_named_at_once_not_retried():
    error = RayActorError(error_msg="NoCredentialsError: Unable to locate credentials", actor_init_failed=True)

    with pytest.raises(CoordinatorUnavailable) as caught:
        drivers._coordinator_error("storage_url", error, late=False)

    assert "(storage_url): it failed" in str(caught.value) and "NoCredentialsError" in str(caught.value)


# ----------------------------------- one step's outcomes, as both drivers settle them


def step_run(queue: Queue, *calls: Call) -> drivers._StepRun:
    return drivers._StepRun(target_of(queue, FakeCoordinator()), Calls(list(calls)))


def test_a_round_whose_calls_all_answered_fills_the_results_in_order():
    run = step_run(queue_of(3), Call(0, "send", ()), Call(2, "send", ()))

    assert run.settle({1: "b", 0: "a"}) is None
    assert run.results == ["a", "b"] and run.pending() == {}


@pytest.mark.parametrize(
    "failure", [RayActorError(), ChannelBroken("reset"), TimeoutError(), task_error(PartitionUnavailable("q", 2, "x"))]
)
def test_a_call_whose_partition_failed_is_retried_alone_with_dedup_after_a_report(failure):
    run = step_run(queue_of(3), Call(0, "send", ()), Call(2, "send", ()))

    retry = run.settle({0: "a", 1: failure})

    assert retry is not None and retry[0] == 2 and retry[1] > 0  # report partition 2, then wait
    assert list(run.pending()) == [1] and run.retrying and run.results[0] == "a"


def test_an_error_a_partition_raised_on_purpose_is_the_answer_not_a_retry():
    run = step_run(queue_of(3), Call(0, "send", ()))

    with pytest.raises(QueueFull):
        run.settle({0: task_error(QueueFull("q", 10, 10, 1))})


def test_retrying_a_failed_partition_ends_in_partition_unavailable(monkeypatch):
    run = step_run(queue_of(3), Call(1, "send", ()))
    monkeypatch.setattr(run, "_deadline", 0.0)  # the retry time has run out

    with pytest.raises(PartitionUnavailable) as caught:
        run.settle({0: RayActorError()})

    assert caught.value.partition == 1 and "RayActorError" in caught.value.cause


@pytest.mark.parametrize("failure", [TaskCancelledError(), RayActorError(), task_error(RayActorError())])
def test_a_long_poll_probe_that_failed_is_reported_by_both_drivers(failure):
    drivers._first_failed(failure)  # returns: the driver reports the partition


def test_a_long_poll_probe_that_raised_on_purpose_raises_it():
    with pytest.raises(QueueNotFound):
        drivers._first_failed(task_error(QueueNotFound("q")))


def test_an_arrow_send_over_several_partitions_checks_ids_when_it_is_repeated():
    queue = queue_of(3)
    rows = pa.table({"body": [b"a", b"b", b"c", b"d"], "key": ["k1", "k2", "k3", "k4"]})

    step = next(queue._send_batch_plan(rows))

    assert isinstance(step, Calls) and len(step.calls) > 1  # the keys spread over partitions
    for call in step.calls:
        assert call.method == "send" and call.args[1] is False  # no id check on the first try
        assert call.retry_args is not None and call.retry_args[1] is True  # but on a repeat: it may have stored
