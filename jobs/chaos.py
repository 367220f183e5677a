"""Chaos: producers and consumers under load while leaders, replicas, worker processes,
the coordinator and whole nodes are killed, round after round; then check what the
queue promised.

    python jobs/chaos.py --rounds 20 --seed 7
    python jobs/chaos.py --rounds 3 --nodes 3 --json      # the short version CI runs

It starts its own multi-node Ray on this machine (``ray.cluster_utils.Cluster``:
a head and ``--nodes`` worker nodes, each its own raylet). At the end it prints,
and checks:

- acknowledged messages lost (must be 0): sent, acknowledged, never delivered;
- messages delivered again after their delete was acknowledged (must be 0);
- duplicate deliveries (counted: delivery is at least once);
- per partition, the longest time it accepted no send, and the time from each
  leader's death to the first send it accepted again (failover).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.cluster_utils import Cluster

import rayqueue
from summary import print_summary
from rayqueue.errors import RayQueueError


@dataclass
class Ledger:
    """Everything the producers and consumers saw, with times (thread-safe)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: set[str] = field(default_factory=set)
    #: When each message was acknowledged, and to which partition: to explain a loss.
    acknowledged_at: dict[str, tuple[int, float]] = field(default_factory=dict)
    deliveries: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    #: The receipt of each delivery (partition.offset.token): to explain a resurrection.
    receipts: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    deleted_at: dict[str, float] = field(default_factory=dict)
    accepted: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    send_errors: int = 0
    receive_errors: int = 0

    def sent(self, partition: int, message_id: str) -> None:
        with self.lock:
            self.acknowledged.add(message_id)
            self.acknowledged_at[message_id] = (partition, time.monotonic())
            self.accepted[partition].append(time.monotonic())

    def delivered(self, messages: list[rayqueue.Message]) -> None:
        now = time.monotonic()
        with self.lock:
            for message in messages:
                self.deliveries[message.id].append(now)
                self.receipts[message.id].append(message.receipt)

    def deleted(self, message_ids: list[str]) -> None:
        now = time.monotonic()
        with self.lock:
            for message_id in message_ids:
                self.deleted_at.setdefault(message_id, now)


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
            with ledger.lock:
                ledger.send_errors += 1  # not acknowledged: it may or may not be stored
            time.sleep(0.05)
        n += 1


def consume(queue: rayqueue.Queue, ledger: Ledger, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            messages = queue.receive(20, wait_s=0.5, visibility_timeout_s=5.0)
            ledger.delivered(messages)
            if messages:
                queue.delete_batch([m.receipt for m in messages])
                ledger.deleted([m.id for m in messages])
        except RayQueueError:
            with ledger.lock:
                ledger.receive_errors += 1  # e.g. receipts made stale by a failover
            time.sleep(0.05)


class Chaos:
    """Picks and carries out one fault per round."""

    def __init__(self, cluster: Cluster, queue: rayqueue.Queue, rng: random.Random) -> None:
        self.cluster = cluster
        self.queue = queue
        self.rng = rng
        self.leader_deaths: list[tuple[int, float]] = []
        self.actions: list[str] = []
        #: (when, action, partition) of every round.
        self.timeline: list[tuple[float, str, int]] = []

    def _leader(self, partition: int) -> Any:
        return self.queue._target.route.partitions[partition]

    def _refresh(self) -> None:
        self.queue._target.route = ray.get(
            ray.get_actor("rayqueue-coordinator").route.remote(self.queue.name)
        )

    def round(self) -> None:
        self._refresh()
        action = self.rng.choice(["kill_leader", "sigkill_leader", "kill_replica", "kill_coordinator", "remove_node"])
        partition = self.rng.randrange(self.queue.config.partitions)
        self.timeline.append((time.monotonic(), action, partition))
        try:
            getattr(self, action)(partition)
        except Exception as error:  # e.g. the target was mid-failover: this round has no fault
            action = f"{action} skipped ({type(error).__name__})"
        self.actions.append(action)

    def kill_leader(self, partition: int) -> None:
        self.leader_deaths.append((partition, time.monotonic()))
        ray.kill(self._leader(partition), no_restart=True)

    def sigkill_leader(self, partition: int) -> None:
        pid = ray.get(self._leader(partition).__ray_call__.remote(lambda self: os.getpid()), timeout=10)
        self.leader_deaths.append((partition, time.monotonic()))
        os.kill(pid, signal.SIGKILL)

    def kill_replica(self, partition: int) -> None:
        names = ray.get(self._leader(partition).in_sync_replicas.remote(), timeout=10)
        if names:
            ray.kill(ray.get_actor(self.rng.choice(names)), no_restart=True)

    def kill_coordinator(self, partition: int) -> None:
        ray.kill(ray.get_actor("rayqueue-coordinator"), no_restart=False)  # Ray restarts it

    def remove_node(self, partition: int) -> None:
        """Remove the worker node that hosts this partition's leader (or any worker), add a fresh one."""
        node_id = ray.get(self._leader(partition).node_id.remote(), timeout=10)
        workers = list(self.cluster.worker_nodes)
        victim = next((n for n in workers if n.node_id == node_id), None) or self.rng.choice(workers)
        if victim.node_id == node_id:
            self.leader_deaths.append((partition, time.monotonic()))
        self.cluster.remove_node(victim)
        self.cluster.add_node(num_cpus=1)


def failover_times(ledger: Ledger, deaths: list[tuple[int, float]]) -> list[float]:
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
        marks = [started, *sorted(accepted), ended]
        gaps[partition] = max(b - a for a, b in zip(marks, marks[1:]))
    return gaps


def explain_losses(ledger: Ledger, timeline: list[tuple[float, str, int]], started: float) -> None:
    """On stderr, among the faults: each lost message's partition and acknowledgement
    time, and each resurrected message's deliveries (with receipts) and delete."""
    lost = sorted(ledger.acknowledged - set(ledger.deliveries), key=lambda m: ledger.acknowledged_at[m][1])
    resurrected = [
        m for m, deleted in ledger.deleted_at.items() if any(t > deleted for t in ledger.deliveries[m])
    ]
    if not lost and not resurrected:
        return
    events = [(t, f"fault {action} on partition {p}") for t, action, p in timeline]
    for message_id in lost[:20]:
        partition, at = ledger.acknowledged_at[message_id]
        events.append((at, f"LOST {message_id}, acknowledged by partition {partition}"))
    for message_id in resurrected[:20]:
        events.append((ledger.deleted_at[message_id], f"DELETED {message_id}"))
        for at, receipt in zip(ledger.deliveries[message_id], ledger.receipts[message_id]):
            events.append((at, f"delivered {message_id} with receipt {receipt}"))
    for at, what in sorted(events):
        print(f"[{at - started:8.3f} s] {what}", file=sys.stderr, flush=True)


def check(ledger: Ledger) -> dict[str, int]:
    lost = ledger.acknowledged - set(ledger.deliveries)
    resurrected = sum(
        1
        for message_id, deleted in ledger.deleted_at.items()
        for delivered in ledger.deliveries[message_id]
        if delivered > deleted
    )
    duplicates = sum(len(times) - 1 for times in ledger.deliveries.values())
    return {"acknowledged": len(ledger.acknowledged), "lost": len(lost), "resurrected": resurrected, "duplicates": duplicates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes besides the head")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--durability", choices=["storage", "replicas"], default="replicas")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between faults")
    parser.add_argument("--storage", default=None, help="fsspec URL (default: a fresh temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = parser.parse_args(argv)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="chaos", log_to_driver=False)
    try:
        client = rayqueue.connect(
            storage=args.storage or "file://" + tempfile.mkdtemp(prefix="rayqueue-chaos-"), namespace="chaos"
        )
        queue = client.create_queue(
            "chaos",
            max_messages=1_000_000,
            max_message_bytes=1024,
            partitions=args.partitions,
            replicas=args.replicas,
            durability=args.durability,
            visibility_timeout_s=5.0,
        )
        summary = run(cluster, queue, args)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print_summary(summary, args.json)
    ok = summary["lost"] == 0 and summary["resurrected"] == 0
    print("OK: nothing acknowledged was lost, nothing deleted came back" if ok else "FAILED", flush=True)
    return 0 if ok else 1


def run(cluster: Cluster, queue: rayqueue.Queue, args: argparse.Namespace) -> dict[str, Any]:
    ledger, stop_producers, stop_consumers = Ledger(), threading.Event(), threading.Event()
    producers = [
        threading.Thread(target=produce, args=(queue, p, ledger, stop_producers), daemon=True)
        for p in range(args.partitions)
    ]
    consumers = [threading.Thread(target=consume, args=(queue, ledger, stop_consumers), daemon=True) for _ in range(2)]
    chaos = Chaos(cluster, queue, random.Random(args.seed))
    started = time.monotonic()
    for thread in producers + consumers:
        thread.start()
    for number in range(args.rounds):
        time.sleep(args.interval)
        chaos.round()
        print(f"round {number + 1}/{args.rounds}: {chaos.actions[-1]}", flush=True)
    time.sleep(args.interval)  # let the last fault heal under load
    stop_producers.set()
    for thread in producers:
        thread.join()
    ended = time.monotonic()
    drain_until = time.monotonic() + 60
    while time.monotonic() < drain_until and len(ledger.acknowledged - set(ledger.deliveries)) > 0:
        time.sleep(0.5)
    time.sleep(6.0)  # a visibility timeout, so that late redeliveries are seen too
    stop_consumers.set()
    for thread in consumers:
        thread.join()

    explain_losses(ledger, chaos.timeline, started)
    failovers = failover_times(ledger, chaos.leader_deaths)
    gaps = longest_gaps(ledger, started, ended)
    return {
        "rounds": args.rounds,
        "seed": args.seed,
        "faults": {action: chaos.actions.count(action) for action in sorted(set(chaos.actions))},
        **check(ledger),
        "send_errors": ledger.send_errors,
        "failover_median_s": round(statistics.median(failovers), 3) if failovers else None,
        "failover_worst_s": round(max(failovers), 3) if failovers else None,
        "failovers_measured": len(failovers),
        "longest_send_gap_s": {p: round(g, 3) for p, g in sorted(gaps.items())},
    }


if __name__ == "__main__":
    sys.exit(main())
