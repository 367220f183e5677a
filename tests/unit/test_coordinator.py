"""Coordinator: the catalog of queues, persisted before it is published. No Ray: a fake launcher."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rayqueue.config import QueueConfig
from rayqueue.control.coordinator import Coordinator, Placement, QueueRecord
from rayqueue.errors import (
    CatalogContention,
    ObjectExists,
    PartitionUnavailable,
    QueueAlreadyExists,
    QueueNotFound,
    StorageCorrupt,
    StorageUnavailable,
)
from rayqueue.message import PartitionStats
from rayqueue.storage import ObjectStore, format
from rayqueue.storage.partition_store import partition_prefix, queue_prefix


class FakeLauncher:
    """Stands in for Ray: "starts" actors as names and remembers what it was asked.

    An actor is alive once started (or promoted) and until killed or named in
    ``dead_actors``; a name never started is not alive (as Ray finds no actor by it).
    ``start`` follows RayLauncher's contract: it creates a leader only for partitions
    in ``create`` and never creates a replica that is in its placement's in_sync.
    """

    def __init__(self) -> None:
        self.started: list[QueueRecord] = []
        self.stopped: list[QueueRecord] = []
        self.running: set[str] = set()
        self.dead_actors: set[str] = set()
        #: Leaders started from storage, in order.
        self.created: list[str] = []
        self.promoted: list[str] = []
        self.fenced: list[tuple[str, int]] = []
        self.killed: list[str] = []
        self.stats: dict[str, PartitionStats] = {}
        self.scaling: dict[str, tuple[bool, int]] = {}
        self.epoch = 0
        #: Called once, at the start of the next ``start`` (after the coordinator's probe).
        self.before_start: Callable[[], None] | None = None
        #: name -> what its ``promote`` does instead (raise; mark dead first if ``dies``).
        self.promote_fails: dict[str, bool] = {}
        self.fence_fails: set[str] = set()
        self.on_fence: Callable[[str, int], None] | None = None
        #: Replicas that share their leader's node while another node is free.
        self.misplaced_actors: set[str] = set()

    def alive(self, name: str) -> bool:
        return name in self.running and name not in self.dead_actors

    def _run(self, name: str) -> None:
        self.running.add(name)
        self.dead_actors.discard(name)

    def start(self, record: QueueRecord, wait: bool = False, create: frozenset[int] = frozenset()) -> list[Any]:
        if self.before_start is not None:
            hook, self.before_start = self.before_start, None
            hook()
        self.started.append(record)
        for partition, placement in enumerate(record.placements):
            if not self.alive(placement.leader):
                if partition not in create:
                    raise PartitionUnavailable(record.config.name, partition, f"leader {placement.leader} is gone")
                self.created.append(placement.leader)
                self._run(placement.leader)
            for replica in placement.replicas:
                if not self.alive(replica) and replica not in placement.in_sync:
                    self._run(replica)
        return [placement.leader for placement in record.placements]

    def dead(self, names: list[str]) -> set[str]:
        return {name for name in names if not self.alive(name)}

    def promote(self, record: QueueRecord, partition: int, name: str) -> int:
        if name in self.promote_fails:
            if self.promote_fails[name]:
                self.dead_actors.add(name)
            raise PartitionUnavailable(record.config.name, partition, f"promoting {name} failed")
        assert self.alive(name), f"promoted {name}, which is not running"
        self.promoted.append(name)
        self.epoch += 1
        return self.epoch

    def fence(self, name: str, epoch: int) -> None:
        if self.on_fence is not None:
            self.on_fence(name, epoch)
        if name in self.fence_fails:
            raise PartitionUnavailable("orders", 0, f"fencing {name} failed")
        self.fenced.append((name, epoch))

    def kill(self, name: str) -> None:
        self.killed.append(name)
        self.running.discard(name)

    def misplaced(self, placement: Placement) -> set[str]:
        return {name for name in placement.replicas if name in self.misplaced_actors and self.alive(name)}

    def stop(self, record: QueueRecord) -> None:
        self.stopped.append(record)
        for placement in record.placements:
            for name in (placement.leader, *placement.replicas):
                self.running.discard(name)

    def partition_stats(self, leaders: list[str]) -> list[Any]:
        return [self.stats.get(leader, PartitionStats(0, 0, 0, 0)) for leader in leaders]

    def set_scaling(self, leader: str, retiring: bool, partitions: int) -> None:
        self.scaling[leader] = (retiring, partitions)


def config(name: str = "orders", **overrides: Any) -> QueueConfig:
    return QueueConfig.build(name=name, **{"max_messages": 100, "max_message_bytes": 1024, **overrides})


def coordinator(url: str, launcher: FakeLauncher | None = None) -> Coordinator:
    return Coordinator(ObjectStore(url, retry_s=0.2), launcher or FakeLauncher())


def write_partition_object(url: str, queue: str, uid: str, partition: int = 0) -> str:
    name = f"{partition_prefix(queue, uid, partition)}/segments/x.arrow"
    ObjectStore(url).put_once(name, b"data")
    return name


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


def test_a_recreated_queue_does_not_see_objects_left_by_an_earlier_one_of_that_name(storage_url):
    # A deletion cut short leaves the old queue's objects; the new queue has a new uid,
    # so they are not under its prefix (and create no longer wipes anything).
    coord = coordinator(storage_url)
    old = coord.create_queue(config())
    left = write_partition_object(storage_url, "orders", old.uid)
    coord._change(lambda queues: {})  # forgotten, objects left behind

    new = coord.create_queue(config())

    assert new.uid != old.uid
    assert ObjectStore(storage_url).list(queue_prefix("orders", new.uid) + "/") == []
    assert ObjectStore(storage_url).list("queues/") == [left]


def test_a_catalog_that_keeps_changing_is_catalog_contention_and_nothing_is_published(storage_url, monkeypatch):
    objects = ObjectStore(storage_url, retry_s=0.2)
    coord = Coordinator(objects, FakeLauncher())

    def always_taken(name: str, data: bytes) -> None:
        raise ObjectExists(name)  # another coordinator wins every version

    monkeypatch.setattr(objects, "put_once", always_taken)
    with pytest.raises(CatalogContention) as caught:
        coord.create_queue(config())
    monkeypatch.undo()

    assert caught.value.attempts >= 2 and "kept changing" in str(caught.value)
    assert coord.list_queues() == []


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
    uid = coord.create_queue(config(partitions=2)).uid
    for partition in (0, 1):
        write_partition_object(storage_url, "orders", uid, partition)

    coord.delete_queue("orders")

    assert ObjectStore(storage_url).list("queues/") == []
    assert coord.list_queues() == []
    assert [r.config.name for r in launcher.stopped] == ["orders"]
    assert coordinator(storage_url).list_queues() == []


def test_delete_keeps_other_queues_and_their_objects(storage_url):
    coord = coordinator(storage_url)
    orders = coord.create_queue(config("orders"))
    orders2 = coord.create_queue(config("orders2"))
    write_partition_object(storage_url, "orders", orders.uid)
    kept = write_partition_object(storage_url, "orders2", orders2.uid)

    coord.delete_queue("orders")

    assert ObjectStore(storage_url).list("queues/") == [kept]
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


def test_a_damaged_newest_catalog_version_stops_the_coordinator_instead_of_rolling_back(storage_url):
    # Rolling back to an older version would forget queues (and a later create of one of
    # their names would start it empty); an operator must look at it instead.
    coordinator(storage_url).create_queue(config("a"))
    ObjectStore(storage_url).put_once(format.catalog_name(2), b"{ damaged")

    with pytest.raises(StorageCorrupt) as refused:
        coordinator(storage_url)
    assert format.catalog_name(2) in str(refused.value)


def test_partition_objects_survive_a_coordinator_restart(storage_url):
    uid = coordinator(storage_url).create_queue(config()).uid
    kept = write_partition_object(storage_url, "orders", uid)

    coordinator(storage_url).route("orders")

    assert ObjectStore(storage_url).list("queues/") == [kept]


# ------------------------------------------------------------------ failover


def placement_of(coord: Coordinator, name: str = "orders", partition: int = 0):
    return coord._queues[name].placements[partition]


def report_in_sync(coord: Coordinator, *replicas: str, name: str = "orders", partition: int = 0) -> None:
    """What a leader does once it has caught these replicas up."""
    leader = placement_of(coord, name, partition).leader
    for replica in replicas:
        assert coord.replica_in_sync(name, partition, leader, replica) is True


def test_dead_leader_is_replaced_by_a_promoted_replica_and_a_new_replica(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2, durability="replicas"))
    before = placement_of(coord)
    report_in_sync(coord, *before.replicas)
    launcher.dead_actors.add(before.leader)

    route = coord.report_failure("orders", 0)

    after = placement_of(coord)
    assert launcher.promoted == [before.replicas[0]]
    assert route.partitions == (before.replicas[0],)
    assert after.leader == before.replicas[0] and after.replicas == before.replicas[1:]
    assert after.in_sync == before.replicas[1:]  # still holds what the old leader acknowledged
    # The new placement was persisted before it was used.
    assert placement_of(coordinator(storage_url)) == after

    coord.check_health()  # tops the replicas up again

    topped = placement_of(coord)
    assert topped.replicas[0] == before.replicas[1] and len(topped.replicas) == 2
    assert topped.replicas[1] not in (before.leader, *before.replicas)  # a new name, never reused
    assert topped.in_sync == before.replicas[1:]  # the new one joins only once reported


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
    assert launcher.created[-1] == after.leader
    assert len(after.replicas) == 1 and after.replicas[0] != after.leader


def test_health_check_replaces_a_dead_replica(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2))
    before = placement_of(coord)
    report_in_sync(coord, *before.replicas)
    launcher.dead_actors.add(before.replicas[0])

    coord.check_health()

    after = placement_of(coord)
    assert after.leader == before.leader
    assert after.replicas[0] == before.replicas[1] and before.replicas[0] not in after.replicas
    assert len(after.replicas) == 2
    assert after.in_sync == (before.replicas[1],)  # a dead name is never promoted


def test_a_replica_on_its_leaders_node_is_moved_once_another_node_is_free(storage_url):
    # It goes with the leader's node, so the leader acknowledges nothing on its word
    # alone: replicas mode would wait for storage for good unless it moves.
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2))
    before = placement_of(coord)
    report_in_sync(coord, *before.replicas)
    before = placement_of(coord)
    coord.check_health()
    assert placement_of(coord) == before  # nothing misplaced: nothing moves

    launcher.misplaced_actors.add(before.replicas[0])
    coord.check_health()

    after = placement_of(coord)
    assert after.leader == before.leader
    assert launcher.killed == [before.replicas[0]]
    assert before.replicas[0] not in after.replicas and len(after.replicas) == 2
    assert after.in_sync == (before.replicas[1],)  # the new one joins once caught up
    assert launcher.alive(after.replicas[1])


def test_replicas_out_of_sync_are_stopped_and_replaced(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2))
    before = placement_of(coord)

    assert coord.replica_lost("orders", 0, before.leader, [before.replicas[0]]) is True
    coord.check_health()

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
    leader, lost = placement_of(coord).leader, placement_of(coord).replicas[0]
    coord.replica_lost("orders", 0, leader, [lost])
    coord.check_health()
    replacement = placement_of(coord).replicas

    assert coord.replica_lost("orders", 0, leader, [lost]) is True  # already gone

    assert placement_of(coord).replicas == replacement
    assert launcher.killed == [lost]


def test_without_replicas_a_restarting_leader_is_left_to_ray(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config())
    before = placement_of(coord)

    coord.report_failure("orders", 0)  # alive (Ray restarts it in place)

    assert placement_of(coord) == before and launcher.created == [before.leader]


# ------------------------------------------------------- the in-sync replica set


def test_only_an_in_sync_replica_is_promoted(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2, durability="replicas"))
    before = placement_of(coord)
    behind, in_sync = before.replicas
    report_in_sync(coord, in_sync)  # ``behind`` never caught up (nor was it reported lost)
    launcher.dead_actors.add(before.leader)

    coord.report_failure("orders", 0)

    after = placement_of(coord)
    assert launcher.promoted == [in_sync]
    assert after.leader == in_sync and after.replicas == (behind,) and after.in_sync == ()


def test_with_no_live_in_sync_replica_a_new_leader_starts_from_storage_and_says_so(storage_url, caplog):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2, durability="replicas"))
    before = placement_of(coord)
    behind, in_sync = before.replicas
    report_in_sync(coord, in_sync)
    launcher.dead_actors |= {before.leader, in_sync}

    coord.report_failure("orders", 0)

    after = placement_of(coord)
    assert launcher.promoted == []  # the live replica is behind: it holds less than storage + ISR
    assert after.leader not in before.replicas and launcher.created[-1] == after.leader
    assert after.replicas == (behind,) and after.in_sync == ()
    assert any(r.levelname == "ERROR" and "LOST" in r.getMessage() for r in caplog.records)


def test_with_durability_storage_any_live_replica_is_promoted(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=1))  # a standby: acknowledged writes are on storage
    before = placement_of(coord)
    launcher.dead_actors.add(before.leader)

    coord.report_failure("orders", 0)

    assert launcher.promoted == [before.replicas[0]]


def test_in_sync_is_recorded_only_from_the_current_leader_for_its_own_replicas(storage_url):
    coord = coordinator(storage_url)
    coord.create_queue(config(replicas=2, durability="replicas"))
    before = placement_of(coord)
    replica = before.replicas[0]

    assert coord.replica_in_sync("orders", 0, before.replicas[1], replica) is False  # not the leader
    assert coord.replica_in_sync("orders", 0, before.leader, "rayqueue.orders.x.0.9") is False
    assert coord.replica_in_sync("orders", 0, before.leader, replica) is True
    assert coord.replica_in_sync("orders", 0, before.leader, replica) is True  # idempotent
    assert coord.replica_in_sync("missing", 0, before.leader, replica) is False
    assert placement_of(coordinator(storage_url)).in_sync == (replica,)  # persisted


def test_a_replica_reported_lost_by_the_current_leader_leaves_in_sync_before_true_is_returned(storage_url, monkeypatch):
    objects = ObjectStore(storage_url, retry_s=0.2)
    coord = Coordinator(objects, FakeLauncher())
    coord.create_queue(config(replicas=2, durability="replicas"))
    before = placement_of(coord)
    report_in_sync(coord, *before.replicas)
    lost = before.replicas[0]

    def failing_put(name: str, data: bytes) -> None:
        raise StorageUnavailable("put", name, "injected failure")

    monkeypatch.setattr(objects, "put_once", failing_put)
    with pytest.raises(StorageUnavailable):  # not persisted: never True
        coord.replica_lost("orders", 0, before.leader, [lost])
    monkeypatch.undo()
    assert lost in placement_of(coord).in_sync

    assert coord.replica_lost("orders", 0, before.leader, [lost]) is True

    stored = placement_of(coordinator(storage_url))
    assert lost not in stored.in_sync and lost not in stored.replicas
    assert stored.in_sync == (before.replicas[1],)


def test_a_report_from_a_replaced_leader_is_refused(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2, durability="replicas"))
    before = placement_of(coord)
    report_in_sync(coord, *before.replicas)
    launcher.dead_actors.add(before.leader)
    coord.report_failure("orders", 0)
    after = placement_of(coord)

    # The old leader still runs somewhere and cannot reach the remaining replica.
    assert coord.replica_lost("orders", 0, before.leader, [before.replicas[1]]) is False
    assert coord.replica_in_sync("orders", 0, before.leader, before.replicas[1]) is False

    assert placement_of(coord) == after == placement_of(coordinator(storage_url))
    assert before.replicas[1] in after.in_sync


def test_the_coordinator_fences_every_other_live_replica_with_the_new_epoch_before_persisting(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=3, durability="replicas"))
    before = placement_of(coord)
    report_in_sync(coord, *before.replicas)
    promoted, *others = before.replicas
    launcher.dead_actors.add(before.leader)
    stored_at_fence = []
    launcher.on_fence = lambda name, epoch: stored_at_fence.append(placement_of(coordinator(storage_url)).leader)

    coord.report_failure("orders", 0)

    assert launcher.promoted == [promoted]
    assert launcher.fenced == [(replica, launcher.epoch) for replica in others]
    assert stored_at_fence == [before.leader] * len(others)  # the new placement came after
    assert before.leader in launcher.killed  # a false "dead" verdict leaves no second leader
    assert placement_of(coord).leader == promoted


def test_a_failover_that_cannot_record_its_successor_stops_no_leader(storage_url, monkeypatch):
    # Killed first, a leader that was only taken for dead stayed recorded as the leader
    # while its kill was on its way: it served on, took a new replica's word for writes,
    # and took them with it when the kill landed (the real-coordinator simulation,
    # seed 540222: the catalog update lost a race to another coordinator).
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=1, durability="replicas"))
    before = placement_of(coord)
    launcher.dead_actors.add(before.leader)  # taken for dead, with no replica in sync to promote
    monkeypatch.setattr(coord, "_update_placement", lambda *args: False)  # another writer won

    with pytest.raises(PartitionUnavailable):
        coord.report_failure("orders", 0)

    assert before.leader not in launcher.killed
    assert placement_of(coord).leader == before.leader


def test_a_replica_that_cannot_be_fenced_leaves_the_placement(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=3, durability="replicas"))
    before = placement_of(coord)
    report_in_sync(coord, *before.replicas)
    launcher.dead_actors.add(before.leader)
    launcher.fence_fails.add(before.replicas[1])

    coord.report_failure("orders", 0)

    after = placement_of(coord)
    assert after.replicas == (before.replicas[2],) and after.in_sync == (before.replicas[2],)
    assert before.replicas[1] in launcher.killed


def test_a_replica_dying_mid_promotion_hands_over_to_the_next_in_sync_one(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2, durability="replicas"))
    before = placement_of(coord)
    report_in_sync(coord, *before.replicas)
    launcher.dead_actors.add(before.leader)
    launcher.promote_fails[before.replicas[0]] = True  # dies while promoted

    route = coord.report_failure("orders", 0)

    assert route.partitions == (before.replicas[1],)
    assert placement_of(coord).replicas == () and before.replicas[0] in launcher.killed


def test_a_live_replica_whose_promotion_fails_keeps_its_place_until_the_next_attempt(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=2, durability="replicas"))
    report_in_sync(coord, *placement_of(coord).replicas)
    before = placement_of(coord)
    launcher.dead_actors.add(before.leader)
    launcher.promote_fails[before.replicas[0]] = False  # alive, but storage failed under it

    with pytest.raises(PartitionUnavailable):
        coord.report_failure("orders", 0)
    assert placement_of(coord) == before  # nothing given up

    del launcher.promote_fails[before.replicas[0]]
    assert coord.report_failure("orders", 0).partitions == (before.replicas[0],)


def test_a_suspected_leader_is_killed_only_once_a_successor_is_promoted(storage_url):
    # Found by the simulation with the real coordinator (seed 48): a leader taken for dead
    # while alive was killed first; its replica's promotion then failed (storage), so the
    # writes acknowledged by the two of them rested on the replica alone, which died next.
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(replicas=1, durability="replicas"))
    report_in_sync(coord, *placement_of(coord).replicas)
    before = placement_of(coord)
    launcher.dead_actors.add(before.leader)  # suspected, not dead
    launcher.promote_fails[before.replicas[0]] = False

    with pytest.raises(PartitionUnavailable):
        coord.report_failure("orders", 0)
    assert before.leader not in launcher.killed and placement_of(coord) == before

    del launcher.promote_fails[before.replicas[0]]
    coord.report_failure("orders", 0)
    assert launcher.killed == [before.leader] and placement_of(coord).leader == before.replicas[0]


def test_a_stale_snapshot_never_fails_a_partition_over_twice_and_leaves_no_orphan_leader(storage_url):
    # repro/f6_double_failover.py: one node held the leaders of partitions 0 and 2.
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(partitions=3, replicas=1))
    before = coord._queues["orders"].placements
    launcher.dead_actors |= {before[0].leader, before[2].leader}
    coord._routes.clear()  # a coordinator restart: route() probes again too

    coord.check_health()  # nothing routed: only route() sees them
    coord.route("orders")
    coord.check_health()

    after = coord._queues["orders"].placements
    assert [p.leader for p in after] == [before[0].replicas[0], before[1].leader, before[2].replicas[0]]
    assert sorted(launcher.promoted) == sorted([before[0].replicas[0], before[2].replicas[0]])
    placed = {name for p in after for name in (p.leader, *p.replicas)}
    assert {name for name in launcher.running if name not in launcher.dead_actors} == placed  # no orphan


def test_check_health_fails_each_dead_leader_over_once(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(partitions=3, replicas=1))
    before = coord._queues["orders"].placements
    launcher.dead_actors |= {before[0].leader, before[2].leader}

    coord.check_health()

    after = coord._queues["orders"].placements
    assert [p.leader for p in after] == [before[0].replicas[0], before[1].leader, before[2].replicas[0]]
    assert len(launcher.promoted) == 2 and launcher.created == [p.leader for p in before]


def test_start_never_re_creates_a_leader_of_a_placement_with_a_live_in_sync_replica(storage_url):
    launcher = FakeLauncher()
    coordinator(storage_url, launcher).create_queue(config(replicas=1, durability="replicas"))
    first = coordinator(storage_url, launcher)
    report_in_sync(first, placement_of(first).replicas[0])
    before = placement_of(first)
    coord = coordinator(storage_url, launcher)  # restarted: no route yet, route() probes
    # Alive when route() probes, dead by the time it starts the partition (F8).
    launcher.before_start = lambda: launcher.dead_actors.add(before.leader)

    route = coord.route("orders")

    assert launcher.created.count(before.leader) == 1  # only when the queue was created
    assert launcher.promoted == [before.replicas[0]]
    assert route.partitions == (before.replicas[0],)


def test_a_whole_cluster_restart_brings_every_queue_back_from_storage(storage_url):
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config("plain"))
    coord.create_queue(config("replicated", replicas=1, durability="replicas"))
    report_in_sync(coord, placement_of(coord, "replicated").replicas[0], name="replicated")
    launcher.running.clear()  # every actor gone; the catalog is on storage

    restarted = coordinator(storage_url, launcher)
    plain, replicated = restarted.route("plain"), restarted.route("replicated")

    assert plain.partitions == (placement_of(coord, "plain").leader,)  # Ray's restart in place, by name
    assert launcher.created[-2:] == [plain.partitions[0], replicated.partitions[0]]
    assert placement_of(restarted, "replicated").in_sync == ()


# ------------------------------------------------------------- catalog records


def rewrite_catalog(url: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Commit a new catalog version with ``edit`` applied to the newest one's queues."""
    store = ObjectStore(url)
    newest = store.list("catalog/")[-1]
    version, queues = format.decode_catalog(store.get(newest), newest)
    edit(queues)
    store.put_once(format.catalog_name(version + 1), format.encode_catalog(version + 1, queues))


def test_an_old_catalog_without_in_sync_loads(storage_url):
    launcher = FakeLauncher()
    coordinator(storage_url, launcher).create_queue(config(replicas=1, durability="replicas"))

    def strip(queues: dict[str, Any]) -> None:
        for placement in queues["orders"]["placements"]:
            del placement["in_sync"]

    rewrite_catalog(storage_url, strip)
    coord = coordinator(storage_url, launcher)

    assert placement_of(coord).in_sync == ()
    assert coord.route("orders").config == config(replicas=1, durability="replicas")


@pytest.mark.parametrize(
    "damage",
    [
        lambda q: q["bad"]["config"].update(max_delivery_attempts=5),  # a newer rayqueue's field
        lambda q: q["bad"]["config"].update(name="../../escape"),
        lambda q: q["bad"].update(uid="../../escape"),
        lambda q: q["bad"]["placements"][0].update(leader="rayqueue.control.coordinator"),
        lambda q: q["bad"].update(placements="none"),
        lambda q: q.update(bad=[1, 2]),
    ],
    ids=["unknown-field", "tampered-name", "tampered-uid", "foreign-actor", "bad-placements", "not-a-record"],
)
def test_a_bad_catalog_record_takes_down_that_queue_only(memory_url, damage):
    coordinator(memory_url).create_queue(config("good"))
    coordinator(memory_url).create_queue(config("bad"))
    rewrite_catalog(memory_url, damage)
    launcher = FakeLauncher()

    coord = coordinator(memory_url, launcher)

    assert coord.list_queues() == ["bad", "good"]  # listed, so that an operator can delete it
    assert coord.route("good").config == config("good")
    for call in (
        lambda: coord.route("bad"),
        lambda: coord.report_failure("bad", 0),
        lambda: coord.create_queue(config("bad")),
    ):
        with pytest.raises(StorageCorrupt) as caught:
            call()
        assert "'bad'" in str(caught.value)
    assert all(record.config.name == "good" for record in launcher.started)
    coord.create_queue(config("other"))  # the catalog still changes, the bad record kept as it was
    assert coordinator(memory_url).list_queues() == ["bad", "good", "other"]

    coord.delete_queue("bad")

    assert coordinator(memory_url).list_queues() == ["good", "other"]


def test_a_record_with_an_invalid_name_builds_no_storage_path(memory_url, monkeypatch):
    coordinator(memory_url).create_queue(config("good"))
    rewrite_catalog(memory_url, lambda q: q.update({"../../escape": q["good"]}))
    objects = ObjectStore(memory_url, retry_s=0.2)
    coord = Coordinator(objects, FakeLauncher())
    removed: list[str] = []
    monkeypatch.setattr(objects, "delete_prefix", removed.append)

    assert coord.list_queues() == ["../../escape", "good"]
    with pytest.raises(StorageCorrupt):
        coord.route("../../escape")
    coord.delete_queue("../../escape")

    assert removed == [] and coord.list_queues() == ["good"]


# ------------------------------------------------------------- orphan prefixes


def test_orphaned_prefixes_are_swept_and_catalog_queues_never(storage_url):
    coord = coordinator(storage_url)
    kept = write_partition_object(storage_url, "orders", coord.create_queue(config()).uid)
    orphan = write_partition_object(storage_url, "orders", "0123456789ab")  # a deletion cut short
    foreign = "queues/not-a-queue/x"
    ObjectStore(storage_url).put_once(foreign, b"x")
    listed = ObjectStore(storage_url).list("queues/")

    assert coord.sweep_orphans(listed) == [queue_prefix("orders", "0123456789ab")]

    assert orphan in listed and ObjectStore(storage_url).list("queues/") == sorted([kept, foreign])


def test_nothing_is_swept_while_the_catalog_is_not_known_whole(memory_url):
    coord = coordinator(memory_url)
    coord.create_queue(config("good"))
    orphan = write_partition_object(memory_url, "orders", "0123456789ab")
    listed = ObjectStore(memory_url).list("queues/")

    assert coordinator(memory_url + "-empty").sweep_orphans(listed) == []  # no catalog at all
    rewrite_catalog(memory_url, lambda q: q.update(bad=[1]))
    assert coord.sweep_orphans(listed) == []  # another writer committed since
    assert coordinator(memory_url).sweep_orphans(listed) == []  # an unreadable record
    assert orphan in ObjectStore(memory_url).list("queues/")


# ------------------------------------------------------------------- scaling


def scaling_config() -> QueueConfig:
    return config(
        partitions=1,
        min_partitions=1,
        max_partitions=3,
        target_send_rate=100.0,
        scaling_window_s=3.0,
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
    coord.create_queue(
        config(partitions=2, min_partitions=1, max_partitions=2, scaling_window_s=3.0, scaling_cooldown_s=0.0)
    )

    now = drive(coord, launcher, rate=0, backlog=5, seconds=10, start=1000.0)  # 5 left in each
    record = coord._queues["orders"]
    assert record.retiring == (1,) and len(record.placements) == 2
    assert launcher.scaling[record.placements[1].leader] == (True, 2)

    drive(coord, launcher, rate=0, backlog=0, seconds=10, start=now)
    assert len(coord._queues["orders"].placements) == 1


def test_a_queue_whose_route_could_not_be_rebuilt_stays_watched(storage_url):
    # Found by chaos: a failover drops the cached route; when rebuilding it failed (a
    # storage outage, a leader gone meanwhile), the health check no longer looked at the
    # queue at all, and a leader that died later was never replaced.
    launcher = FakeLauncher()
    coord = coordinator(storage_url, launcher)
    coord.create_queue(config(partitions=2, replicas=1))
    first = coord.route("orders").partitions[0]

    def fail_once() -> None:
        raise PartitionUnavailable("orders", 1, "storage refused the change")

    launcher.dead_actors.add(first)
    launcher.before_start = fail_once
    coord.check_health()  # fails partition 0 over; rebuilding the route fails
    second = coord._queues["orders"].placements[1].leader
    launcher.dead_actors.add(second)  # no handle asks for the route meanwhile
    coord.check_health()

    leaders = [placement.leader for placement in coord._queues["orders"].placements]
    assert second not in leaders and first not in leaders
    assert all(launcher.alive(leader) for leader in leaders)
