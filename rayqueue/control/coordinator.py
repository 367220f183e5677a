"""The coordinator's logic: the catalog of queues, persisted before it is published,
the in-sync replica sets, and failover of partition leaders.

No Ray here: starting, probing, promoting and fencing partition actors goes through
a ``PartitionLauncher``, so the catalog and failover rules run in unit tests with a
fake one. Every method is idempotent, so a caller may retry any of them.

The rules that keep acknowledged writes (as Kafka's controller keeps them):

- The in-sync replica set (ISR) of a partition is this coordinator's persisted fact.
  A replica joins it only when the current leader reports it caught up; it leaves
  it before the leader may acknowledge without it (``replica_lost`` returns True
  only once the shrink is persisted).
- Only a live ISR member is promoted when a queue's durability is "replicas"; every
  other live replica is fenced with the new epoch before the new placement is
  persisted and routed; the replaced leader is killed.
- A partition is failed over only if its *current* leader is dead, and a leader is
  created from storage only when no live replica can hold an acknowledged write
  that storage lacks (``start``'s ``create``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic

from rayqueue import defaults
from rayqueue.config import QueueConfig, check_queue_name, describe_validation_error
from rayqueue.control.autoscale import LoadSample, ScalingPolicy, decide
from rayqueue.errors import (
    CatalogContention,
    ObjectExists,
    PartitionUnavailable,
    QueueAlreadyExists,
    QueueNotFound,
    RayQueueError,
    StorageCorrupt,
)
from rayqueue.routes import Route
from rayqueue.storage import CatalogStore, ObjectStore, format, partition_prefix, queue_prefix

log = logging.getLogger(__name__)

#: A queue's uid: what ``QueueRecord.new`` makes, and all a storage path may hold.
_UID = re.compile(r"[0-9a-f]{1,32}")


@dataclass(frozen=True)
class Placement:
    """Which actors serve one partition, by name. Every actor ever started for a
    partition has its own generation number, so names are never reused."""

    leader: str
    replicas: tuple[str, ...]
    next_generation: int
    #: Replicas known to hold every write their leader acknowledged without storage
    #: (a subset of ``replicas``). Grown only by the leader's report, shrunk before the
    #: leader acknowledges without a member: with durability "replicas", only these
    #: may be promoted.
    in_sync: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "replicas": list(self.replicas),
            "next_generation": self.next_generation,
            "in_sync": list(self.in_sync),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        # Catalogs written before the ISR was recorded have no "in_sync": nobody is
        # known to be in sync, so nobody is promoted in replicas mode until reported.
        return cls(data["leader"], tuple(data["replicas"]), data["next_generation"], tuple(data.get("in_sync", ())))

    def without(self, gone: set[str]) -> Placement:
        """The same placement with these replicas removed (from the ISR too)."""
        return dataclasses.replace(
            self,
            replicas=tuple(r for r in self.replicas if r not in gone),
            in_sync=tuple(r for r in self.in_sync if r not in gone),
        )


def new_uid() -> str:
    """A fresh queue uid (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def actor_name(queue: str, uid: str, partition: int, generation: int, shared: bool = False) -> str:
    """A partition instance's name: its actor's, or (shared) its name inside a host actor."""
    return f"{SHARED_PREFIX if shared else 'rayqueue.'}{queue}.{uid}.{partition}.{generation}"


def partition_of(name: str) -> tuple[str, int]:
    """The queue and partition an actor name (from ``actor_name``) belongs to."""
    _prefix, queue, _uid, partition, _generation = name.split(".")
    return queue, int(partition)


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
    def new(cls, config: QueueConfig, uid: str | None = None) -> QueueRecord:
        record = cls(config, uid or new_uid())
        return dataclasses.replace(record, placements=tuple(record.placement_for(p) for p in range(config.partitions)))

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "uid": self.uid,
            "placements": [placement.to_json() for placement in self.placements],
            "created_at": self.created_at,
            "retiring": list(self.retiring),
        }

    @classmethod
    def from_json(cls, name: str, data: Any) -> QueueRecord:
        """Read and validate one catalog record; raise ValueError (or TypeError, KeyError)
        naming what is wrong. Nothing (no storage path, no actor name) is built from
        ``name`` or the uid before they are checked."""
        check_queue_name(name)
        if not isinstance(data, dict):
            raise ValueError(f"the record is a {type(data).__name__}, not an object")
        config = QueueConfig.model_validate(data["config"])
        if config.name != name:
            raise ValueError(f"the record of {name!r} holds the settings of {config.name!r}")
        uid = data["uid"]
        if not isinstance(uid, str) or not _UID.fullmatch(uid):
            raise ValueError(f"uid {uid!r} is not a short hex string")
        record = cls(config, uid, created_at=float(data["created_at"]))
        raw = data["placements"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= defaults.MAX_PARTITIONS:
            raise ValueError(f"placements must be a list of 1 to {defaults.MAX_PARTITIONS} partitions")
        placements = tuple(record._checked(p, Placement.from_json(item)) for p, item in enumerate(raw))
        retiring = tuple(data.get("retiring", ()))
        if not all(type(p) is int and 0 <= p < len(placements) for p in retiring):
            raise ValueError(f"retiring {list(retiring)!r} names partitions the queue does not have")
        return dataclasses.replace(record, placements=placements, retiring=retiring)

    def _checked(self, partition: int, placement: Placement) -> Placement:
        """``placement`` if every name in it is one of this partition's actor names."""
        generation = placement.next_generation
        if type(generation) is not int or generation < 0:
            raise ValueError(f"partition {partition}: next_generation {generation!r} is not a count")
        names = (placement.leader, *placement.replicas)
        prefix = actor_name(self.config.name, self.uid, partition, 0, self.config.hosting == "shared")[:-1]
        for name in names:
            suffix = name[len(prefix) :] if isinstance(name, str) and name.startswith(prefix) else ""
            if not re.fullmatch(r"[0-9]{1,9}", suffix) or int(suffix) >= generation:
                raise ValueError(f"partition {partition}: {name!r} is not one of its actor names")
        if len(set(names)) != len(names):
            raise ValueError(f"partition {partition}: an actor is named twice in {list(names)!r}")
        if not set(placement.in_sync) <= set(placement.replicas):
            raise ValueError(f"partition {partition}: in_sync {list(placement.in_sync)!r} are not all replicas")
        return placement

    def placement_for(self, partition: int, generation: int = 0) -> Placement:
        """A new partition's placement: a leader and its replicas, all new names."""
        shared = self.config.hosting == "shared"
        names = [
            actor_name(self.config.name, self.uid, partition, generation + i, shared)
            for i in range(1 + self.config.replicas)
        ]
        return Placement(names[0], tuple(names[1:]), generation + len(names))

    def topped_up(self, partition: int, placement: Placement) -> Placement:
        """``placement`` with new replicas (new names, not in sync) to make up the number."""
        missing = max(0, self.config.replicas - len(placement.replicas))
        shared = self.config.hosting == "shared"
        generation = placement.next_generation
        new = tuple(actor_name(self.config.name, self.uid, partition, generation + i, shared) for i in range(missing))
        return dataclasses.replace(placement, replicas=placement.replicas + new, next_generation=generation + missing)

    def with_placement(self, partition: int, placement: Placement) -> QueueRecord:
        placements = list(self.placements)
        placements[partition] = placement
        return dataclasses.replace(self, placements=tuple(placements))


@dataclass(frozen=True)
class Broken:
    """A catalog record that failed validation: kept as it was (and written back as it
    was), listed so that an operator can delete it; every other use raises."""

    raw: Any
    cause: str


def promotable(config: QueueConfig, placement: Placement, dead: set[str]) -> list[str]:
    """Replicas that may lead this partition, in order of preference. With durability
    "replicas" only live ISR members hold every acknowledged write; with "storage",
    replicas are standbys that hold nothing storage lacks, so any live one will do."""
    in_sync = [r for r in placement.in_sync if r in placement.replicas and r not in dead]
    if config.durability == "replicas":
        return in_sync
    return in_sync + [r for r in placement.replicas if r not in dead and r not in in_sync]


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
    """Everything the coordinator asks of Ray. Errors are RayQueueErrors (never raw
    Ray errors), and no method waits on the coordinator, which calls them while it
    holds its lock."""

    def start(self, record: QueueRecord, wait: bool = False, create: frozenset[int] = frozenset()) -> list[Any]:
        """Find every partition's leader, start or find its replicas and hand them to
        it; return the leaders once they serve (and, with ``wait``, once they have
        caught their replicas up, as far as they do within a bounded time).

        Creates a leader (from storage) only for the partitions in ``create``; any other
        partition whose leader is gone raises PartitionUnavailable naming it. Never
        creates a replica that is in its placement's ``in_sync`` (an empty actor under
        an in-sync name would be promoted as if it held the writes)."""

    def dead(self, names: list[str]) -> set[str]:
        """Which of these actors died for good (not merely restarting or slow)? One probe for all."""

    def promote(self, record: QueueRecord, partition: int, name: str) -> int:
        """Make the replica ``name`` the partition's leader; return its epoch once it serves."""

    def fence(self, name: str, epoch: int) -> None:
        """Make the replica ``name`` refuse writes from any leader older than ``epoch``;
        return once it does. Raises PartitionUnavailable if it could not be reached."""

    def kill(self, name: str) -> None:
        """Stop one actor for good (it may be dead already). Never raises, never blocks long."""

    def misplaced(self, placement: Placement) -> set[str]:
        """Live replicas that share the leader's node while another live node could take
        them. Such a replica would go with the leader's node, so it is no second copy
        (the leader acknowledges nothing on its word alone); the health check moves it."""

    def stop(self, record: QueueRecord) -> None:
        """Stop every actor of the queue, for good."""

    def partition_stats(self, leaders: list[str]) -> list[Any]:
        """Each leader's PartitionStats (None where it did not answer)."""

    def set_scaling(self, leader: str, retiring: bool, partitions: int) -> None:
        """Tell a leader whether it is retiring and how many partitions the queue has."""


class Coordinator:
    def __init__(self, store: ObjectStore, launcher: PartitionLauncher, new_uid: Callable[[], str] = new_uid) -> None:
        """``new_uid`` makes each new queue's uid (the simulation's are seeded)."""
        self._store = store
        self._new_uid = new_uid
        self._catalog = CatalogStore(store)
        self._launcher = launcher
        self._version = 0
        self._queues: dict[str, QueueRecord] = {}
        self._broken: dict[str, Broken] = {}
        self._load()
        self._routes: dict[str, Route] = {}
        #: Queues handles have asked for since this coordinator started: the health check
        #: watches these, whether or not their route could be built the last time (a
        #: failover drops the cached route; a failed rebuild must not end the watch).
        self._in_use: set[str] = set()
        #: Time each failover took, from its start to the new leader serving (for reports).
        self.failover_seconds: list[float] = []
        self._scaling: dict[str, Scaling] = {}

    @property
    def storage_url(self) -> str:
        return self._store.url

    # --------------------------------------------------------------- the catalog

    def create_queue(self, config: QueueConfig) -> Route:
        """Create the queue, or return it if it exists with the same settings. Objects
        of an earlier queue of that name are not touched: the new one has a new uid."""
        self._refuse_broken(config.name)

        def add(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord] | None:
            existing = queues.get(config.name)
            if existing is None:
                return {**queues, config.name: QueueRecord.new(config, self._new_uid())}
            differences = existing.config.differences(config)
            if differences:
                raise QueueAlreadyExists(config.name, differences)
            return None

        self._change(add)
        return self.route(config.name, wait=True)

    def route(self, name: str, wait: bool = False) -> Route:
        """The queue's route, starting its actors if they are not running (with
        ``wait``, until its replicas are in sync too).

        Raises PartitionUnavailable if a partition's leader cannot be found or
        promoted now; the caller reports it and retries."""
        record = self._record(name)
        self._in_use.add(name)
        route = self._routes.get(name)
        if route is not None and route.uid == record.uid:
            return route
        record, leaders = self._start(name, wait)
        if record.config.scales:  # a (re)started leader learns its share and state
            for partition, placement in enumerate(record.placements):
                self._launcher.set_scaling(placement.leader, partition in record.retiring, len(record.placements))
        route = Route(record.config, record.uid, leaders, frozenset(record.retiring))
        self._routes[name] = route
        return route

    def _start(self, name: str, wait: bool) -> tuple[QueueRecord, tuple[Any, ...]]:
        """Fail over what must be, then start the queue's actors; its record and leaders."""
        for attempt in range(1, defaults.ROUTE_ATTEMPTS + 1):
            create = self._prepare(name)
            record = self._queues[name]
            try:
                return record, tuple(self._launcher.start(record, wait, create))
            except PartitionUnavailable as error:
                # A leader that died after _prepare probed it: the next _prepare promotes
                # its replica (start never re-creates it from storage, F8).
                if attempt == defaults.ROUTE_ATTEMPTS or not self._leader_dead(name, error.partition):
                    raise
        raise AssertionError("unreachable")

    def _prepare(self, name: str) -> frozenset[int]:
        """Before a queue's actors are started: fail over every partition whose current
        leader is dead and that has a live promotable replica (or a recorded ISR to
        clear). Returns the partitions whose leader ``start`` may create from storage:
        those whose leader is gone and where no live replica can hold a write that
        storage lacks (a new placement, or a cold start)."""
        create: set[int] = set()
        placements = self._queues[name].placements
        dead = self._launcher.dead([actor for p in placements for actor in (p.leader, *p.replicas)])
        for partition in range(len(placements)):
            seen = dead
            for _ in range(2):  # a failover to a fresh leader leaves that leader to create
                record = self._queues[name]
                placement = record.placements[partition]
                if placement.leader not in seen:
                    break
                if not promotable(record.config, placement, seen) and not placement.in_sync:
                    create.add(partition)
                    break
                self._fail_over(name, partition, seen)
                placement = self._queues[name].placements[partition]
                seen = self._launcher.dead([placement.leader, *placement.replicas])
        return frozenset(create)

    def _leader_dead(self, name: str, partition: int) -> bool:
        placements = self._queues[name].placements
        if not 0 <= partition < len(placements):
            return False
        return placements[partition].leader in self._launcher.dead([placements[partition].leader])

    def list_queues(self) -> list[str]:
        """Every queue, including those whose catalog record is unreadable (so that
        an operator can see and delete them)."""
        return sorted([*self._queues, *self._broken])

    def delete_queue(self, name: str) -> None:
        """Forget the queue, stop its partitions and remove its objects from storage.

        A queue whose record is unreadable is forgotten too; its objects are removed
        only if its name and uid are valid (no path is built from anything else)."""
        if name in self._broken:
            self._forget_broken(name)
            return
        removed: list[QueueRecord] = []

        def remove(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord]:
            if name not in queues:
                raise QueueNotFound(name)
            removed[:] = [queues[name]]
            return {key: value for key, value in queues.items() if key != name}

        self._change(remove)
        self._routes.pop(name, None)
        self._in_use.discard(name)
        self._launcher.stop(removed[0])
        # Cut short here (a crash), the prefix is an orphan: sweep_orphans removes it.
        self._store.delete_prefix(queue_prefix(name, removed[0].uid))

    def _forget_broken(self, name: str) -> None:
        broken = self._broken[name]
        self._save(self._version + 1, self._queues, {k: v for k, v in self._broken.items() if k != name})
        uid = broken.raw.get("uid") if isinstance(broken.raw, dict) else None
        try:
            check_queue_name(name)
            valid = isinstance(uid, str) and _UID.fullmatch(uid) is not None
        except ValueError:
            valid = False
        if valid:
            self._store.delete_prefix(queue_prefix(name, uid))  # type: ignore[arg-type]
        log.warning("queue %r with an unreadable catalog record was deleted (%s)", name, broken.cause)

    def _record(self, name: str) -> QueueRecord:
        """The queue's record; QueueNotFound, or StorageCorrupt if its record is unreadable."""
        self._refuse_broken(name)
        record = self._queues.get(name)
        if record is None:
            raise QueueNotFound(name)
        return record

    def _refuse_broken(self, name: str) -> None:
        broken = self._broken.get(name)
        if broken is not None:
            where = format.catalog_name(self._version)
            raise StorageCorrupt(where, f"queue {name!r} is unavailable until deleted: {broken.cause}")

    # ---------------------------------------------------------- in-sync replicas

    def replica_in_sync(self, name: str, partition: int, leader: str, replica: str) -> bool:
        """The partition's leader ``leader`` reports that ``replica`` holds every write it
        acknowledged. True once ``replica`` is a persisted ISR member (also if it was
        already); False, with nothing changed, if ``leader`` is not the current leader
        or ``replica`` is not one of its replicas (a late report about a replaced one)."""

        def join(record: QueueRecord, current: Placement) -> Placement | None:
            if current.leader != leader or replica not in current.replicas:
                return None
            if replica in current.in_sync:
                return current
            return dataclasses.replace(current, in_sync=(*current.in_sync, replica))

        return name in self._queues and self._update_placement(name, partition, join)

    def replica_lost(self, name: str, partition: int, leader: str, lost: list[str]) -> bool:
        """The partition's leader ``leader`` could not replicate to ``lost``. True once they
        are out of the persisted ISR and the placement (only then may the leader
        acknowledge without them); they are stopped, and the next health check starts
        replacements. False, with nothing changed, if ``leader`` is not the current
        leader: a replaced leader must not acknowledge without its replicas.

        Names no longer in the placement are already gone (True). Only the named
        replicas go: one still joining (not in sync) must not be taken down by a late
        or repeated report."""
        gone: set[str] = set()

        def drop(record: QueueRecord, current: Placement) -> Placement | None:
            if current.leader != leader:
                return None
            gone.clear()
            gone.update(r for r in current.replicas if r in lost)
            return current.without(gone)

        if name not in self._queues or not self._update_placement(name, partition, drop):
            return False
        for replica in gone:
            self._launcher.kill(replica)
        return True

    # ------------------------------------------------------------------ failover

    def report_failure(self, name: str, partition: int) -> Route:
        """A handle could not reach a partition: fail over if its leader is dead.

        Returns the current route either way (a leader that Ray is restarting, or
        that is merely slow, keeps its place).
        """
        record = self._record(name)
        if 0 <= partition < len(record.placements):
            placement = record.placements[partition]
            dead = self._launcher.dead([placement.leader, *placement.replicas])
            self._fail_over(name, partition, dead)
        return self.route(name)

    def check_health(self) -> None:
        """Fail over dead leaders and replace dead replicas of every queue in use.

        One probe for all; each partition is then judged on its *current* placement
        (a failover of one must never make a stale snapshot fail another over twice),
        and one partition's failure does not stop the others."""
        names = [
            actor
            for name in self._in_use
            if name in self._queues
            for placement in self._queues[name].placements
            for actor in (placement.leader, *placement.replicas)
        ]
        dead = self._launcher.dead(names) if names else set()
        for name in sorted(self._in_use):
            try:
                if self._heal(name, dead) or name not in self._routes:
                    self.route(name)  # starts new actors, hands replicas to their leaders
            except Exception:
                log.exception("health check of queue %s failed; retrying at the next one", name)

    def _heal(self, name: str, dead: set[str]) -> bool:
        """Fail over or repair each partition of one queue; True if anything changed."""
        changed = False
        partition = 0
        while name in self._queues and partition < len(self._queues[name].placements):
            record = self._queues[name]
            placement = record.placements[partition]
            try:
                if placement.leader in dead:
                    changed |= self._fail_over(name, partition, dead)
                elif dead & set(placement.replicas) or len(placement.replicas) < record.config.replicas:
                    changed |= self._replace_replicas(name, partition, dead)
                elif misplaced := self._launcher.misplaced(placement):
                    # Dropping them from the in-sync set is safe: the leader acknowledged
                    # nothing on their word alone (see ReplicaSet).
                    log.info("queue %s partition %d: moving %s off the leader's node", name, partition, misplaced)
                    changed |= self._replace_replicas(name, partition, misplaced)
            except Exception:  # this partition waits for the next check; the others go on
                log.exception("queue %s partition %d: failover or repair failed", name, partition)
            partition += 1
        return changed

    def _fail_over(self, name: str, partition: int, dead: set[str]) -> bool:
        """If the partition's current leader is in ``dead``: promote a live promotable
        replica under a new epoch (the next one if a candidate dies meanwhile), fence
        every other live replica with that epoch, and only then persist the new
        placement; once it is persisted, kill the old leader. With no candidate left, a
        new leader is started from storage (by the next ``route``) and the old one
        killed. True if the placement changed.

        Raises PartitionUnavailable, with nothing changed, if a live candidate could not
        be promoted (the old leader is left as it was: if only suspected, it serves on),
        or if storage refused the change."""
        record = self._queues.get(name)
        if record is None or not 0 <= partition < len(record.placements):
            return False
        old = record.placements[partition]
        if old.leader not in dead:
            return False  # alive, or replaced since the caller's probe
        started = time.monotonic()
        dropped = set(dead)
        promoted, epoch = self._promote_one(record, partition, old, dropped)
        if promoted is None:
            new = self._fresh_leader(record, partition, old, dropped)
        else:
            dropped |= self._fence_others(name, partition, old, promoted, epoch, dropped)
            without = old.without(dropped | {promoted})
            new = dataclasses.replace(without, leader=promoted)
        if not self._update_placement(name, partition, lambda _record, current: new if current == old else None):
            raise PartitionUnavailable(name, partition, "its placement changed during the failover")
        # Only now, with a successor recorded, is the old leader stopped (a false "dead"
        # verdict must not leave a second leader running; a promoted successor's epoch
        # fences it already). Killed before a failover that then failed, a leader that was
        # only suspected would stay recorded as the leader while its kill is on its way:
        # it serves on, may take a replica's word for writes, and takes them with it
        # (the real-coordinator simulation, seed 540222: the catalog update lost a race).
        self._launcher.kill(old.leader)
        for replica in dropped & set(old.replicas):
            self._launcher.kill(replica)  # dead, failed mid-promotion, or not fenced
        self._routes.pop(name, None)
        log.warning("queue %s partition %d: leader %s is dead; %s leads now", name, partition, old.leader, new.leader)
        self.failover_seconds.append(time.monotonic() - started)
        return True

    def _promote_one(
        self, record: QueueRecord, partition: int, old: Placement, dropped: set[str]
    ) -> tuple[str | None, int]:
        """Promote the first candidate that survives it: (its name, its epoch), or
        (None, 0) if none is left. Candidates that died trying are added to ``dropped``."""
        name = record.config.name
        for candidate in promotable(record.config, old, dropped):
            try:
                return candidate, self._launcher.promote(record, partition, candidate)
            except RayQueueError as error:
                if candidate not in self._launcher.dead([candidate]):
                    # Alive but failing (storage, a timeout): promoting another would
                    # give up what this one holds for no reason. Retry later.
                    raise PartitionUnavailable(name, partition, f"promoting {candidate} failed: {error}") from None
                log.warning("queue %s partition %d: %s died while promoted (%s)", name, partition, candidate, error)
                dropped.add(candidate)
        return None, 0

    def _fence_others(
        self, name: str, partition: int, old: Placement, promoted: str, epoch: int, dropped: set[str]
    ) -> set[str]:
        """Fence every other live replica with the new epoch, so none acknowledges the
        old leader's writes once the new one serves. Returns those that could not be
        fenced: they leave the placement (and are killed), as if dead."""
        unfenced = set()
        for replica in old.replicas:
            if replica == promoted or replica in dropped:
                continue
            try:
                self._launcher.fence(replica, epoch)
            except RayQueueError as error:
                log.warning(
                    "queue %s partition %d: could not fence %s (%s); replacing it", name, partition, replica, error
                )
                unfenced.add(replica)
        return unfenced

    def _fresh_leader(self, record: QueueRecord, partition: int, old: Placement, dropped: set[str]) -> Placement:
        """A new leader, started from storage by the next ``route``; live replicas stay
        (out of sync: they catch up from it)."""
        name = record.config.name
        lost = [r for r in old.in_sync if r in dropped]
        if record.config.durability == "replicas" and lost:
            log.error(
                "queue %s partition %d: leader %s and every in-sync replica (%s) are gone; starting a new leader "
                "from storage. Writes they acknowledged that were not stored yet may be LOST.",
                name,
                partition,
                old.leader,
                ", ".join(lost),
            )
        shared = record.config.hosting == "shared"
        leader = actor_name(name, record.uid, partition, old.next_generation, shared)
        return dataclasses.replace(
            old.without(dropped), leader=leader, next_generation=old.next_generation + 1, in_sync=()
        )

    def _replace_replicas(self, name: str, partition: int, dead: set[str]) -> bool:
        """Drop dead (or misplaced) replicas, from the ISR too: a dead actor's name must
        never be promoted. Name new ones to make up the number; the caller starts them."""
        gone: set[str] = set()

        def replace(record: QueueRecord, current: Placement) -> Placement:
            gone.clear()
            gone.update(r for r in current.replicas if r in dead)
            return record.topped_up(partition, current.without(gone))

        changed = self._update_placement(name, partition, replace)
        for replica in gone:
            self._launcher.kill(replica)
        self._routes.pop(name, None)
        return changed

    def _update_placement(
        self, name: str, partition: int, update: Callable[[QueueRecord, Placement], Placement | None]
    ) -> bool:
        """Persist ``update`` of one partition's current placement, re-applied to what
        another writer committed if it won a race. ``update`` returns the new placement,
        the current one (nothing to change), or None (refused). True once the result
        is persisted (or needed no change); False if refused or the partition is gone."""
        accepted = [False]

        def change(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord] | None:
            record = queues.get(name)
            accepted[0] = False
            if record is None or not 0 <= partition < len(record.placements):
                return None
            current = record.placements[partition]
            new = update(record, current)
            accepted[0] = new is not None
            if new is None or new == current:
                return None
            return {**queues, name: record.with_placement(partition, new)}

        self._change(change)
        return accepted[0]

    # ------------------------------------------------------------------- scaling

    def autoscale(self, now: float) -> None:
        """Sample the load of every queue that may scale, and grow or shrink it as the
        policy says; finish retiring partitions that have drained."""
        for name in sorted(self._in_use):
            try:
                self._autoscale_queue(name, now)
            except Exception:  # one queue's failure must not stop scaling for the queues after it
                log.exception("autoscaling queue %r failed; will try again", name)

    def _autoscale_queue(self, name: str, now: float) -> None:
        record = self._queues.get(name)
        if record is None or not record.config.scales:
            return
        state = self._scaling.setdefault(name, Scaling())
        stats = self._launcher.partition_stats([p.leader for p in record.placements])
        if any(s is None for s in stats):
            return  # a partition is failing over: decide later
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
        for _ in range(defaults.CATALOG_ATTEMPTS):
            queues = change(self._queues)
            if queues is None:
                return
            try:
                self._save(self._version + 1, queues, self._broken)
            except ObjectExists:
                self._load()
                continue
            return
        raise CatalogContention(defaults.CATALOG_ATTEMPTS)

    def _save(self, version: int, queues: dict[str, QueueRecord], broken: dict[str, Broken]) -> None:
        """Persist a catalog version, then publish it here. Unreadable records are
        written back as they were: only an operator's delete removes them."""
        document = {name: b.raw for name, b in broken.items()}
        document.update({name: record.to_json() for name, record in queues.items()})
        self._catalog.save(version, document)
        self._version, self._queues, self._broken = version, queues, broken

    def _load(self) -> None:
        """Read the newest catalog, one record at a time: a record that fails validation
        takes down that queue only (its operations raise StorageCorrupt)."""
        self._version, raw = self._catalog.load()
        self._queues, self._broken = {}, {}
        for name, data in raw.items():
            try:
                self._queues[name] = QueueRecord.from_json(name, data)
            except pydantic.ValidationError as error:
                self._broken[name] = Broken(data, f"invalid settings: {describe_validation_error(error)}")
            except (ValueError, TypeError, KeyError) as error:
                self._broken[name] = Broken(data, f"invalid record: {type(error).__name__}: {error}")
        for name, broken in self._broken.items():
            log.error("catalog version %d: queue %r is unavailable: %s", self._version, name, broken.cause)

    def sweep_orphans(self, listed: list[str]) -> list[str]:
        """Remove queue prefixes (``queues/<name>.<uid>``) that no catalog record owns:
        left by a deletion cut short, or by late writes of a deleted queue's actors.
        ``listed``: object names under ``queues/``, listed *before* this call (a queue
        is in the catalog before its actors write, so any prefix listed then belongs to
        a record the catalog has now, or to none). Returns the prefixes removed.

        Sweeps nothing unless the catalog this coordinator holds is the newest on
        storage and was read whole: an unreadable record or version could own any uid."""
        owned = self._owned_uids()
        if owned is None:
            return []
        orphans = sorted({prefix for prefix in map(_queue_prefix_of, listed) if prefix and prefix[1] not in owned})
        for queue, uid in orphans:
            log.warning("removing orphaned storage prefix %s (no queue has uid %s)", queue_prefix(queue, uid), uid)
            self._store.delete_prefix(queue_prefix(queue, uid))
        return [queue_prefix(queue, uid) for queue, uid in orphans]

    def _owned_uids(self) -> set[str] | None:
        """The uids of every queue, if this coordinator knows them all for sure; else None."""
        if self._broken or self._version == 0:
            return None  # an unknown record, or no catalog at all (a wrong root?)
        highest, _ = self._catalog.load()
        if highest != self._version:
            return None  # changed since, or the newest version is unreadable: next time
        path = format.catalog_name(self._version)
        try:
            _, stored = format.decode_catalog(self._store.get(path), path)
        except (RayQueueError, FileNotFoundError):
            return None
        if set(stored) != set(self._queues):
            return None
        return {record.uid for record in self._queues.values()}


def _queue_prefix_of(name: str) -> tuple[str, str] | None:
    """(queue, uid) of an object name under ``queues/<queue>.<uid>/``, if well formed."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] != "queues":
        return None
    queue, dot, uid = parts[1].rpartition(".")
    try:
        check_queue_name(queue)
    except ValueError:
        return None
    return (queue, uid) if dot and _UID.fullmatch(uid) else None
