"""The real ``Coordinator`` in the simulated world.

``CoordinatorControl`` runs ``rayqueue.control.coordinator.Coordinator`` as it is, over a
``SimLauncher`` (the simulated ``PartitionLauncher``) and over simulated storage
with the world's faults, in its own simulated process: its catalog writes fail,
lose their replies and crash it like any other storage call, and a crashed
coordinator is replaced by a new one that loads the catalog, as Ray restarts the
coordinator actor. It offers the world what the model ``Controller`` offers
(the current leader, replicas and in-sync set, reports from leaders, a health
check), so the same schedules can run against either.

The coordinator is synchronous, as its actor is: each call runs to its end
without an await, which is how Ray runs a synchronous actor's calls, one at a time.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rayqueue.control.coordinator import Coordinator, Placement, QueueRecord
from rayqueue.errors import PartitionUnavailable, RayQueueError

if TYPE_CHECKING:  # the world imports this module
    from rayqueue.simulation.world import Node, World

QUEUE = "q"


class SimLauncher:
    """Everything the coordinator asks of Ray, done to simulated processes."""

    def __init__(self, world: World) -> None:
        self._world = world
        #: Live processes the next health check is to take for dead (a false suspicion).
        self.suspected: set[str] = set()

    def start(self, record: QueueRecord, wait: bool = False, create: frozenset[int] = frozenset()) -> list[Any]:
        world = self._world
        placement = record.placements[0]
        if 0 in create:
            leader = world.node_named(placement.leader, record.uid)
            try:
                leader.lead()
            except (RayQueueError, BaseException) as error:  # the actor's constructor failed
                leader.crash()
                raise PartitionUnavailable(QUEUE, 0, f"leader did not start: {error!r}") from None
        else:
            found = world.nodes.get(placement.leader)
            if found is None or not found.alive or found.service is None:
                raise PartitionUnavailable(QUEUE, 0, f"leader {placement.leader} is gone")
            leader = found
        replicas = []
        for name in placement.replicas:
            node = world.nodes.get(name)
            if node is None and name in placement.in_sync:
                continue  # never an empty actor under an in-sync name: the health check replaces it
            if node is None:
                node = world.node_named(name, record.uid)
            replicas.append(name)
        world.spawn(attach(leader, replicas))  # as a Ray call that nobody awaits
        return [leader]

    def dead(self, names: list[str]) -> set[str]:
        nodes = self._world.nodes
        dead = {name for name in names if name not in nodes or not nodes[name].alive}
        return dead | (self.suspected & set(names))

    def promote(self, record: QueueRecord, partition: int, name: str) -> int:
        node = self._world.nodes.get(name)
        if node is None or not node.alive:
            raise PartitionUnavailable(QUEUE, partition, f"replica {name} is gone")
        if node.service is None:
            try:
                node.lead()
            except BaseException as error:  # Crashed too: a promotion that died
                raise PartitionUnavailable(QUEUE, partition, f"promoting {name}: {error!r}") from None
        assert node.service is not None  # lead() made it
        return node.service.epoch

    def fence(self, name: str, epoch: int) -> None:
        node = self._world.nodes.get(name)
        if node is None or not node.alive:
            raise PartitionUnavailable(QUEUE, 0, f"replica {name} is gone")
        node.replica.fence(epoch)

    def kill(self, name: str) -> None:
        node = self._world.nodes.get(name)
        if node is None or not node.alive:
            return
        self.suspected.discard(name)
        from rayqueue.simulation.world import _die_later

        self._world.spawn(_die_later(self._world, node))  # Ray's kill lands, eventually

    def misplaced(self, placement: Placement) -> set[str]:
        """Replicas on the leader's machine, now and then (as if another machine had room
        again); their replacements are placed at random, like every process here."""
        nodes = self._world.nodes
        leader = nodes.get(placement.leader)
        if leader is None or not self._world.chance(0.2):
            return set()
        return {
            name
            for name in placement.replicas
            if name in nodes and nodes[name].alive and nodes[name].machine == leader.machine
        }

    def stop(self, record: QueueRecord) -> None:
        for placement in record.placements:
            for name in (placement.leader, *placement.replicas):
                self.kill(name)

    def partition_stats(self, leaders: list[str]) -> list[Any]:
        return [None for _ in leaders]

    def set_scaling(self, leader: str, retiring: bool, partitions: int) -> None:
        pass


async def attach(leader: Node, replicas: list[str]) -> None:
    from rayqueue.simulation.world import Crashed

    try:
        await leader.world.delay()
        leader.check_alive()
        if leader.replica_set is not None and leader.service is not None:
            await leader.replica_set.attach(replicas, leader.service.unstored)
    except Crashed:
        pass


class CoordinatorControl:
    """The world's controller, played by the real coordinator."""

    def __init__(self, world: World) -> None:
        self._world = world
        self.launcher = SimLauncher(world)
        self._coordinator: Coordinator | None = None
        self._process: Node | None = None
        self.route_version = 0
        self._in_call = False

    # ----------------------------------------------------------- its process

    def _current(self) -> Coordinator:
        """The running coordinator; a new one (loading the catalog) if the last crashed."""
        world = self._world
        if self._coordinator is None or self._process is None or not self._process.alive:
            process = world.new_node("coordinator")
            # Loading the catalog may fail. Uids come from the seed, so that a schedule replays exactly.
            coordinator = Coordinator(process.root_store, self.launcher, lambda: f"{world.random.getrandbits(48):012x}")
            self._process, self._coordinator = process, coordinator
            world.note(f"coordinator started in {process.name}")
        return self._coordinator

    def crash(self) -> None:
        if self._process is not None:
            self._world.note(f"crash the coordinator ({self._process.name})")
            self._process.crash()

    @property
    def replacing(self) -> bool:
        """Whether the coordinator is at work on a leader it takes for dead (suspected or
        not): that leader has failed, whether it runs or not, so a crash now is a second
        failure (see ``World.may_crash``)."""
        if not self._in_call:
            return False
        leader = self.leader
        return leader is None or not leader.alive or leader.name in self.launcher.suspected

    def _call(self, method: str, *args: Any) -> Any:
        from rayqueue.simulation.world import Crashed, Unreachable

        before = self._placement()
        self._in_call = True
        try:
            return getattr(self._current(), method)(*args)
        except Crashed:
            raise Unreachable("coordinator") from None
        finally:
            self._in_call = False
            after = self._placement()
            if before is not None and after is not None and after.leader != before.leader:
                self._world.outcome.failovers += 1
                self._world.note(f"{method}: {before.leader} -> {after.leader} (in sync: {list(before.in_sync)})")
            if after is not None and after != before:
                self._world.note(
                    f"{method}: placement {after.leader} replicas {list(after.replicas)} in sync {list(after.in_sync)}"
                )

    # --------------------------------------------------- what the world reads

    def _placement(self) -> Placement | None:
        coordinator = self._coordinator
        record = coordinator._queues.get(QUEUE) if coordinator is not None else None  # noqa: SLF001 -- a read-only look
        return record.placements[0] if record is not None else None

    @property
    def leader(self) -> Node | None:
        placement = self._placement()
        return self._world.nodes.get(placement.leader) if placement is not None else None

    @property
    def replicas(self) -> list[str]:
        placement = self._placement()
        return [name for name in placement.replicas if name in self._world.nodes] if placement else []

    @property
    def in_sync(self) -> set[str]:
        placement = self._placement()
        return set(placement.in_sync) if placement else set()

    # --------------------------------------------------- what the world asks

    def route_leader(self) -> Node:
        """A handle's route lookup (which starts or fails over what it must)."""
        route = self._call("route", QUEUE)
        node: Node = route.partitions[0]
        self.route_version += 1
        return node

    def report_failure(self) -> None:
        """A handle could not reach the leader: the coordinator fails it over if it is dead."""
        from rayqueue.simulation.world import Unreachable

        try:
            self._call("report_failure", QUEUE, 0)
        except (RayQueueError, Unreachable) as error:
            self._world.note(f"report_failure failed: {error!r}")

    def replica_in_sync(self, leader: str, replica: str) -> bool:
        return bool(self._call("replica_in_sync", QUEUE, 0, leader, replica))

    def replica_lost(self, leader: str, lost: list[str]) -> bool:
        return bool(self._call("replica_lost", QUEUE, 0, leader, lost))

    def start(self) -> None:
        self._call("create_queue", self._world.config)

    async def top_up(self) -> None:
        while self._world.background and any(not task.done() for task in self._world.background if _is_attach(task)):
            await asyncio.sleep(0.01)

    def fail_over(self, reason: str) -> None:
        """A false suspicion: the health check takes the live leader for dead."""
        leader = self.leader
        if leader is not None:
            self.launcher.suspected.add(leader.name)
            self._world.note(reason)
        self.check_health()
        self.launcher.suspected.clear()

    def check_health(self) -> None:
        from rayqueue.simulation.world import Unreachable

        try:
            self._call("check_health")
        except (RayQueueError, Unreachable) as error:
            self._world.note(f"health check failed: {error!r}")

    async def watch(self) -> None:
        world = self._world
        while True:
            await asyncio.sleep(world.random.uniform(0.05, 0.3))
            self.check_health()


def _is_attach(task: asyncio.Task[Any]) -> bool:
    return getattr(task.get_coro(), "__name__", "") == "attach"
