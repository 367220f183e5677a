"""One partition's world under faults, played by a seed.

Processes (``Node``) host the real ``PartitionService`` (leaders) and the real
``ReplicaState`` (replicas); the real ``ReplicaSet`` talks to replicas through a
``SimLink``; storage is the real ``PartitionStore`` over ``memory://`` with a fault
hook in every object operation. The coordinator is either a model of its side
of the failover contract (``Controller``: the in-sync set it records, promotions
of in-sync replicas only, fencing every live replica before the new leader
serves) or the real ``Coordinator`` (``rayqueue.simulation.control``), which
also crashes and restarts from its catalog. Clients send, receive and delete
through possibly stale routes, and report failures as handles do.

Faults, all chosen by the seed: delays at every await point (so replies and
requests reorder), storage errors before an operation and lost replies after it,
storage outages, process crashes (between any two storage operations), machine
crashes (every process on one machine at once), failed and lost replica calls, and
zombie leaders (declared dead while still running and reachable through stale
routes). Processes are placed on two or three machines at random, so a replica
sometimes shares its leader's machine, as the real coordinator places it when the
cluster has no other node.

What is checked, against a model of what clients were told:
- lost: an acknowledged send, never deleted, that the final drain does not find;
- resurrected: a delivery from a receive call that *started* after that message's
  delete was acknowledged (and any acknowledged-deleted message in the final drain);
- stuck: the world can never move again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rayqueue.client.rows import send_rows
from rayqueue.config import QueueConfig
from rayqueue.errors import InvalidReceipt, PartitionFenced, RayQueueError, StorageUnavailable
from rayqueue.partition.replication import ReplicaSet, ReplicaState
from rayqueue.partition.service import PartitionService
from rayqueue.simulation.clock import Stuck, VirtualClock, virtual_loop
from rayqueue.simulation.control import CoordinatorControl
from rayqueue.storage import ObjectStore, PartitionStore, format
from rayqueue.storage.partition_store import partition_prefix

T = TypeVar("T")

_roots = itertools.count()


class Crashed(BaseException):
    """The process this code runs in has died: nothing it does has effects any more.
    A BaseException, so that no ``except Exception`` in the code under test swallows it."""


class Unreachable(ConnectionError):
    """A call to a process that is dead, or whose request or reply was lost."""


@dataclass
class Faults:
    """Probabilities, per event."""

    storage_error: float = 0.03  # an object operation fails before it acts
    storage_lost_reply: float = 0.02  # ... or acts, and its caller sees a failure
    crash_in_storage: float = 0.004  # the calling process dies inside a storage operation
    replica_error: float = 0.03  # a replica call fails before it acts
    replica_lost_reply: float = 0.02  # ... or acts, and the leader sees a failure
    max_delay_s: float = 0.02  # every request and reply takes up to this long
    slow_storage: float = 0.05  # ... and a storage call now and then far longer (up to 2 s)


#: Faults several times as frequent as the default ones.
HEAVY = Faults(
    storage_error=0.1, storage_lost_reply=0.08, crash_in_storage=0.02, replica_error=0.1, replica_lost_reply=0.08
)


@dataclass
class Outcome:
    seed: int
    durability: str
    replicas: int
    acknowledged: int = 0
    deleted: int = 0
    delivered: int = 0
    faults: int = 0
    failovers: int = 0
    lost: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    stuck: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.resurrected and self.stuck is None

    def summary(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        text = (
            f"seed {self.seed} ({self.durability}, replicas={self.replicas}): {verdict}; "
            f"acknowledged {self.acknowledged}, deleted {self.deleted}, delivered {self.delivered}, "
            f"faults {self.faults}, failovers {self.failovers}"
        )
        if not self.ok:
            text += f"; lost {self.lost[:10]}, resurrected {self.resurrected[:10]}, stuck {self.stuck}"
        return text


class World:
    def __init__(self, seed: int, faults: Faults, steps: int, coordinator: str = "model") -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.faults = faults
        self.steps = steps
        self.clock = VirtualClock()
        durability = self.random.choice(["storage", "replicas"])
        replicas = self.random.choice([1, 2]) if durability == "replicas" else self.random.choice([0, 1, 2])
        self.config = QueueConfig.build(
            name="q",
            max_messages=100_000,
            max_message_bytes=1000,
            durability=durability,
            replicas=replicas,
            visibility_timeout_s=self.random.choice([0.5, 2.0, 30.0]),
        )
        self.root = f"memory://rayqueue-sim-{seed}-{next(_roots)}"
        self.outcome = Outcome(seed, durability, replicas)
        self.nodes: dict[str, Node] = {}
        #: How many machines the processes are spread over.
        self.machines = self.random.choice([2, 3])
        #: No failure (a crash injected, a live leader taken for dead) since the serving
        #: leader last held nothing unstored: what was acknowledged before the last
        #: failure is stored (see ``may_crash`` and ``may_lose_machine``).
        self.absorbed = True
        self._names = itertools.count()
        self.outage = False  # storage down for everyone
        self.calm = False  # the final drain: no more injected faults
        #: "model": the coordinator's contract, kept by ``Controller``; "real": the real
        #: ``Coordinator`` over simulated Ray and storage (``rayqueue.simulation.control``).
        self.coordinator = coordinator
        self.controller: Controller | CoordinatorControl = (
            CoordinatorControl(self) if coordinator == "real" else Controller(self)
        )
        self.background: set[asyncio.Task[Any]] = set()
        # The model: what clients were told.
        self.acknowledged: set[str] = set()
        self.delete_acked_at: dict[str, float] = {}
        #: Deletes sent, acknowledged or not: one that failed may still have taken effect.
        self.delete_attempted: set[str] = set()
        self.deliveries: list[tuple[str, float, int]] = []  # (id, receive call start, epoch)

    # ------------------------------------------------------------------ chance

    def chance(self, probability: float) -> bool:
        return not self.calm and self.random.random() < probability

    async def delay(self) -> None:
        await asyncio.sleep(self.random.uniform(0, self.faults.max_delay_s))

    def note(self, text: str) -> None:
        self.outcome.log.append(f"{self.clock.now - 1_000_000.0:9.3f} {text}")

    def spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ----------------------------------------------------------------- storage

    def storage_op(self, node: Node, operation: str, act: Callable[[], T]) -> T:
        """One object operation by ``node``, with the faults the seed chooses."""
        node.check_alive()
        if self.outage or self.chance(self.faults.storage_error):
            self.outcome.faults += 1
            raise StorageUnavailable(operation, "sim", "injected failure")
        if self.chance(self.faults.crash_in_storage) and self.may_crash(node):
            self.outcome.faults += 1
            self.note(f"{node.name} crashes inside a storage {operation}")
            self.fail(node)
            node.check_alive()
        result = act()
        if self.chance(self.faults.storage_lost_reply):
            self.outcome.faults += 1
            raise StorageUnavailable(operation, "sim", "injected lost reply")
        return result

    def may_crash(self, node: Node) -> bool:
        """With durability "replicas" a write may be acknowledged while only the leader and
        its in-sync replicas hold it: the guarantee is for one failure at a time, so the
        last live one of them is never crashed, unless no failure is under way (none was
        injected since everything acknowledged was stored: this crash is the first). With
        durability "storage" any may be."""
        if self.config.durability != "replicas":
            return True
        controller = self.controller
        keepers = {name for name in controller.in_sync if name in self.nodes and self.nodes[name].alive}
        leader = self.serving_leader()
        replacing = controller.replacing  # a leader being failed over has failed, whether it runs or not
        if leader is not None and not replacing and not self.superseded(leader):
            keepers.add(leader.name)  # a fenced leader is on its way out
        return bool(keepers - {node.name}) or (self.absorbed and not replacing)

    def serving_leader(self) -> Node | None:
        """The controller's leader if it runs, leads and has not fenced itself."""
        leader = self.controller.leader
        if leader is None or not leader.alive or leader.service is None or leader.service.fenced:
            return None
        return leader

    def nothing_at_risk(self) -> bool:
        """Whether the serving leader holds nothing unstored, so that the last failure is
        absorbed. Not while it is superseded: what it stores after the newer claim is
        fenced out, so "stored" does not mean kept (seed 531117 lost a write so), and the
        failure that claimed is under way until the leader is replaced."""
        leader = self.serving_leader()
        if leader is None or self.superseded(leader):
            return False
        assert leader.service is not None
        held = leader.service.unstored()
        return not held.segments and not held.deletes

    def superseded(self, leader: Node) -> bool:
        """Whether storage holds a newer epoch's claim than ``leader``'s: a promotion that
        claimed and then failed leaves one. The leader finds it at its next write and
        stops, so it keeps nothing it has not stored yet, though it still serves. Looked
        up past the fault hook: this is the world's knowledge, not the leader's."""
        assert leader.service is not None
        claim = f"{partition_prefix('q', leader.uid, 0)}/{format.claim_name(leader.service.epoch + 1)}"
        return ObjectStore.exists(leader.root_store, claim)

    def may_lose_machine(self) -> bool:
        """Whether a whole machine may crash now. The guarantee is for one node's loss at
        a time: with durability "replicas" a machine crashes only while no other failure
        is still under way (a serving leader, every replica it should have alive and
        recorded in sync, and what was acknowledged before the last failure since
        stored), whatever the processes on it; with durability "storage" at any time."""
        if self.config.durability != "replicas":
            return True
        if self.serving_leader() is None:
            return False
        controller = self.controller
        replicas = controller.replicas
        return (
            self.absorbed
            and not controller.replacing
            and len(replicas) >= self.config.replicas
            and all(self.nodes[name].alive for name in replicas)
            and set(replicas) <= controller.in_sync
        )

    def fail(self, node: Node) -> None:
        """An injected crash: a failure (the coordinator's own kills are not)."""
        self.absorbed = False
        node.crash()

    def crash_machine(self, machine: int) -> None:
        victims = [node for node in self.nodes.values() if node.alive and node.machine == machine]
        leader, replicas = self.controller.leader, set(self.controller.replicas)
        roles = {
            node.name: "leader" if node is leader else "replica" if node.name in replicas else "" for node in victims
        }
        self.note(f"crash machine {machine}: {', '.join(f'{name} {role}'.strip() for name, role in roles.items())}")
        for node in victims:
            self.fail(node)

    def new_node(self, role: str) -> Node:
        return self.node_named(f"{role}{next(self._names)}")

    def node_named(self, name: str, uid: str = "u") -> Node:
        """A new process of this name (the real coordinator names its actors itself), on a
        machine chosen at random: more often beside its leader than the coordinator
        would place it, which finds more of what co-location breaks (11 of 200 seeds
        catch the co-location mutant, against 1 with three replicas in four placed apart)."""
        node = Node(self, name, self.random.randrange(self.machines), uid)
        self.nodes[node.name] = node
        return node


class Node:
    """One process: a leader's service, or a replica's state."""

    def __init__(self, world: World, name: str, machine: int, uid: str = "u") -> None:
        self.world = world
        self.name = name
        self.machine = machine
        self.uid = uid
        self.alive = True
        self.replica = ReplicaState(name)
        self.service: PartitionService | None = None
        self.replica_set: ReplicaSet | None = None
        self._died = asyncio.Event()
        #: The storage root as this process sees it (every operation meets the world's faults).
        self.root_store = SimObjectStore(world.root, world, self)
        # One read at a time: threads would make the order of storage faults depend on the OS.
        self.store = PartitionStore(self.root_store, "q", 0, uid, read_ahead=1)

    def check_alive(self) -> None:
        if not self.alive:
            raise Crashed(self.name)

    def crash(self) -> None:
        self.alive = False
        self._died.set()  # its callers' connections break

    async def run_blocking(self, call: Callable[..., T], *args: Any) -> T:
        """A storage call from this process: its request and reply take time."""
        world = self.world
        if world.chance(world.faults.slow_storage):
            await asyncio.sleep(world.random.uniform(0.2, 2.0))
        await self.world.delay()
        self.check_alive()
        result = call(*args)
        await self.world.delay()
        self.check_alive()
        return result

    def lead(self) -> None:
        """Take over (from storage, plus what this process held as a replica). Blocking."""
        world = self.world
        self.replica_set = ReplicaSet(SimLink(world, self), acknowledging=world.config.durability == "replicas")
        service = PartitionService(
            world.config,
            0,
            self.store,
            clock=world.clock.time,
            checkpoint_every=world.random.choice([1, 3, 16]),
            replicas=self.replica_set if world.config.replicas else None,
            run_blocking=self.run_blocking,
        )
        service.on_fenced = lambda: world.spawn(_die_later(world, self, 0.5))  # as the actor shell does
        held = self.replica.promote()
        try:
            service.recover(held)
        except BaseException:
            self.replica.stay(held)  # as the actor does: a retry may promote it again
            raise
        self.service = service

    async def call(self, method: str, *args: Any) -> Any:
        """A client's call to this process's leader (request and reply may be lost)."""
        world = self.world
        await world.delay()
        if not self.alive:
            raise Unreachable(self.name)
        if self.service is None:
            raise Unreachable(f"{self.name} does not lead")
        work = asyncio.ensure_future(getattr(self.service, method)(*args))
        died = asyncio.ensure_future(self._died.wait())
        await asyncio.wait({work, died}, return_when=asyncio.FIRST_COMPLETED)
        died.cancel()
        if not work.done() or isinstance(work.exception(), Crashed):
            work.add_done_callback(_ignore)
            raise Unreachable(self.name)
        result = work.result()
        await world.delay()
        if not self.alive:
            raise Unreachable(self.name)
        return result


class SimObjectStore(ObjectStore):
    """``memory://`` objects whose every operation passes the world's fault hook."""

    def __init__(self, url: str, world: World, node: Node) -> None:
        super().__init__(url, retry_s=0.0)
        self._world = world
        self._node = node

    def __reduce__(self) -> tuple[Any, ...]:  # pragma: no cover - never pickled
        raise TypeError("a simulated store stays in its world")

    def put_once(self, name: str, data: bytes) -> None:
        self._world.storage_op(self._node, "put", lambda: ObjectStore.put_once(self, name, data))

    def exists(self, name: str) -> bool:
        return self._world.storage_op(self._node, "stat", lambda: ObjectStore.exists(self, name))

    def get(self, name: str) -> bytes:
        return self._world.storage_op(self._node, "get", lambda: ObjectStore.get(self, name))

    def list(self, prefix: str) -> list[str]:
        return self._world.storage_op(self._node, "list", lambda: ObjectStore.list(self, prefix))

    def delete(self, names: builtins.list[str]) -> None:
        self._world.storage_op(self._node, "delete", lambda: ObjectStore.delete(self, names))


class SimLink:
    """A leader's ``ReplicaLink`` in the simulated world."""

    def __init__(self, world: World, leader: Node) -> None:
        self._world = world
        self._leader = leader

    async def hold(self, replica: str, method: str, args: tuple[Any, ...]) -> None:
        world = self._world
        await world.delay()
        self._leader.check_alive()
        target = world.nodes[replica]
        if not target.alive or world.chance(world.faults.replica_error):
            world.outcome.faults += 1
            raise Unreachable(replica)
        getattr(target.replica, method)(*args)
        await world.delay()
        self._leader.check_alive()
        if world.chance(world.faults.replica_lost_reply):
            world.outcome.faults += 1
            raise Unreachable(replica)

    def release(self, replica: str, epoch: int, offset_floor: int, seq_floor: int) -> None:
        async def later() -> None:  # through another path than holds: it may overtake or trail them
            await self._world.delay()
            target = self._world.nodes[replica]
            if target.alive:
                target.replica.release(epoch, offset_floor, seq_floor)

        self._leader.check_alive()
        self._world.spawn(later())

    async def report_in_sync(self, replica: str) -> bool:
        await self._world.delay()
        self._leader.check_alive()
        return self._world.controller.replica_in_sync(self._leader.name, replica)

    async def report_lost(self, replicas: list[str]) -> bool:
        await self._world.delay()
        self._leader.check_alive()
        if self._world.chance(self._world.faults.replica_error):
            raise Unreachable("coordinator")
        recorded = self._world.controller.replica_lost(self._leader.name, replicas)
        await self._world.delay()
        self._leader.check_alive()
        return recorded

    def apart(self, replica: str) -> bool:
        return self._world.nodes[replica].machine != self._leader.machine


class Controller:
    """The coordinator's side of the contract, for one partition.

    It records the in-sync set (only from the current leader), promotes only a live
    in-sync replica (durability "replicas") or any live replica (standbys), fences
    every other live replica with the new epoch before handing out the new route,
    and starts a leader from storage only when no such replica lives.
    """

    def __init__(self, world: World) -> None:
        self._world = world
        self.leader: Node | None = None
        self.replicas: list[str] = []
        self.in_sync: set[str] = set()
        self.route_version = 0
        #: A failover is under way (the old leader counts as failed).
        self.replacing = False

    def route_leader(self) -> Node:
        """A handle's route lookup."""
        if self.leader is None:
            raise Unreachable("no route yet")
        return self.leader

    def report_failure(self) -> None:
        """A handle could not reach the leader (the model's health check finds out alone)."""

    def replica_in_sync(self, leader: str, replica: str) -> bool:
        if self.leader is None or leader != self.leader.name or replica not in self.replicas:
            return False
        self.in_sync.add(replica)
        return True

    def replica_lost(self, leader: str, lost: list[str]) -> bool:
        if self.leader is None or leader != self.leader.name:
            return False
        for name in lost:
            self.in_sync.discard(name)
            if name in self.replicas:
                self.replicas.remove(name)
                self._world.nodes[name].crash()  # replaced for good
        self._world.spawn(self.top_up())
        return True

    def start(self) -> None:
        node = self._world.new_node("leader")
        node.lead()
        self.leader = node
        self.route_version += 1
        self._world.spawn(self.top_up())

    async def top_up(self) -> None:
        world, leader = self._world, self.leader
        if leader is None or not leader.alive or leader.service is None:
            return
        while len(self.replicas) < world.config.replicas:
            self.replicas.append(world.new_node("replica").name)
        assert leader.replica_set is not None
        try:
            await leader.replica_set.attach(list(self.replicas), leader.service.unstored)
        except Crashed:
            pass

    def fail_over(self, reason: str) -> None:
        """Replace the current leader (dead, or only suspected: then it lives on as a zombie)."""
        self.replacing = True
        try:
            self._fail_over(reason)
        finally:
            self.replacing = False

    def _fail_over(self, reason: str) -> None:
        world = self._world
        old = self.leader
        alive = [name for name in self.replicas if world.nodes[name].alive]
        candidates = [n for n in alive if n in self.in_sync] if world.config.durability == "replicas" else alive
        world.outcome.failovers += 1
        for name in candidates:
            node = world.nodes[name]
            try:
                node.lead()
            except (RayQueueError, Crashed) as error:
                world.note(f"promoting {name} failed: {error!r}")
                if node.alive:
                    return  # it still holds what it holds: try it again at the next check
                continue
            assert node.service is not None
            for other in alive:
                if other != name:
                    world.nodes[other].replica.fence(node.service.epoch)
            self.replicas = [n for n in alive if n != name]
            self.in_sync = self.in_sync & set(self.replicas)
            self.leader = node
            self.route_version += 1
            world.note(f"{reason}: {old.name if old else None} -> promoted {name} (epoch {node.service.epoch})")
            world.spawn(self.top_up())
            return
        fresh = world.new_node("leader")
        try:
            fresh.lead()
        except (RayQueueError, Crashed) as error:
            world.note(f"starting a leader from storage failed: {error!r}")
            fresh.crash()
            return
        assert fresh.service is not None
        for other in alive:
            world.nodes[other].replica.fence(fresh.service.epoch)
            world.nodes[other].crash()  # not in sync: replaced
        self.replicas, self.in_sync = [], set()
        self.leader = fresh
        self.route_version += 1
        world.note(f"{reason}: {old.name if old else None} -> {fresh.name} from storage (epoch {fresh.service.epoch})")
        world.spawn(self.top_up())

    async def watch(self) -> None:
        """The health check: fail over a dead leader, replace dead replicas."""
        world = self._world
        while True:
            await asyncio.sleep(world.random.uniform(0.05, 0.3))
            if self.leader is None or not self.leader.alive:
                self.fail_over("leader dead")
            elif any(not world.nodes[name].alive for name in self.replicas):
                dead = [name for name in self.replicas if not world.nodes[name].alive]
                self.replicas = [name for name in self.replicas if name not in dead]
                self.in_sync -= set(dead)
                world.spawn(self.top_up())


class Client:
    """A producer or consumer with its own cached route (it may be stale)."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.route: Node | None = None
        self.version = -1

    def leader(self) -> Node:
        controller = self.world.controller
        if self.route is None or self.world.chance(0.3):  # refresh now and then, as handles do
            try:
                self.route, self.version = controller.route_leader(), controller.route_version
            except (RayQueueError, Unreachable):
                pass
        if self.route is None:
            raise Unreachable("no route yet")
        return self.route

    def forget(self) -> None:
        """A call failed: drop the route, and tell the coordinator (as handles do)."""
        self.route = None
        self.world.controller.report_failure()

    async def produce(self, count: int) -> None:
        world = self.world
        for n in range(count):
            message_id = f"{self.name}-{n}"
            rows = send_rows(world.config, [message_id.encode()], [message_id])
            for _attempt in range(6):
                try:
                    await self.leader().call("send", rows, True)
                except (RayQueueError, Unreachable, PartitionFenced):
                    self.forget()
                    await asyncio.sleep(world.random.uniform(0.01, 0.2))
                    continue
                world.acknowledged.add(message_id)
                world.note(f"{message_id} acknowledged")
                break
            await asyncio.sleep(world.random.uniform(0, 0.05))

    async def consume(self, until: Callable[[], bool]) -> None:
        world = self.world
        while not until():
            started = world.clock.now
            try:
                delivery = await self.leader().call(
                    "receive", world.random.randint(1, 5), world.random.choice([0.0, 0.1]), None
                )
            except (RayQueueError, Unreachable):
                self.forget()
                await asyncio.sleep(world.random.uniform(0.01, 0.1))
                continue
            ids = [body.decode() for body in delivery.column("body").to_pylist()]
            epochs = delivery.column("epoch").to_pylist()
            world.deliveries.extend((message_id, started, epoch) for message_id, epoch in zip(ids, epochs))
            if ids:
                world.note(f"{self.name} received {ids} (epoch {epochs[0]}, call started {started - 1_000_000.0:.3f})")
            if not ids or world.chance(0.2):
                await asyncio.sleep(world.random.uniform(0, 0.05))
                continue  # not deleted: it comes back after its visibility timeout
            world.delete_attempted.update(ids)
            try:
                target = self.leader()
                await target.call(
                    "delete", delivery.column("offset").to_numpy(), delivery.column("token").to_numpy(), []
                )
            except InvalidReceipt:
                continue  # delivered again meanwhile, or from a leader since replaced
            except (RayQueueError, Unreachable):
                self.forget()
                continue
            for message_id in ids:
                world.delete_acked_at.setdefault(message_id, world.clock.now)
            world.note(f"{self.name} deleted {ids} at {target.name}")


async def _chaos(world: World) -> None:
    """Hurt the world now and then."""
    controller = world.controller
    for _ in range(world.steps):
        await asyncio.sleep(world.random.uniform(0.05, 0.5))
        actions = ["crash-leader", "crash-replica", "crash-machine", "zombie", "outage", "calm", "calm"]
        if world.coordinator == "real":
            actions.append("crash-coordinator")
        action = world.random.choice(actions)
        if action == "crash-leader" and controller.leader is not None and world.may_crash(controller.leader):
            world.note(f"crash {controller.leader.name}")
            world.fail(controller.leader)
        elif action == "crash-replica" and controller.replicas:
            victim = world.random.choice(controller.replicas)
            if not world.may_crash(world.nodes[victim]):
                continue
            world.note(f"crash {victim}")
            world.fail(world.nodes[victim])
        elif action == "crash-machine" and controller.leader is not None and world.may_lose_machine():
            # Mostly the leader's: that is where a write is held in memory only.
            leaders = world.random.random() < 0.7
            world.crash_machine(controller.leader.machine if leaders else world.random.randrange(world.machines))
        elif (
            action == "zombie"
            and controller.leader is not None
            and controller.leader.alive
            and world.may_crash(controller.leader)
        ):
            zombie = controller.leader
            world.absorbed = False  # a failure, though nothing died
            controller.fail_over(f"false suspicion of {zombie.name}")
            if controller.leader is not zombie:  # replaced: Ray's kill lands, eventually
                world.spawn(_die_later(world, zombie))
        elif action == "crash-coordinator" and isinstance(controller, CoordinatorControl):
            controller.crash()
        elif action == "outage":
            world.outage = True
            world.note("storage outage")
            await asyncio.sleep(world.random.uniform(0.1, 1.5))
            world.outage = False
            world.note("storage back")
        else:
            continue
        world.outcome.faults += 1


async def _die_later(world: World, node: Node, after_s: float | None = None) -> None:
    await asyncio.sleep(world.random.uniform(0.1, 3.0) if after_s is None else after_s)  # Ray's kill lands, eventually
    node.crash()


async def _absorb(world: World) -> None:
    """Mark a failure absorbed once it is (see ``World.nothing_at_risk``)."""
    while True:
        await asyncio.sleep(0.02)
        if not world.absorbed:
            world.absorbed = world.nothing_at_risk()


async def _play(world: World) -> None:
    controller = world.controller
    while controller.leader is None:
        try:
            controller.start()
        except (RayQueueError, Crashed, Unreachable):
            await asyncio.sleep(0.1)
    await controller.top_up()
    world.spawn(controller.watch())
    world.spawn(_absorb(world))
    producers = [Client(world, f"p{i}") for i in range(2)]
    consumers = [Client(world, f"c{i}") for i in range(2)]
    produced = [asyncio.ensure_future(p.produce(world.random.randint(10, 40))) for p in producers]
    chaos = asyncio.ensure_future(_chaos(world))
    done = lambda: all(task.done() for task in produced) and chaos.done()  # noqa: E731
    consumed = [asyncio.ensure_future(c.consume(done)) for c in consumers]
    await asyncio.gather(*produced, chaos, *consumed)
    await _drain(world)


async def _drain(world: World) -> None:
    """No more faults: let the world settle, then take everything that is left."""
    world.calm = True
    world.outage = False
    await asyncio.sleep(max(world.config.visibility_timeout_s, 5.0) + 1.0)  # failovers finish, timeouts run out
    drained: set[str] = set()
    client = Client(world, "drain")
    idle = 0
    started = world.clock.now
    while idle < 3:
        try:
            delivery = await client.leader().call("receive", 100, 0.0, 3600.0)
        except (RayQueueError, Unreachable):
            client.forget()
            await asyncio.sleep(0.5)
            continue
        ids = [body.decode() for body in delivery.column("body").to_pylist()]
        drained.update(ids)
        world.deliveries.extend(
            (message_id, started, epoch) for message_id, epoch in zip(ids, delivery.column("epoch").to_pylist())
        )
        idle = idle + 1 if not ids else 0
        await asyncio.sleep(0.2)
    outcome = world.outcome
    outcome.acknowledged = len(world.acknowledged)
    outcome.deleted = len(world.delete_acked_at)
    outcome.delivered = len(world.deliveries)
    # A message received but never deleted must still be there at the end; one whose
    # delete failed may be gone (the delete may have taken effect before the failure).
    outcome.lost = sorted(world.acknowledged - world.delete_attempted - drained)
    outcome.resurrected = sorted(
        {
            message_id
            for message_id, call_started, _epoch in world.deliveries
            if message_id in world.delete_acked_at and call_started > world.delete_acked_at[message_id]
        }
    )


def run(
    seed: int, faults: Faults | None = None, steps: int = 12, keep: bool = False, coordinator: str = "model"
) -> Outcome:
    """Play one schedule; its outcome says what (if anything) broke. ``coordinator``:
    "model" (the contract, ``Controller``) or "real" (``rayqueue.control.coordinator.Coordinator``)."""
    world = World(seed, faults or Faults(), steps, coordinator)
    loop = virtual_loop(world.clock)
    loop.set_exception_handler(_on_unhandled(world))
    logging.disable(logging.CRITICAL)  # faults make the code under test log a lot
    try:
        loop.run_until_complete(asyncio.wait_for(_play(world), 3600.0))
    except Stuck as stuck:
        world.outcome.stuck = str(stuck)
    except TimeoutError:
        world.outcome.stuck = "the schedule did not finish within an hour of virtual time"
        world.outcome.log.extend(_waiting(loop))
    finally:
        logging.disable(logging.NOTSET)
        _close(loop)
        if keep:
            world.outcome.log.append(f"storage kept at {world.root}")
        else:
            with contextlib.suppress(Exception):  # nothing there
                ObjectStore(world.root).delete_prefix("queues")
    return world.outcome


def _waiting(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Where each unfinished task waits (for a stuck schedule's log)."""
    lines = []
    for task in asyncio.all_tasks(loop):
        if not task.done():
            frames = task.get_stack()
            lines.append(" <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames[::-1]))
    return sorted(lines)


def _ignore(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _on_unhandled(world: World) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if not isinstance(error, (Crashed, asyncio.CancelledError)):  # a dead process's tasks die with it
            world.note(f"unhandled: {context.get('message')} {error!r}")

    return handle


def _close(loop: asyncio.AbstractEventLoop) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        try:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except (Stuck, BaseException):  # noqa: BLE001 -- tearing down
            pass
    loop.close()
