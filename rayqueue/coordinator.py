"""The coordinator's logic: the catalog of queues, persisted before it is published,
and failover of partition leaders.

No Ray here: starting, probing and promoting partition actors goes through a
``PartitionLauncher``, so the catalog and failover rules run in unit tests with
a fake one. Every method is idempotent, so a caller may retry any of them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rayqueue import defaults
from rayqueue.autoscale import LoadSample, ScalingPolicy, decide
from rayqueue.config import QueueConfig
from rayqueue.errors import ObjectExists, QueueAlreadyExists, QueueNotFound, RayQueueError
from rayqueue.storage import CatalogStore, ObjectStore, partition_prefix, queue_prefix

log = logging.getLogger(__name__)

#: Times a catalog change is re-applied after losing a race to another writer.
CATALOG_ATTEMPTS = 5


@dataclass(frozen=True)
class Placement:
    """Which actors serve one partition, by name. Every actor ever started for a
    partition has its own generation number, so names are never reused."""

    leader: str
    replicas: tuple[str, ...]
    next_generation: int

    def to_json(self) -> dict[str, Any]:
        return {"leader": self.leader, "replicas": list(self.replicas), "next_generation": self.next_generation}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        return cls(data["leader"], tuple(data["replicas"]), data["next_generation"])


def actor_name(queue: str, uid: str, partition: int, generation: int, shared: bool = False) -> str:
    """A partition instance's name: its actor's, or (shared) its name inside a host actor."""
    return f"{SHARED_PREFIX if shared else 'rayqueue.'}{queue}.{uid}.{partition}.{generation}"


#: Names of partitions that live in shared host actors start with this.
SHARED_PREFIX = "rayqueue-shared."


@dataclass(frozen=True)
class QueueRecord:
    """What the catalog keeps for one queue."""

    config: QueueConfig
    #: Tells apart two queues that had the same name at different times.
    uid: str
    placements: tuple[Placement, ...] = ()
    created_at: float = field(default_factory=time.time)
    #: Partitions being retired by scaling in: no more sends, removed once drained.
    retiring: tuple[int, ...] = ()

    @classmethod
    def new(cls, config: QueueConfig) -> QueueRecord:
        uid = uuid.uuid4().hex[:12]
        shared = config.hosting == "shared"
        names = [
            [actor_name(config.name, uid, partition, g, shared) for g in range(1 + config.replicas)]
            for partition in range(config.partitions)
        ]
        placements = tuple(Placement(group[0], tuple(group[1:]), len(group)) for group in names)
        return cls(config, uid, placements)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "uid": self.uid,
            "placements": [placement.to_json() for placement in self.placements],
            "created_at": self.created_at,
            "retiring": list(self.retiring),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueueRecord:
        placements = tuple(Placement.from_json(p) for p in data["placements"])
        retiring = tuple(data.get("retiring", ()))
        return cls(QueueConfig(**data["config"]), data["uid"], placements, data["created_at"], retiring)

    def placement_for(self, partition: int, generation: int = 0) -> Placement:
        """A new partition's placement: a leader and its replicas, all new names."""
        shared = self.config.hosting == "shared"
        names = [
            actor_name(self.config.name, self.uid, partition, generation + i, shared)
            for i in range(1 + self.config.replicas)
        ]
        return Placement(names[0], tuple(names[1:]), generation + len(names))

    def with_placement(self, partition: int, placement: Placement) -> QueueRecord:
        placements = list(self.placements)
        placements[partition] = placement
        return dataclasses.replace(self, placements=tuple(placements))


@dataclass(frozen=True)
class Route:
    """How a handle reaches a queue: its settings and one leader actor per partition."""

    config: QueueConfig
    uid: str
    partitions: tuple[Any, ...]
    #: Partitions being retired: receive from them, send elsewhere.
    retiring: frozenset[int] = frozenset()

    def sendable(self) -> list[int]:
        return [p for p in range(len(self.partitions)) if p not in self.retiring]


def policy_of(config: QueueConfig) -> ScalingPolicy:
    return ScalingPolicy(
        min_partitions=config.min_partitions or config.partitions,
        max_partitions=config.max_partitions or config.partitions,
        target_send_rate=config.target_send_rate,
        target_backlog=config.target_backlog,
        window_s=config.scaling_window_s,
        cooldown_s=config.scaling_cooldown_s,
    )


@dataclass
class Scaling:
    """A queue's recent load, as the coordinator samples it."""

    history: deque[LoadSample] = field(default_factory=lambda: deque(maxlen=1000))
    last_change: float = -math.inf
    retired_at: dict[int, float] = field(default_factory=dict)
    _sent: dict[int, int] = field(default_factory=dict)
    _at: float | None = None

    def observe(self, now: float, stats: list[Any]) -> None:
        sent = {s.partition: s.sent_total for s in stats}
        if self._at is not None and now > self._at:
            # A restarted leader counts from zero again: count what it sent since.
            delta = sum(n - self._sent.get(p, 0) if n >= self._sent.get(p, 0) else n for p, n in sent.items())
            backlog = sum(s.visible + s.in_flight for s in stats)
            self.history.append(LoadSample(now, delta / (now - self._at), backlog))
        self._sent, self._at = sent, now


class PartitionLauncher(Protocol):
    def start(self, record: QueueRecord, wait: bool = False) -> list[Any]:
        """Start (or find) every partition's leader and replicas; return the leaders once
        they serve (and, with ``wait``, once the replicas are in sync)."""

    def dead(self, names: list[str]) -> set[str]:
        """Which of these actors died for good (not merely restarting or slow)? One probe for all."""

    def promote(self, record: QueueRecord, partition: int, name: str) -> None:
        """Make the replica ``name`` the partition's leader; return once it serves."""

    def kill(self, name: str) -> None:
        """Stop one actor for good (it may be dead already)."""

    def stop(self, record: QueueRecord) -> None:
        """Stop every actor of the queue, for good."""

    def partition_stats(self, leaders: list[str]) -> list[Any]:
        """Each leader's PartitionStats (None where it did not answer)."""

    def set_scaling(self, leader: str, retiring: bool, partitions: int) -> None:
        """Tell a leader whether it is retiring and how many partitions the queue has."""


class Coordinator:
    def __init__(self, store: ObjectStore, launcher: PartitionLauncher) -> None:
        self._store = store
        self._catalog = CatalogStore(store)
        self._launcher = launcher
        self._version = 0
        self._queues: dict[str, QueueRecord] = {}
        self._load()
        self._routes: dict[str, Route] = {}
        #: Time each failover took, from its start to the new leader serving (for reports).
        self.failover_seconds: list[float] = []
        self._scaling: dict[str, Scaling] = {}

    @property
    def storage_url(self) -> str:
        return self._store.url

    # --------------------------------------------------------------- the catalog

    def create_queue(self, config: QueueConfig) -> Route:
        """Create the queue, or return it if it exists with the same settings."""

        def add(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord] | None:
            existing = queues.get(config.name)
            if existing is None:
                return {**queues, config.name: QueueRecord.new(config)}
            differences = existing.config.differences(config)
            if differences:
                raise QueueAlreadyExists(config.name, differences)
            return None

        self._change(add)
        return self.route(config.name, wait=True)

    def route(self, name: str, wait: bool = False) -> Route:
        """The queue's route, starting its actors if they are not running (with
        ``wait``, until its replicas are in sync too)."""
        record = self._queues.get(name)
        if record is None:
            raise QueueNotFound(name)
        route = self._routes.get(name)
        if route is None or route.uid != record.uid:
            for partition, placement in enumerate(record.placements):
                # A leader that died while nobody watched (say, with the coordinator) but
                # left a live replica: promote it, so that what it holds is not passed by.
                # (No live replica: a new queue, or a start from storage is all there is.)
                dead = self._launcher.dead([placement.leader, *placement.replicas])
                if placement.leader in dead and any(replica not in dead for replica in placement.replicas):
                    self._fail_over(name, partition, dead)
            record = self._queues[name]
            leaders = tuple(self._launcher.start(record, wait))
            if record.config.scales:  # a (re)started leader learns its share and state
                for partition, placement in enumerate(record.placements):
                    self._launcher.set_scaling(placement.leader, partition in record.retiring, len(record.placements))
            route = Route(record.config, record.uid, leaders, frozenset(record.retiring))
            self._routes[name] = route
        return route

    def list_queues(self) -> list[str]:
        return sorted(self._queues)

    def delete_queue(self, name: str) -> None:
        """Forget the queue, stop its partitions and remove its objects from storage."""
        removed: list[QueueRecord] = []

        def remove(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord]:
            if name not in queues:
                raise QueueNotFound(name)
            removed[:] = [queues[name]]
            return {key: value for key, value in queues.items() if key != name}

        self._change(remove)
        self._routes.pop(name, None)
        self._launcher.stop(removed[0])
        self._store.delete_prefix(queue_prefix(name, removed[0].uid))

    # ------------------------------------------------------------------ failover

    def report_failure(self, name: str, partition: int) -> Route:
        """A handle could not reach a partition: fail over if its leader is dead.

        Returns the current route either way (a leader that Ray is restarting, or
        that is merely slow, keeps its place).
        """
        record = self._queues.get(name)
        if record is None:
            raise QueueNotFound(name)
        if 0 <= partition < len(record.placements):
            placement = record.placements[partition]
            dead = self._launcher.dead([placement.leader, *placement.replicas])
            if placement.leader in dead:
                self._fail_over(name, partition, dead)
        return self.route(name)

    def check_health(self) -> None:
        """Fail over dead leaders and replace dead replicas of every queue in use."""
        names = [
            actor
            for name in self._routes
            if name in self._queues
            for placement in self._queues[name].placements
            for actor in (placement.leader, *placement.replicas)
        ]
        dead = self._launcher.dead(names) if names else set()
        for name in list(self._routes):
            record = self._queues.get(name)
            if record is None:
                continue
            for partition, placement in enumerate(record.placements):
                if placement.leader in dead:
                    self._fail_over(name, partition, dead)
                elif len(placement.replicas) < record.config.replicas or dead & set(placement.replicas):
                    self._replace_replicas(name, partition, dead)

    def replica_lost(self, name: str, partition: int, lost: list[str]) -> None:
        """A leader dropped these replicas from its in-sync set: stop and replace them.

        Only the named ones: a replica that is still joining is not in the in-sync set
        either, and a late or repeated report must not take it down too.
        """
        record = self._queues.get(name)
        if record is None or partition >= len(record.placements):
            return
        placement = record.placements[partition]
        gone = [replica for replica in placement.replicas if replica in lost]
        if not gone:
            return
        for replica in gone:
            self._launcher.kill(replica)
        kept = tuple(replica for replica in placement.replicas if replica not in gone)
        self._place(name, partition, placement.leader, kept, placement.next_generation)

    def _fail_over(self, name: str, partition: int, dead: set[str]) -> None:
        """Promote a live replica under a new epoch (or start a new leader from storage
        if none is left), then start replicas to make up the number."""
        started = time.monotonic()
        record = self._queues[name]
        placement = record.placements[partition]
        alive = [replica for replica in placement.replicas if replica not in dead]
        generation = placement.next_generation
        if alive:
            self._launcher.promote(record, partition, alive[0])
            leader, replicas = alive[0], tuple(alive[1:])
        else:
            shared = record.config.hosting == "shared"
            leader, replicas = actor_name(name, record.uid, partition, generation, shared), ()
            generation += 1
        log.warning("queue %s partition %d: leader %s is dead; %s leads now", name, partition, placement.leader, leader)
        # New replicas come with the next health check, so that handles are not kept
        # waiting for their processes to start.
        self._place(name, partition, leader, replicas, generation, top_up=False)
        self.failover_seconds.append(time.monotonic() - started)

    def _replace_replicas(self, name: str, partition: int, dead: set[str]) -> None:
        placement = self._queues[name].placements[partition]
        alive = tuple(replica for replica in placement.replicas if replica not in dead)
        self._place(name, partition, placement.leader, alive, placement.next_generation)

    def _place(
        self, name: str, partition: int, leader: str, replicas: tuple[str, ...], generation: int, top_up: bool = True
    ) -> None:
        """Persist a partition's new placement (topped up with new replicas), then start it."""
        record = self._queues[name]
        missing = record.config.replicas - len(replicas) if top_up else 0
        shared = record.config.hosting == "shared"
        new = tuple(actor_name(name, record.uid, partition, generation + i, shared) for i in range(missing))
        placement = Placement(leader, replicas + new, generation + missing)

        def update(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord] | None:
            current = queues.get(name)
            if current is None or current.uid != record.uid:
                return None  # deleted meanwhile
            return {**queues, name: current.with_placement(partition, placement)}

        self._change(update)
        self._routes.pop(name, None)
        if name in self._queues:
            self.route(name)  # starts the new actors and wires replicas to the leader

    # ------------------------------------------------------------------- scaling

    def autoscale(self, now: float) -> None:
        """Sample the load of every queue that may scale, and grow or shrink it as the
        policy says; finish retiring partitions that have drained."""
        for name in list(self._routes):
            record = self._queues.get(name)
            if record is None or not record.config.scales:
                continue
            state = self._scaling.setdefault(name, Scaling())
            stats = self._launcher.partition_stats([p.leader for p in record.placements])
            if any(s is None for s in stats):
                continue  # a partition is failing over: decide later
            state.observe(now, stats)
            self._remove_drained(name, stats, now, state)
            record = self._queues[name]
            active = len(record.placements) - len(record.retiring)
            wanted = decide(state.history, active, policy_of(record.config), now, state.last_change)
            if wanted > active:
                self._grow(name, wanted)
            elif wanted < active:
                self._retire(name, now)
            if wanted != active:
                state.last_change = now

    def _grow(self, name: str, wanted: int) -> None:
        """Take back retiring partitions first (highest first), then add new ones."""

        def grow(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord]:
            record = queues[name]
            retiring = list(record.retiring)
            placements = list(record.placements)
            while len(placements) - len(retiring) < wanted:
                if retiring:
                    retiring.remove(max(retiring))
                else:
                    placements.append(record.placement_for(len(placements)))
            updated = dataclasses.replace(record, placements=tuple(placements), retiring=tuple(retiring))
            return {**queues, name: updated}

        self._change(grow)
        self._rescaled(name)

    def _retire(self, name: str, now: float) -> None:
        """Stop sends to the highest active partition; it goes once drained."""
        record = self._queues[name]
        victim = max(p for p in range(len(record.placements)) if p not in record.retiring)

        def retire(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord]:
            current = queues[name]
            return {**queues, name: dataclasses.replace(current, retiring=(*current.retiring, victim))}

        self._change(retire)
        self._scaling[name].retired_at[victim] = now
        self._rescaled(name)

    def _remove_drained(self, name: str, stats: list[Any], now: float, state: Scaling) -> None:
        """Remove the highest partitions once retired and drained (and stale handles had
        time to learn they retire)."""
        record = self._queues[name]
        last, removed = len(record.placements) - 1, False
        while (
            last in record.retiring
            and stats[last].visible + stats[last].in_flight == 0
            and now - state.retired_at.get(last, now) >= 2 * defaults.ROUTE_TTL_S
        ):
            placement = record.placements[last]

            def remove(queues: dict[str, QueueRecord], last: int = last) -> dict[str, QueueRecord]:
                current = queues[name]
                kept = dataclasses.replace(
                    current,
                    placements=current.placements[:last],
                    retiring=tuple(p for p in current.retiring if p != last),
                )
                return {**queues, name: kept}

            self._change(remove)
            for actor in (placement.leader, *placement.replicas):
                self._launcher.kill(actor)
            self._store.delete_prefix(partition_prefix(name, record.uid, last))
            log.warning("queue %s: partition %d retired", name, last)
            record, last, removed = self._queues[name], last - 1, True
        if removed:
            self._rescaled(name)

    def _rescaled(self, name: str) -> None:
        self._routes.pop(name, None)
        self.route(name)  # starts new partitions, tells every leader its state and share

    # ------------------------------------------------------------------- storage

    def _change(self, change: Callable[[dict[str, QueueRecord]], dict[str, QueueRecord] | None]) -> None:
        """Apply ``change`` to the catalog (None: nothing to change), persist, then publish.

        If another coordinator committed the same version first, reload and apply
        the change again to what it wrote.
        """
        for _ in range(CATALOG_ATTEMPTS):
            queues = change(self._queues)
            if queues is None:
                return
            version = self._version + 1
            try:
                self._catalog.save(version, {name: record.to_json() for name, record in queues.items()})
            except ObjectExists:
                self._load()
                continue
            self._version, self._queues = version, queues
            return
        raise RayQueueError(f"the catalog kept changing under this coordinator ({CATALOG_ATTEMPTS} attempts)")

    def _load(self) -> None:
        self._version, raw = self._catalog.load()
        self._queues = {name: QueueRecord.from_json(data) for name, data in raw.items()}

