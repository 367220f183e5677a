"""Benchmark: rayqueue against ray.util.queue, side by side in one run.

    python jobs/bench.py                     # 1 KiB messages, a short run
    python jobs/bench.py --sizes 100 1024 65536 --runs 5 --json bench.json
    ray job submit -- python jobs/bench.py

Scenarios, each the median of ``--runs`` runs:

- batched: ``send_batch`` of ``--batch``, ``receive`` of up to ``--batch``,
  ``delete_batch`` of those receipts (rayqueue), against ``put_nowait_batch`` /
  ``get_nowait_batch`` (ray.util.queue, its actor started before the clock);
- single: ``send``, ``receive``, ``delete`` one message per call, against ``put`` / ``get``.

rayqueue stores every message durably (``durability="storage"``) and deletes
it durably; ray.util.queue keeps items in one actor's memory with no
acknowledgement. Figures on a shared machine vary from run to run: compare the
ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import ray
from ray.util.queue import Queue as RayQueue

import rayqueue


@dataclass
class Row:
    scenario: str
    size: int
    rayqueue_msg_s: float
    ray_queue_msg_s: float

    @property
    def ratio(self) -> float:
        return self.rayqueue_msg_s / self.ray_queue_msg_s if self.ray_queue_msg_s else float("nan")


def median_rate(runs: int, messages: int, once: Callable[[], None]) -> float:
    """Messages per second of ``once`` (which moves ``messages``), median over runs after a warm-up."""
    once()
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        once()
        rates.append(messages / (time.perf_counter() - started))
    return statistics.median(rates)


def rayqueue_batched(queue: rayqueue.Queue, bodies: list[bytes], rounds: int) -> Callable[[], None]:
    batch = len(bodies)

    def once() -> None:
        for _ in range(rounds):
            queue.send_batch(bodies)
            received = 0
            while received < batch:
                messages = queue.receive(batch - received)
                queue.delete_batch([m.receipt for m in messages])
                received += len(messages)

    return once


def ray_queue_batched(queue: RayQueue, bodies: list[bytes], rounds: int) -> Callable[[], None]:
    def once() -> None:
        for _ in range(rounds):
            queue.put_nowait_batch(bodies)
            queue.get_nowait_batch(len(bodies))

    return once


def rayqueue_single(queue: rayqueue.Queue, body: bytes, count: int) -> Callable[[], None]:
    def once() -> None:
        for _ in range(count):
            queue.send(body)
            (message,) = queue.receive(1)
            queue.delete(message.receipt)

    return once


def ray_queue_single(queue: RayQueue, body: bytes, count: int) -> Callable[[], None]:
    def once() -> None:
        for _ in range(count):
            queue.put(body)
            queue.get()

    return once


def run(args: argparse.Namespace) -> list[Row]:
    client = rayqueue.connect(storage=args.storage)
    baseline = RayQueue()
    rows: list[Row] = []
    for size in args.sizes:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        queue = client.create_queue(name, max_messages=10 * args.batch, max_message_bytes=max(size, 1))
        bodies = [b"x" * size] * args.batch
        moved = args.batch * args.rounds
        ours = median_rate(args.runs, moved, rayqueue_batched(queue, bodies, args.rounds))
        theirs = median_rate(args.runs, moved, ray_queue_batched(baseline, bodies, args.rounds))
        rows.append(Row(f"batched x{args.batch}", size, ours, theirs))
        ours = median_rate(args.runs, args.single, rayqueue_single(queue, bodies[0], args.single))
        theirs = median_rate(args.runs, args.single, ray_queue_single(baseline, bodies[0], args.single))
        rows.append(Row("one at a time", size, ours, theirs))
        client.delete_queue(name)
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'scenario':<16} {'size':>7} {'rayqueue msg/s':>15} {'MB/s':>8} {'ray.util.queue msg/s':>21} {'ratio':>6}")
    for row in rows:
        print(
            f"{row.scenario:<16} {row.size:>7} {row.rayqueue_msg_s:>15,.0f} "
            f"{row.rayqueue_msg_s * row.size / 1e6:>8.1f} {row.ray_queue_msg_s:>21,.0f} {row.ratio:>6.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024], help="body sizes in bytes")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20, help="batches per run")
    parser.add_argument("--single", type=int, default=300, help="messages per one-at-a-time run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--storage", default=None, help="fsspec URL (default: a fresh temporary directory)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.storage is None and not ray.is_initialized():
        args.storage = "file://" + tempfile.mkdtemp(prefix="rayqueue-bench-")
    rows = run(args)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([{**asdict(row), "ratio": row.ratio} for row in rows], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
