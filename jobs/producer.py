"""Producer job: feed a queue from a Ray Dataset.

    python jobs/producer.py --queue pipeline --messages 100000
    ray job submit -- python jobs/producer.py --queue pipeline --messages 1000000 --storage s3://bucket/rq

It creates the queue (or finds it with the same settings), builds a dataset of
``--messages`` rows with ``ray.data.range`` (row ``i`` becomes the body
``"i:"`` padded to ``--size`` bytes), and writes it with
``rayqueue.data.write_dataset``: parallel Ray tasks, one ``send_batch`` per
``--batch`` rows, each durable when it returns. The queue is left for the
consumer job (jobs/consumer.py). Progress goes to standard output every few
seconds; the summary comes last (one line of JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import ray
import ray.data
from summary import print_summary

import rayqueue
from rayqueue.data import write_dataset

#: Seconds between progress lines.
PROGRESS_EVERY_S = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", default="pipeline", help="queue name (default: pipeline)")
    parser.add_argument("--messages", type=int, default=10_000, help="rows to send (default 10,000)")
    parser.add_argument("--size", type=int, default=1024, help="body bytes (default 1024)")
    parser.add_argument("--batch", type=int, default=1000, help="messages per send_batch (default 1000)")
    parser.add_argument("--partitions", type=int, default=2, help="partitions if the queue is new (default 2)")
    parser.add_argument("--capacity", type=int, default=1_000_000, help="max_messages if the queue is new")
    parser.add_argument("--storage", default=None, help="fsspec URL (default: RAYQUEUE_STORAGE or ~/.rayqueue)")
    parser.add_argument("--json", action="store_true", help="print the summary as one line of JSON")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.size < 16:
        parser.error("--messages must be at least 1 and --size at least 16")
    return args


def bodies(size: int) -> Callable[[pa.Table], pa.Table]:
    """Row ``i`` -> body ``b"i:"`` padded with dots to ``size`` bytes (the consumer checks the prefix)."""

    def make(batch: pa.Table) -> pa.Table:
        rows = batch.column("id").to_pylist()
        return pa.table({"body": pa.array([f"{i}:".encode().ljust(size, b".") for i in rows], pa.binary())})

    return make


def report_progress(queue: rayqueue.Queue, stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.wait(PROGRESS_EVERY_S):
        try:
            stats = queue.stats()
        except Exception:  # noqa: BLE001 - progress is best effort; the job's own calls report failures
            continue
        print(f"  {time.monotonic() - started:6.1f}s  in the queue: {stats.stored:>10,}", flush=True)


def produce(queue: rayqueue.Queue, args: argparse.Namespace) -> dict[str, Any]:
    dataset = ray.data.range(args.messages).map_batches(bodies(args.size), batch_format="pyarrow")
    stop = threading.Event()
    progress = threading.Thread(target=report_progress, args=(queue, stop), daemon=True)
    progress.start()
    started = time.monotonic()
    try:
        sent = write_dataset(queue, dataset, column="body", batch_size=args.batch)
    finally:
        stop.set()
        progress.join()
    seconds = time.monotonic() - started
    return {
        "queue": queue.name,
        "messages_sent": sent,
        "bytes_sent": sent * args.size,
        "seconds": round(seconds, 3),
        "messages_per_s": round(sent / seconds) if seconds > 0 else None,
        "in_queue": queue.stats().stored,
    }


def report_failure(error: BaseException, args: argparse.Namespace) -> None:
    """The traceback, then what is known so far (a batch that returned is stored; see the queue's stats)."""
    traceback.print_exc()
    print(f"producer: error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    print(
        f"producer: of {args.messages:,} messages for {args.queue!r}, each batch that returned is stored; "
        f"`rayqueue describe {args.queue}` shows what the queue holds",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ray.data.DataContext.get_current().enable_progress_bars = False  # our own progress lines instead
    started_ray = not ray.is_initialized()
    try:
        client = rayqueue.connect(storage=args.storage)
        queue = client.create_queue(
            args.queue, max_messages=args.capacity, max_message_bytes=args.size, partitions=args.partitions
        )
        print(f"producing {args.messages:,} messages of {args.size:,} bytes into {queue.name!r}", flush=True)
        summary = produce(queue, args)
    except BaseException as error:  # noqa: BLE001 - report any failure with what is known
        report_failure(error, args)
        return 1
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()  # produce() joined its thread first
    print_summary(summary, args.json)
    return 0 if summary["messages_sent"] == args.messages else 1


if __name__ == "__main__":
    sys.exit(main())
