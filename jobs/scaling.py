"""Scaling: a load ramp up and down, and the queue's partitions following it.

    python jobs/scaling.py                                   # writes scaling.png and scaling.json
    python jobs/scaling.py --peak 2000 --ramp-s 60 --chart out.png

A producer thread sends at a rate that climbs to ``--peak`` messages/s over
``--ramp-s`` seconds, holds, and falls back to zero; a consumer drains. Every
second the job records the rate sent, the backlog, the number of partitions and
the number of Ray nodes, then draws them over time. At the end it checks that
every acknowledged message was delivered, and none twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

import ray
from summary import print_summary

import rayqueue


@dataclass
class Point:
    t: float
    target_rate: float
    sent_rate: float
    backlog: int
    partitions: int
    nodes: int


def rate_at(t: float, args: argparse.Namespace) -> float:
    """Up for ramp_s, hold for hold_s, down for ramp_s, then nothing."""
    if t < args.ramp_s:
        return args.peak * t / args.ramp_s
    if t < args.ramp_s + args.hold_s:
        return args.peak
    down = t - args.ramp_s - args.hold_s
    return max(0.0, args.peak * (1 - down / args.ramp_s))


def produce(
    queue: rayqueue.Queue, args: argparse.Namespace, started: float, sent: list[str], stop: threading.Event
) -> None:
    owed = 0.0
    last = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        owed += rate_at(now - started, args) * (now - last)
        last = now
        n = min(int(owed), 1000)
        if n:
            sent.extend(queue.send_batch([b"x" * args.size] * n))
            owed -= n
        time.sleep(0.02)


def consume(queue: rayqueue.Queue, delivered: list[str], stop: threading.Event) -> None:
    while not stop.is_set():
        messages = queue.receive(1000, wait_s=0.5)
        if messages:
            queue.delete_batch([m.receipt for m in messages])
            delivered.extend(m.id for m in messages)


def draw(points: list[Point], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p.t for p in points]
    figure, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t, [p.target_rate for p in points], label="offered")
    axes[0].plot(t, [p.sent_rate for p in points], label="sent")
    axes[0].set_ylabel("messages/s")
    axes[0].legend()
    axes[1].plot(t, [p.backlog for p in points])
    axes[1].set_ylabel("backlog")
    axes[2].step(t, [p.partitions for p in points], where="post", label="partitions")
    axes[2].step(t, [p.nodes for p in points], where="post", label="Ray nodes")
    axes[2].set_ylabel("count")
    axes[2].set_xlabel("seconds")
    axes[2].legend()
    figure.suptitle("rayqueue scaling with load")
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak", type=float, default=1500.0, help="messages/s at the top of the ramp")
    parser.add_argument("--ramp-s", type=float, default=40.0)
    parser.add_argument("--hold-s", type=float, default=30.0)
    parser.add_argument("--tail-s", type=float, default=60.0, help="idle time after the ramp, to shrink")
    parser.add_argument("--target-rate", type=float, default=300.0, help="send rate one partition carries")
    parser.add_argument("--max-partitions", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--storage", default=None)
    parser.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="a resource each partition asks Ray for "
        "(cluster.yaml's rayqueue_partition=1 makes the autoscaler add nodes)",
    )
    parser.add_argument("--chart", default="scaling.png")
    parser.add_argument("--json", default="scaling.json", help="the recorded points")
    parser.add_argument("--summary-json", action="store_true", help="print the summary as one JSON line")
    args = parser.parse_args(argv)

    started_ray = not ray.is_initialized()
    client = rayqueue.connect(storage=args.storage or "file://" + tempfile.mkdtemp(prefix="rayqueue-scaling-"))
    queue = client.create_queue(
        f"scaling-{int(time.time())}",
        max_messages=10_000_000,
        max_message_bytes=args.size,
        partitions=1,
        min_partitions=1,
        max_partitions=args.max_partitions,
        target_send_rate=args.target_rate,
        scaling_window_s=5.0,
        scaling_cooldown_s=5.0,
        partition_resources={name: float(amount) for name, amount in (r.split("=", 1) for r in args.resource)},
    )
    sent: list[str] = []
    delivered: list[str] = []
    stop_producer, stop_consumer = threading.Event(), threading.Event()
    started = time.monotonic()
    producer = threading.Thread(target=produce, args=(queue, args, started, sent, stop_producer), daemon=True)
    consumer = threading.Thread(target=consume, args=(queue, delivered, stop_consumer), daemon=True)
    producer.start()
    consumer.start()
    points: list[Point] = []
    total_s = 2 * args.ramp_s + args.hold_s + args.tail_s
    previous = 0
    try:
        while (elapsed := time.monotonic() - started) < total_s:
            time.sleep(1.0)
            stats = queue.stats()
            points.append(
                Point(
                    round(elapsed, 1),
                    rate_at(elapsed, args),
                    len(sent) - previous,
                    stats.stored,
                    len(stats.partitions),
                    len([n for n in ray.nodes() if n["Alive"]]),
                )
            )
            previous = len(sent)
            if len(points) % 10 == 0:
                print(
                    f"  {elapsed:5.0f}s  {points[-1].sent_rate:6.0f} msg/s  partitions {points[-1].partitions}",
                    flush=True,
                )
    finally:
        stop_producer.set()
        producer.join()
        time.sleep(3.0)
        stop_consumer.set()
        consumer.join()
    while batch := queue.receive(1000):
        queue.delete_batch([m.receipt for m in batch])
        delivered.extend(m.id for m in batch)
    client.delete_queue(queue.name)
    if started_ray:
        ray.shutdown()

    draw(points, args.chart)
    with open(args.json, "w") as handle:
        json.dump([asdict(p) for p in points], handle)
    summary = {
        "sent": len(sent),
        "lost": len(set(sent) - set(delivered)),
        "delivered_twice": len(delivered) - len(set(delivered)),
        "most_partitions": max(p.partitions for p in points),
        "partitions_at_end": points[-1].partitions,
        "chart": args.chart,
    }
    print_summary(summary, args.summary_json)
    return 0 if summary["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
