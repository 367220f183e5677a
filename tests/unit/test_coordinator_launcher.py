"""RayLauncher and CoordinatorActor at their boundary: Ray errors become RayQueueErrors
(F12). Ray is imported, never started: actor handles and ``ray.get`` are stand-ins."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, GetTimeoutError

from rayqueue.actors import coordinator_actor as actors
from rayqueue.config import QueueConfig
from rayqueue.control.coordinator import QueueRecord
from rayqueue.errors import PartitionUnavailable


class Method:
    def remote(self, *args: Any) -> str:
        return "ref"


class Handle:
    def __getattr__(self, name: str) -> Method:
        return Method()


def launcher(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> actors.RayLauncher:
    def failing_get(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(actors.ray, "get", failing_get)
    ray_launcher = actors.RayLauncher("ns", "memory://x", {})
    monkeypatch.setattr(ray_launcher, "_find", lambda name: Handle())
    monkeypatch.setattr(ray_launcher, "_handle", lambda name: Handle())
    return ray_launcher


def record() -> QueueRecord:
    return QueueRecord.new(QueueConfig.build(name="orders", max_messages=10, max_message_bytes=10, replicas=1))


@pytest.mark.parametrize("error", [ActorDiedError(), GetTimeoutError("slow")], ids=["died", "timeout"])
def test_a_replica_dying_or_stalling_mid_promotion_is_a_partition_unavailable(monkeypatch, error):
    queue = record()

    with pytest.raises(PartitionUnavailable) as caught:
        launcher(monkeypatch, error).promote(queue, 0, queue.placements[0].replicas[0])

    assert caught.value.queue == "orders" and caught.value.partition == 0


def test_a_fence_that_fails_is_a_partition_unavailable_naming_the_partition(monkeypatch):
    name = record().placements[0].replicas[0]

    with pytest.raises(PartitionUnavailable) as caught:
        launcher(monkeypatch, ActorDiedError()).fence(name, 7)

    assert (caught.value.queue, caught.value.partition) == ("orders", 0)


def test_a_ray_error_never_escapes_report_failure(monkeypatch):
    class Failing:
        def report_failure(self, name: str, partition: int) -> Any:
            raise ActorDiedError()

    actor = object.__new__(actors.CoordinatorActor)
    actor._coordinator = Failing()  # type: ignore[assignment]
    actor._lock = threading.RLock()

    with pytest.raises(PartitionUnavailable) as caught:
        actor.report_failure("orders", 2)

    assert caught.value.partition == 2


def test_start_does_not_re_create_a_gone_leader_outside_create(monkeypatch):
    ray_launcher = launcher(monkeypatch, AssertionError("no call expected"))
    monkeypatch.setattr(ray_launcher, "_find", lambda name: None)
    monkeypatch.setattr(ray_launcher, "_actor", lambda *args: pytest.fail("created a leader"))

    with pytest.raises(PartitionUnavailable) as caught:
        ray_launcher.start(record(), create=frozenset())

    assert caught.value.partition == 0
