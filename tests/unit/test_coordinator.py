"""Coordinator: the catalog of queues, persisted before it is published. No Ray: a fake launcher."""

from __future__ import annotations

from typing import Any

import pytest

from rayqueue.config import QueueConfig
from rayqueue.coordinator import Coordinator, QueueRecord
from rayqueue.errors import QueueAlreadyExists, QueueNotFound, StorageUnavailable
from rayqueue.message import PartitionStats
from rayqueue.storage import ObjectStore, format
from rayqueue.storage.partition_store import partition_prefix


class FakeLauncher:
    """Stands in for Ray: "starts" actors as names and remembers what it was asked.

    Actors named in ``dead_actors`` are dead; the rest are alive.
    """

    def __init__(self) -> None:
        self.started: list[QueueRecord] = []
        self.stopped: list[QueueRecord] = []
        self.dead_actors: set[str] = set()
        self.promoted: list[str] = []
        self.killed: list[str] = []
        self.stats: dict[str, PartitionStats] = {}
        self.scaling: dict[str, tuple[bool, int]] = {}

    def start(self, record: QueueRecord, wait: bool = False) -> list[Any]:
        self.started.append(record)
        return [placement.leader for placement in record.placements]

    def dead(self, names: list[str]) -> set[str]:
        return set(names) & self.dead_actors

    def promote(self, record: QueueRecord, partition: int, name: str) -> None:
        self.promoted.append(name)

    def kill(self, name: str) -> None:
        self.killed.append(name)
        self.dead_actors.add(name)

    def stop(self, record: QueueRecord) -> None:
        self.stopped.append(record)

    def partition_stats(self, leaders: list[str]) -> list[Any]:
        return [self.stats.get(leader, PartitionStats(0, 0, 0, 0)) for leader in leaders]

    def set_scaling(self, leader: str, retiring: bool, partitions: int) -> None:
        self.scaling[leader] = (retiring, partitions)


def config(name: str = "orders", **overrides: Any) -> QueueConfig:
    return QueueConfig.build(name=name, **{"max_messages": 100, "max_message_bytes": 1024, **overrides})


def coordinator(url: str, launcher: FakeLauncher | None = None) -> Coordinator:
    return Coordinator(ObjectStore(url, retry_s=0.2), launcher or FakeLauncher())


def write_partition_object(url: str, queue: str, partition: int = 0) -> None:
    ObjectStore(url).put_once(f"{partition_prefix(queue, partition)}/segments/x.arrow", b"data")


# ------------------------------------------------------------------ create


def test_create_returns_a_route_with_one_partition_handle_each(storage_url):
    launcher = FakeLauncher()

    route = coordinator(storage_url, launcher).create_queue(config(partitions=3))

    assert route.config == config(partitions=3)
    assert len(route.partitions) == 3
    assert [r.config.name for r in launcher.started] == ["orders"]


def test_create_with_same_settings_returns_the_same_route(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    first = coord.create_queue(config())

    second = coord.create_queue(config())

    assert second == first
    assert len(launcher.started) == 1


def test_create_with_other_settings_names_the_differing_field(storage_url):
    coord = coordinator(storage_url)
    coord.create_queue(config(partitions=2))

    with pytest.raises(QueueAlreadyExists) as caught:
        coord.create_queue(config(partitions=4))

    assert caught.value.differences == {"partitions": (2, 4)}
    assert "partitions" in str(caught.value)
    assert coord.route("orders").config.partitions == 2


def test_create_clears_objects_left_by_an_earlier_queue_of_that_name(storage_url):
    write_partition_object(storage_url, "orders")

    coordinator(storage_url).create_queue(config())

    assert ObjectStore(storage_url).list("queues/") == []


def test_create_is_persisted_before_it_is_published(storage_url, monkeypatch):
    objects = ObjectStore(storage_url, retry_s=0.2)
    coord = Coordinator(objects, FakeLauncher())

    def failing_put(name: str, data: bytes) -> None:
        raise StorageUnavailable("put", name, "injected failure")

    monkeypatch.setattr(objects, "put_once", failing_put)
    with pytest.raises(StorageUnavailable):
        coord.create_queue(config())
    monkeypatch.undo()

    assert coord.list_queues() == []
    with pytest.raises(QueueNotFound):
        coord.route("orders")


# ------------------------------------------------------------ list, route


def test_list_queues_is_sorted(storage_url):
    coord = coordinator(storage_url)
    for name in ["payments", "audit", "orders"]:
        coord.create_queue(config(name))

    assert coord.list_queues() == ["audit", "orders", "payments"]


def test_unknown_queue_raises_queue_not_found(storage_url):
    coord = coordinator(storage_url)

    with pytest.raises(QueueNotFound) as caught:
        coord.route("missing")
    assert caught.value.name == "missing"
    with pytest.raises(QueueNotFound):
        coord.delete_queue("missing")


# ------------------------------------------------------------------ delete


def test_delete_removes_the_queue_and_its_objects(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(partitions=2))
    for partition in (0, 1):
        write_partition_object(storage_url, "orders", partition)

    coord.delete_queue("orders")

    assert ObjectStore(storage_url).list("queues/orders/") == []
    assert coord.list_queues() == []
    assert [r.config.name for r in launcher.stopped] == ["orders"]
    assert coordinator(storage_url).list_queues() == []


def test_delete_keeps_other_queues_and_their_objects(storage_url):
    coord = coordinator(storage_url)
    coord.create_queue(config("orders"))
    coord.create_queue(config("orders2"))
    write_partition_object(storage_url, "orders")
    write_partition_object(storage_url, "orders2")

    coord.delete_queue("orders")

    assert ObjectStore(storage_url).list("queues/") == ["queues/orders2/0/segments/x.arrow"]
    assert coordinator(storage_url).list_queues() == ["orders2"]


def test_deleted_queue_can_be_created_again_as_a_new_queue(storage_url):
    coord = coordinator(storage_url)
    old = coord.create_queue(config())
    coord.delete_queue("orders")

    new = coord.create_queue(config(partitions=2))

    assert new.uid != old.uid
    assert new.config.partitions == 2


# ---------------------------------------------------------------- recovery


def test_new_coordinator_recovers_every_queue_with_equal_configs(storage_url):
    configs = [config("orders", partitions=3), config("audit", visibility_timeout_s=5, retention_s=120)]
    first = coordinator(storage_url)
    routes = {c.name: first.create_queue(c) for c in configs}

    launcher = FakeLauncher()
    second = coordinator(storage_url, launcher)

    assert second.list_queues() == ["audit", "orders"]
    for c in configs:
        route = second.route(c.name)
        assert route.config == c
        assert route.uid == routes[c.name].uid
    assert sorted(r.config.name for r in launcher.started) == ["audit", "orders"]


def test_recovered_coordinator_treats_same_settings_as_the_same_queue(storage_url):
    coordinator(storage_url).create_queue(config(partitions=2))

    second = coordinator(storage_url)

    assert second.create_queue(config(partitions=2)).config.partitions == 2
    with pytest.raises(QueueAlreadyExists):
        second.create_queue(config(partitions=3))


def test_recovered_coordinator_keeps_committing_new_versions(storage_url):
    coordinator(storage_url).create_queue(config("a"))
    second = coordinator(storage_url)

    second.create_queue(config("b"))

    assert coordinator(storage_url).list_queues() == ["a", "b"]


def test_coordinator_can_still_change_the_catalog_after_a_damaged_version(storage_url):
    coordinator(storage_url).create_queue(config("a"))
    ObjectStore(storage_url).put_once(format.catalog_name(2), b"{ damaged")
    second = coordinator(storage_url)
    assert second.list_queues() == ["a"]

    second.create_queue(config("b"))

    assert coordinator(storage_url).list_queues() == ["a", "b"]


def test_partition_objects_survive_a_coordinator_restart(storage_url):
    coordinator(storage_url).create_queue(config())
    write_partition_object(storage_url, "orders")

    coordinator(storage_url).route("orders")

    assert ObjectStore(storage_url).list("queues/") == ["queues/orders/0/segments/x.arrow"]


# ------------------------------------------------------------------ failover


def placement_of(coord: Coordinator, name: str = "orders", partition: int = 0):
    return coord._queues[name].placements[partition]


def test_dead_leader_is_replaced_by_a_promoted_replica_and_a_new_replica(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2, durability="replicas"))
    before = placement_of(coord)
    launcher.dead_actors.add(before.leader)

    route = coord.report_failure("orders", 0)

    after = placement_of(coord)
    assert launcher.promoted == [before.replicas[0]]
    assert route.partitions == (before.replicas[0],)
    assert after.leader == before.replicas[0] and after.replicas == before.replicas[1:]
    # The new placement was persisted before it was used.
    assert placement_of(coordinator(storage_url)) == after

    coord.check_health()  # tops the replicas up again

    topped = placement_of(coord)
    assert topped.replicas[0] == before.replicas[1] and len(topped.replicas) == 2
    assert topped.replicas[1] not in (before.leader, *before.replicas)  # a new name, never reused


def test_live_leader_keeps_its_place_when_a_handle_reports_a_failure(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=1))
    before = placement_of(coord)

    coord.report_failure("orders", 0)

    assert placement_of(coord) == before and launcher.promoted == []


def test_dead_leader_with_no_live_replica_gets_a_new_leader_from_storage(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=1))
    before = placement_of(coord)
    launcher.dead_actors |= {before.leader, *before.replicas}

    coord.check_health()
    coord.check_health()

    after = placement_of(coord)
    assert launcher.promoted == []
    assert after.leader not in (before.leader, *before.replicas)
    assert len(after.replicas) == 1 and after.replicas[0] != after.leader


def test_health_check_replaces_a_dead_replica(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2))
    before = placement_of(coord)
    launcher.dead_actors.add(before.replicas[0])

    coord.check_health()

    after = placement_of(coord)
    assert after.leader == before.leader
    assert after.replicas[0] == before.replicas[1] and before.replicas[0] not in after.replicas
    assert len(after.replicas) == 2


def test_replicas_out_of_sync_are_stopped_and_replaced(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2))
    before = placement_of(coord)

    coord.replica_lost("orders", 0, [before.replicas[0]])

    after = placement_of(coord)
    assert launcher.killed == [before.replicas[0]]
    assert after.replicas[0] == before.replicas[1] and len(after.replicas) == 2
    assert before.replicas[0] not in after.replicas


def test_a_repeated_loss_report_leaves_the_replacement_alone(storage_url):
    # Two writes that failed on the same replica report it twice; the replica started
    # after the first report is still joining (not in sync) and must survive the second.
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=1))
    lost = placement_of(coord).replicas[0]
    coord.replica_lost("orders", 0, [lost])
    replacement = placement_of(coord).replicas

    coord.replica_lost("orders", 0, [lost])

    assert placement_of(coord).replicas == replacement
    assert launcher.killed == [lost]


def test_without_replicas_a_restarting_leader_is_left_to_ray(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config())
    before = placement_of(coord)

    coord.report_failure("orders", 0)  # alive (Ray restarts it in place)

    assert placement_of(coord) == before


# ------------------------------------------------------------------- scaling


def scaling_config() -> QueueConfig:
    return config(
        partitions=1, min_partitions=1, max_partitions=3, target_send_rate=100.0, scaling_window_s=3.0,
        scaling_cooldown_s=0.0,
    )


def drive(coord: Coordinator, launcher: FakeLauncher, rate: float, backlog: int, seconds: int, start: float) -> float:
    """Every partition sends at ``rate`` and holds ``backlog``; one autoscale a second."""
    now = start
    for _ in range(seconds):
        now += 1.0
        for index, placement in enumerate(coord._queues["orders"].placements):
            previous = launcher.stats.get(placement.leader, PartitionStats(index, 0, 0, 0))
            launcher.stats[placement.leader] = PartitionStats(
                index, backlog, 0, 0, sent_total=previous.sent_total + int(rate)
            )
        coord.autoscale(now)
    return now


def test_load_grows_partitions_and_idleness_retires_then_removes_them(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(scaling_config())

    now = drive(coord, launcher, rate=250, backlog=0, seconds=6, start=1000.0)
    record = coord._queues["orders"]
    assert len(record.placements) == 3 and record.retiring == ()
    assert launcher.scaling[record.placements[2].leader] == (False, 3)  # each leader learns its share
    added = {placement.leader for placement in record.placements[1:]}

    now = drive(coord, launcher, rate=0, backlog=0, seconds=20, start=now)
    record = coord._queues["orders"]
    assert len(record.placements) == 1 and record.retiring == ()
    assert added <= set(launcher.killed)  # retired partitions' actors are stopped
    assert coordinator(storage_url)._queues["orders"].placements == record.placements  # and it was persisted


def test_a_retiring_partition_with_messages_left_stays_until_drained(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(partitions=2, min_partitions=1, max_partitions=2, scaling_window_s=3.0,
                              scaling_cooldown_s=0.0))

    now = drive(coord, launcher, rate=0, backlog=5, seconds=10, start=1000.0)  # 5 left in each
    record = coord._queues["orders"]
    assert record.retiring == (1,) and len(record.placements) == 2
    assert launcher.scaling[record.placements[1].leader] == (True, 2)

    drive(coord, launcher, rate=0, backlog=0, seconds=10, start=now)
    assert len(coord._queues["orders"].placements) == 1
