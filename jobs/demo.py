"""The main job: producers and consumers move messages through a durable queue.

    python jobs/demo.py                      # local Ray, file:// storage under ~/.rayqueue
    ray job submit -- python jobs/demo.py --messages 100000

Producers are Ray tasks sending batches; consumers are Ray tasks that receive,
"process" (checksum) and delete. At the end the job checks that every message
sent was processed, and prints what moved and how fast.

Storage: --storage, else RAYQUEUE_STORAGE, else rayqueue's file:// default. The
queue is deleted at the end, also after a failure; a failure prints its
traceback and the summary so far, and Ray (if this job started it) is shut
down only after the job's own threads have stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time
import traceback
import uuid
from typing import Any

import ray
from summary import print_summary

import rayqueue


@ray.remote(num_cpus=0)
def produce(queue: rayqueue.Queue, producer: int, count: int, batch: int, size: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        bodies = [f"{producer}:{start + i}:".encode().ljust(size, b".") for i in range(n)]
        ids += queue.send_batch(bodies)
    return ids


@ray.remote(num_cpus=0)
def consume(queue: rayqueue.Queue, batch: int, idle_s: float) -> tuple[list[str], str]:
    """Receive, process and delete until the queue stays empty for ``idle_s``."""
    seen: list[str] = []
    digest = hashlib.sha256()
    while True:
        messages = queue.receive(batch, wait_s=idle_s)
        if not messages:
            return seen, digest.hexdigest()
        for message in messages:
            digest.update(message.body)  # the "work"
        queue.delete_batch([m.receipt for m in messages])
        seen += [m.id for m in messages]


def report_progress(queue: rayqueue.Queue, total: int, stop: threading.Event) -> None:
    """A line a second while something is in the queue; an empty queue (before the
    first send lands, after the last delete) prints nothing. Never raises: a failed
    stats call skips a line (the job's own calls report real failures)."""
    started = time.monotonic()
    while not stop.wait(1.0):
        try:
            stats = queue.stats()
        except Exception:  # noqa: BLE001 - progress is best effort
            continue
        if stats.visible == stats.in_flight == stats.stored_bytes == 0:
            continue
        print(
            f"  {time.monotonic() - started:6.1f}s  visible {stats.visible:>9,}  "
            f"in flight {stats.in_flight:>7,}  stored {stats.stored_bytes / 1e6:8.1f} MB",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages to move (default 20,000)")
    parser.add_argument("--size", type=int, default=1024, help="body bytes (default 1024)")
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500, help="messages per send and receive call")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--storage", default=None, help="fsspec URL (default: RAYQUEUE_STORAGE, else ~/.rayqueue)")
    parser.add_argument("--queue", default=f"demo-{uuid.uuid4().hex[:6]}", help="queue name (deleted at the end)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    started_ray = not ray.is_initialized()
    summary: dict[str, Any] = {"messages_sent": 0, "messages_processed": 0}
    try:
        ok = run(args, summary)
    except BaseException as error:  # noqa: BLE001 - report any failure, then clean up
        traceback.print_exc()
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        print("summary so far:", file=sys.stderr, flush=True)
        print_summary(summary, args.json)
        ok = False
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()  # after run() joined its threads
    return 0 if ok else 1


def run(args: argparse.Namespace, summary: dict[str, Any]) -> bool:
    client = rayqueue.connect(storage=args.storage)
    queue = client.create_queue(
        args.queue,
        max_messages=max(args.messages, 1),
        max_message_bytes=max(args.size, 1),
        partitions=args.partitions,
    )
    print(f"queue {queue.name!r}: {args.partitions} partitions, storage {client.storage}", flush=True)
    try:
        move(queue, args, summary)
    finally:
        client.delete_queue(queue.name)
    print_summary(summary, args.json)
    ok = summary["missing"] == 0 and summary["messages_sent"] == args.messages
    print("OK: every message sent was processed" if ok else "FAILED: messages are missing", flush=True)
    return ok


def move(queue: rayqueue.Queue, args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """Producers and consumers at once; ``summary`` is filled in as results arrive."""
    stop = threading.Event()
    progress = threading.Thread(target=report_progress, args=(queue, args.messages, stop), daemon=True)
    progress.start()
    started = time.monotonic()
    try:
        shares = [args.messages // args.producers + (p < args.messages % args.producers) for p in range(args.producers)]
        producers = [produce.remote(queue, p, n, args.batch, args.size) for p, n in enumerate(shares)]
        consumers = [consume.remote(queue, args.batch, 2.0) for _ in range(args.consumers)]
        sent = {i for ids in ray.get(producers) for i in ids}
        summary["messages_sent"] = len(sent)
        sent_s = time.monotonic() - started
        outcomes = ray.get(consumers)
        elapsed = time.monotonic() - started - 2.0  # the consumers' final idle wait
    finally:
        stop.set()
        progress.join()
    processed = [i for ids, _ in outcomes for i in ids]
    summary.update(
        {
            "messages_sent": len(sent),
            "messages_processed": len(processed),
            "missing": len(sent - set(processed)),
            "processed_twice": len(processed) - len(set(processed)),
            "send_seconds": round(sent_s, 3),
            "total_seconds": round(elapsed, 3),
            "messages_per_s": round(len(processed) / elapsed) if elapsed > 0 else None,
            "mb_per_s": round(len(processed) * args.size / elapsed / 1e6, 1) if elapsed > 0 else None,
        }
    )


if __name__ == "__main__":
    sys.exit(main())
